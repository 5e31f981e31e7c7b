"""The one scoped device shim that lets megatron-core's own engine run on CPU machines.

megatron-core 0.16.1 hard-codes CUDA in places that have nothing to do with the maths: its
pipeline schedules allocate a token counter with `device="cuda"`, the optimizer and grad-norm code
allocate flags and scalars there, DDP allocates its gradient buffers on
`torch.cuda.current_device()`, the distributed optimizer refuses parameters whose `Tensor.type()`
string is not a CUDA one, and the checkpoint writer calls `.cuda()` and `torch.cuda.synchronize()`.
Inside `megatron_on_cpu()` on a machine without CUDA:

- a `TorchFunctionMode` rewrites every `device=` argument (and the positional device of
  `Tensor.to`) that names CUDA (`"cuda"`, `"cuda:N"`, an int, a CUDA `torch.device`) to the CPU;
- the same mode makes `Tensor.type()` (no arguments) answer `torch.cuda.<Dtype>Tensor` for CPU
  tensors, which is the distributed optimizer's only test of a parameter's device;
- `Tensor.cuda()` is the identity; `torch.cuda.current_device()` returns "cpu";
  `torch.cuda.synchronize()` does nothing;
- activation recomputation (`tensor_parallel.random.CheckpointFunction`) saves and restores the
  CUDA RNG state around a layer's recomputation: on CPU there is none, so getting it returns an empty
  state and setting it does nothing (the CPU RNG, which megatron-core saves too, is untouched).

So the CPU tests exercise the same DDP, distributed optimizer, pipeline schedules and checkpoint
code that run on GPU clusters (verified: DP=2 and TP=2 x DP=2 match a plain AdamW reference, PP=2
is bit-exact; /work/shared/notes/megatron_engine_on_cpu.md). Streams and events are never
touched: megatron-core uses them only with overlapped communication, which stays off on CPU.
With CUDA present, nothing is patched and the context is free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _names_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaArgumentsToCPU(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU; reports CUDA type names for CPU tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            tensor = args[0]
            if tensor.device.type == "cpu" and tensor.dtype in _CUDA_TYPE_NAMES:
                return _CUDA_TYPE_NAMES[tensor.dtype]
        if "device" in kwargs and _names_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        if func is torch.Tensor.to and len(args) > 1 and _names_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


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
    """Enter around megatron-core engine calls (model build, DDP wrapping, optimizer build and
    step, the forward/backward schedule, checkpoint save/load). A no-op when CUDA is available.
    Re-entrant: nested uses add nothing."""
    if torch.cuda.is_available() or _active[0]:
        yield
        return
    from megatron.core.tensor_parallel import random as megatron_random

    _active[0] = True
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_patched(torch.Tensor, "cuda", lambda self, *args, **kwargs: self))
            stack.enter_context(_patched(torch.cuda, "synchronize", lambda *args, **kwargs: None))
            stack.enter_context(_patched(torch.cuda, "current_device", lambda: "cpu"))
            stack.enter_context(_patched(megatron_random, "_get_cuda_rng_state",
                                         lambda *args, **kwargs: torch.empty(0, dtype=torch.uint8)))
            stack.enter_context(_patched(megatron_random, "_set_cuda_rng_state", lambda *args, **kwargs: None))
            stack.enter_context(_CudaArgumentsToCPU())
            yield
    finally:
        _active[0] = False


_active = [False]
