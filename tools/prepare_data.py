#!/usr/bin/env python
"""Convert dataset files downloaded from the Hugging Face hub into prompt records (docs/data.md).

    python tools/prepare_data.py DATASET FILE [FILE ...] --output OUT.jsonl [--seed 0]
                                 [--subset-size N] [--on-bad-row error|skip]

DATASET is one of deepmath, dapo, math500, aime2024, aime2025, gpqa_diamond, mmlu_pro. Files are
read locally, never downloaded. Same as `policy-split prepare-data`; the implementation lives in
`policy_split_megatron.data.prepare` (`main(argv)` is importable from there as well).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), convert, print a summary; returns the exit status."""
    try:
        from policy_split_megatron.data.prepare import main as prepare_main
    except ImportError:  # run from a source checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from policy_split_megatron.data.prepare import main as prepare_main

    return prepare_main(argv, prog="prepare_data.py")


if __name__ == "__main__":
    sys.exit(main())
