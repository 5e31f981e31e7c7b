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
    args = parser.parse_args(argv)
    quiet_third_party()
    if args.command in (None, "check"):
        from policy_split_megatron.model.check import run_model_check

        families = getattr(args, "families", ["llama", "qwen2", "qwen3"])
        tps = getattr(args, "tp", [1, 2])
        return 0 if run_model_check(tuple(families), tuple(tps)) else 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
