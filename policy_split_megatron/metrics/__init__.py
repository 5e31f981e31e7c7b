"""Evaluation metrics: diversity of a group of samples (distinct-n, Div-N-Gram, Div-BLEU), correctness
(accuracy, best-of-N, unbiased pass@k, maj@n, distinct correct answers), entropy in bits, and per-mode
aggregation. Definitions: metrics/diversity.py, metrics/correctness.py and docs/tasks.md."""

from policy_split_megatron.metrics.correctness import (
    accuracy,
    benchmark_correctness,
    best_of_n,
    majority_vote,
    pass_at_k,
)
from policy_split_megatron.metrics.diversity import (
    bleu,
    distinct_correct,
    distinct_n,
    div_bleu,
    div_ngram,
    diversity_by_mode,
    entropy_bits,
    group_metrics,
    mean_by_mode,
    ngrams,
    tokens_of,
)

__all__ = [
    "accuracy", "benchmark_correctness", "best_of_n", "bleu", "distinct_correct", "distinct_n", "div_bleu", "div_ngram",
    "diversity_by_mode", "entropy_bits", "group_metrics", "majority_vote", "mean_by_mode", "ngrams", "pass_at_k",
    "tokens_of",
]
