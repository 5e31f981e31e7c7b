"""Mistakes in what the user gave, told apart from defects.

A user error (an unknown or invalid config field, a missing file, a bad dataset row, a parallel
layout that does not fit, a checkpoint that does not match the model) is printed by `policy-split`
as ONE line, `policy-split: error: <message>`, with exit status 2; `--debug` adds the traceback.
Anything else is a defect and keeps its traceback.

An exception is a user error when it is a `UserError`, or one of the library's input-checking
exceptions that are older than this module (`USER_ERROR_TYPES`, by qualified name so that checking
needs no import), or a missing/unreadable path (FileNotFoundError, NotADirectoryError,
IsADirectoryError, PermissionError). Raised in a spawned rank, it comes back to the main process
as `RankUserError` (distributed.spawn_local) with the rank's traceback attached.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A config file, field or value that cannot be used (config.load_run_config)."""


class RankUserError(UserError, RuntimeError):
    """A user error raised in a spawned rank. `remote_traceback` is that rank's traceback."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback


USER_ERROR_TYPES = frozenset({
    "policy_split_megatron.bridge.checkpoint_convert.ConversionError",
    "policy_split_megatron.bridge.convert.WeightMismatchError",
    "policy_split_megatron.bridge.hf_folder.HFFolderError",
    "policy_split_megatron.data.datasets.DatasetError",
    "policy_split_megatron.model.architecture.UnsupportedModelError",
    "policy_split_megatron.model.precision.UnsupportedPrecisionError",
    "policy_split_megatron.rewards.base.RewardLoadError",
    "policy_split_megatron.rollout.prompts.BadPromptError",
    "policy_split_megatron.trainer.checkpoint.CheckpointError",
    "policy_split_megatron.trainer.launch.LaunchError",
})
"""Input-checking exceptions of the library, by `module.QualifiedName` (tests/unit/test_errors.py
checks that each still exists)."""

_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (UserError, *_PATH_ERRORS)):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in USER_ERROR_TYPES for cls in type(exc).__mro__)


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line (continuation lines joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"  # "[Errno 2] No such file or directory: 'x'" reads worse
    return "; ".join(line.strip() for line in _without_tracebacks(text.splitlines()) if line.strip())


def _without_tracebacks(lines: list[str]) -> list[str]:
    """Messages that embed another process's traceback (torch.distributed.checkpoint does) keep
    only that traceback's last line, the exception's own message."""
    kept, inside = [], False
    for line in lines:
        if line.strip().startswith("Traceback (most recent call last)"):
            inside = True
        elif inside and line and not line[0].isspace():
            inside = False
            head, sep, message = line.partition(": ")  # "package.SomeError: message"
            kept.append(message if sep and " " not in head else line)
        elif not inside:
            kept.append(line)
    return kept
