"""Metrics of every step as JSONL (one object per line, for scripts and the plot command) and as
TensorBoard scalars. Only the main rank writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    FILE = "metrics.jsonl"

    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / self.FILE, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], *, phase: str = "rl") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self._file.write(json.dumps({"phase": phase, "step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path, phase: str = "rl") -> list[dict[str, Any]]:
    """The logged rows of `phase`; a resumed run's repeated steps keep their last value."""
    rows: dict[int, dict[str, Any]] = {}
    for line in (Path(run_dir) / MetricsLog.FILE).read_text().splitlines():
        row = json.loads(line)
        if row.get("phase") == phase:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
