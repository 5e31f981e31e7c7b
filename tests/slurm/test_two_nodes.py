"""The multi-node script and the NeMo-Run recipe on a real two-node Slurm cluster (conftest.py:
`slurm_two_nodes`, node1 and node2 in network namespaces), 2 nodes x 1 task: data parallelism across
nodes, with the embedded default (tiny model, Countdown, CPU).

- One world from Slurm's variables, each node's engine generating its half of the prompts, and the
  DP=2 update equal to the DP=1 update of the same global batch (the runs' HF exports compared).
- Rank 0 alone writes: node2 sees that run's directory read-only except checkpoints/ (a bind mount
  in node2's namespace), and rank 1's checkpoint file holds no weights.
- Preemption: USR1 to the batch script checkpoints once on both nodes, requeues, resumes.
- Failures: rank 1's trainer killed on node2 fails the job at once, and the job submitted again
  resumes; then node2 dies (slurmd and everything on it): Slurm requeues the job, which resumes when
  node2 is back.
- The NeMo-Run recipe through SlurmExecutor on the two nodes.

The machine has 2 cores: all but the failure test start at once (module fixture `launched`); the
failure test comes last and kills node2, so it runs alone.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.slurm.jobs import (CPU_NODE, JOB_TIMEOUT, MULTI_NODE, ONE_NODE, QUICK, REPO, assert_completed, latest,
                              log_of, recipe_command, rl_steps, rows, submitted_job_id, wait_process)

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", *CPU_NODE]
PREEMPT_STEPS = 8
# DP=1 against DP=2: one RL step from the same weights on 4 prompts (2 per node), a reward that
# splits the random tiny model's samples (every group carries a learning signal) and a large
# learning rate, so that the update stands far above rounding.
COMPARE = [*QUICK, "data.prompts_per_step=4", "train.steps=1", "optimizer.lr=1e-3",
           "data.reward=tests.distributed.test_trainer_e2e:parity_reward"]


@pytest.fixture(scope="module")
def launched(slurm_two_nodes, tmp_path_factory):
    cluster = slurm_two_nodes
    work = tmp_path_factory.mktemp("two_nodes")
    (work / "logs").mkdir()  # the scripts' --output=logs/%x-%j.out, relative to the submit directory

    def submit(name: str, script: Path, sbatch_args: list[str], overrides: list[str]):
        job_id = cluster.submit(*sbatch_args, f"--job-name={name}", str(script), *overrides,
                                f"logging.dir={work / name}", cwd=work)
        return SimpleNamespace(id=job_id, run=work / name, log=work / "logs" / f"{name}-{job_id}.out")

    # rank 1 may write its checkpoint shards, nothing else of the run: node2 sees it read-only
    (work / "ps-dp2" / "checkpoints").mkdir(parents=True)
    cluster.node("node2").read_only(work / "ps-dp2", writable=(work / "ps-dp2" / "checkpoints",))
    jobs = SimpleNamespace(
        work=work,
        # enough steps that the signal lands mid-run
        preempt=submit("ps-preempt", MULTI_NODE, TWO_NODES,
                       [*QUICK, f"train.steps={PREEMPT_STEPS}", "checkpoint.every_steps=0"]),
        dp2=submit("ps-dp2", MULTI_NODE, TWO_NODES, [*COMPARE, "logging.tensorboard=True"]),
        dp1=submit("ps-dp1", ONE_NODE, ["--nodes=1", "--ntasks-per-node=1", *CPU_NODE], COMPARE),
    )
    # NeMo-Run submits from the login node (node1) through a LocalTunnel, detached
    nemo = tmp_path_factory.mktemp("recipes")
    log = nemo / "slurm_run.log"
    command = recipe_command("--executor", "slurm", "--account", "pstest", "--nodes", "2", "--ntasks-per-node", "1",
                             "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "00:20:00", "--detach",
                             "--logging-dir", str(nemo / "slurm_run"))
    with open(log, "w") as out:
        proc = subprocess.Popen(cluster.client(*command), cwd=REPO, env=cluster.env | {"NEMORUN_HOME": str(nemo / "home")},
                                stdout=out, stderr=subprocess.STDOUT)
    jobs.nemo = SimpleNamespace(proc=proc, log=log, run=nemo / "slurm_run", home=nemo / "home")
    try:
        yield jobs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(cluster, job, ready, what: str, timeout: float = JOB_TIMEOUT) -> None:
    """Poll `ready()` while the job runs; fail when it ends first or after `timeout`."""
    deadline = time.monotonic() + timeout
    while not ready():
        state = cluster.job(job.id).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job.id} {state} before {what}:\n{log_of(job)[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{log_of(job)[-4000:]}"
        time.sleep(0.05)


def hf_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(glob.glob(str(folder / "*.safetensors"))):
        weights.update(load_file(path))
    assert weights, f"no safetensors in {folder}"
    return weights


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# -- preemption first: its signal must land while the job is in its first run --------------------

def test_preempted_job_checkpoints_once_requeues_and_resumes_on_both_nodes(slurm_two_nodes, launched):
    """USR1 to the batch script (what `#SBATCH --signal=B:USR1@300` sends before the time limit):
    both ranks finish the step, checkpoint and exit 0, the script requeues the job, and the
    requeued job, again on both nodes, resumes from that checkpoint: every step logged once."""
    cluster, job = slurm_two_nodes, launched.preempt
    # as soon as the trainer is in its loop (its handler is installed before the held-out
    # evaluation of step 0 is logged)
    wait_until(cluster, job, lambda: rows(job.run), "first metrics row")
    cluster.run("scancel", "--batch", "--signal=USR1", job.id)

    info = cluster.wait(job.id, timeout=JOB_TIMEOUT)
    assert_completed(job, info)
    assert info.get("Restarts") == "1", f"expected one requeue: {info}"
    log = log_of(job)
    assert "batch script got SIGUSR1: asking the training step to checkpoint and stop" in log, log[-4000:]
    assert f"requeueing job {job.id} (restart 1)" in log, log[-4000:]
    for restart in (0, 1):
        assert f"job {job.id} (ps-preempt) restart {restart}: 2 node(s) [node[1-2]], 2 task(s), MASTER_ADDR=node1" in log
    assert log.count("rank 0 of 2 (local rank 0) on node1") == 2 and log.count("rank 1 of 2 (local rank 0) on node2") == 2, (
        "each run must place rank 0 on node1 and rank 1 on node2:\n" + log[-4000:])
    stopped = [int(line.rsplit("after step ", 1)[1].split(";")[0]) for line in log.splitlines()
               if "stopped by signal after step" in line]
    assert len(stopped) == 1 and 1 <= stopped[0] < PREEMPT_STEPS, f"the first run should stop early once: {stopped}"
    assert "training step exited with status 0" in log.split("requeueing")[0], "the stop must be clean on both nodes"

    assert rl_steps(job.run) == list(range(1, PREEMPT_STEPS + 1)), "each step exactly once, across the requeue"
    evals = [r["step"] for r in rows(job.run) if r["phase"] == "eval"]
    assert evals == [0, PREEMPT_STEPS], f"held-out evaluation before RL once and after the last step: {evals}"
    checkpoints = job.run / "checkpoints"
    assert latest(job.run) == f"step_{PREEMPT_STEPS:06d}"
    # checkpoint.every_steps=0: the signal's checkpoint (what the requeued run resumed from) and the last
    saved = sorted(p.name for p in checkpoints.glob("step_*"))
    assert saved == [f"step_{stopped[0]:06d}", f"step_{PREEMPT_STEPS:06d}"], saved


# -- data parallel across the nodes ---------------------------------------------------------------

def _finished_pair(cluster, launched):
    two, one = launched.dp2, launched.dp1
    for job in (two, one):
        assert_completed(job, cluster.wait(job.id, timeout=JOB_TIMEOUT))
    (row2,) = [r for r in rows(two.run) if r["phase"] == "rl"]
    (row1,) = [r for r in rows(one.run) if r["phase"] == "rl"]
    return two, one, row2, row1


def test_two_nodes_join_one_world_and_update_as_one_rank(slurm_two_nodes, launched):
    cluster = slurm_two_nodes
    two, one, row2, row1 = _finished_pair(cluster, launched)
    info = cluster.job(two.id)
    assert info.get("NodeList") == "node[1-2]" and info.get("NumNodes") == "2", info
    log, port = log_of(two), 10000 + int(two.id) % 20000
    assert f"2 node(s) [node[1-2]], 2 task(s), MASTER_ADDR=node1 MASTER_PORT={port}" in log, log[:3000]
    assert f"rank 0 of 2 (local rank 0) on node1, rendezvous node1:{port}" in log, log[:3000]
    assert f"rank 1 of 2 (local rank 0) on node2, rendezvous node1:{port}" in log, log[:3000]

    # each node's engine generated its own half of the prompts (rollout/* are rank 0's replica's
    # counts); the update below used the whole batch, so node2's half reached rank 0
    assert row1["rollout/prompts"] == 4 and row2["rollout/prompts"] == 2, (row1["rollout/prompts"], row2["rollout/prompts"])
    # the gradients were reduced across the nodes: the global gradient norm and the new weights are
    # those of one rank holding the whole batch
    assert abs(row2["train/grad_norm"] - row1["train/grad_norm"]) <= 1e-5 * row1["train/grad_norm"], (
        row2["train/grad_norm"], row1["train/grad_norm"])
    start = hf_weights(one.run / "model")
    assert max_difference(start, hf_weights(two.run / "model")) == 0, "both runs must start from the same weights"
    after_one, after_two = hf_weights(one.run / "hf"), hf_weights(two.run / "hf")
    moved = max_difference(after_one, start)
    assert moved > 1e-4, f"the step barely changed the weights ({moved:.2e}): the comparison would prove nothing"
    # AdamW's first step is ~lr * sign(grad): rounding noise in near-zero gradients moves a few
    # weights by a fraction of lr (1e-3); a gradient not reduced over nodes moves many by ~lr
    worst = max_difference(after_two, after_one)
    print(f"DP=2 over 2 nodes vs DP=1: weights differ by {worst:.2e} at most, the step moved them by {moved:.2e}; "
          f"grad norm {row2['train/grad_norm']:.6f} vs {row1['train/grad_norm']:.6f}")
    assert worst <= 1e-5, f"DP=2 across nodes differs from DP=1 by {worst:.2e} (the step moved weights by {moved:.2e})"


def test_only_rank_0_writes_the_run(slurm_two_nodes, launched):
    """The DP=2 job ran with node2 seeing its run directory read-only except checkpoints/ (so
    completing proves rank 1 wrote no metrics, export or other file there), and inside a checkpoint
    rank 1's file holds no weights: they are data-parallel replicas, saved once, by rank 0."""
    cluster, job = slurm_two_nodes, launched.dp2
    assert_completed(job, cluster.wait(job.id, timeout=JOB_TIMEOUT))
    probe = subprocess.run(cluster.node("node2").enter() + ["touch", str(job.run / "probe")], capture_output=True, text=True)
    assert probe.returncode != 0 and "Read-only" in probe.stderr, "node2 must see the run read-only"

    assert [(r["phase"], r["step"]) for r in rows(job.run)] == [("eval", 0), ("rl", 1), ("eval", 1)], rows(job.run)
    events = sorted(p.name for p in (job.run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and ".node1." in events[0], f"one TensorBoard file, from node1: {events}"
    assert (job.run / "hf" / "config.json").is_file()

    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = job.run / "checkpoints" / latest(job.run)
    stored = FileSystemReader(str(checkpoint)).read_metadata().storage_data
    by_file = defaultdict(set)
    for index, where in stored.items():
        by_file[where.relative_path].add(index.fqn)
    rank1 = set().union(*(names for file, names in by_file.items() if file.startswith("__1_")))
    assert rank1, f"rank 1 saves its own state (its RNG streams) in its own file: {sorted(by_file)}"
    # (with a distributed optimizer, rank 1 would also hold its optimizer shard)
    weights = sorted(n for n in rank1 if not n.startswith(("rng_state", "optimizer")))
    assert not weights, f"rank 1 wrote model weights into the checkpoint: {weights[:5]}"


def test_logged_metrics_describe_the_whole_batch(slurm_two_nodes, launched):
    _, _, row2, row1 = _finished_pair(slurm_two_nodes, launched)
    keys = sorted(k for k in row1 if k.startswith(("normal/", "high_entropy/", "inter_mode/", "advantage/", "train/")))
    assert any(k.startswith("advantage/he_") for k in keys) and "advantage/kl_he_normal" in keys, keys
    differ = {k: (row1[k], row2.get(k)) for k in keys
              if row2.get(k) is None or abs(row2[k] - row1[k]) > 1e-4 * max(1.0, abs(row1[k]))}
    assert not differ, f"DP=2 logged other values than DP=1 for {len(differ)} metrics: {differ}"


# -- NeMo-Run -------------------------------------------------------------------------------------

def test_nemo_run_recipe_through_slurm_executor_on_two_nodes(slurm_two_nodes, launched):
    cluster, nemo = slurm_two_nodes, launched.nemo
    code = wait_process(nemo.proc, 300)
    out = nemo.log.read_text()
    assert code == 0, out[-4000:]
    info = cluster.wait(submitted_job_id(out), timeout=JOB_TIMEOUT)
    text = "\n".join(p.read_text() for p in sorted((nemo.home / "experiments").rglob("log-*.out")))
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (info, text[-4000:])
    assert (info.get("NumNodes"), info.get("NodeList"), info.get("NumTasks")) == ("2", "node[1-2]", "2"), info
    assert rl_steps(nemo.run) == [1, 2], text[-4000:]
    assert "done: policy_split, 2 RL steps" in text


# -- failures last: node2 is killed -----------------------------------------------------------------

def _trainers(node, run: Path) -> list[int]:
    """The trainer processes of `run` on `node` (not their wrapper shells)."""
    found = []
    for pid in node.processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]).name.startswith("python") and "policy_split_megatron.cli" in argv and f"logging.dir={run}" in argv:
            found.append(pid)
    return found


def test_killed_rank_and_dead_node_resume_from_the_last_checkpoint(slurm_two_nodes, tmp_path):
    cluster, run = slurm_two_nodes, tmp_path / "run"
    (tmp_path / "logs").mkdir()
    node2 = cluster.node("node2")

    def submit():
        job_id = cluster.submit(*TWO_NODES, "--job-name=ps-failures", str(MULTI_NODE), *QUICK, "train.steps=4",
                                "checkpoint.every_steps=1", f"logging.dir={run}", cwd=tmp_path)
        return SimpleNamespace(id=job_id, run=run, log=tmp_path / "logs" / f"ps-failures-{job_id}.out")

    # 1. rank 1's trainer dies mid-step (step 2): srun's --kill-on-bad-exit ends the job at once
    first = submit()
    wait_until(cluster, first, lambda: latest(run) == "step_000001", "checkpoint of step 1")
    trainers = _trainers(node2, run)
    assert len(trainers) == 1, f"expected rank 1's trainer on node2: {trainers}"
    os.kill(trainers[0], signal.SIGKILL)
    killed = time.monotonic()
    info = cluster.wait(first.id, timeout=120, poll=0.5)
    ended_after = time.monotonic() - killed
    print(f"rank 1 killed after the checkpoint of step 1: job {first.id} {info.get('JobState')} {ended_after:.1f} s later")
    log = log_of(first)
    assert info.get("JobState") == "FAILED" and ended_after < 60, (
        f"the job should fail promptly, not hang: {info.get('JobState')} after {ended_after:.0f} s\n{log[-4000:]}")
    assert "rank 1 on node2: the trainer was killed by SIGKILL" in log, log[-4000:]
    assert "error: the training step failed" in log and "resumes from the last checkpoint" in log, log[-3000:]
    after_crash, resume_1 = rl_steps(run), int(latest(run).split("_")[1])
    assert resume_1 >= 1 and after_crash[:resume_1] == list(range(1, resume_1 + 1)), after_crash

    # 2. the same command again: it resumes from that checkpoint; then node2 dies (slurmd, the job
    # step, the trainer: everything on it), right after the next checkpoint
    second = submit()
    wait_until(cluster, second, lambda: latest(run) == f"step_{resume_1 + 1:06d}", f"checkpoint of step {resume_1 + 1}")
    cluster.kill_node("node2")
    killed = time.monotonic()
    # Slurm notices (SlurmdTimeout=15 on this cluster) and requeues the job (--requeue), which then
    # waits for two nodes
    deadline = killed + 120
    while (state := cluster.job(second.id)).get("Restarts") != "1":
        assert state.get("JobState") in ("RUNNING", "COMPLETING"), f"job {second.id}: {state}\n{log_of(second)[-4000:]}"
        assert time.monotonic() < deadline, f"node2's death not handled after 120 s: {state}\n{log_of(second)[-4000:]}"
        time.sleep(0.5)
    requeued_after = time.monotonic() - killed
    print(f"node2 killed after the checkpoint of step {resume_1 + 1}: job {second.id} requeued {requeued_after:.1f} s later")
    log = log_of(second)
    assert "Node failure on node2" in log or "DUE TO NODE FAILURE" in log, log[-4000:]
    assert requeued_after < 90, f"requeued only after {requeued_after:.0f} s"
    after_node, resume_2 = rl_steps(run), int(latest(run).split("_")[1])
    assert resume_2 == resume_1 + 1, latest(run)

    # 3. node2 comes back: the requeued job runs again on both nodes and finishes
    cluster.start_slurmd("node2")
    cluster.wait_nodes_idle()
    info = cluster.wait(second.id, timeout=JOB_TIMEOUT)
    assert_completed(second, info)
    assert f"job {second.id} (ps-failures) restart 1: 2 node(s) [node[1-2]]" in log_of(second)

    # every run went on from the last checkpoint
    steps = rl_steps(run)
    second_run, third_run = after_node[len(after_crash):], steps[len(after_node):]
    assert second_run and second_run == list(range(resume_1 + 1, resume_1 + 1 + len(second_run))), (after_crash, after_node)
    assert third_run == list(range(resume_2 + 1, 5)), (after_node, steps)
    assert latest(run) == "step_000004"
    assert [r["step"] for r in rows(run) if r["phase"] == "eval"] == [0, 4], "evaluated before RL once, and at the end"
