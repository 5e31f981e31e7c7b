"""A character-level tokenizer for the embedded task, loadable by transformers and vLLM from a folder.

Vocabulary (101 tokens, fixed ids):

    0 <|pad|>   1 <|bos|>   2 <|eos|>   3 <|unk|>   4 "\\t"   5 "\\n"   6..100 printable ASCII " " .. "~"

It is a `tokenizers` WordLevel model whose pre-tokenizer splits text into single characters, with a
Fuse decoder (tokens are concatenated, nothing inserted), wrapped as `transformers.PreTrainedTokenizerFast`.
Encoding adds NO special tokens (no BOS, no EOS: the trainer appends EOS to SFT targets and generation
stops on it), so `decode(encode(text)) == text` for every text made of printable ASCII, tab and newline.
Any other character (e.g. "é", "\\r") becomes <|unk|>. The special-token strings are matched in text
("<|eos|>" encodes to id 2), as in every HF tokenizer.

No chat template: `algorithms/modes.render_prompt_ids` then uses its plain-text fallback
("User: {q}\\n\\nAssistant:", with "System: {s}\\n\\n" in front for the high-entropy mode), whose characters are
all in the vocabulary. The ids of pad/bos/eos match `model/tiny.py` (0/1/2).

`save_char_tokenizer(folder)` writes tokenizer.json + tokenizer_config.json (tokenizer_class
"PreTrainedTokenizerFast", so transformers 4.x and 5.x and vLLM's `get_tokenizer` all load it with
AutoTokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
CHARACTERS = ("\t", "\n") + tuple(chr(c) for c in range(32, 127))  # ids 4 .. 100
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS)  # 101
MODEL_MAX_LENGTH = 1024  # = the tiny model's max_position_embeddings


def char_vocab() -> dict[str, int]:
    """{token: id} in the fixed order of the module docstring."""
    return {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer(model_max_length: int = MODEL_MAX_LENGTH):
    """The tokenizer as a `transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(char_vocab(), unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character is its own piece
    backend.decoder = decoders.Fuse()  # concatenate, do not join with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    _check(tokenizer)
    return tokenizer


def _check(tokenizer) -> None:
    ids = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    if ids != [PAD_ID, BOS_ID, EOS_ID, UNK_ID] or len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"char tokenizer built wrongly: special ids {ids}, size {len(tokenizer)}")


def save_char_tokenizer(folder: str | Path, model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write the tokenizer to `folder` (created if missing); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer(model_max_length).save_pretrained(folder)
    # transformers 5 records its internal class name ("TokenizersBackend"), which 4.x cannot resolve.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_char_tokenizer(folder: str | Path):
    """AutoTokenizer.from_pretrained(folder), local files only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
