"""Small stand-in tokenizers for rollout tests."""


class CharTokenizer:
    """A tokenizer without a chat template (plain-text prompts of algorithms/modes.py)."""

    chat_template = None
    eos_token_id = 2
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 200 for c in text]
