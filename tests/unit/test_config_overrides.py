"""Overrides read by their field's type (config_tree.py): list fields take `key=a` and `key=[a,b]`,
scalars are checked, unknown fields and wrong types name the dotted field and the nearest names;
YAML goes through the same reader."""

import pytest

from policy_split_megatron.config import load_run_config
from policy_split_megatron.errors import ConfigError, is_user_error


@pytest.mark.parametrize("raw, files", [
    ("/x.jsonl", ["/x.jsonl"]),  # was read as ['/', 'x', '.', ...]
    ("[/x.jsonl]", ["/x.jsonl"]),  # was one file named "[/x.jsonl]"
    ("[/x.jsonl, /data/y.parquet]", ["/x.jsonl", "/data/y.parquet"]),
    ("['/x.jsonl','/y,z.jsonl']", ["/x.jsonl", "/y,z.jsonl"]),  # a Python literal; commas inside quotes
    ("[a.jsonl,'b, c.jsonl']", ["a.jsonl", "b, c.jsonl"]),
    ("[]", []),
])
def test_list_fields_take_one_value_or_a_bracketed_list(raw, files):
    config = load_run_config(None, [f"data.train_files={raw}", f"data.eval_files={raw}"])
    assert config.data.train_files == files and config.data.eval_files == files


def test_scalars_and_tuples_are_read_by_type():
    config = load_run_config(None, [
        "model.hf_path=123", "optimizer.lr=1e-3", "optimizer.betas=[0.9, 0.95]", "checkpoint.resume=false",
        "logging.tensorboard=Yes", "rollout.normal.stop_token_ids=7", "rollout.normal.stop=[</answer>, END]",
        "rollout.skip_tokenizer_init=off", "rollout.normal.seed=none", "rollout.explore.seed=3", "rollout.chat_template_kwargs={enable_thinking: false}",
        "train.steps=2_000", "algorithm.ppo.clip_eps_high=0.28", "rollout.use_chat_template=null",
    ])
    assert config.model.hf_path == "123"  # a path that looks like a number stays text
    assert config.optimizer.lr == pytest.approx(1e-3) and config.optimizer.betas == (0.9, 0.95)
    assert config.checkpoint.resume is False and config.logging.tensorboard is True
    assert config.rollout.normal.stop_token_ids == (7,) and config.rollout.normal.stop == ("</answer>", "END")
    assert config.rollout.normal.seed is None and config.rollout.explore.seed == 3
    assert config.rollout.chat_template_kwargs == {"enable_thinking": False}
    assert config.train.steps == 2000 and config.algorithm.ppo.clip_eps_high == pytest.approx(0.28)
    assert config.rollout.use_chat_template is None


@pytest.mark.parametrize("override, message", [
    ("data.trian_files=/x.jsonl", r"data.trian_files: unknown field; did you mean data.train_files"),
    ("tarin.steps=3", r"tarin: unknown field; did you mean train\?"),
    ("train.steps=abc", r"train.steps must be an int, got 'abc'"),
    ("train.steps=2.5", r"train.steps must be an int"),
    ("checkpoint.resume=maybe", r"checkpoint.resume must be true or false"),
    ("optimizer.lr=fast", r"optimizer.lr must be a number"),
    ("optimizer.betas=[0.9]", r"optimizer.betas must be a list of 2 values"),
    ("data.countdown=3", r"data.countdown is a section"),
    ("data.reward.x=1", r"data.reward is a value, not a section"),
    ("train.steps", r"must look like section.field=value"),
    ("parallel.tensor_parallel=0", r"parallel.tensor_parallel must be an int >= 1"),  # the field's own check
])
def test_mistakes_are_config_errors_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_run_config(None, [override])
    assert is_user_error(caught.value)


def test_yaml_is_read_by_the_same_types(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  train_files: /x.jsonl\noptimizer:\n  lr: 1\n")
    config = load_run_config(good)
    assert config.data.train_files == ["/x.jsonl"] and config.optimizer.lr == 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: ten\n")
    with pytest.raises(ConfigError, match="train.steps must be an int, got 'ten'"):
        load_run_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_run_config(broken)
    with pytest.raises(ConfigError, match="missing.yaml: No such file"):
        load_run_config(tmp_path / "missing.yaml")


def test_a_mapping_given_to_a_section_is_merged_into_it():
    from policy_split_megatron.embedded_default import embedded_default_tree

    base = embedded_default_tree()
    config = load_run_config(None, ["rollout.normal={'temperature': 1.0, 'max_tokens': 12}",
                                    "rollout.explore={max_tokens: 12}", "rollout.normal.top_k=5"], base=base)
    assert (config.rollout.normal.max_tokens, config.rollout.normal.top_k) == (12, 5)
    assert config.rollout.explore.temperature == base["rollout"]["explore"]["temperature"]  # sibling kept
    with pytest.raises(ConfigError, match="rollout.normal.max_tokens must be an int"):
        load_run_config(None, ["rollout.normal={'max_tokens': 'many'}"])
