"""The sbatch scripts and the NeMo-Run recipes on a real one-node Slurm cluster (conftest.py), with
the embedded default (tiny model, Countdown, CPU) trained for a few steps.

The machine has 2 cores, so every run is started at once by the module fixture `launched` (the
preemption job, the 2-task job, the layout-error job, the NeMo-Run recipe through SlurmExecutor and
through LocalExecutor/torchrun) and each test waits for its own. The preemption test comes first: it
must signal its job while that job is still in its first run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
ONE_NODE = REPO / "slurm" / "train_one_node.sbatch"
MULTI_NODE = REPO / "slurm" / "train_multi_node.sbatch"

# A run of a few seconds per step: no warm start, 2 prompts x (2 + 2) samples, short answers,
# 2 held-out prompts x 1 sample before and after.
QUICK = [
    "warm_start.steps=0",
    "data.prompts_per_step=2",
    "rollout.n_normal=2",
    "rollout.n_explore=2",
    "rollout.normal={'max_tokens': 16}",
    "rollout.explore={'max_tokens': 16}",
    "rollout.max_model_len=128",
    "rollout.kv_cache_bytes=134217728",
    "evaluation.max_prompts=2",
    "evaluation.samples_per_prompt=1",
    "logging.tensorboard=False",
]
# The header asks for 8 GPUs and 8 CPUs per task: a CPU node overrides them on the command line.
CPU_NODE = ["--gpus-per-node=0", "--cpus-per-task=1"]
JOB_TIMEOUT = 420
PREEMPT_STEPS = 12


def rows(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl, in order (repeated steps would show here); a line the
    trainer is still writing is left out."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line]


def rl_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rows(run_dir) if r["phase"] == "rl"]


def log_of(job) -> str:
    return job.log.read_text() if job.log.exists() else "<no log>"


def assert_completed(cluster, job, info: dict) -> None:
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (
        f"job {job.id} ended {info.get('JobState')} {info.get('ExitCode')}; log tail:\n{log_of(job)[-4000:]}")


# -- everything is started at once ----------------------------------------------------------------

def _recipe_command(*args: str) -> list[str]:
    return [sys.executable, "-W", "ignore", "-m", "recipes.policy_split_default", "--yes", "--steps", "2",
            *args, *QUICK]


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
        # enough steps that the signal lands mid-run even when a step takes under a second
        preempt=submit("ps-preempt", 1, f"train.steps={PREEMPT_STEPS}", "checkpoint.every_steps=0"),
        one_node=submit("ps-one-node", 2, "train.steps=3", "checkpoint.every_steps=1"),
        bad_layout=submit("ps-bad-layout", 1, "train.steps=1", "parallel.tensor_parallel=2"),
    )

    # NeMo-Run: the recipe through SlurmExecutor (sbatch via LocalTunnel, 2 srun tasks, detached)
    # and through LocalExecutor (torchrun on this machine), both in the background.
    # (not "nemo_run" in the path: NeMo-Run 0.11.1 rewrites every "/nemo_run" of a container-less
    # batch script)
    nemo = tmp_path_factory.mktemp("recipes")
    env = slurm_cluster.env | {"NEMORUN_HOME": str(nemo / "home")}
    procs = []

    def start(name: str, *args: str, **kwargs):
        log = nemo / f"{name}.log"
        with open(log, "w") as out:
            procs.append(subprocess.Popen(_recipe_command(*args, "--logging-dir", str(nemo / name)), cwd=REPO,
                                          stdout=out, stderr=subprocess.STDOUT, **kwargs))
        return SimpleNamespace(proc=procs[-1], log=log, run=nemo / name)

    jobs.nemo_home = nemo / "home"
    jobs.nemo_local = start("local_run", "--executor", "local", "--ntasks-per-node", "1",
                            env={k: v for k, v in env.items() if k != "SLURM_CONF"})
    jobs.nemo_slurm = start("slurm_run", "--executor", "slurm", "--account", "pstest", "--nodes", "1",
                            "--ntasks-per-node", "2", "--gpus-per-node", "0", "--cpus-per-task", "1",
                            "--time", "00:20:00", "--detach", env=env)
    try:
        yield jobs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_process(proc, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_preempted_job_requeues_and_resumes(slurm_cluster, launched):
    """USR1 to the batch script (what `#SBATCH --signal=B:USR1@300` sends before the time limit):
    the ranks finish the step, checkpoint and exit 0, the script requeues the job, and the
    requeued run resumes from that checkpoint: every step is logged exactly once, up to the last."""
    job = launched.preempt
    deadline = time.monotonic() + JOB_TIMEOUT
    # as soon as the trainer is in its loop (its handler is installed before the held-out
    # evaluation of step 0 is logged): on 2 busy cores the request takes seconds to arrive
    while not rows(job.run):
        state = slurm_cluster.job(job.id).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job.id} {state}:\n{log_of(job)[-4000:]}"
        assert time.monotonic() < deadline, f"nothing logged in {JOB_TIMEOUT} s:\n{log_of(job)[-4000:]}"
        time.sleep(0.1)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job.id)

    info = slurm_cluster.wait(job.id, timeout=JOB_TIMEOUT)
    assert_completed(slurm_cluster, job, info)
    assert info.get("Restarts") == "1", f"expected one requeue: {info}"
    log = log_of(job)
    assert "batch script got SIGUSR1: asking the training step to checkpoint and stop" in log and f"requeueing job {job.id} (restart 1)" in log, log[-4000:]
    assert f"job {job.id} (ps-preempt) restart 0" in log and f"job {job.id} (ps-preempt) restart 1" in log
    stopped = [int(line.rsplit("after step ", 1)[1].split(";")[0]) for line in log.splitlines()
               if "stopped by signal after step" in line]
    assert len(stopped) == 1 and 1 <= stopped[0] < PREEMPT_STEPS, f"the first run should stop early once: {stopped}"
    assert "training step exited with status 0" in log.split("requeueing")[0], "the stop must be clean"

    # the step counter continues: first run 1..k, requeued run k+1..N, nothing repeated
    assert rl_steps(job.run) == list(range(1, PREEMPT_STEPS + 1))
    evals = [r["step"] for r in rows(job.run) if r["phase"] == "eval"]
    assert evals == [0, PREEMPT_STEPS], f"held-out evaluation before RL once and after the last step: {evals}"
    checkpoints = job.run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step_{PREEMPT_STEPS:06d}"
    # checkpoint.every_steps=0: the signal's checkpoint (what the requeued run resumed from) and the last
    saved = sorted(p.name for p in checkpoints.glob("step_*"))
    assert saved == [f"step_{stopped[0]:06d}", f"step_{PREEMPT_STEPS:06d}"], saved


def test_one_node_script_two_tasks(slurm_cluster, launched):
    job = launched.one_node
    info = slurm_cluster.wait(job.id, timeout=JOB_TIMEOUT)
    assert_completed(slurm_cluster, job, info)
    log = log_of(job)
    host = slurm_cluster.job(job.id).get("NodeList")
    assert f"2 task(s), MASTER_ADDR={host} MASTER_PORT={10000 + int(job.id) % 20000}" in log, log[:2000]
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


def test_nemo_run_recipe_through_slurm_executor(slurm_cluster, launched):
    submit = launched.nemo_slurm
    code = wait_process(submit.proc, 300)
    out = submit.log.read_text()
    assert code == 0, out[-4000:]
    job_id = next(line.split("Job id:")[1].strip() for line in out.splitlines() if "Job id:" in line)
    info = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT)
    logs = sorted((launched.nemo_home / "experiments").rglob("log-*.out"))
    text = "\n".join(p.read_text() for p in logs)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (info, text[-4000:])
    assert info.get("NumTasks") == "2", info
    assert rl_steps(submit.run) == [1, 2], text[-4000:]
    assert "done: policy_split, 2 RL steps" in text


def test_nemo_run_recipe_through_local_executor_torchrun(launched):
    local = launched.nemo_local
    code = wait_process(local.proc, JOB_TIMEOUT)
    log = local.log.read_text()
    assert code == 0, log[-4000:]
    assert "distributed/elastic/agent" in log, "the recipe must go through torchrun (its elastic agent)"
    assert rl_steps(local.run) == [1, 2], log[-4000:]
    assert (local.run / "checkpoints" / "latest").read_text().strip() == "step_000002"
