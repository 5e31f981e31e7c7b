#!/usr/bin/env python
"""Convert between training checkpoints and Hugging Face folders (see docs/conversion.md).

    python tools/convert_checkpoint.py to-hf   CHECKPOINT OUT [--tp N] [--dtype auto|float32|bfloat16]
                                               [--metadata-dir HF_DIR] [--max-shard-size 4GB] [--overwrite]
    python tools/convert_checkpoint.py from-hf HF_DIR CHECKPOINT_ROOT [--tp N] [--params-dtype float32|bfloat16]

CHECKPOINT is a `step_N` directory or a checkpoints/ root with `latest`. On one machine the command
spawns --tp local gloo processes on CPU; under torchrun or srun (WORLD_SIZE / SLURM_NTASKS set) it
runs in the launched ranks. The implementation lives in
`policy_split_megatron.bridge.checkpoint_convert` (`main(argv)` is importable from there as well).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), convert, print what was written; returns the exit status."""
    try:
        from policy_split_megatron.console import quiet_third_party
    except ImportError:  # run from a source checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from policy_split_megatron.console import quiet_third_party

    quiet_third_party()  # before megatron-core is imported: its import-time warnings are expected on CPU
    from policy_split_megatron.bridge.checkpoint_convert import main as convert_main

    return convert_main(argv, prog="convert_checkpoint.py")


if __name__ == "__main__":
    sys.exit(main())
