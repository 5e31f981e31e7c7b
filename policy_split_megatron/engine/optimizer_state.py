"""The optimizer's state in megatron-core distributed checkpoints, and three workarounds.

The state is saved with the distributed optimizer's `fully_reshardable` sharding: fp32 main
parameters and Adam moments in the model's own parameter space, so a checkpoint saved at one
(TP, PP, DP) layout loads at another. (megatron-core 0.16.1's default, `fully_sharded_model_space`,
fails at save with "ShardedTensor.flattened_range is not supported".) The non-distributed
optimizer's state uses megatron-core's regular sharded state dict.

Without Transformer Engine or Apex (every CPU machine), megatron-core 0.16.1 falls back to
`torch.optim.AdamW`, and its distributed optimizer then needs three fixes to resume (each has a
test in tests/distributed/test_engine_checkpoint.py that fails without it):

1. `DistributedOptimizer.state_dict()` asserts that all parameters share one AdamW `step`
   (`assert len(steps) == 1`), which fails on a fresh optimizer whose state is still empty, i.e.
   exactly when a checkpoint's load template is built (or a save comes before the first step):
   `materialize_adam_state` fills each parameter's state (step 0, zero moments) first.
2. `_set_main_param_and_optimizer_states` copies every key of the destination state, including
   `step`, which the checkpoint's tensors do not carry (KeyError), and copies in place into main
   parameters that require grad outside `no_grad`: `_copy_saved_keys` copies only the keys the
   checkpoint has, under `no_grad`.
3. `DistributedOptimizer.load_state_dict` gives every parameter the SAME `step` tensor; AdamW
   increments it once per parameter per step, so the bias correction of a resumed run is wrong:
   `_untie_steps` gives each parameter its own copy.

With TE's or Apex's fused Adam (GPU clusters) the state has no per-parameter `step` and none of
the three applies; the functions below leave such optimizers alone.
"""

from __future__ import annotations

import types

import torch

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _torch_adam(inner) -> torch.optim.Optimizer | None:
    base = getattr(inner, "optimizer", None)
    return base if isinstance(base, (torch.optim.Adam, torch.optim.AdamW)) else None


def _is_distributed(inner) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return isinstance(inner, DistributedOptimizer)


def materialize_adam_state(optimizer) -> None:
    """Workaround 1: give every parameter of a torch Adam(W) its state (step 0, zero moments)."""
    for inner in _inner_optimizers(optimizer):
        adam = _torch_adam(inner)
        if adam is None:
            continue
        for group in adam.param_groups:
            for param in group["params"]:
                state = adam.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def _copy_saved_keys(self, model_param, tensors) -> None:
    """Workaround 2 (replaces DistributedOptimizer._set_main_param_and_optimizer_states for torch
    AdamW without the precision-aware optimizer): copy only the keys the checkpoint holds."""
    group_index, group_order = self.model_param_group_index_map[model_param]
    main_param = self.optimizer.param_groups[group_index]["params"][group_order]
    destination = {"param": main_param, **self.optimizer.state[main_param]}
    with torch.no_grad():
        for key, value in tensors.items():
            if key in destination:
                destination[key].copy_(value)


def _install_copy_saved_keys(optimizer) -> None:
    """Workaround 2, installed on the instances for the duration of one load."""
    for inner in _inner_optimizers(optimizer):
        if _is_distributed(inner) and _torch_adam(inner) is not None \
                and not inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            inner._set_main_param_and_optimizer_states = types.MethodType(_copy_saved_keys, inner)


def _untie_steps(optimizer) -> None:
    """Workaround 3: one `step` tensor per parameter."""
    for inner in _inner_optimizers(optimizer):
        adam = _torch_adam(inner)
        if adam is None:
            continue
        for state in adam.state.values():
            if "step" in state:
                state["step"] = state["step"].detach().clone()


def optimizer_sharded_state_dict(optimizer, model_sharded_state_dict: dict, *, is_loading: bool) -> dict:
    """The optimizer's sharded state dict for saving or (with `is_loading`) as a load template."""
    from policy_split_megatron.cpu_shims import megatron_on_cpu

    materialize_adam_state(optimizer)  # a load template, or a save before the first step
    with megatron_on_cpu():
        return optimizer.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading, metadata=dict(SHARDING))


def load_optimizer_state(optimizer, loaded: dict) -> None:
    """Load what `dist_checkpointing.load` returned for `optimizer_sharded_state_dict(..., is_loading=True)`."""
    from policy_split_megatron.cpu_shims import megatron_on_cpu

    _install_copy_saved_keys(optimizer)
    try:
        with megatron_on_cpu():
            optimizer.load_state_dict(loaded)
    finally:
        for inner in _inner_optimizers(optimizer):
            inner.__dict__.pop("_set_main_param_and_optimizer_states", None)
    _untie_steps(optimizer)
