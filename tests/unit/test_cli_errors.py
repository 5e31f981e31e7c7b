"""User mistakes end `policy-split` with ONE line `policy-split: error: ...` naming the bad input, and
exit status 2, before anything is spawned; --debug adds the traceback. (Mistakes found inside the
spawned ranks: tests/distributed/test_cli_errors.py.)"""

import pytest

from policy_split_megatron.cli import main


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("policy-split: error: ")
    return err[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("argv, names", [
    (["train", "tarin.steps=3"], ["tarin: unknown field", "did you mean train?"]),
    (["train", "data.trian_files=/x.jsonl"], ["data.trian_files", "data.train_files"]),
    (["train", "train.steps=abc"], ["train.steps must be an int, got 'abc'"]),
    (["run", "checkpoint.resume=maybe"], ["checkpoint.resume must be true or false"]),
    (["train", "--config", "/no/such/run.yaml"], ["/no/such/run.yaml", "No such file"]),
    (["train", "data.train_files=/no/such.jsonl"], ["data.train_files: /no/such.jsonl does not exist"]),
    (["train", "--nproc", "3", "parallel.tensor_parallel=2"], ["world size 3", "2 x 1"]),
    (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["evaluate", "/no/such/folder"], ["/no/such/folder does not exist"]),
])
def test_user_mistakes_are_one_line_and_status_2(argv, names, capsys):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    for name in names:
        assert name in line, line
    assert "Traceback" not in line


def test_model_that_the_layout_cannot_shard(tiny_model, capsys):
    assert main(["train", f"model.hf_path={tiny_model}", "parallel.tensor_parallel=3"]) == 2
    line = _one_error_line(capsys)
    assert "num_attention_heads=4 is not divisible by TP=3" in line and "parallel.tensor_parallel" in line
    assert main(["train", f"model.hf_path={tiny_model.parent}"]) == 2
    assert "holds no config.json" in _one_error_line(capsys)


def test_debug_adds_the_traceback(capsys):
    assert main(["--debug", "train", "train.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1] == "policy-split: error: train.steps must be an int, got 'abc'"


def test_defects_keep_their_traceback(monkeypatch):
    import policy_split_megatron.cli as cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "load_cli_config", broken)
    with pytest.raises(ZeroDivisionError):
        main(["train"])
