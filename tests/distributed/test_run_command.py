"""`policy-split run` end to end on a shrunken embedded default (warm start -> RL -> evaluation ->
HF export -> curves), then `policy-split evaluate` on what it left: the HF export and the
checkpoint must reproduce the run's own final evaluation (same seeded samples, same entropies),
which fails if the export or the checkpoint loses or mangles any weight."""

import json

import pytest

from policy_split_megatron.cli import main

SMALL = [
    "warm_start.steps=3", "warm_start.batch_size=8", "train.steps=2", "data.prompts_per_step=4",
    "data.countdown_train_size=40", "data.countdown_eval_size=8", "evaluation.max_prompts=6",
    "evaluation.samples_per_prompt=2", "rollout.normal.max_tokens=12", "rollout.explore.max_tokens=12",
    "train.micro_batch_tokens=2048", "logging.tensorboard=False", "checkpoint.every_steps=0",
]
COMPARED = ["normal/accuracy", "high_entropy/accuracy", "normal/entropy_bits", "high_entropy/entropy_bits",
            "normal/response_length", "high_entropy/response_length", "normal/distinct_2", "high_entropy/distinct_2"]


def _final_eval(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["phase"] == "eval"]


def test_run_then_evaluate_export_and_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", f"logging.dir={run}", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "inter_mode/kl_normal_he" in out
    evals = _final_eval(run)
    assert [e["step"] for e in evals] == [0, 2]
    assert (run / "curves.png").stat().st_size > 10_000
    hf = run / "hf"
    assert (hf / "config.json").exists() and list(hf.glob("*.safetensors"))
    assert (hf / "tokenizer.json").exists() or (hf / "tokenizer_config.json").exists()

    final = evals[-1]
    for source in (hf, run / "checkpoints"):
        result_file = tmp_path / f"eval_{source.name}.json"
        assert main(["evaluate", str(source), f"logging.dir={tmp_path / 'eval'}", "--output", str(result_file),
                     *SMALL]) == 0
        report = json.loads(result_file.read_text())
        assert report["models"] == {"A": str(source)} and list(report["benchmarks"]) == ["eval"]
        assert report["benchmarks"]["eval"]["files"] == [str(tmp_path / "eval" / "data" / "countdown_eval.jsonl")]
        result = report["benchmarks"]["eval"]["results"]["A"]
        assert result["prompts"] == 6 and result_file.with_suffix(".png").exists()
        assert {"normal/avg@2", "normal/pass@2", "normal/maj@2", "high_entropy/pass@1"} <= set(result)
        for key in COMPARED:
            assert result[key] == pytest.approx(final[key], abs=1e-5), (source.name, key)


def test_evaluate_refuses_what_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    partial = tmp_path / "step_000001.partial"
    partial.mkdir()
    for path, message in ((tmp_path / "empty", "neither an HF folder"), (tmp_path / "missing", "does not exist"),
                          (partial, "partial checkpoint")):
        assert main(["evaluate", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("policy-split: error: ") and message in err[0], err
