"""Command line of the recipes, with NeMo-Run's run flags (`--yes`, `--dryrun`, `--detach`, `--name`):

    python -m recipes.policy_split_default [recipe options] [executor options] [section.field=value ...]
    python -m recipes.qwen3_8b --algorithm grpo --hf-path /models/Qwen3-8B --executor slurm --account A ...
    python -m recipes --recipe llama31_8b ...          (the same, recipe chosen by name)

Trailing `section.field=value` arguments are appended to the recipe's overrides (they win). Without
--yes the resolved recipe and executor are shown and a confirmation is asked, as `nemo` CLIs do.
(NeMo-Run's own `run.cli` parser cannot read the override lists: "Unsupported type
Optional[list[str]]", hence this small argparse front end over the same `run.run`.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

RECIPES = ("policy_split_default", "qwen3_8b", "llama31_8b")


def build_parser(recipe: Optional[str]) -> argparse.ArgumentParser:
    from recipes.presets import ALGORITHM_PRESETS

    parser = argparse.ArgumentParser(prog=f"python -m recipes{'.' + recipe if recipe else ''}",
                                     description=__doc__.split("\n")[0])
    if recipe is None:
        parser.add_argument("--recipe", choices=RECIPES, default="policy_split_default")
    r = parser.add_argument_group("recipe")
    r.add_argument("--algorithm", choices=sorted(ALGORITHM_PRESETS), default="policy_split")
    r.add_argument("--steps", type=int, help="RL steps (train.steps)")
    r.add_argument("--logging-dir", help="run directory (logging.dir); use an absolute path for Slurm jobs")
    r.add_argument("--config", help="YAML file applied before the overrides")
    r.add_argument("--tensor-parallel", type=int)
    r.add_argument("--pipeline-parallel", type=int, help="default: the model preset's (docs/memory_plan.md)")
    r.add_argument("--hf-path", help="Hugging Face model folder (realistic recipes)")
    r.add_argument("--train-files", action="append", help="JSONL/Parquet prompt file (repeat for more; realistic recipes)")
    r.add_argument("--eval-files", action="append", help="held-out prompt file (repeat for more)")
    e = parser.add_argument_group("executor")
    e.add_argument("--executor", choices=("local", "slurm", "direct"), default="local",
                   help="local: torchrun here; slurm: sbatch (LocalTunnel, or SSH with --ssh-host); "
                        "direct: run in this process (spawns its own ranks)")
    e.add_argument("--ntasks-per-node", type=int, help="ranks per node (default: local 1, slurm 8 = GPUs)")
    e.add_argument("--nodes", type=int, default=1)
    e.add_argument("--gpus-per-node", type=int, default=8, help="slurm; 0 for CPU nodes")
    e.add_argument("--cpus-per-task", type=int)
    e.add_argument("--account", default="default")
    e.add_argument("--partition")
    e.add_argument("--time", default="04:00:00")
    e.add_argument("--container-image")
    e.add_argument("--container-mounts", action="append", help="src:dst (repeat for more)")
    e.add_argument("--job-dir", help="with --ssh-host: where NeMo-Run keeps the batch script and logs on the "
                   "cluster (locally: $NEMORUN_HOME/experiments)")
    e.add_argument("--ssh-host")
    e.add_argument("--ssh-user")
    e.add_argument("--launcher", choices=("torchrun", "srun"), help="default: local torchrun, slurm srun")
    f = parser.add_argument_group("run (NeMo-Run's flags)")
    f.add_argument("--yes", "-y", action="store_true", help="skip the confirmation")
    f.add_argument("--dryrun", action="store_true", help="show the job (Slurm: the batch script) without running it")
    f.add_argument("--detach", action="store_true", help="submit and return (slurm)")
    f.add_argument("--name", "-n", help="experiment name (default: the recipe's)")
    parser.add_argument("overrides", nargs="*", help="section.field=value, appended to the recipe's overrides")
    return parser


def recipe_from_args(recipe: str, args: argparse.Namespace):
    from recipes import factories

    extra = list(args.overrides)
    if recipe == "policy_split_default":
        partial = factories.policy_split_default(
            steps=args.steps, logging_dir=args.logging_dir or "runs/embedded_default", algorithm=args.algorithm,
            tensor_parallel=args.tensor_parallel or 1, config=args.config, extra=extra)
    else:
        model = {"qwen3_8b": "qwen3_8b", "llama31_8b": "llama31_8b"}[recipe]
        partial = factories.model_recipe(
            model, args.algorithm, hf_path=args.hf_path, train_files=args.train_files, eval_files=args.eval_files,
            logging_dir=args.logging_dir, tensor_parallel=args.tensor_parallel,
            pipeline_parallel=args.pipeline_parallel, steps=args.steps, config=args.config, extra=extra)
    return partial


def executor_from_args(args: argparse.Namespace):
    from recipes.executors import local_executor, slurm_executor

    if args.executor == "direct":
        return None
    if args.executor == "local":
        launcher = None if args.launcher == "srun" else "torchrun"
        return local_executor(ntasks_per_node=args.ntasks_per_node or 1, launcher=launcher)
    return slurm_executor(
        account=args.account, partition=args.partition, nodes=args.nodes,
        ntasks_per_node=args.ntasks_per_node or 8, gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task, time=args.time, container_image=args.container_image,
        container_mounts=args.container_mounts, job_dir=args.job_dir, ssh_host=args.ssh_host,
        ssh_user=args.ssh_user, launcher="torchrun" if args.launcher == "torchrun" else None)


def main(recipe: Optional[str] = None, argv: Optional[list[str]] = None) -> int:
    args = build_parser(recipe).parse_args(argv)
    recipe = recipe or args.recipe
    import nemo_run as run

    from recipes.presets import validate
    from recipes.task import command_line

    partial = recipe_from_args(recipe, args)
    validate(partial.overrides, partial.config)  # a bad override fails here, not in the job
    executor = executor_from_args(args)
    print(f"recipe {recipe}: {command_line(partial.overrides, partial.config)}")
    print(f"executor: {type(executor).__name__ if executor else 'direct (this process)'}")
    if not (args.yes or args.dryrun):
        if input("Launch? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not launched")
            return 1
    run.run(partial, executor=executor, name=args.name or recipe.replace("_", "-"), dryrun=args.dryrun,
            detach=args.detach, direct=executor is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
