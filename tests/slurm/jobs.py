"""What the cluster tests share: the quick training settings, and reading a job's run and log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ONE_NODE = REPO / "slurm" / "train_one_node.sbatch"
MULTI_NODE = REPO / "slurm" / "train_multi_node.sbatch"

# A run of a few seconds per step: no warm start, 2 prompts x (2 + 2) samples, short answers,
# 2 held-out prompts x 1 sample before and after.
QUICK = [
    "warm_start.steps=0",
    "data.prompts_per_step=2",
    "rollout.n_normal=2",
    "rollout.n_explore=2",
    "rollout.normal={'max_tokens': 16}",
    "rollout.explore={'max_tokens': 16}",
    "rollout.max_model_len=128",
    "rollout.kv_cache_bytes=134217728",
    "evaluation.max_prompts=2",
    "evaluation.samples_per_prompt=1",
    "logging.tensorboard=False",
]
# The header asks for 8 GPUs and 8 CPUs per task: a CPU node overrides them on the command line.
CPU_NODE = ["--gpus-per-node=0", "--cpus-per-task=1"]
JOB_TIMEOUT = 420


def rows(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl, in order (repeated steps would show here); a line the
    trainer is still writing is left out."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line]


def rl_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rows(run_dir) if r["phase"] == "rl"]


def latest(run_dir: Path) -> str | None:
    """The checkpoint `checkpoints/latest` names (None before the first save)."""
    path = run_dir / "checkpoints" / "latest"
    return path.read_text().strip() if path.exists() else None


def log_of(job) -> str:
    return job.log.read_text(errors="replace") if job.log.exists() else "<no log>"


def assert_completed(job, info: dict) -> None:
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (
        f"job {job.id} ended {info.get('JobState')} {info.get('ExitCode')}; log tail:\n{log_of(job)[-4000:]}")


def recipe_command(*args: str) -> list[str]:
    """The embedded-default NeMo-Run recipe, 2 steps of the quick settings, no confirmation."""
    return [sys.executable, "-W", "ignore", "-m", "recipes.policy_split_default", "--yes", "--steps", "2",
            *args, *QUICK]


def wait_process(proc, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def submitted_job_id(recipe_output: str) -> str:
    """The Slurm job id NeMo-Run prints after submitting."""
    return next(line.split("Job id:")[1].strip() for line in recipe_output.splitlines() if "Job id:" in line)
