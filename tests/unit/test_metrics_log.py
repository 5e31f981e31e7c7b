"""The metrics log on resume: rows after the checkpoint's step leave metrics.jsonl atomically,
TensorBoard purges them, and Weights & Biases (offline mode, read back from its own files)
continues the same run without a step twice."""

from __future__ import annotations

import json

import pytest

from policy_split_megatron.config import load_run_config
from policy_split_megatron.trainer.metrics_log import MetricsLog, read_metrics


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / MetricsLog.FILE).read_text().splitlines()]


def _tensorboard_scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _wandb_records(path):
    """The records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log records in
    32 KiB blocks (checksum 4 bytes, length 2, type 1: full, first, middle, last)."""
    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def _wandb_history(run_dir):
    """(step, metrics) of every history row in the offline W&B files, in the order written."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for data in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.append((items.get("_step"), {k: v for k, v in items.items() if not k.startswith("_")}))
    return rows


def _killed_run(run_dir, log):
    log.write(0, {"warm_start/final_loss": 1.0}, phase="warm_start")
    log.write(0, {"normal/accuracy": 0.1}, phase="eval")
    for step in range(1, 8):  # steps 1..7 logged; the last checkpoint was step 6
        log.write(step, {"normal/reward": step / 10, "train/grad_norm": 1.0})


def test_resume_drops_later_rows_and_purges_tensorboard(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, tensorboard=True)
    _killed_run(tmp_path, log)
    log._file.flush()  # a SIGKILL here: the file holds steps 1..7, nothing else is closed
    resumed = MetricsLog(tmp_path, enabled=True, tensorboard=True)
    assert resumed.resume_from(6, checkpoint=tmp_path / "checkpoints" / "step_000006") == 1
    assert not list(tmp_path.glob("*.tmp"))
    for step in (7, 8):
        resumed.write(step, {"normal/reward": step, "train/grad_norm": 2.0})
    resumed.close()
    rows = _rows(tmp_path)
    assert [(r["phase"], r["step"]) for r in rows] == \
        [("warm_start", 0), ("eval", 0)] + [("rl", s) for s in range(1, 9)]
    assert [r["normal/reward"] for r in read_metrics(tmp_path)][-2:] == [7.0, 8.0]
    scalars = _tensorboard_scalars(tmp_path, "normal/reward")
    assert [s for s, _ in scalars] == list(range(1, 9))  # step 7 once: the old one was purged
    assert scalars[6] == (7, 7.0)


def test_wandb_offline_logs_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_run_config(None, [f"logging.dir={tmp_path}", "logging.wandb=true", "logging.wandb_mode=offline",
                                    "logging.tensorboard=false", "logging.wandb_name=try"])
    log = MetricsLog.for_run(config, enabled=True)
    _killed_run(tmp_path, log)
    log.close()
    first_id = (tmp_path / MetricsLog.WANDB_ID_FILE).read_text()
    resumed = MetricsLog.for_run(config, enabled=True)
    resumed.resume_from(6)
    for step in (7, 8):
        resumed.write(step, {"normal/reward": step / 10, "train/grad_norm": 2.0})
    resumed.close()
    assert (tmp_path / MetricsLog.WANDB_ID_FILE).read_text() == first_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(first_id in r.name for r in runs)  # one W&B run, resumed
    history = _wandb_history(tmp_path)
    steps = [step for step, _ in history]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps  # no step twice
    by_step = dict(history)
    assert steps == list(range(0, 9))
    assert by_step[0] == {"eval/normal/accuracy": 0.1, "warm_start/final_loss": 1.0}
    assert [by_step[s]["normal/reward"] for s in range(1, 9)] == [s / 10 for s in range(1, 9)]
    assert by_step[7]["train/grad_norm"] == 1.0 and by_step[8]["train/grad_norm"] == 2.0  # 7: the first run's
