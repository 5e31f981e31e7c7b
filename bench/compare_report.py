"""The Markdown report of bench/compare_algorithms.py: per-method means, differences to the reference
with paired-bootstrap 95% intervals, the per-mode gaps, and what the training logs say."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.heldout import PromptTable, load_prompt_tables
from policy_split_megatron.metrics.bootstrap import Interval, paired_difference, paired_ratio_difference

LN2 = math.log(2.0)
# (PromptTable field, column title, scale, digits): accuracy-like values in points (x 100)
METRICS = [("accuracy", "accuracy", 100, 1), ("best_of_k", "best-of-8", 100, 1),
           ("distinct_correct", "distinct correct / prompt", 1, 3), ("entropy", "entropy (bits)", 1, 3)]


def _difference(a: Sequence[PromptTable], b: Sequence[PromptTable], field: str, resamples: int,
                resample_seeds: bool = True) -> Interval:
    for x, y in zip(a, b):
        if not np.array_equal(x.prompts, y.prompts):
            raise ValueError("the two runs of a seed were evaluated on different prompts")
    if field == "entropy":  # token-weighted, in bits: a ratio of sums, as the evaluation computes it
        interval = paired_ratio_difference([x.entropy_rows() for x in a], [y.entropy_rows() for y in b],
                                           resamples=resamples, resample_seeds=resample_seeds)
        return Interval(*(v / LN2 for v in (interval.estimate, interval.low, interval.high)), interval.level)
    return paired_difference([getattr(x, field) for x in a], [getattr(y, field) for y in b], resamples=resamples,
                             resample_seeds=resample_seeds)


def _value(table: PromptTable, field: str) -> float:
    return table.entropy_bits if field == "entropy" else float(getattr(table, field).mean())


def _cell(interval: Interval, scale: float, digits: int) -> str:
    text = interval.format(digits, scale)
    return f"**{text}**" if interval.significant else text


def _train_logs(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("phase") == "rl"]


def _mean_of(rows: list[dict], key: str, last: int | None = None) -> float | None:
    values = [r[key] for r in rows[-last:] if key in r] if last else [r[key] for r in rows if key in r]
    return statistics.mean(values) if values else None


def render_report(out: Path, seeds: Sequence[int], names: Sequence[str], dirs: dict[str, str], *, reference: str,
                  resamples: int, setup: dict, stem: str = "heldout", heldout: str = "held-out") -> str:
    """Markdown tables of the evaluations saved as `<run>/<stem>.json` (+ `.samples.jsonl`); `heldout`
    names that evaluation set in the first line."""
    tables: dict[str, dict[int, dict[str, PromptTable]]] = {n: {} for n in names}
    for name in names:
        for seed in seeds:
            saved = out / f"seed{seed}" / dirs[name] / stem
            if Path(f"{saved}.json").exists():
                tables[name][seed] = load_prompt_tables(saved)
    ref = tables[reference]
    lines = [f"Seeds {list(seeds)}; {setup['steps']} RL steps x {setup['mini_batches']} mini-batches per run; {heldout}: "
             f"{setup['eval_prompts']} prompts x 8 samples per mode. Means over seeds; differences to {reference} "
             f"paired by seed and prompt, 95% interval of a two-level bootstrap ({resamples} replicates); "
             "**bold** = the interval excludes 0. Accuracy and best-of-8 in points.", ""]

    lines += ["| method (seeds) | " + " | ".join(f"normal {t}" for _, t, _, _ in METRICS)
              + " | HE accuracy | HE entropy (bits) |", "|---" * (len(METRICS) + 3) + "|"]
    for name in names:
        runs = list(tables[name].values())
        if not runs:
            continue
        cells = [f"{statistics.mean(_value(r['normal'], f) for r in runs) * s:.{d}f}" for f, _, s, d in METRICS]
        cells += [f"{statistics.mean(_value(r['high_entropy'], 'accuracy') for r in runs) * 100:.1f}",
                  f"{statistics.mean(_value(r['high_entropy'], 'entropy') for r in runs):.3f}"]
        lines.append(f"| {name} ({len(runs)}) | " + " | ".join(cells) + " |")

    lines += ["", f"Normal mode, difference to {reference} [95% interval]:", "",
              "| method | " + " | ".join(f"Δ {t}" for _, t, _, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    significant = []
    for name in names:
        common = [s for s in seeds if s in tables[name] and s in ref]
        if name == reference or not common:
            continue
        cells = []
        for field, title, scale, digits in METRICS:
            interval = _difference([tables[name][s]["normal"] for s in common], [ref[s]["normal"] for s in common],
                                   field, resamples)
            cells.append(_cell(interval, scale, digits))
            if interval.significant:
                significant.append(f"{name}: {title} {interval.format(digits, scale)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Significant differences to " + reference + ": " + ("; ".join(significant) if significant else "none") + "."]

    lines += ["", "Modes: high-entropy minus normal, same model, same prompts [95% interval]; training logs: "
              "inter-mode KL(HE‖normal) on the rollouts, mean of the last 3 steps, and the fraction of HE bonuses "
              "the clamp cut, mean over steps:", "",
              "| model | Δ entropy (bits) | Δ accuracy | Δ distinct correct | KL(HE‖normal), last steps | clamped bonus fraction |",
              "|---|---|---|---|---|---|"]
    for name in names:
        common = sorted(tables[name])
        if not common:
            continue
        he = [tables[name][s]["high_entropy"] for s in common]
        normal = [tables[name][s]["normal"] for s in common]
        logs = [_train_logs(out / f"seed{s}" / dirs[name]) for s in common]
        kl = [v for v in (_mean_of(r, "inter_mode/kl_he_normal", last=3) for r in logs) if v is not None]
        clamp = [v for v in (_mean_of(r, "advantage/he_clamp_frac") for r in logs) if v is not None]
        cells = [_cell(_difference(he, normal, f, resamples), s, d) for f, s, d in
                 (("entropy", 1, 3), ("accuracy", 100, 1), ("distinct_correct", 1, 3))]
        cells += [f"{statistics.mean(kl):.4f}" if kl else "-", f"{statistics.mean(clamp):.2f}" if clamp else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "Training logs, mean over steps and seeds (clip fraction: tokens whose ratio was clipped; |log ratio|: "
              "mean |log pi - log pi_old| of the updated tokens; generation rounds: DAPO dynamic sampling):", "",
              "| method | clip fraction | mean ratio - 1 | KL-Cov \\|log ratio\\| | generation rounds | s per RL step |",
              "|---|---|---|---|---|---|"]
    for name in names:
        logs = [row for s in seeds for row in _train_logs(out / f"seed{s}" / dirs[name])]
        if not logs:
            continue
        step_seconds = [sum(v for k, v in r.items() if k.startswith("time/")) for r in logs]
        values = [_mean_of(logs, "train/pg_clipfrac"), _mean_of(logs, "train/ratio_mean"),
                  _mean_of(logs, "train/ppo_kl_abs"), _mean_of(logs, "dapo/generation_rounds")]
        cells = [f"{values[0]:.4f}" if values[0] is not None else "-",
                 f"{values[1] - 1:+.1e}" if values[1] is not None else "-",
                 f"{values[2]:.4f}" if values[2] is not None else "-",
                 f"{values[3]:.2f}" if values[3] is not None else "-", f"{statistics.mean(step_seconds):.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", f"Where the error of the accuracy differences comes from: half-width of the 95% interval (points) "
              "resampling prompts only (seeds fixed) and seeds only (each seed's mean difference as one row):", "",
              "| method | prompts only | seeds only | both |", "|---|---|---|---|"]
    for name in names:
        common = [s for s in seeds if s in tables[name] and s in ref]
        if name == reference or len(common) < 2:
            continue
        a, b = [tables[name][s]["normal"] for s in common], [ref[s]["normal"] for s in common]
        prompts_only = _difference(a, b, "accuracy", resamples, resample_seeds=False)
        seeds_only = paired_difference([[x.accuracy.mean()] for x in a], [[y.accuracy.mean()] for y in b],
                                       resamples=resamples)
        both = _difference(a, b, "accuracy", resamples)
        widths = [(i.high - i.low) / 2 * 100 for i in (prompts_only, seeds_only, both)]
        lines.append(f"| {name} | " + " | ".join(f"{w:.1f}" for w in widths) + " |")
    return "\n".join(lines)
