"""The sbatch scripts and the NeMo-Run recipes on a real one-node Slurm cluster (conftest.py), with
the embedded default (tiny model, Countdown, CPU) trained for a few steps. (Several nodes,
preemption and failures across them, and the recipe on two nodes: test_two_nodes.py.)

The machine has 2 cores, so every run is started at once by the module fixture `launched` (the
2-task job, the layout-error job, the NeMo-Run recipe through LocalExecutor/torchrun) and each test
waits for its own.
"""

from __future__ import annotations

import shlex
import subprocess
from types import SimpleNamespace

import pytest

from tests.slurm.jobs import (CPU_NODE, JOB_TIMEOUT, MULTI_NODE, ONE_NODE, QUICK, REPO, assert_completed, log_of,
                              recipe_command, rl_steps, wait_process)


# -- everything is started at once ----------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(slurm_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("sbatch")
    (work / "logs").mkdir()  # the scripts' --output=logs/%x-%j.out, relative to the submit directory

    def submit(name: str, ntasks: int, *overrides: str):
        job_id = slurm_cluster.submit(*CPU_NODE, f"--ntasks-per-node={ntasks}", f"--job-name={name}",
                                      str(ONE_NODE), *QUICK, f"logging.dir={work / name}", *overrides, cwd=work)
        return SimpleNamespace(id=job_id, run=work / name, log=work / "logs" / f"{name}-{job_id}.out")

    jobs = SimpleNamespace(
        work=work,
        one_node=submit("ps-one-node", 2, "train.steps=3", "checkpoint.every_steps=1"),
        bad_layout=submit("ps-bad-layout", 1, "train.steps=1", "parallel.tensor_parallel=2"),
    )

    # NeMo-Run: the recipe through LocalExecutor (torchrun on this machine), in the background
    # (through SlurmExecutor: test_two_nodes.py)
    nemo = tmp_path_factory.mktemp("recipes")
    env = slurm_cluster.env | {"NEMORUN_HOME": str(nemo / "home")}
    procs = []

    def start(name: str, *args: str, **kwargs):
        log = nemo / f"{name}.log"
        with open(log, "w") as out:
            procs.append(subprocess.Popen(recipe_command(*args, "--logging-dir", str(nemo / name)), cwd=REPO,
                                          stdout=out, stderr=subprocess.STDOUT, **kwargs))
        return SimpleNamespace(proc=procs[-1], log=log, run=nemo / name)

    jobs.nemo_home = nemo / "home"
    jobs.nemo_local = start("local_run", "--executor", "local", "--ntasks-per-node", "1",
                            env={k: v for k, v in env.items() if k != "SLURM_CONF"})
    try:
        yield jobs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_one_node_script_two_tasks(slurm_cluster, launched):
    job = launched.one_node
    info = slurm_cluster.wait(job.id, timeout=JOB_TIMEOUT)
    assert_completed(job, info)
    log = log_of(job)
    host = slurm_cluster.job(job.id).get("NodeList")
    port = 10000 + int(job.id) % 20000
    assert f"2 task(s), MASTER_ADDR={host} MASTER_PORT={port}" in log, log[:2000]
    for rank in (0, 1):  # two tasks of one node: local rank = rank
        assert f"rank {rank} of 2 (local rank {rank}) on {host}, rendezvous {host}:{port}" in log, log[:3000]
    assert rl_steps(job.run) == [1, 2, 3]
    assert (job.run / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (job.run / "checkpoints" / "step_000003").is_dir()
    assert info.get("Restarts") == "0"


def test_tasks_not_matching_the_layout_fail_early_and_clearly(slurm_cluster, launched):
    job = launched.bad_layout
    info = slurm_cluster.wait(job.id, timeout=JOB_TIMEOUT)
    assert info.get("JobState") == "FAILED", info
    log = log_of(job)
    assert "1 processes were launched (WORLD_SIZE=1, SLURM_NTASKS=1)" in log and "= 2 does not divide 1" in log, log[-3000:]
    assert not rl_steps(job.run) and not (job.run / "model").exists(), "nothing may be built before the check"


def test_multi_node_script_and_container_flags(slurm_cluster, tmp_path):
    """The many-node script's environment and srun line (PS_DRY_RUN: pyxis is not installed here)."""
    (tmp_path / "logs").mkdir()
    env = {"PS_DRY_RUN": "1", "CONTAINER_IMAGE": "nvcr.io/nvidia/nemo:25.09",
           "CONTAINER_MOUNTS": "/lustre:/lustre,/data:/data"}
    job_id = slurm_cluster.submit("--nodes=1", *CPU_NODE, "--ntasks-per-node=2", str(MULTI_NODE),
                                  "--config", "run.yaml", "parallel.tensor_parallel=2", cwd=tmp_path, env=env)
    info = slurm_cluster.wait(job_id, timeout=120, poll=0.3)
    log = (tmp_path / "logs" / f"policy-split-{job_id}.out").read_text()
    assert info.get("JobState") == "COMPLETED", log
    dry = shlex.split(next(line for line in log.splitlines() if line.startswith("PS_DRY_RUN:"))[len("PS_DRY_RUN:"):])
    assert dry[:2] == ["srun", "--kill-on-bad-exit=1"]
    for flag in ("--container-image=nvcr.io/nvidia/nemo:25.09", "--container-mounts=/lustre:/lustre,/data:/data",
                 "--no-container-mount-home", f"--container-workdir={tmp_path}", "--cpus-per-task=1"):
        assert flag in dry, (flag, dry)
    # inside a container the command is the image's `policy-split`; the arguments pass through
    assert dry[-5:] == ["policy-split", "train", "--config", "run.yaml", "parallel.tensor_parallel=2"], dry
    # every task exports torch.distributed's variables from its own Slurm ones, and turns a stop
    # request (SIGURG to the step) into SIGUSR1 for the trainer alone
    assert dry[dry.index("-c") + 1] == "$PS_TASK_SCRIPT"
    task = log.split("PS_TASK_SCRIPT:\n", 1)[1]
    assert "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS" in task
    assert """trap '[ -n "$child" ] && kill -USR1 "$child" 2>/dev/null' URG""" in task
    assert f"MASTER_PORT={10000 + int(job_id) % 20000}" in log


def test_nemo_run_recipe_through_local_executor_torchrun(launched):
    local = launched.nemo_local
    code = wait_process(local.proc, JOB_TIMEOUT)
    log = local.log.read_text()
    assert code == 0, log[-4000:]
    assert "distributed/elastic/agent" in log, "the recipe must go through torchrun (its elastic agent)"
    assert rl_steps(local.run) == [1, 2], log[-4000:]
    assert (local.run / "checkpoints" / "latest").read_text().strip() == "step_000002"
