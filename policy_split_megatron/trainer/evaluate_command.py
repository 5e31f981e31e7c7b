"""`policy-split evaluate PATH [--benchmark [NAME=]FILE ...] [--compare PATH_B]`: both modes of a
Hugging Face folder or a training checkpoint on the held-out set or on several benchmarks (the
suite: trainer/eval_suite.py), with the evaluation section's decoding (paper: T=0.6, top-p 0.95,
top-k 20, n samples per prompt and mode).

An HF folder is loaded as the model. A checkpoint (a `step_N` directory or a `checkpoints/` root
with `latest`) is loaded into a policy built from the HF metadata it carries (config.json and
tokenizer, saved with every checkpoint) or, for older checkpoints, from `model.hf_path`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from policy_split_megatron.config import RunConfig


def resolve_evaluation_source(path: str | Path, config: RunConfig) -> tuple[Path, Path | None]:
    """(HF folder with config.json + tokenizer, checkpoint directory or None). Clear errors before
    anything is built."""
    from policy_split_megatron.bridge.checkpoint_convert import resolve_checkpoint
    from policy_split_megatron.trainer.checkpoint import HF_METADATA_DIR, CheckpointError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give an HF model folder, a step_N checkpoint or a checkpoints/ root")
    if (path / "config.json").exists():
        return path, None
    try:
        checkpoint = resolve_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{path} is neither an HF folder (no config.json) nor a complete checkpoint: {err}") from err
    metadata = checkpoint / HF_METADATA_DIR
    if (metadata / "config.json").exists():
        return metadata, checkpoint
    if config.model.hf_path:
        return Path(config.model.hf_path), checkpoint
    raise CheckpointError(f"{checkpoint} carries no {HF_METADATA_DIR}/config.json: pass model.hf_path=<the HF folder "
                          "the run started from> so the architecture and tokenizer are known")


def _evaluate_rank(rank: int, world_size: int, config: RunConfig, checkpoint: str | None, benchmarks: list,
                   sample_file: str | None) -> dict[str, dict[str, float]]:
    from policy_split_megatron.distributed import init_distributed
    from policy_split_megatron.trainer.checkpoint import load_checkpoint
    from policy_split_megatron.trainer.eval_suite import evaluate_benchmarks
    from policy_split_megatron.trainer.session import Session

    init_distributed(config.parallel.layout())
    session = Session.open(config, load_weights=checkpoint is None)
    try:
        if checkpoint is not None:
            load_checkpoint(checkpoint, session.policy.modules, None)
        session.engine.sync_weights(session.policy.modules, session.arch)
        results = evaluate_benchmarks(session, benchmarks, config, sample_file)
        results[_EVAL_FILES] = list(session.eval_files)  # type: ignore[assignment]
        return results
    finally:
        session.close()


_EVAL_FILES = "__eval_files__"  # the held-out files a rank resolved (for the default benchmark's report)


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _evaluate_model(config: RunConfig, source: tuple[Path, Path | None], benchmarks: list, nproc: int | None,
                    sample_file: str | None) -> dict:
    """One model's results on every benchmark: in this process's launched ranks (torchrun/srun),
    else in freshly spawned local ranks."""
    from policy_split_megatron.distributed import spawn_local
    from policy_split_megatron.trainer.launch import check_launch

    hf_dir, checkpoint = source
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, hf_path=str(hf_dir)),
                                 warm_start=dataclasses.replace(config.warm_start, steps=0))
    ckpt = str(checkpoint) if checkpoint else None
    if check_launch(config.parallel.tensor_parallel, config.parallel.pipeline_parallel) is not None:
        return _evaluate_rank(_rank(), 1, config, ckpt, benchmarks, sample_file)
    layout = config.parallel.layout()
    world = nproc or layout.tensor_parallel * layout.pipeline_parallel
    layout.data_parallel(world)
    return spawn_local(_evaluate_rank, world, layout, config, ckpt, benchmarks, sample_file, timeout=24 * 3600,
                       quiet=True)[0]


def run_evaluate_command(config: RunConfig, path: str, *, output: str | None = None, nproc: int | None = None,
                         benchmarks: Sequence[str] = (), compare: str | None = None, plot: str | None = None,
                         save_samples: bool = False) -> dict:
    """Evaluate `path` (and `compare`, when given) on every benchmark; print the table and write the
    JSON report (`output`), the pass@k PNG (`plot`, default: next to `output`) and, with
    `save_samples`, every sample to `<output stem>.samples-<model>.jsonl`. Returns the report."""
    from policy_split_megatron.trainer.eval_suite import build_report, format_report, resolve_benchmarks
    from policy_split_megatron.trainer.plot import plot_pass_at_k

    if save_samples and not output:
        raise ValueError("--save-samples writes next to the report: give --output FILE.json too")
    suite = resolve_benchmarks(benchmarks, config)  # files and verifiers checked before any model is built
    models = {"A": path, **({"B": compare} if compare else {})}
    sources = {label: resolve_evaluation_source(p, config) for label, p in models.items()}
    results = {}
    for label, source in sources.items():
        sample_file = str(Path(output).with_name(f"{Path(output).stem}.samples-{label}.jsonl")) if save_samples else None
        results[label] = _evaluate_model(config, source, suite, nproc, sample_file)
    eval_files = results["A"].pop(_EVAL_FILES, [])
    for result in results.values():
        result.pop(_EVAL_FILES, None)
    report = build_report(config, models, suite, results, eval_files)
    if _rank() != 0:
        return report  # launched ranks: rank 0 reports
    print(format_report(report))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2))
        print(f"wrote {output}")
    png = plot or (str(Path(output).with_suffix(".png")) if output else None)
    if png:
        print(f"wrote {plot_pass_at_k(report, png)}")
    return report
