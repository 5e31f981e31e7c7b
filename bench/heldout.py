"""Held-out evaluation of several models of one seed in ONE spawned process, every sample saved; and the
per-prompt numbers the comparison's statistics pair.

Each model gets exactly what `policy-split evaluate MODEL --save-samples` computes with the same
overrides (trainer/evaluate.py, the same request seeds), but the process, the Megatron policy and the
vLLM engine are built once per seed instead of once per model: the models are loaded into the policy
one after the other and synced into the engine (the trainer's own weight sync). On this 2-core
machine that saves ~30 s of start-up per model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SAMPLE_FIELDS = ("prompt", "mode", "sample", "reward", "answer_key", "entropy_nats", "tokens", "finish_reason", "text")


def evaluate_models(overrides: Sequence[str], models: Sequence[tuple[Path, Path]]) -> None:
    """For each (HF folder, output stem): `<stem>.json` (the evaluation's metrics) and
    `<stem>.samples.jsonl` (one row per sample). `overrides`: the run's, which fix the held-out set
    (`train.seed`, `data.countdown*`), the decoding (`evaluation.*`) and the request seeds."""
    from policy_split_megatron.cli import load_cli_config
    from policy_split_megatron.distributed import spawn_local

    if not models:
        return
    config = load_cli_config(None, list(overrides))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, hf_path=str(models[0][0])),
                                 warm_start=dataclasses.replace(config.warm_start, steps=0))
    jobs = [(str(hf), str(stem)) for hf, stem in models]
    spawn_local(_evaluate_rank, 1, config.parallel.layout(), config, jobs, timeout=24 * 3600, quiet=True)


def _evaluate_rank(rank: int, world_size: int, config: Any, jobs: list[tuple[str, str]]) -> None:
    from policy_split_megatron.bridge import SafetensorsSource
    from policy_split_megatron.data import load_prompt_dataset
    from policy_split_megatron.distributed import init_distributed
    from policy_split_megatron.trainer.evaluate import evaluate
    from policy_split_megatron.trainer.session import Session

    init_distributed(config.parallel.layout())
    session = Session.open(config, load_weights=False)
    try:
        records = load_prompt_dataset(session.eval_files, prompt_field=config.data.prompt_field,
                                      answer_field=config.data.answer_field).records[: config.evaluation.max_prompts]
        for hf, stem in jobs:
            session.policy.load_hf_weights(SafetensorsSource(Path(hf)))
            session.engine.sync_weights(session.policy.modules, session.arch)
            rows: list[dict] = []
            result = evaluate(session, records, config.evaluation, sample_rows=rows)
            _write_atomic(Path(f"{stem}.samples.jsonl"),
                          "".join(json.dumps({k: r[k] for k in SAMPLE_FIELDS}) + "\n" for r in rows))
            _write_atomic(Path(f"{stem}.json"), json.dumps({"model": hf, "eval_files": session.eval_files,
                                                             "result": result}, indent=1))
    finally:
        session.close()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclasses.dataclass
class PromptTable:
    """Per prompt of one mode of one run, rows in prompt order: accuracy over its k samples, best-of-k
    (any correct), distinct correct answers (by the verifier's answer key), entropy nats summed over
    its responses' tokens, and those tokens."""

    prompts: np.ndarray
    accuracy: np.ndarray
    best_of_k: np.ndarray
    distinct_correct: np.ndarray
    entropy_nats: np.ndarray
    tokens: np.ndarray

    def entropy_rows(self) -> np.ndarray:
        """[prompts, 2] (nats, tokens): the numerator and denominator of the token-mean entropy."""
        return np.stack([self.entropy_nats, self.tokens], axis=1)

    @property
    def entropy_bits(self) -> float:
        return float(self.entropy_nats.sum() / self.tokens.sum() / math.log(2.0))


def prompt_table(rows: Sequence[dict], mode: str) -> PromptTable:
    """The PromptTable of `mode` ("normal" | "high_entropy") from saved sample rows. A sample is correct
    when its reward is > 0 (trainer/evaluate.py)."""
    by_prompt: dict[int, list[dict]] = {}
    for row in rows:
        if row["mode"] == mode:
            by_prompt.setdefault(int(row["prompt"]), []).append(row)
    if not by_prompt:
        raise ValueError(f"no samples of mode {mode!r}")
    prompts = sorted(by_prompt)
    columns: dict[str, list[float]] = {k: [] for k in ("accuracy", "best_of_k", "distinct_correct", "entropy_nats", "tokens")}
    for p in prompts:
        group = by_prompt[p]
        correct = [r["reward"] > 0 for r in group]
        keys = {r["answer_key"] if r["answer_key"] is not None else r["text"].strip()
                for r, ok in zip(group, correct) if ok}
        columns["accuracy"].append(sum(correct) / len(group))
        columns["best_of_k"].append(float(any(correct)))
        columns["distinct_correct"].append(float(len(keys)))
        columns["entropy_nats"].append(sum(r["entropy_nats"] for r in group))
        columns["tokens"].append(float(sum(r["tokens"] for r in group)))
    return PromptTable(np.array(prompts), **{k: np.array(v) for k, v in columns.items()})


def load_prompt_tables(stem: Path) -> dict[str, PromptTable]:
    """Both modes' PromptTables of one evaluated model (`<stem>.samples.jsonl`), checked against the
    accuracy its evaluation reported (`<stem>.json`)."""
    rows = [json.loads(line) for line in Path(f"{stem}.samples.jsonl").read_text().splitlines()]
    result = json.loads(Path(f"{stem}.json").read_text())["result"]
    tables = {mode: prompt_table(rows, mode) for mode in ("normal", "high_entropy")}
    for mode, table in tables.items():
        if not math.isclose(float(table.accuracy.mean()), result[f"{mode}/accuracy"], abs_tol=1e-9):
            raise ValueError(f"{stem}: per-prompt {mode} accuracy {table.accuracy.mean()} differs from the "
                             f"evaluation's {result[f'{mode}/accuracy']}")
        if not math.isclose(table.entropy_bits, result[f"{mode}/entropy_bits"], rel_tol=1e-9):
            raise ValueError(f"{stem}: per-prompt {mode} entropy {table.entropy_bits} differs from the "
                             f"evaluation's {result[f'{mode}/entropy_bits']}")
    return tables
