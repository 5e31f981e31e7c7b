"""Policy Split against GRPO and the entropy baselines on the embedded default, same budget, several
seeds. Not a test: it trains (minutes per run) and prints a Markdown table for the README.

    .venv/bin/python bench/compare_algorithms.py --seeds 0 1 2 [--steps 40] [--out runs/compare]

Per seed, one warm start is shared by every algorithm (`train.steps=0` run, exported to HF), so the
algorithms differ only in the RL phase. Same budget: the same RL steps, prompts per step and
responses per prompt (Policy Split: 4 normal + 4 high-entropy; the baselines: 8 normal). The
held-out evaluation is the paper's (T=0.6, top-p 0.95, top-k 20, k=8 per prompt). Reported: mean and
standard deviation over seeds of normal-mode accuracy and best-of-k, distinct correct answers per
prompt, and token entropy; for Policy Split also the high-entropy mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
CLI = [str(ROOT / ".venv/bin/policy-split")]

# The tiny task's batches hold ~1,000 response tokens: the covariance methods' paper ratios
# (2e-4 of tokens) would select none, so they get ratios that select a few tokens per step.
ALGORITHMS = {
    "policy_split": [],
    "grpo": ["algorithm.name=grpo", "rollout.n_normal=8", "rollout.n_explore=0"],
    "entropy_reg (annealed)": ["algorithm.name=entropy_reg", "rollout.n_normal=8", "rollout.n_explore=0",
                               "algorithm.entropy_reg.coef.kind=linear", "algorithm.entropy_reg.coef.initial=0.003",
                               "algorithm.entropy_reg.coef.final=0.0", "algorithm.entropy_reg.coef.total_steps={steps}"],
    "clip_cov": ["algorithm.name=clip_cov", "rollout.n_normal=8", "rollout.n_explore=0",
                 "algorithm.clip_cov.ratio=0.02"],
    "kl_cov (annealed beta)": ["algorithm.name=kl_cov", "rollout.n_normal=8", "rollout.n_explore=0",
                               "algorithm.kl_cov.ratio=0.02", "algorithm.kl_cov.beta.kind=linear",
                               "algorithm.kl_cov.beta.initial=1.0", "algorithm.kl_cov.beta.final=0.0",
                               "algorithm.kl_cov.beta.total_steps={steps}"],
}
COLUMNS = [("normal/accuracy", "normal acc"), ("normal/best_of_n", "normal best-of-8"),
           ("normal/distinct_correct", "normal distinct correct"), ("normal/entropy_bits", "normal entropy (bits)"),
           ("high_entropy/accuracy", "HE acc"), ("high_entropy/distinct_correct", "HE distinct correct")]


def _run(args: list[str], log: Path) -> None:
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(CLI + args, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        sys.exit(f"{' '.join(args)} failed with exit code {code}; see {log}")
    print(f"  {time.perf_counter() - start:6.0f} s  {log.parent.name}", flush=True)


def _final_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "eval"][-1]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the embedded default's)")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--table-only", action="store_true", help="only tabulate the runs already finished")
    parser.add_argument("overrides", nargs="*", help="extra section.field=value for every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    from policy_split_megatron.embedded_default import EMBEDDED_DEFAULT

    rl_steps = args.steps or EMBEDDED_DEFAULT["train"]["steps"]
    results: dict[str, list[dict]] = {name: [] for name in ["warm start", *args.algorithms]}
    for seed in args.seeds:
        common = [f"train.seed={seed}", f"data.seed={seed}", *args.overrides]
        warm = out / f"warm_seed{seed}"
        if args.table_only and not (warm / "hf" / "config.json").exists():
            continue
        if not (warm / "hf" / "config.json").exists():
            warm.mkdir(parents=True, exist_ok=True)
            _run(["run", f"logging.dir={warm}", "train.steps=0", *common], warm / "log.txt")
        results["warm start"].append(_final_eval(warm))
        for name in args.algorithms:
            run_dir = out / f"{name.split()[0]}_seed{seed}"
            if args.table_only and not (run_dir / "hf" / "config.json").exists():
                continue
            if not (run_dir / "hf" / "config.json").exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                algorithm = [a.format(steps=rl_steps) for a in ALGORITHMS[name]]
                _run(["run", f"logging.dir={run_dir}", f"model.hf_path={warm / 'hf'}", "warm_start.steps=0",
                      f"train.steps={rl_steps}", *common, *algorithm], run_dir / "log.txt")
            results[name].append(_final_eval(run_dir))
    header = "| run | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [f"seeds {args.seeds}; mean ± std over the seeds that finished (n per row)", "", header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, evals in results.items():
        cells = [_cell([e[key] for e in evals if key in e]) for key, _ in COLUMNS]
        lines.append(f"| {name} (n={len(evals)}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
