"""The evaluation suite's parts that need no model: benchmark files and verifiers checked up front,
per-batch means combined with the right weights, the report's table and its pass@k PNG."""

import json

import pytest

from policy_split_megatron.config import load_run_config
from policy_split_megatron.data import DatasetError
from policy_split_megatron.rewards import RewardLoadError
from policy_split_megatron.trainer.eval_suite import Benchmark, format_report, parse_benchmark, resolve_benchmarks
from policy_split_megatron.trainer.evaluate import _combine_batches, metric_order
from policy_split_megatron.trainer.plot import plot_pass_at_k


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_parse_benchmark():
    assert parse_benchmark("data/math500.jsonl") == ("math500", "data/math500.jsonl")
    assert parse_benchmark("aime=data/x.jsonl") == ("aime", "data/x.jsonl")
    assert parse_benchmark("data/prepared") == ("prepared", "data/prepared")
    with pytest.raises(DatasetError):
        parse_benchmark("=x.jsonl")


def test_resolve_benchmarks_reads_each_files_verifier_before_any_work(tmp_path):
    config = load_run_config(overrides=["data.reward=countdown"])
    assert resolve_benchmarks([], config) == [Benchmark("eval", (), "countdown")]
    math = _write(tmp_path / "math500.jsonl", [{"prompt": "q", "answer": "1", "metadata": {"reward": "math"}}])
    mc = _write(tmp_path / "gpqa.jsonl", [{"prompt": "q", "answer": "B", "metadata": {"reward": "multiple_choice"}}])
    plain = _write(tmp_path / "plain.jsonl", [{"prompt": "q", "answer": "1"}])
    got = resolve_benchmarks([math, f"g={mc}", plain], config)
    assert [(b.name, b.reward) for b in got] == [("math500", "math"), ("g", "multiple_choice"), ("plain", "countdown")]
    assert got[0].files == (math,)
    mixed = _write(tmp_path / "mixed.jsonl", [{"prompt": "q", "answer": "1", "metadata": {"reward": "math"}},
                                             {"prompt": "r", "answer": "B", "metadata": {"reward": "multiple_choice"}}])
    with pytest.raises(DatasetError, match="different verifiers"):
        resolve_benchmarks([mixed], config)
    unknown = _write(tmp_path / "u.jsonl", [{"prompt": "q", "answer": "1", "metadata": {"reward": "no.such:fn"}}])
    with pytest.raises(RewardLoadError, match="no.such"):
        resolve_benchmarks([unknown], config)
    with pytest.raises(DatasetError, match="two benchmarks are named 'math500'"):
        resolve_benchmarks([math, math], config)
    with pytest.raises(DatasetError, match="no such local file"):
        resolve_benchmarks([str(tmp_path / "missing.jsonl")], config)


def test_batch_means_are_weighted_by_prompts_per_mode():
    first = {"normal/distinct_2": 0.5, "normal/count": 3.0, "high_entropy/distinct_2": 1.0, "high_entropy/count": 1.0,
             "both/distinct_correct": 2.0, "rollout/seconds": 9.0}
    second = {"normal/distinct_2": 0.1, "normal/count": 1.0, "high_entropy/distinct_2": 0.0, "high_entropy/count": 3.0,
              "both/distinct_correct": 6.0, "rollout/seconds": 1.0}
    out = _combine_batches([first, second])
    assert out["normal/distinct_2"] == pytest.approx((0.5 * 3 + 0.1) / 4)
    assert out["high_entropy/distinct_2"] == pytest.approx(1.0 / 4)
    assert out["both/distinct_correct"] == pytest.approx((2.0 + 18.0) / 4)
    assert out["normal/count"] == 4.0 and "rollout/seconds" not in out


def _report():
    def flat(shift):
        out = {"prompts": 5.0, "skipped_prompts": 1.0}
        for mode, base in (("normal", 0.5), ("high_entropy", 0.4)):
            out.update({f"{mode}/avg@4": base + shift, f"{mode}/maj@4": base, f"{mode}/entropy_bits": 0.3,
                        f"{mode}/response_length": 12.0, f"{mode}/distinct_2": 0.9})
            out.update({f"{mode}/pass@{k}": min(1.0, base + shift + 0.1 * (k - 1)) for k in range(1, 5)})
        return out
    return {"evaluation": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "samples_per_prompt": 4},
            "models": {"A": "runs/ps/hf", "B": "runs/grpo/hf"},
            "benchmarks": {name: {"files": ["x"], "reward": "math", "results": {"A": flat(0.0), "B": flat(0.05)}}
                           for name in ("math500", "aime2024")}}


def test_report_table_and_pass_at_k_png(tmp_path):
    report = _report()
    text = format_report(report)
    lines = text.splitlines()
    assert "  A = runs/ps/hf" in lines and "  B = runs/grpo/hf" in lines
    assert "math500: verifier math, 5 prompts (1 skipped: too long or empty)" in lines
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split()[1:] == ["A", "normal", "A", "high_entropy", "B", "normal", "B", "high_entropy"]
    rows = [line.split()[0] for line in lines[lines.index(header) + 1: lines.index(header) + 9]]
    assert rows == ["avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@4", "entropy_bits", "response_length"]
    avg = next(line for line in lines if line.startswith("avg@4")).split()[1:]
    assert [float(x) for x in avg] == [0.5, 0.4, 0.55, 0.45]
    assert "distinct_2" not in text  # the table holds the suite's metrics; the JSON has every one
    assert sorted(["pass@10", "maj@2", "pass@2", "avg@2", "zeta"], key=metric_order) == \
        ["avg@2", "pass@2", "pass@10", "maj@2", "zeta"]
    png = plot_pass_at_k(report, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.parametrize("override, message", [
    ("evaluation.max_tokens=-1", "evaluation.max_tokens must be an int >= 0"),
    ("evaluation.batch_prompts=0", "evaluation.batch_prompts must be an int >= 1"),
    ("evaluation.max_tokens=4096", "evaluation.max_tokens=4096 leaves no room for the prompt in rollout.max_model_len=4096"),
])
def test_evaluation_settings_are_checked_at_load(override, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(overrides=[override])
    assert load_run_config(overrides=["evaluation.max_tokens=32768", "rollout.max_model_len=40960"]).evaluation.max_tokens == 32768
