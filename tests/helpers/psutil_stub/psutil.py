"""A stand-in for `psutil` that breaks megatron-core's checkpoint writing in one of three ways: put
this folder first on PYTHONPATH and set PSUTIL_STUB.

- "hang": the real psutil, with `Process.memory_info` (called by megatron-core's shard writer,
  filesystem_async._process_memory, and by nothing else on the converter's path) sleeping forever:
  a writer that never reports back.
- "sigkill": the same call SIGKILLs the calling process: a writer killed by the OOM killer.
- "missing": `import psutil` fails, as in an environment without it (megatron-core imports it
  optionally and fails only when a shard is written).
"""

import importlib.machinery
import importlib.util
import os
import signal
import sys
import time

_mode = os.environ.get("PSUTIL_STUB", "hang")
if _mode == "missing":
    raise ImportError("No module named 'psutil' (tests/helpers/psutil_stub with PSUTIL_STUB=missing)")

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "psutil", [p for p in sys.path if os.path.abspath(p or ".") != _here])
_real = importlib.util.module_from_spec(_spec)
sys.modules["psutil"] = _real
_spec.loader.exec_module(_real)
if _mode == "hang":
    _real.Process.memory_info = lambda self: time.sleep(10**6)
elif _mode == "sigkill":
    _real.Process.memory_info = lambda self: os.kill(os.getpid(), signal.SIGKILL)
else:
    raise ValueError(f"PSUTIL_STUB={_mode!r}: choose hang, sigkill or missing")
