"""Frozen models the trainer scores rollouts with besides the policy: the reference and ERPD teachers.

* **Reference** (`algorithm.ppo.kl_coef > 0`; ERPD stage 2's base): the policy as it is when RL starts,
  i.e. AFTER the warm start. A fresh run writes those weights once to `<run>/reference/` (a Hugging Face
  folder, `write_hf_folder`, at `model.params_dtype`, so the reference equals the policy exactly at step 1)
  and loads them into a second Megatron model; a resumed run loads the same folder again, so the
  reference never changes over a run's life. A resumed run whose folder is missing is refused (the
  post-warm-start weights cannot be recovered from a later checkpoint).
* **Teachers** (`algorithm.erpd.teachers`, ERPD stage 2): Hugging Face model folders whose architecture
  must be the policy's (`check_teacher_folders`, run at start-up before anything expensive).

Both are frozen `PolicyEngine`s (the policy's stage and pipeline schedule, no DDP, no optimizer,
`requires_grad=False`), loaded with `load_hf_weights` and only ever run forward-only
(`engine.score_rows`, the same packing as the old log-probs).
"""

from __future__ import annotations

from pathlib import Path

from policy_split_megatron.algorithms import requirements
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.engine import PolicyEngine
from policy_split_megatron.model import ModelArchitecture

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


def load_frozen_model(folder: str | Path, policy: PolicyEngine) -> PolicyEngine:
    """A frozen engine of the policy's architecture, layout, precision and scoring temperature, with
    the weights of the HF folder `folder`."""
    from policy_split_megatron.bridge import SafetensorsSource

    frozen = PolicyEngine(policy.arch, params_dtype=policy.params_dtype, precision=policy.precision,
                          trainable=False, temperature=policy.temperature,
                          logprob_chunk_size=policy.logprob_chunk_size)
    frozen.load_hf_weights(SafetensorsSource(folder))
    return frozen


def prepare_reference(session, config, *, fresh: bool, show_progress: bool = False) -> PolicyEngine:
    """Collective. `fresh`: this run has just finished its warm start (or has none) and writes the
    reference from the current policy; otherwise (resume) the folder must already exist."""
    import torch.distributed as dist

    from policy_split_megatron.bridge.hf_folder import write_hf_folder

    folder = Path(config.logging.dir) / REFERENCE_DIR
    if fresh:  # a new run (no checkpoint): an older folder of a previous run in this directory is replaced
        write_hf_folder(session.policy.modules, session.arch, folder, metadata_dir=session.model_dir,
                        dtype=config.model.params_dtype, show_progress=show_progress)
    elif not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} is missing: this run resumes from a checkpoint but its reference policy (the weights "
            "at the start of RL, written there by the first run) is gone; restore it or start a new run")
    if dist.is_initialized():
        dist.barrier()
    return load_frozen_model(folder, session.policy)


def load_teachers(session, config) -> list[PolicyEngine]:
    return [load_frozen_model(t, session.policy) for t in config.algorithm.erpd.teachers]
