"""Scoped stand-ins for the `torch.cuda` calls that megatron-core makes unconditionally, so that the
same megatron-core code paths (model construction, distributed checkpointing) run on CPU machines.

Each shim is a context manager, entered only when CUDA is unavailable (`on_cpu_only`), and
restores the real functions on exit. On GPUs nothing is patched.

- `Tensor.cuda()` -> identity: with tied embeddings split over pipeline stages, the model's
  constructor moves the shared weight to CUDA before the all-reduce that copies the first stage's
  embedding to the last stage.
- `torch.cuda.synchronize()` -> no-op and `torch.cuda.current_device()` -> "cpu": the
  distributed-checkpoint writer synchronises after its (here CPU-to-CPU) copies and allocates a
  small all-reduce flag on the current CUDA device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def _patched(owner, name: str, replacement) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[None]:
    """All shims at once; a no-op context when CUDA is available."""
    if torch.cuda.is_available():
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(torch.Tensor, "cuda", lambda self, *args, **kwargs: self))
        stack.enter_context(_patched(torch.cuda, "synchronize", lambda *args, **kwargs: None))
        stack.enter_context(_patched(torch.cuda, "current_device", lambda: "cpu"))
        yield
