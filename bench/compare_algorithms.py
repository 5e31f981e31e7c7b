"""Policy Split against GRPO, the entropy baselines and the peers' algorithm menu on the embedded
default, paired by seed, with 95% confidence intervals of every difference to GRPO. Not a test: it
trains 13 models per seed and prints Markdown tables for the README.

    nice -n 15 .venv/bin/python bench/compare_algorithms.py [--seeds 0 1 2 3 4] [--steps 12] [--workers 2]

Design (README, "Policy Split against the baselines"):
- Per seed s, one warm start (`run train.steps=0 train.seed=s data.seed=s`, exported to HF) is shared
  by every method; `train.seed` also varies the model's initialisation, the generated Countdown sets
  and the engine's request seeds, `data.seed` the prompt order. Every method then makes the same RL
  steps, prompts per step and responses per prompt (Policy Split: 4 normal + 4 HE; the baselines: 8
  normal) with `train.mini_batches` optimizer steps per rollout batch (default 4), so clip ratios
  and KL-Cov's |log pi - log pi_old| penalty act (with one update per batch pi = pi_old at the update).
- Held-out evaluation (the paper's decoding: T=0.6, top-p 0.95, top-k 20, 8 samples per prompt and
  mode) of every model of a seed on the same prompts with the same request seeds, every sample saved
  (bench/heldout.py). By default all 155 problems of the embedded default's held-out split.
- `--wide-eval N` adds a second, larger held-out set from the same family: N problems of the held-out
  hash split with at least ONE correct answer (the training set keeps its >= 2), all 1,258 of them at
  most. It exists because the >= 2 split has only 155 problems. Its tables go to `table_wide.md`.
- Differences to GRPO: paired two-level bootstrap over seeds, then prompts within seed
  (policy_split_megatron/metrics/bootstrap.py); significant = the 95% interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_report import render_report  # noqa: E402
from bench.heldout import evaluate_models  # noqa: E402

CLI = [sys.executable, "-m", "policy_split_megatron.cli"]
BASELINE = ["rollout.n_normal=8", "rollout.n_explore=0"]
MAX_TOKENS = 24  # the embedded default's rollout max_tokens (Dr. GRPO's L, DAPO's L_max)

# name -> (run directory, overrides). The tiny task's mini-batches hold ~250 response tokens: the
# covariance methods' paper ratios (2e-4 of tokens) would select none, so they get 0.02.
METHODS: dict[str, tuple[str, list[str]]] = {
    "GRPO": ("grpo", ["algorithm.name=grpo", *BASELINE]),
    "Policy Split (paper: eta 0.03, kappa 2)": ("policy_split", []),
    "Policy Split + DAPO dynamic sampling": ("ps_dynamic_sampling", ["algorithm.dapo.dynamic_sampling=true"]),
    "Policy Split, kappa 0, eta 0.03": ("ps_kappa0_eta0.03", ["algorithm.policy_split.kappa=0",
                                                               "algorithm.policy_split.eta=0.03"]),
    "Policy Split, kappa 0, eta 0.3": ("ps_kappa0_eta0.3", ["algorithm.policy_split.kappa=0",
                                                             "algorithm.policy_split.eta=0.3"]),
    "entropy_reg (annealed 0.003 -> 0)": ("entropy_reg", [
        "algorithm.name=entropy_reg", *BASELINE, "algorithm.entropy_reg.coef.kind=linear",
        "algorithm.entropy_reg.coef.initial=0.003", "algorithm.entropy_reg.coef.final=0.0",
        "algorithm.entropy_reg.coef.total_steps={steps}"]),
    "Clip-Cov (ratio 0.02)": ("clip_cov", ["algorithm.name=clip_cov", *BASELINE, "algorithm.clip_cov.ratio=0.02"]),
    "KL-Cov (ratio 0.02, beta 1 -> 0)": ("kl_cov", [
        "algorithm.name=kl_cov", *BASELINE, "algorithm.kl_cov.ratio=0.02", "algorithm.kl_cov.beta.kind=linear",
        "algorithm.kl_cov.beta.initial=1.0", "algorithm.kl_cov.beta.final=0.0",
        "algorithm.kl_cov.beta.total_steps={steps}"]),
    # DAPO §3: clip-higher (0.2 / 0.28), dynamic sampling, token-level loss (token-mean, the default) and
    # the soft overlong punishment with DAPO's L_cache / L_max = 4096 / 20480, scaled to L_max = 24
    "DAPO": ("dapo", ["algorithm.name=grpo", *BASELINE, "algorithm.ppo.clip_eps_high=0.28",
                      "algorithm.dapo.dynamic_sampling=true", f"algorithm.dapo.overlong_buffer={round(MAX_TOKENS * 0.2)}"]),
    "Dr. GRPO": ("dr_grpo", ["algorithm.name=grpo", *BASELINE, "algorithm.advantage.normalize_by_std=false",
                             "algorithm.loss_agg_mode=seq-mean-token-sum-norm", f"algorithm.loss_norm_length={MAX_TOKENS}"]),
    "GSPO": ("gspo", ["algorithm.name=grpo", *BASELINE, "algorithm.ppo.ratio_level=sequence",
                      "algorithm.ppo.clip_eps_low=0.0003", "algorithm.ppo.clip_eps_high=0.0004",
                      "algorithm.loss_agg_mode=seq-mean-token-mean"]),
    "RLOO": ("rloo", ["algorithm.name=grpo", *BASELINE, "algorithm.advantage.estimator=rloo",
                      "algorithm.advantage.normalize_by_std=false"]),
}
WARM = "warm_start"
WIDE = "heldout_wide"  # the wide held-out set's output stem in every run directory


def _cli(args: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        code = subprocess.call(CLI + args, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {code}; see {log}")


class Jobs:
    """Jobs with dependencies on `workers` threads, ready jobs in the order they were added; each job's
    wall time goes to <out>/jobs.jsonl."""

    def __init__(self, out: Path):
        self.jobs: list[tuple[str, list[str], object]] = []
        self.log = out / "jobs.jsonl"
        self.lock = threading.Lock()

    def add(self, name: str, deps: list[str], fn) -> None:
        self.jobs.append((name, deps, fn))

    def _timed(self, name: str, fn) -> None:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        with self.lock, open(self.log, "a") as handle:
            handle.write(json.dumps({"job": name, "seconds": round(seconds, 1), "end": time.time()}) + "\n")
        print(f"  {seconds:6.0f} s  {name}", flush=True)

    def run(self, workers: int) -> None:
        done: set[str] = set()
        pending = list(self.jobs)
        running = {}
        with ThreadPoolExecutor(workers) as pool:
            while pending or running:
                for job in [j for j in pending if all(d in done for d in j[1])][: workers - len(running)]:
                    pending.remove(job)
                    running[pool.submit(self._timed, job[0], job[2])] = job[0]
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    future.result()  # a failed job stops the comparison (the running ones finish first)
                    done.add(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=12, help="RL steps per run (embedded default: 40)")
    parser.add_argument("--mini-batches", type=int, default=4, help="optimizer steps per rollout batch")
    parser.add_argument("--eval-prompts", type=int, default=155,
                        help="held-out problems (155 = the whole held-out split of the embedded default's family)")
    parser.add_argument("--wide-eval", type=int, default=0,
                        help="also evaluate every model on this many held-out problems with >= 1 answer (0: off)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workers", type=int, default=2,
                        help="runs at a time (~2 GB each). Each run's rank takes cpu_count threads: on 2 cores two "
                             "evaluations side by side took 10x longer per model than one alone; use 1 for --wide-eval")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap replicates")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--table-only", action="store_true", help="only tabulate what has finished")
    parser.add_argument("overrides", nargs="*", help="extra section.field=value for every run")
    args = parser.parse_args()
    if "GRPO" not in args.methods:
        parser.error("GRPO is the reference of every difference: keep it in --methods")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = [f"data.countdown_eval_size={args.eval_prompts}", f"evaluation.max_prompts={args.eval_prompts}"]
    if not args.table_only:
        jobs = Jobs(out)
        for seed in args.seeds:
            _add_seed(jobs, out / f"seed{seed}", seed, args, data)
        jobs.run(args.workers)
    names, dirs = [WARM, *args.methods], {WARM: WARM, **{m: METHODS[m][0] for m in args.methods}}
    setup = {"steps": args.steps, "mini_batches": args.mini_batches, "eval_prompts": args.eval_prompts}
    report = render_report(out, args.seeds, names, dirs, reference="GRPO", resamples=args.resamples, setup=setup)
    (out / "table.md").write_text(report + "\n")
    print(report)
    if args.wide_eval:
        wide = render_report(out, args.seeds, names, dirs, reference="GRPO", resamples=args.resamples,
                             setup={**setup, "eval_prompts": args.wide_eval}, stem=WIDE,
                             heldout="held-out problems with >= 1 answer (the wide set)")
        (out / "table_wide.md").write_text(wide + "\n")
        print("\n" + wide)


def _add_seed(jobs: Jobs, folder: Path, seed: int, args, data: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # the held-out set and request seeds follow train.seed; the runs' own evaluations are kept tiny
    # (their samples are not saved): the comparison's evaluation is the seed's evaluation job
    common = [f"train.seed={seed}", f"data.seed={seed}", *data, *args.overrides]
    quiet_eval = ["evaluation.max_prompts=1", "checkpoint.every_steps=0"]
    warm = folder / WARM

    def warm_start() -> None:
        if not (warm / "hf" / "config.json").exists():
            warm.mkdir(exist_ok=True)
            _cli(["run", f"logging.dir={warm}", "train.steps=0", *common, *quiet_eval], warm / "log.txt")

    jobs.add(f"seed{seed}/{WARM}", [], warm_start)
    for name in args.methods:
        run_dir = folder / METHODS[name][0]
        overrides = [o.format(steps=args.steps) for o in METHODS[name][1]]

        def train(run_dir=run_dir, overrides=overrides) -> None:
            if not (run_dir / "hf" / "config.json").exists():
                run_dir.mkdir(exist_ok=True)
                # after the shared overrides: no override may give an RL run a warm start of its own
                _cli(["run", f"logging.dir={run_dir}", f"model.hf_path={warm / 'hf'}", f"train.steps={args.steps}",
                      f"train.mini_batches={args.mini_batches}", *common, *quiet_eval, *overrides, "warm_start.steps=0"],
                     run_dir / "log.txt")

        jobs.add(f"seed{seed}/{run_dir.name}", [f"seed{seed}/{WARM}"], train)

    run_dirs = [WARM, *(METHODS[m][0] for m in args.methods)]

    def evaluation(stem: str, data_dir: str, overrides: list[str]):
        """Every model of the seed not yet evaluated under `stem`, in one process (bench/heldout.py)."""
        def evaluate() -> None:
            todo = [(folder / d / "hf", folder / d / stem) for d in run_dirs
                    if not (folder / d / f"{stem}.json").exists()]
            evaluate_models([f"logging.dir={folder / data_dir}", *common, *overrides], todo)
        return evaluate

    trained = [f"seed{seed}/{d}" for d in run_dirs]
    jobs.add(f"seed{seed}/evaluate", trained, evaluation("heldout", "heldout_data", []))
    if args.wide_eval:
        # after `common`: these replace its held-out size; the same train.seed keeps the request seeds
        wide = ["data.countdown.min_solutions=1", f"data.countdown_eval_size={args.wide_eval}",
                f"evaluation.max_prompts={args.wide_eval}"]
        jobs.add(f"seed{seed}/evaluate_wide", trained, evaluation(WIDE, "heldout_wide_data", wide))


if __name__ == "__main__":
    main()
