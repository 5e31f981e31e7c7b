"""The evaluation suite of `policy-split evaluate`: several benchmarks in one call, each a prompt
file scored by its own verifier, for one model or two side by side.

A benchmark is `[NAME=]FILE` (a file `prepare-data` wrote, or any prompt file; NAME defaults to
the file's stem). Its verifier is the `reward` its records carry in their metadata (prepare-data
writes it: math for MATH-500/AIME, multiple_choice for GPQA/MMLU-Pro), else `data.reward`. With no
benchmark, the run's held-out set (data.eval_files, or the embedded Countdown set) is the one
benchmark "eval". Every file and verifier is checked before any model is built.

The report (JSON) is

    {"evaluation": {<the evaluation section>}, "models": {"A": PATH, "B": PATH_B},
     "benchmarks": {NAME: {"files": [...], "reward": "math",
                           "results": {"A": {"normal/avg@8": ..., "high_entropy/pass@1": ..., ...}}}}}

with the metrics of trainer/evaluate.py; `format_report` prints its table and
`trainer/plot.plot_pass_at_k` draws its pass@k curves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL
from policy_split_megatron.config import RunConfig
from policy_split_megatron.data import DatasetError, load_prompt_dataset

DEFAULT_BENCHMARK = "eval"
TABLE_METRICS = ("avg@", "pass@", "maj@", "entropy_bits", "response_length")


@dataclass(frozen=True)
class Benchmark:
    name: str
    files: tuple[str, ...]  # empty: the session's held-out files (data.eval_files or the embedded set)
    reward: str


def parse_benchmark(spec: str) -> tuple[str, str]:
    """"NAME=PATH" or "PATH" (named after the file's stem) -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec).stem if Path(spec).suffix else Path(spec).name
    if not name or not path:
        raise DatasetError(f"--benchmark {spec!r}: expected [NAME=]FILE")
    return name, path


def resolve_benchmarks(specs: Sequence[str], config: RunConfig) -> list[Benchmark]:
    """The benchmarks of `specs`, their files read and their verifiers loaded (errors before any work)."""
    from policy_split_megatron.rewards import load_reward_fn

    if not specs:
        return [Benchmark(DEFAULT_BENCHMARK, (), config.data.reward)]
    benchmarks: list[Benchmark] = []
    for spec in specs:
        name, path = parse_benchmark(spec)
        if any(b.name == name for b in benchmarks):
            raise DatasetError(f"two benchmarks are named {name!r}: name them with --benchmark NAME=FILE")
        dataset = load_prompt_dataset(path, prompt_field=config.data.prompt_field, answer_field=config.data.answer_field)
        rewards = {(r["metadata"] or {}).get("reward") for r in dataset.records}
        if len(rewards) > 1:
            raise DatasetError(f"{path}: its records name different verifiers {sorted(map(str, rewards))} in "
                               "metadata.reward: split it into one file per verifier")
        reward = rewards.pop() or config.data.reward
        load_reward_fn(reward)  # a bad name fails here, not after the model is built
        benchmarks.append(Benchmark(name, tuple(dataset.paths), reward))
    return benchmarks


def evaluate_benchmarks(session: Any, benchmarks: Sequence[Benchmark], config: RunConfig,
                        sample_file: str | None = None) -> dict[str, dict[str, float]]:
    """Each benchmark's metrics (trainer/evaluate.py) on `session`'s model, every rank alike. With
    `sample_file`, rank 0 writes every sample (benchmark, mode, prompt, text, reward, ...) as JSONL."""
    import torch.distributed as dist

    from policy_split_megatron.data import write_jsonl
    from policy_split_megatron.rewards import load_reward_fn
    from policy_split_megatron.trainer.evaluate import evaluate

    results: dict[str, dict[str, float]] = {}
    all_rows: list[dict] = []
    for bench in benchmarks:
        files = list(bench.files) or list(session.eval_files)
        records = load_prompt_dataset(files, prompt_field=config.data.prompt_field,
                                      answer_field=config.data.answer_field).records[: config.evaluation.max_prompts]
        reward = None if bench.reward == config.data.reward else load_reward_fn(bench.reward)
        rows: list[dict] | None = [] if sample_file else None
        results[bench.name] = evaluate(session, records, config.evaluation, reward=reward, sample_rows=rows)
        all_rows += [{"benchmark": bench.name, **row} for row in rows or []]
    if sample_file and dist.get_rank() == 0:
        write_jsonl(sample_file, all_rows)
    return results


def build_report(config: RunConfig, models: dict[str, str], benchmarks: Sequence[Benchmark],
                 results: dict[str, dict[str, dict[str, float]]], eval_files: Sequence[str] = ()) -> dict:
    """The JSON report (module docstring) from each model's `evaluate_benchmarks` result."""
    return {
        "evaluation": dataclasses.asdict(config.evaluation),
        "models": dict(models),
        "benchmarks": {
            b.name: {"files": list(b.files or eval_files), "reward": b.reward,
                     "results": {label: results[label][b.name] for label in models}}
            for b in benchmarks
        },
    }


def _table_metrics(flat: dict[str, float]) -> list[str]:
    from policy_split_megatron.trainer.evaluate import metric_order

    names = {k.split("/", 1)[1] for k in flat if "/" in k}
    return sorted((m for m in names if m.startswith(TABLE_METRICS)), key=metric_order)


def format_report(report: dict) -> str:
    """One table per benchmark: the metrics of both modes of each model side by side."""
    models = report["models"]
    modes = [MODE_NAMES[NORMAL], MODE_NAMES[HIGH_ENTROPY]]
    ev = report["evaluation"]
    lines = [f"decoding: T={ev['temperature']}, top-p {ev['top_p']}, top-k {ev['top_k']}; "
             f"{ev['samples_per_prompt']} samples per prompt and mode"]
    if len(models) > 1:
        lines += [f"  {label} = {path}" for label, path in models.items()]
    columns = [(label, mode) for label in models for mode in modes]
    header = [mode if len(models) == 1 else f"{label} {mode}" for label, mode in columns]
    width = max(14, *(len(h) + 2 for h in header))
    for name, bench in report["benchmarks"].items():
        results = bench["results"]
        counts = {label: int(r.get("prompts", 0)) for label, r in results.items()}
        prompts = (str(next(iter(counts.values()))) if len(set(counts.values())) == 1
                   else ", ".join(f"{label} {count}" for label, count in counts.items()))
        skipped = max(int(r.get("skipped_prompts", 0)) for r in results.values())
        lines.append(f"\n{name}: verifier {bench['reward']}, {prompts} prompts"
                     + (f" ({skipped} skipped: too long or empty)" if skipped else ""))
        lines.append(f"{'metric':<18}" + "".join(f"{h:>{width}}" for h in header))
        for metric in _table_metrics({k: v for r in results.values() for k, v in r.items()}):
            cells = [results[label].get(f"{mode}/{metric}") for label, mode in columns]
            lines.append(f"{metric:<18}" + "".join(f"{c:>{width}.4f}" if c is not None else f"{'-':>{width}}"
                                                   for c in cells))
    return "\n".join(lines)
