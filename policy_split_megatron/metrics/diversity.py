"""Diversity and correctness metrics over the k samples of one prompt, and a per-mode aggregation helper.

Pure Python (no torch). A sample is a text or a sequence of tokens (e.g. token ids). Texts are split by
`tokenize`: "whitespace" (default, str.split), "chars" (one token per character: use it for the
character-level Countdown model), or any callable text -> list of tokens. Token sequences are used as given.

Definitions (Policy Split, arXiv 2604.11510 §4.3, Eq. 11-12, k samples o_1..o_k of one prompt):

    distinct-n   = |unique n-grams over all k samples| / |n-grams over all k samples|   (Li et al., 2016)
    Div-N-Gram   = (1/k) sum_i |unique n-grams in o_i| / |n-grams in o_i|              (Eq. 11, n = 2)
    Div-BLEU     = 1 - (1/k) sum_i BLEU-4(o_i, O \\ {o_i})                              (Eq. 12)

The paper prints Eq. 11 without the 1/k but reports values around 50, i.e. a mean x 100: these functions
return fractions in [0, 1] (multiply by 100 to compare with its Table 2). Samples with fewer than n tokens
have no n-grams and are left out of Div-N-Gram's mean; a group with no n-grams at all gives 0.0.

BLEU-4 (Papineni et al., 2002) of a hypothesis against several references: clipped n-gram precisions
p_1..p_4 (a hypothesis n-gram counts at most as often as in the reference where it is most frequent),
geometric mean with uniform weights, brevity penalty exp(1 - r/c) when c < r (c: hypothesis length, r: the
reference length closest to c, the shorter on ties). Smoothing (sentence-level BLEU is otherwise 0 whenever
one order has no match):
  "epsilon" (default): a zero match count becomes 0.1 (Chen & Cherry 2014 method 1, NLTK's method1)
  "add1": every order n >= 2 gets (matches + 1) / (total + 1) (Lin & Och 2004, Chen & Cherry method 2)
  "none": no smoothing
Orders for which the hypothesis has no n-grams (shorter than n tokens) are left out of the geometric mean
("effective order", as sacrebleu's sentence BLEU); an empty hypothesis scores 0. Identical samples give
BLEU 1 (Div-BLEU 0); samples sharing no token give BLEU near 0 (Div-BLEU near 1).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from policy_split_megatron.metrics.correctness import accuracy, best_of_n

Tokens = Sequence[Hashable]
Sample = str | Sequence[Hashable]
Tokenizer = str | Callable[[str], Sequence[Hashable]]

LN2 = math.log(2.0)
SMOOTHINGS = ("epsilon", "add1", "none")
EPSILON = 0.1


# --------------------------------------------------------------------------------------------------
# tokens and n-grams


def tokens_of(sample: Sample, tokenize: Tokenizer = "whitespace") -> list:
    """The tokens of one sample (module docstring)."""
    if isinstance(sample, str):
        if tokenize == "whitespace":
            return sample.split()
        if tokenize == "chars":
            return list(sample)
        if callable(tokenize):
            return list(tokenize(sample))
        raise ValueError(f"tokenize must be 'whitespace', 'chars' or a callable, got {tokenize!r}")
    return list(sample)


def ngrams(tokens: Tokens, n: int) -> list[tuple]:
    """The n-grams of a token sequence, in order: ngrams("a b c".split(), 2) = [("a","b"), ("b","c")]."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sample], n: int, tokenize: Tokenizer = "whitespace") -> float:
    """Unique n-grams / all n-grams, pooled over the samples (0.0 when there are none)."""
    pooled = [g for s in samples for g in ngrams(tokens_of(s, tokenize), n)]
    return len(set(pooled)) / len(pooled) if pooled else 0.0


def div_ngram(samples: Sequence[Sample], n: int = 2, tokenize: Tokenizer = "whitespace") -> float:
    """Div-N-Gram (Eq. 11): mean over samples of that sample's unique/total n-grams (as a fraction)."""
    ratios = []
    for sample in samples:
        grams = ngrams(tokens_of(sample, tokenize), n)
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else 0.0


# --------------------------------------------------------------------------------------------------
# BLEU


def _order_counts(tokens: Tokens, max_n: int) -> list[Counter]:
    """Counter of the n-grams of `tokens` for n = 1..max_n (index n-1)."""
    return [Counter(ngrams(tokens, n)) for n in range(1, max_n + 1)]


def _bleu_from_counts(
    hyp_counts: list[Counter], hyp_len: int, refs_counts: Sequence[list[Counter]], ref_lens: Sequence[int],
    smoothing: str,
) -> float:
    """BLEU from n-gram counts computed once per sample (Div-BLEU reuses each sample's counts k-1
    times instead of recounting every reference for every hypothesis)."""
    if hyp_len == 0:
        return 0.0
    log_precisions = []
    for n, counts in enumerate(hyp_counts, start=1):
        total = sum(counts.values())
        if total == 0:
            continue  # effective order: the hypothesis is shorter than n
        order_refs = [ref[n - 1] for ref in refs_counts]
        matches = sum(min(count, max(ref.get(gram, 0) for ref in order_refs)) for gram, count in counts.items())
        if smoothing == "add1" and n >= 2:
            numerator, denominator = matches + 1.0, total + 1.0
        elif matches == 0:
            if smoothing == "none":
                return 0.0
            numerator, denominator = (EPSILON if smoothing == "epsilon" else 0.0), float(total)
            if numerator == 0.0:  # add1 at n = 1 without any unigram match
                return 0.0
        else:
            numerator, denominator = float(matches), float(total)
        log_precisions.append(math.log(numerator / denominator))
    c = hyp_len
    r = min(ref_lens, key=lambda length: (abs(length - c), length))
    brevity = 1.0 if c >= r else math.exp(1.0 - r / c)
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def _check_smoothing(smoothing: str) -> None:
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")


def bleu(
    hypothesis: Sample,
    references: Sequence[Sample],
    max_n: int = 4,
    smoothing: str = "epsilon",
    tokenize: Tokenizer = "whitespace",
) -> float:
    """Sentence BLEU-`max_n` of `hypothesis` against `references` (module docstring)."""
    _check_smoothing(smoothing)
    if not references:
        raise ValueError("BLEU needs at least one reference")
    hyp = tokens_of(hypothesis, tokenize)
    refs = [tokens_of(r, tokenize) for r in references]
    return _bleu_from_counts(_order_counts(hyp, max_n), len(hyp), [_order_counts(r, max_n) for r in refs],
                             [len(r) for r in refs], smoothing)


def div_bleu(
    samples: Sequence[Sample], max_n: int = 4, smoothing: str = "epsilon", tokenize: Tokenizer = "whitespace"
) -> float:
    """Div-BLEU (Eq. 12): 1 - mean_i BLEU(o_i, the other samples). Needs at least 2 samples.
    Each sample's n-grams are counted once: O(k L) counting plus O(k^2 L) dictionary lookups."""
    _check_smoothing(smoothing)
    if len(samples) < 2:
        raise ValueError(f"Div-BLEU needs at least 2 samples, got {len(samples)}")
    tokenized = [tokens_of(s, tokenize) for s in samples]
    counts = [_order_counts(t, max_n) for t in tokenized]
    lengths = [len(t) for t in tokenized]
    scores = [
        _bleu_from_counts(counts[i], lengths[i], counts[:i] + counts[i + 1:], lengths[:i] + lengths[i + 1:], smoothing)
        for i in range(len(tokenized))
    ]
    return 1.0 - sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------------
# correctness (avg@n, pass@k, maj@n: metrics/correctness.py)


def distinct_correct(
    answers: Sequence[Any],
    correct: Sequence[Any],
    canonicalize: Callable[[Any], Hashable | None] | None = None,
) -> int:
    """Number of DIFFERENT correct answers among the samples: the correct ones' keys, deduplicated.

    The key of an answer is canonicalize(answer) (e.g. tasks.countdown.canonical_form, or lambda a: a when
    `answers` already holds canonical keys); None, or an exception, falls back to the stripped text."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    keys = set()
    for answer, ok in zip(answers, correct):
        if not (bool(ok) and ok > 0):
            continue
        key = None
        if canonicalize is not None:
            try:
                key = canonicalize(answer)
            except Exception:
                key = None
        keys.add(key if key is not None else (answer.strip() if isinstance(answer, str) else answer))
    return len(keys)


def entropy_bits(nats: Any) -> Any:
    """Entropy in bits from nats (the paper reports bits): nats / ln 2. Works on floats, arrays, tensors."""
    return nats / LN2


# --------------------------------------------------------------------------------------------------
# groups and modes


def group_metrics(
    texts: Sequence[Sample],
    correct: Sequence[Any] | None = None,
    *,
    answer_keys: Sequence[Hashable | None] | None = None,
    tokenize: Tokenizer = "whitespace",
    distinct_orders: Sequence[int] = (1, 2, 3, 4),
    ngram_n: int = 2,
    bleu_max_n: int = 4,
    smoothing: str = "epsilon",
    text_metrics: bool = True,
) -> dict[str, float]:
    """All metrics of the k samples of one prompt:

    distinct_{n}, div_ngram, div_bleu (when k >= 2; all three only with `text_metrics`); with
    `correct`: accuracy, best_of_n and distinct_correct (keyed by `answer_keys` when given, e.g. the
    Countdown reward's info["canonical"], else by the stripped text)."""
    out: dict[str, float] = {}
    if text_metrics:
        out.update({f"distinct_{n}": distinct_n(texts, n, tokenize) for n in distinct_orders})
        out["div_ngram"] = div_ngram(texts, ngram_n, tokenize)
        if len(texts) >= 2:
            out["div_bleu"] = div_bleu(texts, bleu_max_n, smoothing, tokenize)
    if correct is not None:
        if len(correct) != len(texts):
            raise ValueError(f"{len(texts)} samples but {len(correct)} correctness values")
        keys = list(answer_keys) if answer_keys is not None else list(texts)
        if len(keys) != len(texts):
            raise ValueError(f"{len(texts)} samples but {len(keys)} answer keys")
        out["accuracy"] = accuracy(correct)
        out["best_of_n"] = best_of_n(correct)
        out["distinct_correct"] = float(distinct_correct(keys, correct))
    return out


def _mode_name(mode: Any, names: Mapping[Any, str]) -> str:
    if mode in names:
        return names[mode]
    if isinstance(mode, str) and mode in names.values():
        return mode
    raise ValueError(f"unknown mode {mode!r}: expected one of {dict(names)}")


def _default_mode_names() -> dict[Any, str]:
    from policy_split_megatron.algorithms.modes import MODE_NAMES

    return dict(MODE_NAMES)


def mean_by_mode(
    rows: Iterable[Mapping[str, Any]],
    *,
    mode_key: str = "mode",
    keys: Sequence[str] | None = None,
    mode_names: Mapping[Any, str] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Average numeric fields per mode: {"<prefix>normal/<key>": mean, "<prefix>high_entropy/<key>": mean,
    "<prefix><mode>/count": rows}. `rows` carry a mode (0/1 or "normal"/"high_entropy") and numbers; `keys`
    picks the fields (default: every int/float/bool field other than the mode). Missing fields are skipped."""
    names = dict(mode_names) if mode_names is not None else _default_mode_names()
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    rows_per_mode: dict[str, int] = {}
    for row in rows:
        mode = _mode_name(row[mode_key], names)
        rows_per_mode[mode] = rows_per_mode.get(mode, 0) + 1
        fields = keys if keys is not None else [
            k for k, v in row.items() if k != mode_key and isinstance(v, (int, float, bool))
        ]
        for key in fields:
            value = row.get(key)
            if value is None:
                continue
            sums.setdefault(mode, {}).setdefault(key, 0.0)
            sums[mode][key] += float(value)
            counts.setdefault(mode, {}).setdefault(key, 0)
            counts[mode][key] += 1
    out: dict[str, float] = {}
    for mode in sorted(rows_per_mode):
        for key in sorted(sums.get(mode, {})):
            out[f"{prefix}{mode}/{key}"] = sums[mode][key] / counts[mode][key]
        out[f"{prefix}{mode}/count"] = float(rows_per_mode[mode])
    return out


def diversity_by_mode(
    samples: Iterable[Mapping[str, Any]],
    *,
    prompt_key: str = "prompt_id",
    mode_key: str = "mode",
    text_key: str = "text",
    correct_key: str | None = "reward",
    answer_key: str | None = None,
    tokenize: Tokenizer = "whitespace",
    mode_names: Mapping[Any, str] | None = None,
    prefix: str = "",
    **group_kwargs: Any,
) -> dict[str, float]:
    """Group samples by (mode, prompt), compute group_metrics per group, average over prompts per mode.

    Also, when both modes sampled a prompt and `correct_key` is set, "high_entropy/new_correct": the mean
    number of correct answers (keys) the high-entropy mode found that the normal mode's samples of the same
    prompt did not (the paper's "unique correct rollouts"), and "both/distinct_correct" over the union.
    Returns flat {"<prefix>normal/<metric>": x, "<prefix>high_entropy/<metric>": y, ...}."""
    names = dict(mode_names) if mode_names is not None else _default_mode_names()
    groups: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for sample in samples:
        groups.setdefault((_mode_name(sample[mode_key], names), sample[prompt_key]), []).append(sample)
    rows = []
    correct_keys: dict[tuple[str, Any], set] = {}
    for (mode, prompt), members in groups.items():
        texts = [m[text_key] for m in members]
        correct = [m[correct_key] for m in members] if correct_key else None
        keys = [m.get(answer_key) if m.get(answer_key) is not None else m[text_key] for m in members] \
            if answer_key else None
        row = {"mode": mode, **group_metrics(texts, correct, answer_keys=keys, tokenize=tokenize, **group_kwargs)}
        rows.append(row)
        if correct is not None:
            ks = keys if keys is not None else texts
            correct_keys[(mode, prompt)] = {
                (k.strip() if isinstance(k, str) else k) for k, c in zip(ks, correct) if bool(c) and c > 0
            }
    out = mean_by_mode(rows, mode_key="mode", mode_names={v: v for v in names.values()}, prefix=prefix)
    normal, high = names.get(0, "normal"), names.get(1, "high_entropy")
    shared = [p for (m, p) in correct_keys if m == high and (normal, p) in correct_keys]
    if shared:
        out[f"{prefix}{high}/new_correct"] = sum(
            len(correct_keys[(high, p)] - correct_keys[(normal, p)]) for p in shared) / len(shared)
        out[f"{prefix}both/distinct_correct"] = sum(
            len(correct_keys[(high, p)] | correct_keys[(normal, p)]) for p in shared) / len(shared)
    return out
