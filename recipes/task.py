"""What a recipe runs in every rank: `policy-split train` as a function.

Under torchrun (LocalExecutor) or srun (SlurmExecutor) the trainer finds WORLD_SIZE / SLURM_NTASKS
and runs in the launched rank; with no launcher (`run.run(recipe)` directly) it spawns its ranks.
"""

from __future__ import annotations

import shlex
from typing import Optional


def train(overrides: Optional[list[str]] = None, config: Optional[str] = None, nproc: Optional[int] = None) -> None:
    """Run (or resume) `policy-split train [--config CONFIG] [--nproc N] OVERRIDES...`."""
    from policy_split_megatron.cli import main

    argv = ["train"]
    if config:
        argv += ["--config", config]
    if nproc:
        argv += ["--nproc", str(nproc)]
    code = main(argv + list(overrides or []))
    if code:
        raise SystemExit(code)


def command_line(overrides: Optional[list[str]] = None, config: Optional[str] = None) -> str:
    """The equivalent shell command of a recipe's arguments (for sbatch scripts and logs)."""
    argv = ["policy-split", "train"] + (["--config", config] if config else []) + list(overrides or [])
    return " ".join(shlex.quote(a) for a in argv)
