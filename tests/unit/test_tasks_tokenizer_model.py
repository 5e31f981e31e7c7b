"""The embedded char tokenizer (round trip, fixed ids, save/load through AutoTokenizer, the prompts of
algorithms/modes.py) and the tiny Qwen3 model folder."""

import json
import string

import pytest
import torch

from policy_split_megatron.algorithms.modes import DEFAULT_HE_SYSTEM_PROMPT, HIGH_ENTROPY, NORMAL, render_mode_prompts
from policy_split_megatron.tasks.char_tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    VOCAB_SIZE,
    build_char_tokenizer,
    save_char_tokenizer,
)
from policy_split_megatron.tasks.tiny_model import count_parameters, tiny_model_config, write_tiny_model

ALL_ASCII = "".join(chr(c) for c in range(32, 127)) + "\t\n"


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_vocab_and_special_ids(tokenizer):
    assert VOCAB_SIZE == 101 == len(tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert tokenizer.chat_template is None  # modes.py must use the plain-text fallback
    # fixed ids: tab 4, newline 5, then printable ASCII from space (6) to "~" (100)
    assert tokenizer.encode("\t\n ~", add_special_tokens=False) == [4, 5, 6, 100]
    assert tokenizer.encode("0", add_special_tokens=False) == [6 + ord("0") - 32]


@pytest.mark.parametrize("text", [
    ALL_ASCII,
    "User: 3 5 2 -> 16\n\nAssistant: (3+5)*2 = 16",
    "  two  spaces , and . punctuation ! ",
    "",
])
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text) == ids  # no BOS/EOS added by default


def test_unknown_and_special(tokenizer):
    assert tokenizer.encode("aé", add_special_tokens=False) == [6 + ord("a") - 32, UNK_ID]
    ids = tokenizer.encode("ab", add_special_tokens=False) + [EOS_ID]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ab"
    assert tokenizer.decode(ids) == "ab<|eos|>"


def test_mode_prompts_use_plain_text(tokenizer):
    prompts = render_mode_prompts(tokenizer, "3 5 2 -> 16")
    assert tokenizer.decode(prompts[NORMAL]) == "User: 3 5 2 -> 16\n\nAssistant:"
    he = tokenizer.decode(prompts[HIGH_ENTROPY])
    assert he == f"System: {DEFAULT_HE_SYSTEM_PROMPT}\n\nUser: 3 5 2 -> 16\n\nAssistant:"
    assert UNK_ID not in prompts[HIGH_ENTROPY]
    assert len(prompts[HIGH_ENTROPY]) < 1024  # fits max_position_embeddings with room for the response


def test_save_load_through_auto_tokenizer(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    save_char_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert len(loaded) == VOCAB_SIZE and loaded.eos_token_id == EOS_ID and loaded.pad_token_id == PAD_ID
    text = string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    batch = loaded(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][-2:] == [PAD_ID, PAD_ID]  # right padding with id 0


def test_tiny_config():
    config = tiny_model_config()
    assert config.model_type == "qwen3" and config.vocab_size == VOCAB_SIZE
    assert config.head_dim >= 32 and config.num_attention_heads == 4 and config.num_key_value_heads == 2
    assert config.max_position_embeddings == 1024
    # hand count: embeddings 2*101*128; per layer q,o 128*128 each + k,v 128*64 each + q/k norms 2*32
    # + MLP 3*128*384 + 2 norms 2*128; final norm 128
    per_layer = 2 * 128 * 128 + 2 * 128 * 64 + 2 * 32 + 3 * 128 * 384 + 2 * 128
    assert count_parameters(config) == 2 * 101 * 128 + 4 * per_layer + 128 == 813_696
    with pytest.raises(ValueError, match="head_dim"):
        tiny_model_config(head_dim=16)


def test_write_tiny_model_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = write_tiny_model(tmp_path / "tiny", seed=0)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    assert "temperature" not in generation and "top_k" not in generation
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config)
    # HF's normal init (std 0.02), not the randomise-everything test helper: norms are exactly 1
    assert torch.all(model.model.norm.weight == 1.0)
    assert 0.01 < model.model.embed_tokens.weight.std().item() < 0.03
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = torch.tensor([tok.encode("User: 2 3 -> 5\n\nAssistant:", add_special_tokens=False)])
    assert model(ids).logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    again = write_tiny_model(tmp_path / "again", seed=0)  # same seed, same weights
    model2 = AutoModelForCausalLM.from_pretrained(str(again))
    assert torch.equal(model.lm_head.weight, model2.lm_head.weight)


def _embedding_grad_norm(model, ids: list[int]) -> float:
    """Gradient norm of the log-probs of the last 3 tokens, with the input embedding matrix used as
    megatron-core's embedding uses it: every row, the pad row included, receives its gradient (HF's
    nn.Embedding(padding_idx=...) would drop the pad row's)."""
    model.zero_grad()
    embeddings = model.get_input_embeddings().weight
    tokens = torch.tensor([ids])
    logp = model(inputs_embeds=embeddings[tokens]).logits.log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])
    logp[-3:].sum().backward()
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)))


def test_a_sampled_pad_token_does_not_blow_up_the_gradient(tokenizer):
    """The gradient-norm spike of the embedded default (2,774 at RL step 2, docs/embedded_default.md):
    a response "..<|pad|><|eos|>" fed the token after <|pad|> HF's all-zero pad embedding, whose
    first RMSNorm multiplies the gradient by 1/sqrt(eps) = 1000. The pad row is now initialised like
    the others, and only it: every other weight is HF's init for the seed."""
    from transformers import AutoModelForCausalLM

    from policy_split_megatron.tasks.tiny_model import build_tiny_model

    model = build_tiny_model(seed=0)
    prompt = tokenizer.encode("User: 3 5 7 -> 22\n\nAssistant: 7*", add_special_tokens=False)
    with_pad = _embedding_grad_norm(model, prompt + [PAD_ID, EOS_ID])
    with_digit = _embedding_grad_norm(model, prompt + tokenizer.encode("5", add_special_tokens=False) + [EOS_ID])
    assert with_pad < 3 * with_digit, (with_pad, with_digit)  # it was ~500x with the zero row

    torch.manual_seed(0)
    hf_init = AutoModelForCausalLM.from_config(tiny_model_config(), dtype=torch.float32).state_dict()
    ours = model.state_dict()
    assert [k for k in ours if not torch.equal(ours[k], hf_init[k])] == ["model.embed_tokens.weight"]
    changed = (ours["model.embed_tokens.weight"] != hf_init["model.embed_tokens.weight"]).any(-1).nonzero().flatten()
    assert changed.tolist() == [PAD_ID]
    assert 0.5 < ours["model.embed_tokens.weight"][PAD_ID].std() / 0.02 < 2  # initializer_range
