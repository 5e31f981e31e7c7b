"""Dual-mode prompt building and bad input: empty rows, prompts longer than the context, tokenizers
without EOS/pad. Each is an error naming the row, or (on_bad_prompt="skip") a counted skip."""

import pytest

from policy_split_megatron.algorithms.modes import DEFAULT_HE_SYSTEM_PROMPT, HIGH_ENTROPY, NORMAL, render_prompt_ids
from policy_split_megatron.rollout import (
    BadPromptError,
    DualModePrompt,
    RolloutConfig,
    SamplingConfig,
    VLLMRolloutEngine,
    build_dual_mode_prompts,
    resolve_pad_token_id,
    skip_metrics,
)


class CharTokenizer:
    chat_template = None

    def __init__(self, eos=2, pad=0):
        self.eos_token_id, self.pad_token_id = eos, pad

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 200 for c in text]


def config(**overrides) -> RolloutConfig:
    base = dict(model_path="/m", max_model_len=200, he_system_prompt="Explore.",
                normal=SamplingConfig(max_tokens=50), explore=SamplingConfig(max_tokens=50))
    return RolloutConfig(**{**base, **overrides})


def test_both_modes_use_the_shared_renderer():
    tok = CharTokenizer()
    prompts, skipped = build_dual_mode_prompts(tok, ["2+2?", "3*3?"], config(), start_index=10)
    assert not skipped and [p.index for p in prompts] == [10, 11]
    assert list(prompts[0].normal_ids) == render_prompt_ids(tok, "2+2?", NORMAL)
    assert list(prompts[0].explore_ids) == render_prompt_ids(tok, "2+2?", HIGH_ENTROPY, he_prompt="Explore.")
    assert prompts[0].ids(HIGH_ENTROPY) == prompts[0].explore_ids != prompts[0].normal_ids


def test_chat_template_is_used_when_the_tokenizer_has_one():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "[UNK]", "system", "user", "assistant", "hi"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}assistant"
    prompts, _ = build_dual_mode_prompts(tok, ["hi"], config(he_system_prompt=DEFAULT_HE_SYSTEM_PROMPT,
                                                             max_model_len=1000))
    assert list(prompts[0].normal_ids) == [4, 6, 5]  # "user hi assistant"
    assert list(prompts[0].explore_ids[:1]) == [3] and list(prompts[0].explore_ids[-3:]) == [4, 6, 5]


@pytest.mark.parametrize("row", ["", "   ", None, 7])
def test_empty_row_is_an_error_naming_it(row):
    with pytest.raises(BadPromptError, match=r"row 1: empty prompt"):
        build_dual_mode_prompts(CharTokenizer(), ["ok", row], config())


def test_too_long_prompt_is_an_error_naming_row_mode_and_lengths():
    # "User: ...\n\nAssistant:" adds 18 tokens (143 <= 150); the HE "System: Explore.\n\n" 18 more
    long_question = "x" * 125
    with pytest.raises(BadPromptError, match=r"row 0: the high_entropy prompt has \d+ tokens.*200 - 50 = 150"):
        build_dual_mode_prompts(CharTokenizer(), [long_question], config())


def test_skip_policy_drops_and_counts_bad_rows():
    cfg = config(on_bad_prompt="skip")
    prompts, skipped = build_dual_mode_prompts(CharTokenizer(), ["a", "", "y" * 500, "b"], cfg)
    assert [p.index for p in prompts] == [0, 3]
    assert [(s.index, s.reason) for s in skipped] == [(1, "empty"), (2, "too_long")]
    metrics = skip_metrics(skipped)
    assert metrics["rollout/skipped_empty"] == 1 and metrics["rollout/skipped_too_long"] == 1


def test_mode_without_samples_is_not_length_checked():
    cfg = config(n_explore=0)
    prompts, _ = build_dual_mode_prompts(CharTokenizer(), ["x" * 125], cfg)
    assert len(prompts) == 1


def test_tokenizer_without_eos_or_pad():
    with pytest.raises(ValueError, match="no eos_token_id"):
        build_dual_mode_prompts(CharTokenizer(eos=None), ["q"], config())
    assert resolve_pad_token_id(CharTokenizer(eos=2, pad=None)) == 2  # documented fallback: EOS
    with pytest.raises(ValueError, match="neither pad_token_id nor eos_token_id"):
        resolve_pad_token_id(CharTokenizer(eos=None, pad=None))


def test_engine_rejects_bad_prompts_before_touching_vllm():
    engine = VLLMRolloutEngine(config())  # never started: the check comes first
    with pytest.raises(BadPromptError, match="row 5: the normal prompt has 151 tokens"):
        engine.generate([DualModePrompt(5, tuple(range(151)), (1, 2))])
    with pytest.raises(BadPromptError, match="row 6: the high_entropy prompt has no tokens"):
        engine.generate([DualModePrompt(6, (1, 2), ())])
