"""User mistakes found inside the spawned ranks (a bad dataset row, a checkpoint of another model)
still end `policy-split` with ONE line and exit status 2, through the real entry point: the rank's
error crosses spawn_local as RankUserError. No traceback reaches the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "policy_split_megatron.cli"]


def _policy_split(*args: str) -> tuple[int, str]:
    done = subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stderr


def _the_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("policy-split: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_bad_dataset_row_in_a_rank(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "1 2 3 -> 6", "answer": "6"}) + "\n" + json.dumps({"prompt": "2 3 -> 5"}) + "\n")
    status, stderr = _policy_split("train", f"data.train_files={data}", f"data.eval_files={data}",
                                   f"logging.dir={tmp_path / 'run'}", "train.steps=1")
    assert status == 2, stderr
    assert _the_error_line(stderr) == (f"policy-split: error: {data}: line 2: missing field 'answer' "
                                       "(fields present: ['prompt'])")


def test_checkpoint_of_another_model(tmp_path):
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    first, other = write_tiny_model(tmp_path / "a"), write_tiny_model(tmp_path / "b", intermediate_size=256)
    run = tmp_path / "run"
    status, stderr = _policy_split("convert", "from-hf", str(first), str(run / "checkpoints"), "--no-progress")
    assert status == 0, stderr
    status, stderr = _policy_split("train", f"model.hf_path={other}", f"logging.dir={run}", "train.steps=1",
                                   "data.prompts_per_step=2")
    assert status == 2, stderr
    line = _the_error_line(stderr)
    assert "step_000000 does not match this model" in line and "decoder.layers.mlp.linear_fc1.weight" in line
    # torch.distributed.checkpoint's FutureWarning on loading went to the run directory, not the console
    assert "FutureWarning" not in stderr and "load_state_dict" not in stderr, stderr
    assert "Invalid -W option" not in stderr and "NUMA binding" not in stderr, stderr
    assert "FutureWarning" in (run / "warnings.log").read_text()
