"""Frozen models the trainer scores rollouts with besides the policy: the reference and ERPD teachers.

* **Reference** (`algorithm.ppo.kl_coef > 0`; ERPD stage 2's base): the policy as it is when RL starts,
  i.e. AFTER the warm start. A fresh run writes those weights once to `<run>/reference/` (a Hugging Face
  folder, `write_hf_folder`, at `model.params_dtype`, so the reference equals the policy exactly at step 1)
  and loads them into a second Megatron model; a resumed run loads the same folder again, so the
  reference never changes over a run's life. A resumed run whose folder is missing is refused (the
  post-warm-start weights cannot be recovered from a later checkpoint).
* **Teachers** (`algorithm.erpd.teachers`, ERPD stage 2): Hugging Face model folders whose architecture
  must be the policy's (`check_teacher_folders`, run at start-up before anything expensive).

Both are built with `build_policy_model` (same parallel layout as the policy), loaded with
`load_hf_weights`, put in eval mode with `requires_grad=False`, and only ever run under `no_grad`
(`batched_token_logprobs`, the same micro-batching as the old log-probs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from policy_split_megatron.algorithms import requirements
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.model import ModelArchitecture, build_policy_model

REFERENCE_DIR = "reference"


def needs_reference(cfg: AlgorithmConfig) -> bool:
    """The reference-KL term, or ERPD stage 2 (the frozen base is pi_old of every stage-2 step)."""
    return requirements(cfg).ref_log_probs or (cfg.name == "erpd" and cfg.erpd.stage == 2)


def check_teacher_folders(folders, arch: ModelArchitecture) -> None:
    """Refuse a teacher folder that is not a HF model folder of the policy's architecture."""
    from policy_split_megatron.bridge.hf_folder import HFFolderError, check_config_matches, read_config

    for folder in folders:
        try:
            check_config_matches(read_config(folder), arch, Path(folder) / "config.json")
        except HFFolderError as err:
            raise ValueError(f"algorithm.erpd.teachers: teacher {folder} cannot be used: it must be a Hugging Face "
                             f"model folder of the policy's architecture ({err})") from None


def load_frozen_model(folder: str | Path, arch: ModelArchitecture, *, params_dtype: torch.dtype,
                      precision=None) -> torch.nn.Module:
    """A Megatron model of `arch` with the weights of the HF folder `folder`, frozen."""
    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights

    model = build_policy_model(arch, params_dtype=params_dtype, precision=precision)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def prepare_reference(session, config, *, fresh: bool, show_progress: bool = False) -> torch.nn.Module:
    """Collective. `fresh`: this run has just finished its warm start (or has none) and writes the
    reference from the current policy; otherwise (resume) the folder must already exist."""
    import torch.distributed as dist

    from policy_split_megatron.bridge.hf_folder import write_hf_folder
    from policy_split_megatron.trainer.session import DTYPES

    folder = Path(config.logging.dir) / REFERENCE_DIR
    if fresh:  # a new run (no checkpoint): an older folder of a previous run in this directory is replaced
        write_hf_folder(session.model, session.arch, folder, metadata_dir=session.model_dir,
                        dtype=config.model.params_dtype, show_progress=show_progress)
    elif not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} is missing: this run resumes from a checkpoint but its reference policy (the weights "
            "at the start of RL, written there by the first run) is gone; restore it or start a new run")
    if dist.is_initialized():
        dist.barrier()
    return load_frozen_model(folder, session.arch, params_dtype=DTYPES[config.model.params_dtype],
                             precision=config.model.precision)


def load_teachers(session, config) -> list[torch.nn.Module]:
    from policy_split_megatron.trainer.session import DTYPES

    return [load_frozen_model(t, session.arch, params_dtype=DTYPES[config.model.params_dtype],
                              precision=config.model.precision) for t in config.algorithm.erpd.teachers]
