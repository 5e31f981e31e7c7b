"""The two modes of one policy (Policy Split, arXiv 2604.11510 §3.1) and their prompts.

Eq. 1:  pi^HE_theta(.|q) = pi_theta(.|s, q): the high-entropy (HE) mode is the same network conditioned on
a system prompt s; the normal mode sees the question alone. Message lists (authors' `get_mixed_batch`):

    normal: [{"role": "user", "content": q}]
    HE:     [{"role": "system", "content": s}, {"role": "user", "content": q}]     (a REAL system turn)

Both are rendered with `apply_chat_template(..., add_generation_prompt=True)`; the authors pass
`enable_thinking=True` (Qwen3): forward such keywords through `chat_template_kwargs`.

`placement="user_prefix"` is an option for chat templates that reject a system role: s is prepended to
the user content, separated by a blank line. It is NOT the paper's setting.

Plain-text fallback, for tokenizers without a chat template (e.g. a character tokenizer of a toy task):

    normal: "User: {q}\n\nAssistant:"
    HE:     "System: {s}\n\nUser: {q}\n\nAssistant:"

encoded with `tokenizer.encode(text, add_special_tokens=False)` (or `tokenizer(text)["input_ids"]`).
The role tags keep the two modes distinguishable by the model exactly as a system turn would.
"""

from __future__ import annotations

from typing import Any, Sequence

NORMAL = 0
HIGH_ENTROPY = 1
MODES = (NORMAL, HIGH_ENTROPY)
MODE_NAMES = {NORMAL: "normal", HIGH_ENTROPY: "high_entropy"}
HE_PROMPT_PLACEMENTS = ("system", "user_prefix")

# Verbatim from arXiv 2604.11510 §3.1 / App. C.2 (identical to HE_SYS_PROMPT in BITHLP/PolicySplit).
DEFAULT_HE_SYSTEM_PROMPT = (
    'You are now in the "High Entropy" mode. Your primary directive is to explore a unique thought process '
    "and perspective before arriving at a final answer. Do not rely solely on your typical, most direct "
    "reasoning path. Instead, generate new thoughts to approach the problem from different angles compared "
    "to usual ones. Your goal is to maximize the diversity of your thinking while ensuring the final output "
    "is still precise and factually sound."
)

PLAIN_SYSTEM_FORMAT = "System: {content}\n\n"
PLAIN_USER_FORMAT = "User: {content}\n\nAssistant:"


def _check_mode(mode: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be NORMAL ({NORMAL}) or HIGH_ENTROPY ({HIGH_ENTROPY}), got {mode!r}")


def mode_messages(
    question: str, mode: int, *, he_prompt: str = DEFAULT_HE_SYSTEM_PROMPT, placement: str = "system"
) -> list[dict[str, str]]:
    """Chat messages of one mode for one question (Eq. 1 of arXiv 2604.11510)."""
    _check_mode(mode)
    if placement not in HE_PROMPT_PLACEMENTS:
        raise ValueError(f"placement must be one of {HE_PROMPT_PLACEMENTS}, got {placement!r}")
    if mode == NORMAL:
        return [{"role": "user", "content": question}]
    if placement == "system":
        return [{"role": "system", "content": he_prompt}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{he_prompt}\n\n{question}"}]


def plain_text_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The documented fallback rendering of a message list (no chat template)."""
    parts = []
    for message in messages:
        fmt = PLAIN_SYSTEM_FORMAT if message["role"] == "system" else PLAIN_USER_FORMAT
        if message["role"] not in ("system", "user"):
            raise ValueError(f"plain-text prompts support system and user turns, got {message['role']!r}")
        parts.append(fmt.format(content=message["content"]))
    return "".join(parts)


def _as_id_list(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise ValueError("expected the token ids of one prompt")
        encoded = encoded[0]
    return [int(t) for t in encoded]


def render_prompt_ids(
    tokenizer: Any,
    question: str,
    mode: int,
    *,
    he_prompt: str = DEFAULT_HE_SYSTEM_PROMPT,
    placement: str = "system",
    use_chat_template: bool | None = None,
    **chat_template_kwargs: Any,
) -> list[int]:
    """Prompt token ids of `question` in `mode`, ready for generation (ends with the generation prompt).

    use_chat_template: None = use it when the tokenizer has one; False = always the plain-text fallback.
    Extra keywords (e.g. enable_thinking=True) go to apply_chat_template.
    """
    messages = mode_messages(question, mode, he_prompt=he_prompt, placement=placement)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        use_chat_template = has_template
    if use_chat_template:
        if not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, **chat_template_kwargs
        )
        return _as_id_list(encoded)
    text = plain_text_prompt(messages)
    if hasattr(tokenizer, "encode"):
        return _as_id_list(tokenizer.encode(text, add_special_tokens=False))
    return _as_id_list(tokenizer(text)["input_ids"])


def render_mode_prompts(tokenizer: Any, question: str, **kwargs: Any) -> dict[int, list[int]]:
    """{NORMAL: ids, HIGH_ENTROPY: ids} for one question (same keywords as render_prompt_ids)."""
    return {mode: render_prompt_ids(tokenizer, question, mode, **kwargs) for mode in MODES}
