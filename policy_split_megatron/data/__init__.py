"""Prompt data: local JSONL/Parquet datasets with validation, a resumable data-parallel sampler, and the
writer of the embedded Countdown sets (docs/tasks.md). Nothing here contacts the Hugging Face hub."""

from policy_split_megatron.data.datasets import (
    DatasetError,
    PromptDataset,
    load_prompt_dataset,
    make_record,
    read_rows,
)
from policy_split_megatron.data.sampler import PromptSampler
from policy_split_megatron.data.writers import CountdownFiles, write_countdown_dataset, write_jsonl

__all__ = [
    "DatasetError", "PromptDataset", "load_prompt_dataset", "make_record", "read_rows", "PromptSampler",
    "CountdownFiles", "write_countdown_dataset", "write_jsonl",
]
