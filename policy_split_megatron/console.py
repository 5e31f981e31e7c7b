"""What users see on the console: third-party noise off, our own progress bars and tables on."""

from __future__ import annotations

import os
import warnings


# Message prefixes of expected warnings (no TE/Apex on CPU, a CUDA tuning hint, a deprecation
# inside megatron-core's own defaults, the semaphores of ranks ended by a signal, which the
# multiprocessing resource tracker cleans up as it should).
_NOISY_WARNINGS = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "When using async grad",
    "full scope is deprecated",
    "resource_tracker: There appear to be",
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
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
