"""`policy-split evaluate` as the paper's suite, end to end on two tiny random models: two benchmarks
(a prepare-data MATH-500 file scored by math-verify, and a file naming a user verifier that gives
mixed rewards) in one call, n samples per prompt in several engine batches, both modes, a second
model side by side; the table, the JSON report and the pass@k PNG.

Every figure of the report is recomputed from the saved samples: each sample's reward by calling
its benchmark's verifier directly (a benchmark scored by the wrong verifier fails), pass@k with
exact binomials, maj@n by counting votes, and each sample's entropy with transformers' logits of
the same model (the Megatron entropy pass must agree)."""

import json
import math
from fractions import Fraction

import pytest
import torch

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL, render_prompt_ids
from policy_split_megatron.cli import main
from policy_split_megatron.data.prepare import prepare_dataset
from policy_split_megatron.embedded_default import EMBEDDED_HE_PROMPT
from policy_split_megatron.rewards import math_reward
from policy_split_megatron.tasks.tiny_model import write_tiny_model

N = 4
TEMPERATURE = 0.6


def first_char_even(prompt_record, response_text):
    """A user verifier with ~50% reward on random text, and an answer key, so that pass@k and maj@n
    are not all zeros on an untrained model."""
    return 1.0 if response_text[:1] and ord(response_text[0]) % 2 == 0 else 0.0


def _first_char(prompt_record, response_text):
    return response_text[:1] or None


first_char_even.answer_key = _first_char
USER_VERIFIER = "tests.distributed.test_evaluate_suite:first_char_even"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("suite")
    model_a, model_b = write_tiny_model(base / "model_a", seed=0), write_tiny_model(base / "model_b", seed=1)
    raw = base / "test.jsonl"
    raw.write_text("".join(json.dumps({"problem": f"What is {i}+{i}?", "solution": "...", "answer": str(2 * i),
                                       "subject": "Algebra", "level": 1, "unique_id": f"u{i}"}) + "\n"
                           for i in range(2)))
    math500 = base / "math500.jsonl"
    prepare_dataset("math500", [raw], math500)
    chars = base / "chars.jsonl"
    chars.write_text("".join(json.dumps({"prompt": f"say {w}", "answer": "-", "metadata": {"reward": USER_VERIFIER}})
                             + "\n" for w in ("abc", "xyz", "mno")))
    output = base / "report" / "eval.json"
    assert main(["evaluate", str(model_a), "--benchmark", str(chars), "--benchmark", f"m500={math500}",
                 "--compare", str(model_b), "--output", str(output), "--save-samples",
                 f"logging.dir={base / 'run'}", "logging.tensorboard=False", f"evaluation.samples_per_prompt={N}",
                 "evaluation.max_tokens=6", "evaluation.batch_prompts=2"]) == 0
    return base, output, json.loads(output.read_text())


def _samples(output, label):
    return [json.loads(line) for line in output.with_name(f"eval.samples-{label}.jsonl").read_text().splitlines()]


def test_report_layout_table_and_png(evaluated, capsys):
    base, output, report = evaluated
    assert report["models"] == {"A": str(base / "model_a"), "B": str(base / "model_b")}
    assert report["evaluation"]["temperature"] == TEMPERATURE and report["evaluation"]["top_k"] == 20
    assert {n: b["reward"] for n, b in report["benchmarks"].items()} == {"chars": USER_VERIFIER, "m500": "math"}
    for bench in report["benchmarks"].values():
        for flat in bench["results"].values():
            for mode in ("normal", "high_entropy"):
                assert {f"{mode}/{m}" for m in ("avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@4",
                                                "entropy_bits", "response_length")} <= set(flat)
    assert report["benchmarks"]["chars"]["results"]["A"]["prompts"] == 3
    png = output.with_suffix(".png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000


@pytest.mark.parametrize("label", ["A", "B"])
def test_every_figure_is_recomputed_from_the_samples(evaluated, label):
    base, output, report = evaluated
    samples = _samples(output, label)
    prepared = [json.loads(line) for line in (base / "math500.jsonl").read_text().splitlines()]
    assert {(s["benchmark"], s["mode"]) for s in samples} == {(b, m) for b in ("chars", "m500")
                                                              for m in ("normal", "high_entropy")}
    for s in samples:  # each benchmark was scored by its own verifier
        if s["benchmark"] == "chars":
            assert s["reward"] == first_char_even(None, s["text"]) and s["answer_key"] == _first_char(None, s["text"])
        else:
            assert s["reward"] == math_reward(prepared[s["prompt"]], s["text"])[0]
    for bench in ("chars", "m500"):
        flat = report["benchmarks"][bench]["results"][label]
        for mode in ("normal", "high_entropy"):
            mine = [s for s in samples if s["benchmark"] == bench and s["mode"] == mode]
            groups = {}
            for s in mine:
                groups.setdefault(s["prompt"], []).append(s)
            # 3 prompts in batches of 2: the second batch's prompt keeps its global index
            assert sorted(groups) == list(range(3 if bench == "chars" else 2))
            assert all(sorted(s["sample"] for s in g) == list(range(N)) for g in groups.values())
            counts = [sum(s["reward"] > 0 for s in g) for g in groups.values()]
            assert flat[f"{mode}/avg@{N}"] == pytest.approx(sum(counts) / (N * len(groups)))
            for k in range(1, N + 1):
                exact = [1 - Fraction(math.comb(N - c, k), math.comb(N, k)) for c in counts]
                assert flat[f"{mode}/pass@{k}"] == pytest.approx(float(sum(exact) / len(exact)))
            votes = []
            for g in groups.values():
                tally = {}
                for s in g:
                    if s["reward"] > 0 or s["answer_key"] is not None:
                        answer = "<correct>" if s["reward"] > 0 else s["answer_key"]
                        tally[answer] = tally.get(answer, 0) + 1
                top = [a for a, c in tally.items() if c == max(tally.values(), default=0)]
                votes.append(1 / len(top) if "<correct>" in top else 0.0)
            assert flat[f"{mode}/maj@{N}"] == pytest.approx(sum(votes) / len(votes))
            tokens = sum(s["tokens"] for s in mine)
            assert flat[f"{mode}/response_length"] == pytest.approx(tokens / len(mine))
            assert flat[f"{mode}/entropy_bits"] == pytest.approx(
                sum(s["entropy_nats"] for s in mine) / tokens / math.log(2))
    chars = report["benchmarks"]["chars"]["results"][label]
    assert 0 < chars["normal/pass@1"] < chars["normal/pass@4"]  # the user verifier gives mixed rewards


def test_entropy_matches_transformers(evaluated):
    """The Megatron entropy pass of each sample against transformers' full-vocabulary entropy of the
    same model at the evaluation temperature."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, output, report = evaluated
    folder = base / "model_a"
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = {"chars": [json.loads(line)["prompt"] for line in (base / "chars.jsonl").read_text().splitlines()],
                 "m500": [json.loads(line)["prompt"] for line in (base / "math500.jsonl").read_text().splitlines()]}
    samples = _samples(output, "A")
    for s in samples:
        mode = NORMAL if s["mode"] == "normal" else HIGH_ENTROPY
        prompt = render_prompt_ids(tokenizer, questions[s["benchmark"]][s["prompt"]], mode, he_prompt=EMBEDDED_HE_PROMPT)
        ids = torch.tensor([prompt + s["response_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].double() / TEMPERATURE
        logp = torch.log_softmax(logits, dim=-1)
        reference = float(-(logp.exp() * logp).sum())
        assert s["tokens"] == len(s["response_ids"])
        assert s["entropy_nats"] == pytest.approx(reference, rel=1e-4, abs=1e-4), s
