"""The embedded default: the Countdown task, a character tokenizer and a tiny Qwen3 config (docs/tasks.md).
Nothing here downloads anything; transformers/tokenizers are imported only when a tokenizer or model is built."""

from policy_split_megatron.tasks.char_tokenizer import (
    VOCAB_SIZE,
    build_char_tokenizer,
    load_char_tokenizer,
    save_char_tokenizer,
)
from policy_split_megatron.tasks.countdown import (
    CountdownConfig,
    CountdownProblem,
    Verification,
    canonical_form,
    extract_expression,
    generate_problems,
    parse_expression,
    prompt_text,
    solutions,
    split_of,
    verify_expression,
    verify_response,
)
from policy_split_megatron.tasks.tiny_model import count_parameters, tiny_model_config, write_tiny_model

__all__ = [
    "VOCAB_SIZE", "build_char_tokenizer", "load_char_tokenizer", "save_char_tokenizer",
    "CountdownConfig", "CountdownProblem", "Verification", "canonical_form", "extract_expression",
    "generate_problems", "parse_expression", "prompt_text", "solutions", "split_of", "verify_expression",
    "verify_response", "count_parameters", "tiny_model_config", "write_tiny_model",
]
