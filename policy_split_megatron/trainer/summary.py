"""The closing summary of a run, read back from its metrics file: held-out accuracy before and after
RL per mode, the diversity gap between the modes, and the inter-mode KL at the start and the end
(the three things the embedded default is meant to show)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policy_split_megatron.trainer.metrics_log import MetricsLog, read_metrics


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def run_summary(config, last_metrics: dict[str, Any]) -> str:
    run_dir = Path(config.logging.dir)
    lines = [f"done: {config.algorithm.name}, {config.train.steps} RL steps, run directory {run_dir}"]
    if not (run_dir / MetricsLog.FILE).exists():
        return lines[0]
    evals = read_metrics(run_dir, phase="eval")
    steps = read_metrics(run_dir)
    if evals:
        before, after = evals[0], evals[-1]
        for mode in ("normal", "high_entropy"):
            key = f"{mode}/accuracy"
            if key in before:
                lines.append(
                    f"  {mode:<13} held-out accuracy {_fmt(before.get(key))} -> {_fmt(after.get(key))}"
                    f"  (best-of-k {_fmt(after.get(f'{mode}/best_of_n'))}, distinct correct/prompt "
                    f"{_fmt(after.get(f'{mode}/distinct_correct'), '.2f')}, entropy "
                    f"{_fmt(after.get(f'{mode}/entropy_bits'))} bits)"
                )
    if steps:
        window = max(1, len(steps) // 5)
        first, last = steps[:window], steps[-window:]
        for key in ("inter_mode/kl_normal_he", "inter_mode/kl_he_normal"):
            if any(key in r for r in steps):
                lines.append(f"  {key:<26} first {window} steps {_fmt(_mean(first, key), '.4f')} -> "
                             f"last {window} steps {_fmt(_mean(last, key), '.4f')}")
    hf = run_dir / "hf"
    if (hf / "config.json").exists():
        lines.append(f"  Hugging Face export: {hf}")
    return "\n".join(lines)
