"""A checkpoint write that fails ends the command with a clear error, never a hang (issue 13, §4).

megatron-core 0.16.1 writes a rank's shard files from worker processes it forks and waits on a
queue that only a worker that got far enough fills: a worker that raised before its try block
(psutil missing) or was killed (OOM) left `convert` hanging until killed. trainer/checkpoint.py now
writes the files from the rank itself. Both failures are made for real here, in the real command:
megatron-core's own writer calls psutil, and a stand-in psutil (tests/helpers/psutil_stub) is
missing or SIGKILLs its caller. A failure on one rank only must reach every rank, as one error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed
from tests.helpers.processes import kill_all, marked_env, wait_until_gone

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "policy_split_megatron.cli"]
FAILURE_TO_EXIT_SECONDS = 60  # the bound, from the start of the write to the command's end
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")


@pytest.mark.parametrize("mode, expected", [
    ("missing", "psutil is not installed"),  # an import error where the shards are written
    ("sigkill", "ended with SIGKILL"),  # the writer OOM-killed
])
def test_failed_write_ends_convert_within_a_minute(tmp_path, mode, expected):
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    hf = write_tiny_model(tmp_path / "hf")
    root = tmp_path / "checkpoints"
    env, mark = marked_env()
    env["PYTHONPATH"] = f"{REPO / 'tests' / 'helpers' / 'psutil_stub'}:{REPO}"
    env["PSUTIL_STUB"] = mode
    proc = subprocess.Popen(CLI + ["convert", "from-hf", str(hf), str(root), "--tp", "2", "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(root.glob("*.partial")) and proc.poll() is None:  # start-up: not what is measured
            assert time.monotonic() < deadline, "the conversion never began writing"
            time.sleep(0.2)
        writing = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=FAILURE_TO_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`convert` still running {FAILURE_TO_EXIT_SECONDS} s after its checkpoint write failed")
        took = time.monotonic() - writing
        assert proc.returncode != 0, stderr
        assert expected in stderr, stderr
        if mode == "missing":  # a fixable environment problem: the CLI's one line, status 2
            assert proc.returncode == 2 and "Traceback" not in stderr, stderr
            last = stderr.strip().splitlines()[-1]
            assert last.startswith("policy-split: error: writing checkpoint") and "pip install psutil" in last, last
        assert not (root / "latest").exists() and not list(root.glob("step_*[0-9]")), "a failed save was published"
        assert not wait_until_gone(mark, 10), "processes outlived the failed command"
        print(f"{mode}: ended {took:.1f} s after the write began")
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(mark)


def _save_with_one_failing_rank(rank, world_size, folder, root):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from policy_split_megatron.trainer.checkpoint import CheckpointError, save_checkpoint
    from tests.helpers.engine import build_engine

    engine = build_engine(folder)
    if rank == 1:
        filesystem_async.HAVE_PSUTIL = False  # what megatron-core records when `import psutil` failed
    try:
        save_checkpoint(root, 1, engine.modules, engine.optimizer, {})
    except CheckpointError as err:
        return str(err)
    return None


def test_a_write_failure_on_one_rank_is_raised_on_every_rank(tmp_path):
    from policy_split_megatron.model.tiny import save_random_hf_model

    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=1))
    messages = run_distributed(_save_with_one_failing_rank, 2, folder, tmp_path / "ckpt", timeout=300)
    for message in messages:
        assert message is not None, "a rank returned as if the checkpoint had been written"
        assert "rank 1:" in message and "psutil is not installed" in message and "rank 0:" not in message, message
    assert not (tmp_path / "ckpt" / "latest").exists()
