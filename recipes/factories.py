"""Recipe factories: `run.Partial`s of `recipes.task.train`, registered for NeMo-Run's CLI.

    policy_split_default(...)            the embedded tiny model on Countdown (CPU or one GPU)
    qwen3_8b(algorithm, hf_path, ...)    Qwen3-8B, the paper's settings
    llama31_8b(algorithm, hf_path, ...)  Llama-3.1-8B-Instruct
    model_recipe(model, algorithm, ...)  any entry of presets.MODEL_PRESETS

`algorithm` is one of presets.ALGORITHM_PRESETS: policy_split, grpo, entropy_reg (entropy bonus),
clip_cov, kl_cov, entropy_adv, entropy_driven_adv, forking_tokens.
"""


from typing import Optional

import nemo_run as run

from recipes.presets import embedded_default_overrides, model_overrides
from recipes.task import train


@run.cli.factory(target=train)
def policy_split_default(
    steps: Optional[int] = None, logging_dir: str = "runs/embedded_default", algorithm: str = "policy_split",
    tensor_parallel: int = 1, config: Optional[str] = None, extra: Optional[list[str]] = None,
) -> run.Partial[train]:
    """The embedded default run (what `policy-split` trains with no arguments)."""
    overrides = embedded_default_overrides(algorithm=algorithm, steps=steps, logging_dir=logging_dir,
                                           tensor_parallel=tensor_parallel, extra=extra)
    return run.Partial(train, overrides=overrides, config=config)


@run.cli.factory(target=train)
def model_recipe(
    model: str = "qwen3_8b", algorithm: str = "policy_split", hf_path: Optional[str] = None,
    train_files: Optional[list[str]] = None, eval_files: Optional[list[str]] = None,
    logging_dir: Optional[str] = None, tensor_parallel: Optional[int] = None, pipeline_parallel: Optional[int] = None,
    steps: Optional[int] = None, config: Optional[str] = None, extra: Optional[list[str]] = None,
) -> run.Partial[train]:
    """A realistic run: presets.MODEL_PRESETS[model] + ALGORITHM_PRESETS[algorithm] + paths."""
    overrides = model_overrides(model, algorithm, hf_path=hf_path, train_files=train_files, eval_files=eval_files,
                                logging_dir=logging_dir, tensor_parallel=tensor_parallel,
                                pipeline_parallel=pipeline_parallel, steps=steps, extra=extra)
    return run.Partial(train, overrides=overrides, config=config)


@run.cli.factory(target=train)
def qwen3_8b(algorithm: str = "policy_split", hf_path: Optional[str] = None, train_files: Optional[list[str]] = None,
             eval_files: Optional[list[str]] = None, logging_dir: Optional[str] = None,
             tensor_parallel: Optional[int] = None, steps: Optional[int] = None,
             extra: Optional[list[str]] = None) -> run.Partial[train]:
    """Qwen3-8B (thinking mode), the Policy Split paper's settings."""
    return model_recipe("qwen3_8b", algorithm, hf_path, train_files, eval_files, logging_dir, tensor_parallel,
                        steps=steps, extra=extra)


@run.cli.factory(target=train)
def llama31_8b(algorithm: str = "policy_split", hf_path: Optional[str] = None, train_files: Optional[list[str]] = None,
               eval_files: Optional[list[str]] = None, logging_dir: Optional[str] = None,
               tensor_parallel: Optional[int] = None, steps: Optional[int] = None,
               extra: Optional[list[str]] = None) -> run.Partial[train]:
    """Llama-3.1-8B-Instruct with the paper's RL settings (shorter responses: no thinking mode)."""
    return model_recipe("llama31_8b", algorithm, hf_path, train_files, eval_files, logging_dir, tensor_parallel,
                        steps=steps, extra=extra)
