"""The run configuration tree: the embedded default as a base, YAML and overrides on top, the
Policy Split knobs kept equal between what is sampled and what is scored, start-up validation, the
warm-start schedule, and the closing summary read back from a metrics file."""

import json
import math

import pytest

from policy_split_megatron.cli import load_cli_config
from policy_split_megatron.config import load_run_config
from policy_split_megatron.embedded_default import EMBEDDED_DEFAULT, EMBEDDED_HE_PROMPT, embedded_default_tree


def test_embedded_default_is_the_base_without_training_data(tmp_path):
    config = load_cli_config(None, [])
    assert config.rollout.he_system_prompt == EMBEDDED_HE_PROMPT
    assert config.algorithm.policy_split.he_system_prompt == EMBEDDED_HE_PROMPT
    assert config.data.countdown.num_numbers == EMBEDDED_DEFAULT["data"]["countdown"]["num_numbers"]
    assert config.warm_start.steps == EMBEDDED_DEFAULT["warm_start"]["steps"]
    # overrides win over the base, nested fields keep their siblings
    config = load_cli_config(None, ["rollout.normal.max_tokens=12", "warm_start.steps=5"])
    assert config.rollout.normal.max_tokens == 12 and config.rollout.normal.temperature == 1.0
    assert config.warm_start.steps == 5
    # a YAML file that names training data switches the base off: the library (paper) defaults apply
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data:\n  train_files: ['{data}']\n")
    config = load_cli_config(str(yaml_file), [])
    assert config.warm_start.steps == 0 and config.rollout.he_system_prompt != EMBEDDED_HE_PROMPT
    config = load_cli_config(None, [f"data.train_files=['{data}']"])
    assert config.warm_start.steps == 0


def test_base_tree_is_not_mutated():
    tree = embedded_default_tree()
    load_run_config(None, ["rollout.n_explore=2"], base=tree)
    assert tree == EMBEDDED_DEFAULT and "n_explore" not in tree["rollout"]


def test_policy_split_knobs_are_mirrored_or_refused():
    config = load_run_config(None, ["rollout.n_normal=2", "rollout.n_explore=6"])
    assert (config.algorithm.policy_split.n_normal, config.algorithm.policy_split.n_explore) == (2, 6)
    config = load_run_config(None, ["algorithm.policy_split.he_prompt_placement=user_prefix"])
    assert config.rollout.he_prompt_placement == "user_prefix"
    with pytest.raises(ValueError, match="rollout.n_explore must equal algorithm.policy_split.n_explore"):
        load_run_config(None, ["rollout.n_explore=2", "algorithm.policy_split.n_explore=3"])
    with pytest.raises(ValueError, match="he_system_prompt"):
        load_run_config(None, ["rollout.he_system_prompt=a", "algorithm.policy_split.he_system_prompt=b"])
    # baselines sample the normal mode only and ignore the policy_split section
    config = load_run_config(None, ["algorithm.name=grpo", "rollout.n_normal=8", "rollout.n_explore=0"])
    assert config.rollout.n_normal == 8 and config.algorithm.policy_split.n_explore == 4
    with pytest.raises(ValueError, match="samples the normal mode only"):
        load_run_config(None, ["algorithm.name=grpo"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=-1", "train.steps must be an int >= 0"),
        ("warm_start.min_lr_ratio=2", "warm_start.min_lr_ratio must be in"),
        ("data.countdown.num_numbers=7", "num_numbers"),
        ("data.countdown_eval_size=0", "data.countdown_eval_size"),
        ("data.no_such_field=1", "unknown field"),
        ("rollout.explore.temperature=0.5", "temperature must be equal"),
        ("algorithm.erpd.teachers=[1]", "algorithm.erpd.teachers must be a list of str"),
    ],
)
def test_bad_values_fail_at_load(override, message):
    with pytest.raises(ValueError, match=message):
        load_cli_config(None, [override])


def test_inputs_the_trainer_feeds_are_accepted_and_stage_2_needs_teachers():
    with pytest.raises(ValueError, match="erpd.stage=2 needs algorithm.erpd.teachers"):
        load_cli_config(None, ["algorithm.name=erpd", "algorithm.erpd.stage=2", "rollout.n_explore=0"])
    cfg = load_cli_config(None, ["algorithm.name=erpd", "algorithm.erpd.stage=2", "rollout.n_explore=0",
                                 "algorithm.erpd.teachers=['/a', '/b']"])
    assert cfg.algorithm.erpd.teachers == ["/a", "/b"]
    load_cli_config(None, ["algorithm.name=kl_cov", "algorithm.kl_cov.centering=global", "rollout.n_explore=0"])
    load_cli_config(None, ["algorithm.name=clip_cov", "algorithm.clip_cov.centering=global", "rollout.n_explore=0"])
    assert load_cli_config(None, ["algorithm.ppo.kl_coef=0.1"]).algorithm.ppo.kl_coef == 0.1
    load_cli_config(None, ["algorithm.name=erpd", "algorithm.erpd.stage=1", "rollout.n_explore=0"])


def test_summary_reads_accuracy_diversity_and_kl(tmp_path):
    from policy_split_megatron.trainer.summary import run_summary

    config = load_cli_config(None, [f"logging.dir={tmp_path}", "train.steps=10"])
    rows = [{"phase": "eval", "step": 0, "normal/accuracy": 0.2, "high_entropy/accuracy": 0.18}]
    rows += [{"phase": "rl", "step": s, "inter_mode/kl_normal_he": 0.01 * s, "inter_mode/kl_he_normal": 0.02 * s}
             for s in range(1, 11)]
    rows.append({"phase": "eval", "step": 10, "normal/accuracy": 0.31, "high_entropy/accuracy": 0.22,
                 "normal/distinct_correct": 1.5, "high_entropy/distinct_correct": 2.25})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = run_summary(config, {})
    assert "normal        held-out accuracy 0.200 -> 0.310" in text
    assert "high_entropy  held-out accuracy 0.180 -> 0.220" in text
    assert "distinct correct/prompt 2.25" in text
    # first and last fifth of the 10 steps: mean of steps 1-2 and of steps 9-10
    assert "inter_mode/kl_normal_he    first 2 steps 0.0150 -> last 2 steps 0.0950" in text
