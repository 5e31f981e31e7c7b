"""When a command's main process dies, none of its processes outlive it (process_tree.py).

Both cases of issue 13, for real: `policy-split run` killed with SIGKILL after its first checkpoint
(megatron-core's per-rank Manager server was the survivor), and a `convert` hung in its checkpoint
writer, ended with SIGTERM as `timeout` does (two processes survived for over an hour). Every
process the command starts carries a marker in its environment, so orphans re-parented to init are
found too (tests/helpers/processes.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import kill_all, marked_env, marked_processes, wait_until_gone

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "policy_split_megatron.cli"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")


def _wait_for(predicate, seconds: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, f"the command ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_sigkill_of_run_leaves_no_process(tmp_path):
    env, mark = marked_env()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(CLI + [
        "train", f"logging.dir={run_dir}", "parallel.tensor_parallel=2", "warm_start.steps=0", "train.steps=500",
        "checkpoint.every_steps=1", "data.prompts_per_step=2", "data.countdown_train_size=20",
        "data.countdown_eval_size=4", "evaluation.max_prompts=2", "evaluation.samples_per_prompt=1",
        "rollout.normal.max_tokens=8", "rollout.explore.max_tokens=8", "logging.tensorboard=False",
    ], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The survivor of the issue was megatron-core's results-queue Manager, started by the first save
        # (trainer/checkpoint.py no longer starts it; the test kills whatever the run has started).
        _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), 400, proc, "the first checkpoint")
        before = marked_processes(mark)
        assert len(before) >= 5, before  # main, the watchdog, 2 ranks, their reward workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survivors = wait_until_gone(mark, 5)
        assert not survivors, f"processes outlived the killed `policy-split train`: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(mark)


def test_sigterm_of_hung_convert_leaves_no_process(tmp_path):
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    hf = write_tiny_model(tmp_path / "hf")
    root = tmp_path / "checkpoints"
    env, mark = marked_env()
    # megatron-core's shard writer hangs (a write that never returns; in the issue, a worker process's)
    env["PYTHONPATH"] = f"{REPO / 'tests' / 'helpers' / 'psutil_stub'}:{REPO}"
    proc = subprocess.Popen(CLI + ["convert", "from-hf", str(hf), str(root), "--tp", "2", "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(root.glob("*.partial")), 300, proc, "the checkpoint write")
        time.sleep(5)  # well inside the hung write
        assert proc.poll() is None, "the conversion was expected to hang"
        before = marked_processes(mark)
        assert len(before) >= 5, before
        proc.send_signal(signal.SIGTERM)  # what `timeout` sends
        _, stderr = proc.communicate(timeout=30)
        survivors = wait_until_gone(mark, 5)
        assert not survivors, f"processes outlived the stopped `policy-split convert`: {survivors}"
        assert proc.returncode == 128 + signal.SIGTERM
        assert "policy-split: stopped by SIGTERM" in stderr.splitlines() and "Traceback" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(mark)
