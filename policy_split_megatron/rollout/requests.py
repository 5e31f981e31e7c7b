"""Dual-mode requests for vLLM and the conversion of its outputs into `Sample`s.

One request per (prompt, mode) with `n` = that mode's sample count: vLLM shares the prompt's
prefill across the n samples. Prompts go in as token ids (`{"prompt_token_ids": ...}`), so the
engine never re-tokenises what `rollout.prompts` rendered.

Seeds: a request's seed is a hash of (mode's base seed, step, GLOBAL prompt index, mode); vLLM
gives its k-th sample seed + k. Samples therefore depend neither on how prompts are sharded over
replicas nor on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policy_split_megatron.algorithms.modes import MODES
from policy_split_megatron.rollout.config import RolloutConfig, SamplingConfig
from policy_split_megatron.rollout.types import DualModePrompt, Sample

_MASK64 = (1 << 64) - 1
_SEED_SPACE = (1 << 31) - (1 << 16)  # leaves room for vLLM's per-sample seed + k


def request_seed(base: int | None, step: int, prompt_index: int, mode: int) -> int | None:
    """Deterministic, well-spread seed of one request (splitmix64 of the key); None if unseeded."""
    if base is None:
        return None
    x = 0
    for part in (base, step, prompt_index, mode):
        x = (x + (part & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x % _SEED_SPACE


def sampling_params(sampling: SamplingConfig, n: int, seed: int | None, eos_token_ids: Sequence[int]) -> Any:
    """vLLM SamplingParams of one mode; log-probs of the sampled tokens are always requested."""
    from vllm import SamplingParams

    stop_ids = list(dict.fromkeys([*eos_token_ids, *sampling.stop_token_ids]))
    return SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=max(sampling.top_k, 0),
        max_tokens=sampling.max_tokens,
        stop_token_ids=stop_ids,
        stop=list(sampling.stop) or None,
        seed=seed,
        logprobs=0,  # the sampled token's log-prob only
        detokenize=bool(sampling.stop),  # stop strings are matched on text; nothing else needs it
    )


def build_requests(
    prompts: Sequence[DualModePrompt], config: RolloutConfig, eos_token_ids: Sequence[int], step: int
) -> tuple[list[dict], list[Any], list[tuple[DualModePrompt, int]]]:
    """(vLLM prompts, their SamplingParams, the (prompt, mode) of each request)."""
    inputs, params, keys = [], [], []
    for prompt in prompts:
        for mode in MODES:
            n = config.samples_per_mode(mode)
            if n == 0:
                continue
            sampling = config.sampling(mode)
            inputs.append({"prompt_token_ids": list(prompt.ids(mode))})
            params.append(sampling_params(sampling, n, request_seed(sampling.seed, step, prompt.index, mode),
                                          eos_token_ids))
            keys.append((prompt, mode))
    return inputs, params, keys


def samples_from_outputs(outputs: Sequence[Any], keys: Sequence[tuple[DualModePrompt, int]]) -> list[Sample]:
    """Samples from vLLM RequestOutputs (same order as the requests)."""
    if len(outputs) != len(keys):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(keys)} requests")
    samples = []
    for (prompt, mode), out in zip(keys, outputs):
        for k, completion in enumerate(sorted(out.outputs, key=lambda c: c.index)):
            ids = tuple(int(t) for t in completion.token_ids)
            if completion.logprobs is None or len(completion.logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned no per-token log-probs for prompt {prompt.index}")
            logprobs = tuple(float(step_lp[t].logprob) for t, step_lp in zip(ids, completion.logprobs))
            samples.append(Sample(
                prompt_index=prompt.index, mode=mode, sample_index=k, prompt_ids=prompt.ids(mode),
                response_ids=ids, logprobs=logprobs, finish_reason=str(completion.finish_reason),
            ))
    return samples


def prompt_logprobs_from_output(output: Any, ids: Sequence[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1..len(ids)-1 from a request run with prompt_logprobs=0
    (vLLM's list has None for the first token, then {token: Logprob} holding the actual token)."""
    entries = output.prompt_logprobs
    if entries is None or len(entries) != len(ids):
        raise RuntimeError("vLLM returned no prompt log-probs (was prompt_logprobs set?)")
    return [float(entry[t].logprob) for t, entry in zip(ids[1:], entries[1:])]
