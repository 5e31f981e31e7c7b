"""Diversity and correctness metrics on tiny hand-computed groups."""

import math

import pytest
import torch

from policy_split_megatron.metrics import (
    accuracy,
    best_of_n,
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
    pass_at_k,
)
from policy_split_megatron.tasks.countdown import canonical_form


def test_ngrams():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_distinct_n_by_hand():
    samples = ["a b a", "a b c"]
    # unigrams: a b a a b c -> 6 total, {a, b, c} unique -> 3/6
    assert distinct_n(samples, 1) == pytest.approx(3 / 6)
    # bigrams: (a b) (b a) (a b) (b c) -> 4 total, 3 unique
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    # trigrams: (a b a) (a b c) -> 2/2
    assert distinct_n(samples, 3) == 1.0
    assert distinct_n(samples, 4) == 0.0  # no 4-grams at all
    # token-id lists and characters
    assert distinct_n([[1, 2, 1], [1, 2, 3]], 1) == pytest.approx(3 / 6)
    assert distinct_n(["aab"], 1, tokenize="chars") == pytest.approx(2 / 3)


def test_div_ngram_by_hand():
    # Eq. 11 per sample: "a b a b" bigrams (a b)(b a)(a b) -> 2/3; "a b c d" -> 3/3; mean = (2/3 + 1) / 2
    assert div_ngram(["a b a b", "a b c d"], n=2) == pytest.approx((2 / 3 + 1) / 2)
    # a sample with no bigram is left out of the mean
    assert div_ngram(["a b a b", "x"], n=2) == pytest.approx(2 / 3)
    assert div_ngram(["x", "y"], n=2) == 0.0


def test_bleu_by_hand():
    # hypothesis a b c d e vs reference a b c d f: p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, equal lengths
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu("a b c d e", ["a b c d f"]) == pytest.approx(expected)
    assert bleu("a b c d", ["a b c d"]) == pytest.approx(1.0)
    # clipping: "a a a a" vs "a b": unigram matches clipped to 1 of 4; no bigram match -> epsilon 0.1
    # p = 1/4, 0.1/3, 0.1/2, 0.1/1; hypothesis longer than the reference: no brevity penalty
    expected = (1 / 4 * 0.1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25
    assert bleu("a a a a", ["a b"]) == pytest.approx(expected)
    # brevity penalty: hypothesis "a b c d" (c = 4) vs reference of 8 tokens starting with it: BP = exp(1 - 8/4)
    assert bleu("a b c d", ["a b c d e f g h"]) == pytest.approx(math.exp(1 - 8 / 4))
    # closest reference length wins (here 4, so no penalty)
    assert bleu("a b c d", ["a b c d e f g h", "a b c d"]) == pytest.approx(1.0)
    # effective order: a 2-token hypothesis only has orders 1 and 2
    assert bleu("a b", ["a b"]) == pytest.approx(1.0)
    assert bleu("", ["a b"]) == 0.0


def test_bleu_smoothing_options():
    # no bigram match at all
    assert bleu("a b", ["b a"], smoothing="none") == 0.0
    # epsilon: p1 = 2/2, p2 = 0.1/1 -> sqrt(0.1)
    assert bleu("a b", ["b a"], smoothing="epsilon") == pytest.approx(math.sqrt(0.1))
    # add1 for n >= 2: p1 = 2/2, p2 = (0+1)/(1+1) -> sqrt(0.5)
    assert bleu("a b", ["b a"], smoothing="add1") == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="smoothing"):
        bleu("a", ["a"], smoothing="laplace")


def test_div_bleu():
    assert div_bleu(["the cat sat on the mat"] * 4) == pytest.approx(0.0)  # identical samples
    disjoint = div_bleu(["a b c d", "e f g h", "i j k l"])
    # each BLEU = (0.1/4 * 0.1/3 * 0.1/2 * 0.1/1) ** 0.25 ~ 0.045 -> Div-BLEU ~ 0.955
    assert disjoint == pytest.approx(1 - (0.1 / 4 * 0.1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25)
    assert disjoint > 0.95
    # one sample identical to another, one different: in between
    partial = div_bleu(["a b c d", "a b c d", "e f g h"])
    assert 0.0 < partial < disjoint
    with pytest.raises(ValueError, match="at least 2"):
        div_bleu(["a"])


def test_correctness_metrics():
    assert best_of_n([0, 0, 1, 0]) == 1.0 and best_of_n([0.0, 0.0]) == 0.0 and best_of_n([]) == 0.0
    assert best_of_n([False, True]) == 1.0
    assert accuracy([1, 0, 1, 0]) == 0.5
    # pass@k: n = 4, c = 1, k = 2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_distinct_correct_counts():
    answers = [" (3+5)*2", "2*(5+3)", "(3+5)*2", "3*5+2", "16"]
    correct = [1, 1, 1, 0, 0]
    # the three correct answers are one answer up to commutativity and parentheses
    assert distinct_correct([a.strip() for a in answers], correct, canonical_form) == 1
    # without canonicalisation: "(3+5)*2" and "2*(5+3)" differ (the stripped texts)
    assert distinct_correct(answers, correct) == 2
    # a canonicaliser that fails falls back to the text
    assert distinct_correct(["((", "(("], [1, 1], canonical_form) == 1
    with pytest.raises(ValueError):
        distinct_correct(["a"], [1, 0])


def test_entropy_bits():
    assert entropy_bits(math.log(2)) == pytest.approx(1.0)
    assert entropy_bits(math.log(8)) == pytest.approx(3.0)
    assert torch.allclose(entropy_bits(torch.tensor([0.0, math.log(4)])), torch.tensor([0.0, 2.0]))


def test_group_metrics_keys():
    out = group_metrics(["2*(3+5)", "(5+3)*2", "3*5+2"], [1, 1, 0], tokenize="chars",
                        answer_keys=["2*(3+5)", "2*(3+5)", "2+3*5"])
    assert set(out) == {"distinct_1", "distinct_2", "distinct_3", "distinct_4", "div_ngram", "div_bleu",
                        "accuracy", "best_of_n", "distinct_correct"}
    assert out["accuracy"] == pytest.approx(2 / 3) and out["best_of_n"] == 1.0 and out["distinct_correct"] == 1.0
    assert "div_bleu" not in group_metrics(["only one"])


def test_mean_by_mode():
    rows = [{"mode": 0, "reward": 1.0, "length": 4}, {"mode": 0, "reward": 0.0, "length": 6},
            {"mode": "high_entropy", "reward": 1.0, "length": 10}]
    out = mean_by_mode(rows)
    assert out == {"normal/reward": 0.5, "normal/length": 5.0, "normal/count": 2.0,
                   "high_entropy/reward": 1.0, "high_entropy/length": 10.0, "high_entropy/count": 1.0}
    assert mean_by_mode(rows, keys=["reward"], prefix="eval/") == {
        "eval/normal/reward": 0.5, "eval/normal/count": 2.0,
        "eval/high_entropy/reward": 1.0, "eval/high_entropy/count": 1.0}
    with pytest.raises(ValueError, match="unknown mode"):
        mean_by_mode([{"mode": 7, "reward": 1.0}])


def test_diversity_by_mode():
    samples = [
        # prompt 0: normal finds one answer twice; HE finds it and a second one
        {"prompt_id": 0, "mode": 0, "text": "2*(3+5)", "reward": 1.0, "canonical": "2*(3+5)"},
        {"prompt_id": 0, "mode": 0, "text": "(3+5)*2", "reward": 1.0, "canonical": "2*(3+5)"},
        {"prompt_id": 0, "mode": 1, "text": "(5+3)*2", "reward": 1.0, "canonical": "2*(3+5)"},
        {"prompt_id": 0, "mode": 1, "text": "4*(5-1)", "reward": 1.0, "canonical": "4*(5-1)"},
        # prompt 1: normal one answer, HE wrong twice
        {"prompt_id": 1, "mode": 0, "text": "3+4", "reward": 1.0, "canonical": "3+4"},
        {"prompt_id": 1, "mode": 0, "text": "3*4", "reward": 0.0, "canonical": "3*4"},
        {"prompt_id": 1, "mode": 1, "text": "3-4", "reward": 0.0, "canonical": "3-4"},
        {"prompt_id": 1, "mode": 1, "text": "4/3", "reward": 0.0, "canonical": "3/4"},
    ]
    out = diversity_by_mode(samples, answer_key="canonical", tokenize="chars")
    # distinct correct per prompt: normal 1 and 1 -> 1.0; HE 2 and 0 -> 1.0
    assert out["normal/distinct_correct"] == 1.0 and out["high_entropy/distinct_correct"] == 1.0
    # best-of-2: normal 1, 1 -> 1.0; HE 1, 0 -> 0.5. accuracy: normal (1 + 0.5)/2; HE (1 + 0)/2
    assert out["normal/best_of_n"] == 1.0 and out["high_entropy/best_of_n"] == 0.5
    assert out["normal/accuracy"] == 0.75 and out["high_entropy/accuracy"] == 0.5
    # new correct answers of HE not found by normal: prompt 0 -> {4*(5-1)} = 1, prompt 1 -> 0; mean 0.5
    assert out["high_entropy/new_correct"] == 0.5
    # union of correct answers: prompt 0 -> 2, prompt 1 -> 1; mean 1.5
    assert out["both/distinct_correct"] == 1.5
    assert out["normal/count"] == 2.0  # two prompts per mode
    assert {"normal/div_bleu", "high_entropy/div_bleu", "normal/distinct_2"} <= set(out)
