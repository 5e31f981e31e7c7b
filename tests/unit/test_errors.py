"""What counts as a user error (one line, status 2) and how its message is put on one line."""

import importlib

import pytest

from policy_split_megatron.errors import USER_ERROR_TYPES, ConfigError, UserError, is_user_error, one_line


@pytest.mark.parametrize("name", sorted(USER_ERROR_TYPES))
def test_every_listed_user_error_type_exists(name):
    module, _, qualname = name.rpartition(".")
    cls = getattr(importlib.import_module(module), qualname)
    assert issubclass(cls, Exception)
    assert is_user_error(cls("x"))


def test_defects_are_not_user_errors():
    from policy_split_megatron.data.datasets import DatasetError

    class Derived(DatasetError):
        pass

    assert is_user_error(Derived("row 3")) and is_user_error(ConfigError("x")) and is_user_error(UserError("x"))
    assert is_user_error(FileNotFoundError(2, "No such file or directory", "/x"))
    for defect in (ValueError("x"), RuntimeError("x"), KeyError("x"), ZeroDivisionError()):
        assert not is_user_error(defect)


def test_one_line():
    assert one_line(FileNotFoundError(2, "No such file or directory", "/data/x.jsonl")) == \
        "/data/x.jsonl: No such file or directory"
    assert one_line(ValueError("first\n  second\n\nthird")) == "first; second; third"
    embedded = ("ckpt does not match: CheckpointException ranks:dict_keys([0])\n"
                "Traceback (most recent call last): (RANK 0)\n  File \"a.py\", line 1, in f\n    raise X\n"
                "    ^^^^^\nmegatron.core.CheckpointingException: Global shape mismatch for key w\n")
    assert one_line(RuntimeError(embedded)) == \
        "ckpt does not match: CheckpointException ranks:dict_keys([0]); Global shape mismatch for key w"
