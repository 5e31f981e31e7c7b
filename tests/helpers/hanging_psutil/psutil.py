"""A stand-in for `psutil` that makes megatron-core's checkpoint write workers hang: put this folder
first on PYTHONPATH. It loads the real psutil and replaces `Process.memory_info`, which megatron-core
calls only in its forked write workers (filesystem_async._process_memory), with an endless sleep.
That is the hang of a converter whose writer never reports back (tests/distributed/test_process_lifetime.py)."""

import importlib.machinery
import importlib.util
import os
import sys
import time

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "psutil", [p for p in sys.path if os.path.abspath(p or ".") != _here])
_real = importlib.util.module_from_spec(_spec)
sys.modules["psutil"] = _real
_spec.loader.exec_module(_real)
_real.Process.memory_info = lambda self: time.sleep(10**6)
