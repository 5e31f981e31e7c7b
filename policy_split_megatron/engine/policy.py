"""The Megatron policy as megatron-core trains it: DDP, the (distributed) optimizer, the LR schedule.

`PolicyEngine` owns this rank's model stage and everything megatron-core needs to train it:

- the `GPTModel` stage (`model/builder.py`), one chunk per virtual pipeline stage, with
  `calculate_per_token_loss=True` (losses are normalised by global token/sequence counts:
  `engine/schedule.py`);
- megatron-core's `DistributedDataParallel` around it: contiguous fp32 gradient buffers, the
  gradient reduce-scatter/all-reduce, the TP sum of QK-norm gradients and the tied-embedding
  gradient sum over pipeline stages (`finalize_model_grads`);
- the optimizer from `get_megatron_optimizer`: Adam, fp32 main parameters behind bf16/fp16 weights,
  optionally sharded over data-parallel ranks (the distributed optimizer), gradient clipping by the
  global norm; and `OptimizerParamScheduler` for warm-up and decay.

`train_step` is one optimizer step: zero the gradient buffers, run the packed micro-batches through
megatron-core's schedule, then step. A non-finite gradient norm (the same number on every rank: it
is all-reduced over the model-parallel and data-parallel groups) skips the update and raises
`NonFiniteGradientError` on every rank, so nothing reaches a checkpoint; with fp16, an overflow
is megatron-core's usual skipped step with a lower loss scale.

Frozen scorers (the reference policy, ERPD teachers) are `PolicyEngine(..., trainable=False)`: the
same stage and schedule without DDP or optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from megatron.core import parallel_state

from policy_split_megatron.cpu_shims import megatron_on_cpu
from policy_split_megatron.engine.config import OptimizerConfig, megatron_ddp_config, megatron_optimizer_config
from policy_split_megatron.engine.packing import Pack
from policy_split_megatron.engine.schedule import LossFn, run_schedule
from policy_split_megatron.model import ModelArchitecture, build_policy_model
from policy_split_megatron.model.precision import PrecisionConfig, fp8_sequence_alignment


class NonFiniteGradientError(FloatingPointError):
    """The global gradient norm was NaN or Inf: the step was not applied (on every rank)."""


class PolicyEngine:
    def __init__(
        self,
        arch: ModelArchitecture,
        *,
        params_dtype: torch.dtype = torch.float32,
        precision: PrecisionConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        trainable: bool = True,
        temperature: float = 1.0,
        logprob_chunk_size: int | None = 1024,
        **model_overrides,
    ):
        """Build this rank's stage. `temperature` and `logprob_chunk_size` are those of every
        log-prob this engine computes (the rollout temperature). `model_overrides` go to
        TransformerConfig (e.g. recompute_granularity)."""
        self.arch, self.params_dtype, self.precision = arch, params_dtype, precision
        self.model_overrides = dict(model_overrides)
        self.optimizer_config = optimizer or OptimizerConfig()
        self.optimizer_config.check_device(torch.cuda.is_available())
        self.temperature, self.logprob_chunk_size = temperature, logprob_chunk_size
        vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
        # one chunk per virtual pipeline stage (interleaved schedule), else one stage
        self.modules: list[torch.nn.Module] = [
            build_policy_model(arch, params_dtype=params_dtype, precision=precision, vp_stage=vp_stage,
                               calculate_per_token_loss=True, **model_overrides)
            for vp_stage in (range(vpp) if vpp else [None])]
        module = self.modules[0]
        self.model: list[torch.nn.Module] = self.modules  # what the schedule runs (DDP-wrapped below)
        self.trainable = trainable
        self.optimizer = None
        self.scheduler = None
        config = module.config
        self.alignment = fp8_sequence_alignment(getattr(config, "fp8", None), getattr(config, "fp8_recipe", None))
        self.device = next(module.parameters()).device
        if trainable:
            from megatron.core.distributed import DistributedDataParallel, finalize_model_grads

            with megatron_on_cpu():
                # as Megatron-LM does: only the first chunk buckets its gradients for overlap
                self.model = [DistributedDataParallel(config=m.config, ddp_config=megatron_ddp_config(
                    self.optimizer_config), module=m, disable_bucketing=i > 0) for i, m in enumerate(self.modules)]
            for m in self.modules:  # the schedule reads the first chunk's config; keep them alike
                m.config.no_sync_func = (self.model[0].no_sync if len(self.model) == 1
                                         else [ddp.no_sync for ddp in self.model])
                m.config.finalize_model_grads_func = finalize_model_grads
        else:
            for m in self.modules:
                m.requires_grad_(False)
                m.eval()

    # -- weights ---------------------------------------------------------------------------------

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped stage, without virtual pipeline stages (the bridge, the checkpoints and the
        weight sync take `modules`, which works in both cases)."""
        if len(self.modules) != 1:
            raise RuntimeError("this engine has virtual pipeline chunks: use engine.modules")
        return self.modules[0]

    def load_hf_weights(self, source: Mapping[str, torch.Tensor]) -> None:
        from policy_split_megatron.bridge import load_hf_weights

        for module in self.modules:
            load_hf_weights(module, self.arch, source)
        self.weights_changed()

    def weights_changed(self) -> None:
        """The model parameters were written from outside (HF weights, a model-only checkpoint):
        the optimizer's fp32 main parameters copy them again."""
        if self.optimizer is not None:
            with megatron_on_cpu():
                self.optimizer.reload_model_params()

    # -- optimizer -------------------------------------------------------------------------------

    def build_optimizer(self, *, total_steps: int, lr: float | None = None, lr_warmup_steps: int | None = None,
                        lr_decay_style: str | None = None, min_lr: float | None = None) -> None:
        """(Re)build the optimizer and its LR schedule; fresh Adam state, main params copied from the
        current weights. The keyword arguments override `optimizer.*` (the warm start has its own)."""
        if not self.trainable:
            raise RuntimeError("a frozen PolicyEngine has no optimizer")
        from megatron.core.optimizer import get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        cfg = self.optimizer_config
        self.optimizer = self.scheduler = None  # release the previous one's state first
        peak = cfg.lr if lr is None else lr
        final = cfg.min_lr if min_lr is None else min_lr
        with megatron_on_cpu():
            optimizer = get_megatron_optimizer(
                megatron_optimizer_config(cfg, self.params_dtype, lr=peak, min_lr=final), self.model)
        warmup = cfg.lr_warmup_steps if lr_warmup_steps is None else lr_warmup_steps
        decay_steps = cfg.lr_decay_steps or total_steps
        self.scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=peak, min_lr=final,
            lr_warmup_steps=warmup, lr_decay_steps=max(decay_steps, warmup + 1, 1),
            lr_decay_style=cfg.lr_decay_style if lr_decay_style is None else lr_decay_style,
            start_wd=cfg.weight_decay, end_wd=cfg.weight_decay, wd_incr_steps=max(total_steps, 1),
            wd_incr_style="constant",
        )
        self.optimizer = optimizer

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else float("nan")

    # -- forward / backward ----------------------------------------------------------------------

    def run(self, packs: Sequence[Pack], loss_fn: LossFn, *, forward_only: bool,
            temperature: float | None = None) -> list[dict]:
        """Packs (already on `self.device`) through megatron-core's schedule; the last stage's reports.
        `temperature`: of the log-probs the loss sees (default: the engine's, the rollout's)."""
        kwargs = dict(temperature=self.temperature if temperature is None else temperature,
                      chunk_size=self.logprob_chunk_size, vocab_size=self.arch.vocab_size, alignment=self.alignment)
        if forward_only:
            with torch.no_grad():
                return run_schedule(self.model, packs, loss_fn, forward_only=True, **kwargs)
        return run_schedule(self.model, packs, loss_fn, forward_only=False, **kwargs)

    def train_step(self, packs: Sequence[Pack], loss_fn: LossFn, *, step_index: int,
                   temperature: float | None = None) -> tuple[float, list[dict]]:
        """One optimizer step on these packs: (global grad norm before clipping, last-stage reports)."""
        if self.optimizer is None:
            raise RuntimeError("call build_optimizer() before train_step()")
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self.run(packs, loss_fn, forward_only=False, temperature=temperature)
        return self._step(step_index), reports

    @torch.no_grad()
    def _step(self, step_index: int) -> float:
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        optimizer = self.optimizer
        with megatron_on_cpu():
            if optimizer.prepare_grads():  # fp16 overflow: megatron-core lowered the loss scale
                return float("nan")
            norm = optimizer.get_grad_norm()
            if not math.isfinite(norm):
                optimizer.zero_grad()
                for chunk in self.model:
                    chunk.zero_grad_buffer()
                raise NonFiniteGradientError(
                    f"step {step_index}: the global gradient norm is {norm}; the update was skipped on every rank "
                    "and no checkpoint is written from this state")
            if self.optimizer_config.grad_clip > 0:
                # ChainedOptimizer.step()'s clipping, with the norm we already have (megatron-core 0.16.1)
                for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
                    params = inner.get_parameters()
                    if params:
                        clip_grad_by_total_norm_fp32(params, self.optimizer_config.grad_clip, norm,
                                                     inner.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
            optimizer.step_with_ready_grads()
        self.scheduler.step(increment=1)
        return norm
