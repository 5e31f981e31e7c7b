"""Metrics of every step as JSONL (one object per line, for scripts and the plot command), as
TensorBoard scalars and, optionally, on Weights & Biases. Only the main rank writes.

A run resumed from the checkpoint of step S already logged the steps after S before it was killed:
`resume_from(S)` drops them from metrics.jsonl (rewritten atomically: a temporary file, fsync,
rename), purges them from TensorBoard (a writer with purge_step = S + 1) and resumes the same W&B
run (its id is kept in the run directory), so every step appears once.

W&B (`logging.wandb=true`, `pip install .[wandb]`): project/entity/name/mode from the logging
section; `mode=offline` writes under <run dir>/wandb for `wandb sync` later. RL metrics are logged
under their names, the other phases under "<phase>/<name>" (eval/normal/accuracy), all at the RL
step. W&B refuses steps below the ones it has, so after a resume the steps it already holds are
not sent again (the last step metrics.jsonl held tells which: in offline mode W&B cannot know);
they are the same numbers, as resuming is bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any


class MetricsLog:
    FILE = "metrics.jsonl"
    WANDB_ID_FILE = "wandb_run_id"

    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool = True,
                 wandb: dict[str, Any] | None = None, run_config: dict[str, Any] | None = None):
        """`wandb`: None (off) or {"project", "entity", "name", "mode"} (empty strings: W&B's own
        defaults); `run_config` is shown in W&B's config panel."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._file = None
        self._tb = None
        self._tensorboard = tensorboard
        self._wandb_settings, self._run_config = wandb, run_config or {}
        self._wandb = None
        self._wandb_first_step = 0  # steps below it are already in the (resumed) W&B run
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / self.FILE, "a", buffering=1)
        if tensorboard:
            self._tb = self._tensorboard_writer(purge_step=None)

    @classmethod
    def for_run(cls, config, *, enabled: bool) -> "MetricsLog":
        """The log of a RunConfig: its run directory, TensorBoard and W&B settings."""
        logging = config.logging
        wandb = None
        if logging.wandb:
            wandb = {"project": logging.wandb_project, "entity": logging.wandb_entity,
                     "name": logging.wandb_name or Path(logging.dir).name, "mode": logging.wandb_mode}
        return cls(logging.dir, enabled=enabled, tensorboard=logging.tensorboard, wandb=wandb,
                   run_config=config.to_dict())

    def _tensorboard_writer(self, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def _wandb_run(self):
        """The W&B run, started at the first write: the same id for the whole life of the run
        directory, so a resumed training continues its W&B run."""
        if self._wandb is None and self._wandb_settings is not None:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("logging.wandb=true needs Weights & Biases: pip install '.[wandb]' "
                                  "(or pip install wandb)") from err
            os.environ.setdefault("WANDB_SILENT", "true")
            id_file = self.run_dir / self.WANDB_ID_FILE
            if not id_file.exists():
                id_file.write_text(uuid.uuid4().hex[:16])
            settings = self._wandb_settings
            self._wandb = wandb.init(
                project=settings["project"] or None, entity=settings["entity"] or None, name=settings["name"],
                mode=settings["mode"] or None, dir=str(self.run_dir), id=id_file.read_text().strip(),
                resume="allow", config=self._run_config,
            )
            self._wandb_first_step = max(self._wandb_first_step, int(self._wandb.step or 0))
            where = self._wandb.url or f"offline, in {self.run_dir / 'wandb'} (`wandb sync` to upload)"
            print(f"W&B run {self._wandb.id}: {where}", file=sys.stderr)
        return self._wandb

    def resume_from(self, step: int, checkpoint: str | Path | None = None) -> int:
        """Forget what was logged after `step` (the resumed checkpoint's); returns the rows dropped
        from metrics.jsonl. The caller resumes at step + 1."""
        if not self.enabled:
            return 0
        self._file.close()
        path = self.run_dir / self.FILE
        kept, dropped, last = [], 0, -1
        for line in path.read_text().splitlines():
            row_step = json.loads(line).get("step", 0) if line.strip() else -1
            last = max(last, row_step)
            if row_step > step:
                dropped += 1
            else:
                kept.append(line + "\n")
        partial = path.with_name(path.name + ".tmp")
        with open(partial, "w") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)  # atomic: a kill leaves the old file or the new one
        self._file = open(path, "a", buffering=1)
        if self._tb is not None:
            self._tb.close()
            self._tb = self._tensorboard_writer(purge_step=step + 1)
        # Every sink got what metrics.jsonl got: W&B holds the steps up to `last` already (offline,
        # W&B itself cannot know it).
        self._wandb_first_step = max(self._wandb_first_step, last + 1)
        source = f" from {checkpoint}" if checkpoint is not None else ""
        print(f"resumed{source} at step {step}: {dropped} logged row(s) after step {step} dropped", file=sys.stderr)
        return dropped

    def write(self, step: int, metrics: dict[str, Any], *, phase: str = "rl") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self._file.write(json.dumps({"phase": phase, "step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)
        run = self._wandb_run()
        if run is not None:
            if step < self._wandb_first_step:
                return  # the resumed W&B run holds this step already (and refuses it again)
            run.log({k if phase == "rl" or k.startswith(f"{phase}/") else f"{phase}/{k}": v
                     for k, v in clean.items()}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | Path, phase: str = "rl") -> list[dict[str, Any]]:
    """The logged rows of `phase`; a resumed run's repeated steps keep their last value."""
    rows: dict[int, dict[str, Any]] = {}
    for line in (Path(run_dir) / MetricsLog.FILE).read_text().splitlines():
        row = json.loads(line)
        if row.get("phase") == phase:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
