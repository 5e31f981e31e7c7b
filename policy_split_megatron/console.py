"""What users see on the console: third-party noise off, our own progress bars and tables on."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

WARNINGS_LOG_ENV = "POLICY_SPLIT_WARNINGS_LOG"
"""The file every process of a command appends Python warnings to (set by `log_warnings_to` and
inherited by spawned ranks, which install the same redirection in `quiet_third_party`)."""


# Message prefixes of expected warnings (no TE/Apex on CPU, a CUDA tuning hint, a deprecation
# inside megatron-core's own defaults, the semaphores of ranks ended by a signal, which the
# multiprocessing resource tracker cleans up as it should).
_NOISY_WARNINGS = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "When using async grad",
    "full scope is deprecated",
    "resource_tracker",  # (no colon: PYTHONWARNINGS splits its fields on ":")
)


def quiet_third_party() -> None:
    """Silence import-time warnings and progress bars of dependencies (megatron-core warns that
    TE/Apex are missing, which is expected on CPU; transformers draws a bar per weight load).
    Call in every process, spawned workers included: filters are not inherited."""
    # Inherited by spawned workers, which import megatron-core before any code of ours runs.
    os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore:{m}:UserWarning" for m in _NOISY_WARNINGS))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine start-up chatter at every run
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch's C++ warnings (NUMA binding notes at every gloo start-up) bypass Python's warnings
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    if os.environ.get(WARNINGS_LOG_ENV):
        _send_warnings_to(Path(os.environ[WARNINGS_LOG_ENV]))


def log_warnings_to(path: str | Path) -> None:
    """From now on, Python warnings of this process and of the processes it spawns go to `path`
    (appended, with the process id), not to the console. A warning prints the source line that
    raised it, which between progress bars shows up as stray fragments such as
    `checkpoint.load_state_dict(`; the run directory keeps them all."""
    os.environ[WARNINGS_LOG_ENV] = str(path)
    _send_warnings_to(Path(path))


def _send_warnings_to(path: Path) -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        text = warnings.formatwarning(message, category, filename, lineno, line)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as log:
                log.write(f"[pid {os.getpid()}] {text}")
        except OSError:
            pass  # an unwritable run directory is reported elsewhere; a warning is not worth a crash

    warnings.showwarning = show
