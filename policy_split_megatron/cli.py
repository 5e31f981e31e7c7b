"""The `policy-split` command.

Until the trainer lands, running it with no arguments performs the model check (see
`policy_split_megatron/model/check.py`); later issues make training the default.
"""

from __future__ import annotations

import argparse
import sys

from policy_split_megatron.console import quiet_third_party


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="policy-split", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="build each model family on Megatron (TP=1,2) and compare with transformers")
    check.add_argument("--families", nargs="+", default=["llama", "qwen2", "qwen3"])
    check.add_argument("--tp", nargs="+", type=int, default=[1, 2], help="tensor-parallel sizes to check")
    train = sub.add_parser("train", help="run (or resume) RL training; with no config: the embedded default")
    train.add_argument("--config", help="YAML file with the run configuration (see policy_split_megatron/config.py)")
    train.add_argument("--nproc", type=int, help="local CPU processes to spawn (default: TP x PP); "
                       "ignored under torchrun/srun")
    train.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.steps=20 parallel.tensor_parallel=2")
    plot = sub.add_parser("plot", help="draw a run's training curves (both modes on one figure) to PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--output", help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    quiet_third_party()
    if args.command in (None, "check"):
        from policy_split_megatron.model.check import run_model_check

        families = getattr(args, "families", ["llama", "qwen2", "qwen3"])
        tps = getattr(args, "tp", [1, 2])
        return 0 if run_model_check(tuple(families), tuple(tps)) else 1
    if args.command == "train":
        from policy_split_megatron.config import load_run_config
        from policy_split_megatron.trainer.launch import launch_training

        config = load_run_config(args.config, args.overrides)  # validated before anything starts
        metrics = launch_training(config, args.nproc)
        print(
            f"done: {config.train.steps} steps of {config.algorithm.name} in {config.logging.dir}; "
            f"last step normal reward {metrics.get('normal/reward', float('nan')):.3f}, "
            f"high-entropy reward {metrics.get('high_entropy/reward', float('nan')):.3f}"
        )
        return 0
    if args.command == "plot":
        from policy_split_megatron.trainer.plot import plot_run

        print(f"wrote {plot_run(args.run_dir, args.output)}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
