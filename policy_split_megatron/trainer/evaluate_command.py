"""`policy-split evaluate PATH`: both modes of a Hugging Face folder or a training checkpoint on the
held-out set, with the evaluation section's decoding (paper: T=0.6, top-p 0.95, top-k 20, k samples).

An HF folder is loaded as the model. A checkpoint (a `step_N` directory or a `checkpoints/` root
with `latest`) is loaded into a policy built from the HF metadata it carries (config.json and
tokenizer, saved with every checkpoint) or, for older checkpoints, from `model.hf_path`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

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


def _evaluate_rank(rank: int, world_size: int, config: RunConfig, checkpoint: str | None) -> dict[str, Any]:
    from policy_split_megatron.data import load_prompt_dataset
    from policy_split_megatron.distributed import ParallelLayout, init_distributed
    from policy_split_megatron.trainer.checkpoint import load_checkpoint
    from policy_split_megatron.trainer.evaluate import evaluate
    from policy_split_megatron.trainer.session import Session

    init_distributed(ParallelLayout(config.parallel.tensor_parallel, config.parallel.pipeline_parallel))
    session = Session.open(config, load_weights=checkpoint is None)
    try:
        if checkpoint is not None:
            load_checkpoint(checkpoint, session.policy.module, None)
        session.engine.sync_weights(session.policy.module, session.arch)
        records = load_prompt_dataset(session.eval_files, prompt_field=config.data.prompt_field,
                                      answer_field=config.data.answer_field).records[: config.evaluation.max_prompts]
        result = evaluate(session, records, config.evaluation)
        result["prompts"] = float(len(records))
        return result
    finally:
        session.close()


def run_evaluate_command(config: RunConfig, path: str, *, output: str | None = None, nproc: int | None = None) -> dict:
    from policy_split_megatron.distributed import ParallelLayout, spawn_local
    from policy_split_megatron.trainer.evaluate import format_table

    hf_dir, checkpoint = resolve_evaluation_source(path, config)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, hf_path=str(hf_dir)),
                                 warm_start=dataclasses.replace(config.warm_start, steps=0))
    ckpt = str(checkpoint) if checkpoint else None
    from policy_split_megatron.trainer.launch import check_launch

    if check_launch(config.parallel.tensor_parallel, config.parallel.pipeline_parallel) is not None:
        result = _evaluate_rank(int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))), 1, config, ckpt)
    else:
        layout = ParallelLayout(config.parallel.tensor_parallel, config.parallel.pipeline_parallel)
        world = nproc or layout.tensor_parallel * layout.pipeline_parallel
        layout.data_parallel(world)
        result = spawn_local(_evaluate_rank, world, layout, config, ckpt, timeout=24 * 3600, quiet=True)[0]
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) != 0:
        return result  # launched ranks: rank 0 reports
    ev = config.evaluation
    print(f"{path}: {int(result['prompts'])} held-out prompts x {ev.samples_per_prompt} samples per mode "
          f"(T={ev.temperature}, top-p {ev.top_p}, top-k {ev.top_k})\n{format_table(result)}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({"path": str(path), "evaluation": dataclasses.asdict(ev), **result}, indent=2))
        print(f"wrote {output}")
    return result
