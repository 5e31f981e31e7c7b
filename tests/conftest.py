"""Test groups by folder: unit/ (fast), distributed/ (real gloo groups), slurm/ (a real local
cluster), gpu/ (skipped without CUDA). Select with -m, e.g. `pytest -m "not slurm"`."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_GROUP_BY_FOLDER = {"unit": "unit", "distributed": "distributed", "slurm": "slurm", "gpu": "gpu"}


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA: run `python -m pytest -m gpu` on a GPU machine")
    for item in items:
        parts = item.path.relative_to(config.rootpath).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in _GROUP_BY_FOLDER:
            item.add_marker(getattr(pytest.mark, _GROUP_BY_FOLDER[parts[1]]))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
