"""Mode prompts (Eq. 1 of arXiv 2604.11510): messages, chat-template rendering, plain-text fallback."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from policy_split_megatron.algorithms.modes import (
    DEFAULT_HE_SYSTEM_PROMPT,
    HIGH_ENTROPY,
    NORMAL,
    mode_messages,
    render_mode_prompts,
    render_prompt_ids,
)
from policy_split_megatron.algorithms.policy_split import RolloutSample, build_quarters

# Qwen3-like template: system/user turns, generation prompt, and an enable_thinking switch.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
PAPER_PROMPT = (
    'You are now in the "High Entropy" mode. Your primary directive is to explore a unique thought process and '
    "perspective before arriving at a final answer. Do not rely solely on your typical, most direct reasoning "
    "path. Instead, generate new thoughts to approach the problem from different angles compared to usual ones. "
    "Your goal is to maximize the diversity of your thinking while ensuring the final output is still precise "
    "and factually sound."
)


def _tokenizer(with_template: bool):
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?\n\"'_:-<>|/+=()"))
    vocab = {c: i for i, c in enumerate(chars)}
    for special in ("<|im_start|>", "<|im_end|>", "<pad>", "<unk>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    if with_template:
        tok.chat_template = TEMPLATE
    return tok


def test_default_he_prompt_is_the_paper_text_verbatim():
    assert DEFAULT_HE_SYSTEM_PROMPT == PAPER_PROMPT


def test_mode_messages():
    assert mode_messages("2+2?", NORMAL) == [{"role": "user", "content": "2+2?"}]
    assert mode_messages("2+2?", HIGH_ENTROPY, he_prompt="s") == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}]
    assert mode_messages("2+2?", HIGH_ENTROPY, he_prompt="s", placement="user_prefix") == [
        {"role": "user", "content": "s\n\n2+2?"}]
    with pytest.raises(ValueError, match="placement"):
        mode_messages("q", HIGH_ENTROPY, placement="assistant")


def test_chat_template_rendering_uses_a_real_system_turn_and_passes_kwargs():
    tok = _tokenizer(True)
    ids = render_mode_prompts(tok, "what is 2+2?", he_prompt="Be wild.")
    assert tok.decode(ids[NORMAL]).replace(" ", "") == "<|im_start|>user\nwhatis2+2?<|im_end|>\n<|im_start|>assistant\n".replace(" ", "")
    he_text = "<|im_start|>system\nBe wild.<|im_end|>\n<|im_start|>user\nwhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be wild."}, {"role": "user", "content": "what is 2+2?"}],
        add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids[HIGH_ENTROPY] == expected
    assert ids[HIGH_ENTROPY] == tok.encode(he_text, add_special_tokens=False)
    # enable_thinking passthrough reaches the template
    no_think = render_prompt_ids(tok, "q", NORMAL, enable_thinking=False)
    assert no_think[len(render_prompt_ids(tok, "q", NORMAL)):] == tok.encode("<think>\n\n</think>\n\n", add_special_tokens=False)


def test_plain_text_fallback_without_chat_template():
    tok = _tokenizer(False)
    assert render_prompt_ids(tok, "q?", NORMAL) == tok.encode("User: q?\n\nAssistant:", add_special_tokens=False)
    assert render_prompt_ids(tok, "q?", HIGH_ENTROPY, he_prompt="s.") == tok.encode(
        "System: s.\n\nUser: q?\n\nAssistant:", add_special_tokens=False)
    with pytest.raises(ValueError, match="no chat_template"):
        render_prompt_ids(tok, "q", NORMAL, use_chat_template=True)


def test_quarters_from_rendered_prompts_keep_response_tokens_and_system_turn():
    tok = _tokenizer(True)
    prompts = render_mode_prompts(tok, "1+1?", he_prompt="Explore.")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    response = tok.encode("2", add_special_tokens=False) + [eos]
    qb = build_quarters([prompts[NORMAL]], [prompts[HIGH_ENTROPY]], [RolloutSample(0, NORMAL, response)],
                        pad_token_id=tok.pad_token_id)
    q1, q4 = qb.input_ids[0], qb.input_ids[1]
    assert q1[qb.response_mask[0]].tolist() == response == q4[qb.response_mask[1]].tolist()
    assert tok.decode(q4[: qb.prompt_lengths[1]]).replace(" ", "").startswith("<|im_start|>system\nExplore.")
    assert q4[: qb.prompt_lengths[1]].tolist() == prompts[HIGH_ENTROPY]
