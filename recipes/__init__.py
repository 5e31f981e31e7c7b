"""NeMo-Run recipes for `policy-split train`.

A recipe is a `run.Partial` of `recipes.task.train` (the `policy-split train` command as a
function) whose arguments are a RunConfig override list (and optionally a YAML file); an executor
says where it runs: `local_executor` (torchrun on this machine) or `slurm_executor` (sbatch through
a `run.LocalTunnel`, or an SSH tunnel from a laptop).

    import nemo_run as run
    from recipes import policy_split_default, qwen3_8b, local_executor, slurm_executor

    run.run(policy_split_default(steps=5), executor=local_executor(ntasks_per_node=2))
    run.run(qwen3_8b("grpo", hf_path="/models/Qwen3-8B", train_files=["/data/train.parquet"]),
            executor=slurm_executor(account="acct", partition="batch", nodes=2), detach=True)

Command line (NeMo-Run's run flags `--yes`, `--dryrun`, `--detach`, `--name`; recipes/cli.py):

    python -m recipes.policy_split_default --yes --steps 5 --ntasks-per-node 2
    python -m recipes.qwen3_8b --yes --algorithm grpo --hf-path /models/Qwen3-8B --train-files /data/t.parquet \
        --executor slurm --account acct --partition batch --nodes 2 --detach

Presets (models, algorithms) are plain override lists in `recipes/presets.py`, so a recipe can
always be printed as the equivalent `policy-split train ...` command (`recipes.command_line`).
"""

from recipes.presets import (
    ALGORITHM_PRESETS,
    MODEL_PRESETS,
    algorithm_overrides,
    embedded_default_overrides,
    model_overrides,
)
from recipes.task import command_line, train

__all__ = [
    "ALGORITHM_PRESETS", "MODEL_PRESETS", "algorithm_overrides", "embedded_default_overrides", "model_overrides",
    "command_line", "train",
    "policy_split_default", "qwen3_8b", "llama31_8b", "local_executor", "slurm_executor",
]


def __getattr__(name):  # nemo_run is imported only when a recipe or executor is asked for
    if name in ("policy_split_default", "qwen3_8b", "llama31_8b", "model_recipe"):
        from recipes import factories

        return getattr(factories, name)
    if name in ("local_executor", "slurm_executor"):
        from recipes import executors

        return getattr(executors, name)
    raise AttributeError(name)
