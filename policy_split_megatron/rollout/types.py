"""The data that crosses the rollout engine's boundary: prompts in, samples and metrics out.

Everything is token ids and plain Python numbers (picklable), so samples can be all-gathered over
data-parallel ranks with `all_gather_object` and handed to `algorithms.policy_split.build_quarters`
as they are (`Sample` has the fields `RolloutSample` has: prompt_index, mode, response_ids, reward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL


@dataclass(frozen=True)
class DualModePrompt:
    """One dataset row rendered for both modes. `index` is the row's GLOBAL index in the step's
    prompt list (not its position in a replica's shard): samples and seeds are keyed by it."""

    index: int
    normal_ids: tuple[int, ...]  # the plain prompt (user turn + generation prompt)
    explore_ids: tuple[int, ...]  # the same question with the high-entropy instruction applied

    def ids(self, mode: int) -> tuple[int, ...]:
        return self.normal_ids if mode == NORMAL else self.explore_ids


@dataclass
class Sample:
    """One generated response.

    `logprobs[i]` is the engine's log-prob of `response_ids[i]` (see RolloutConfig.logprobs_mode).
    `finish_reason` is vLLM's: "stop" (EOS or a stop token/string; the EOS/stop token is the last
    response id) or "length" (max_tokens reached)."""

    prompt_index: int
    mode: int  # the mode that GENERATED it: NORMAL (0) or HIGH_ENTROPY (1)
    sample_index: int  # 0..n-1 among the samples of (prompt_index, mode)
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    reward: float | None = None  # filled by the verifiers later (build_quarters reads it)

    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self.mode]


@dataclass(frozen=True)
class SkippedPrompt:
    """A dataset row left out under on_bad_prompt="skip", with the reason (for the metrics)."""

    index: int
    reason: str  # "empty" | "too_long"
    detail: str


@dataclass
class SyncMetrics:
    """One weight sync, Megatron -> engine. `export_seconds` is the time spent producing full HF
    tensors (TP all-gathers, PP broadcasts, layout conversion); the rest of `seconds` is the
    engine's load (copy into its own layout, repacking)."""

    bytes: int = 0
    tensors: int = 0
    buckets: int = 0
    max_bucket_bytes: int = 0
    seconds: float = 0.0
    export_seconds: float = 0.0
    plan_cached: bool = False  # True when the export plan came from the cache (every sync but the first)

    @property
    def gb_per_second(self) -> float:
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"sync/bytes": float(self.bytes), "sync/tensors": float(self.tensors),
                "sync/buckets": float(self.buckets), "sync/max_bucket_bytes": float(self.max_bucket_bytes),
                "sync/seconds": self.seconds, "sync/export_seconds": self.export_seconds}


@dataclass
class GenerationMetrics:
    """One generate() call on one replica."""

    prompts: int = 0
    samples: dict[str, int] = field(default_factory=lambda: {MODE_NAMES[NORMAL]: 0, MODE_NAMES[HIGH_ENTROPY]: 0})
    response_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    finish_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.response_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        out = {"rollout/prompts": float(self.prompts), "rollout/response_tokens": float(self.response_tokens),
               "rollout/prompt_tokens": float(self.prompt_tokens), "rollout/seconds": self.seconds,
               "rollout/tokens_per_second": self.tokens_per_second}
        out.update({f"rollout/samples_{k}": float(v) for k, v in self.samples.items()})
        out.update({f"rollout/finish_{k}": float(v) for k, v in self.finish_reasons.items()})
        return out


@dataclass
class RolloutResult:
    """What generate() returns for this rank's replica: samples ordered by (prompt, mode, sample)."""

    samples: list[Sample]
    metrics: GenerationMetrics
