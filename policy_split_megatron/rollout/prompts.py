"""Dataset rows -> token ids of both modes, checked before anything reaches the engine.

Rendering is `algorithms.modes.render_prompt_ids` (chat template when the tokenizer has one, the
documented plain-text fallback otherwise): the trainer later scores responses under exactly these
ids, so they are rendered once, here, and never re-tokenised by the engine.

Bad rows never reach vLLM: an empty row or a prompt longer than max_model_len - max_tokens raises
a ValueError naming the row (on_bad_prompt="error") or is dropped and reported as a SkippedPrompt
(on_bad_prompt="skip"), so a batch never fails half-way or waits on a request that cannot run.
"""

from __future__ import annotations

from typing import Any, Sequence

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, MODES, NORMAL, render_prompt_ids
from policy_split_megatron.rollout.config import RolloutConfig
from policy_split_megatron.rollout.types import DualModePrompt, SkippedPrompt


class BadPromptError(ValueError):
    """A dataset row the engine cannot generate for (the message names the row index)."""


def resolve_eos_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's EOS id(s). Without one a response could only end at max_tokens, and the
    trainer could not tell a finished answer from a truncated one: refuse."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id: responses could never stop. "
            "Set tokenizer.eos_token (or use a tokenizer that defines one)"
        )
    return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def resolve_pad_token_id(tokenizer: Any) -> int:
    """The id that right-pads batches: the tokenizer's pad id, else its EOS id (padding is masked
    out everywhere, so any id works; EOS is the usual choice). Neither: a clear error."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has neither pad_token_id nor eos_token_id: "
            "set tokenizer.pad_token (or eos_token) so batches can be padded"
        )
    return int(eos[0] if isinstance(eos, (list, tuple)) else eos)


def _is_empty(row: Any) -> bool:
    return row is None or not isinstance(row, str) or not row.strip()


def check_prompt_lengths(prompt: DualModePrompt, config: RolloutConfig) -> str | None:
    """None when both modes' ids fit, else a message naming the row, mode and lengths."""
    for mode in MODES:
        if config.samples_per_mode(mode) == 0:
            continue
        ids, limit = prompt.ids(mode), config.max_prompt_len(mode)
        if not ids:
            return f"row {prompt.index}: the {MODE_NAMES[mode]} prompt has no tokens"
        if len(ids) > limit:
            return (f"row {prompt.index}: the {MODE_NAMES[mode]} prompt has {len(ids)} tokens, more than "
                    f"max_model_len - max_tokens = {config.max_model_len} - "
                    f"{config.sampling(mode).max_tokens} = {limit}")
    return None


def build_dual_mode_prompts(
    tokenizer: Any,
    questions: Sequence[Any],
    config: RolloutConfig,
    *,
    start_index: int = 0,
) -> tuple[list[DualModePrompt], list[SkippedPrompt]]:
    """Render every row in both modes. Row i gets the global index start_index + i.

    Returns (prompts, skipped); `skipped` is empty unless config.on_bad_prompt == "skip".
    Raises BadPromptError naming the first bad row under "error", and ValueError when the
    tokenizer has no EOS (see resolve_eos_token_ids), before rendering anything.
    """
    resolve_eos_token_ids(tokenizer)
    resolve_pad_token_id(tokenizer)
    prompts: list[DualModePrompt] = []
    skipped: list[SkippedPrompt] = []

    def bad(index: int, reason: str, detail: str) -> None:
        if config.on_bad_prompt == "error":
            raise BadPromptError(f"{detail} (set rollout.on_bad_prompt='skip' to drop such rows)")
        skipped.append(SkippedPrompt(index, reason, detail))

    kwargs = dict(he_prompt=config.he_system_prompt, placement=config.he_prompt_placement,
                  use_chat_template=config.use_chat_template, **config.chat_template_kwargs)
    for offset, question in enumerate(questions):
        index = start_index + offset
        if _is_empty(question):
            bad(index, "empty", f"row {index}: empty prompt ({question!r})")
            continue
        prompt = DualModePrompt(
            index=index,
            normal_ids=tuple(render_prompt_ids(tokenizer, question, NORMAL, **kwargs)),
            explore_ids=tuple(render_prompt_ids(tokenizer, question, HIGH_ENTROPY, **kwargs)),
        )
        problem = check_prompt_lengths(prompt, config)
        if problem is not None:
            bad(index, "too_long" if "tokens, more than" in problem else "empty", problem)
            continue
        prompts.append(prompt)
    return prompts, skipped


def skip_metrics(skipped: Sequence[SkippedPrompt]) -> dict[str, float]:
    """Counts of skipped rows by reason, for the step's metrics."""
    out = {"rollout/skipped_empty": 0.0, "rollout/skipped_too_long": 0.0}
    for s in skipped:
        out[f"rollout/skipped_{s.reason}"] = out.get(f"rollout/skipped_{s.reason}", 0.0) + 1.0
    return out
