"""megatron-core's training engine around the policy: DDP, the (distributed) optimizer, the LR
schedule, the pipeline schedule, packed micro-batches, and the optimizer's checkpoint state.

    config.py           `optimizer` config section -> megatron-core OptimizerConfig / DDP config
    policy.py           PolicyEngine: the stage, DDP, optimizer, scheduler, train_step
    schedule.py         every forward/backward through get_forward_backward_func(); loss plumbing
    packing.py          rows -> packed THD micro-batches (PackedSeqParams) and back
    scoring.py          forward-only per-token log-probs / entropies of whole rows
    collectives.py      the trainer's own collectives (metric sums, last-stage broadcasts)
    optimizer_state.py  the optimizer in distributed checkpoints (+ megatron-core 0.16.1 workarounds)

The trainer composes these; it never calls torch.optim or hand-reduces gradients.
"""

from policy_split_megatron.engine.config import OptimizerConfig
from policy_split_megatron.engine.packing import Pack, dummy_pack, pack_batch, plan_packs
from policy_split_megatron.engine.policy import NonFiniteGradientError, PolicyEngine
from policy_split_megatron.engine.scoring import score_rows

__all__ = ["OptimizerConfig", "Pack", "dummy_pack", "pack_batch", "plan_packs", "NonFiniteGradientError",
           "PolicyEngine", "score_rows"]
