"""The `policy-split` command.

    policy-split                      the embedded default pipeline (= `policy-split run`)
    policy-split run      [--config] [overrides]   warm start -> RL -> held-out eval -> HF export -> PNG
    policy-split train    [--config] [overrides]   the RL run alone (resumes from checkpoints/latest)
    policy-split evaluate PATH [--benchmark [NAME=]FILE ...] [--compare PATH_B] [--output F.json]
                                                   both modes of a checkpoint or HF folder on benchmarks
    policy-split plot     RUN_DIR                  curves.png of a run
    policy-split convert  to-hf|from-hf ...        checkpoint <-> Hugging Face folder (docs/conversion.md)
    policy-split prepare-data DATASET FILE... -o OUT.jsonl   hub files -> prompt records (docs/data.md)
    policy-split check                             Megatron vs transformers parity of each model family

A mistake in what you give (a config field, a path, a data row, a parallel layout, a checkpoint)
ends the command with one line `policy-split: error: ...` and exit status 2; add --debug anywhere
for the traceback.

With no `data.train_files` in the YAML file or the overrides (the embedded Countdown task), the
embedded default (`policy_split_megatron/embedded_default.py`) is the base that the file and the
overrides apply to; otherwise the library defaults (the paper's settings) are.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import yaml

from policy_split_megatron.console import quiet_third_party
from policy_split_megatron.errors import RankUserError, UserError, is_user_error, one_line

PROG = "policy-split"
WARNINGS_LOG = "warnings.log"
"""Third-party warnings of a command go to this file in its run directory (logging.dir)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a user error like any other (one line, status 2)."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _uses_embedded_task(config_path: str | None, overrides: list[str]) -> bool:
    """True when no training data is named: the run trains on the embedded Countdown task."""
    try:
        tree = yaml.safe_load(Path(config_path).read_text()) if config_path else {}
    except (OSError, yaml.YAMLError):
        return True  # load_run_config reports the file's problem
    if not isinstance(tree, dict):
        return True
    in_file = bool(((tree or {}).get("data") or {}).get("train_files"))
    in_overrides = any(o.split("=", 1)[0].strip() == "data.train_files" for o in overrides if "=" in o)
    return not (in_file or in_overrides)


def load_cli_config(config_path: str | None, overrides: list[str]):
    """The run configuration of a command: embedded default base (when no training data is named)
    <- YAML <- overrides; validated before anything starts."""
    from policy_split_megatron.config import load_run_config
    from policy_split_megatron.embedded_default import embedded_default_tree

    base = embedded_default_tree() if _uses_embedded_task(config_path, overrides) else None
    return load_run_config(config_path, overrides, base=base)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with the run configuration (see policy_split_megatron/config.py)")
    parser.add_argument("--nproc", type=int, help="local CPU processes to spawn (default: TP x PP); "
                        "ignored under torchrun/srun")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.steps=20 parallel.tensor_parallel=2")


def preflight(config) -> None:
    """Checks of a run that take milliseconds, before any process is spawned: the model folder, the
    parallel layout against the model's heads and layers, the data files."""
    tp, pp = config.parallel.tensor_parallel, config.parallel.pipeline_parallel
    if config.model.hf_path:
        folder = Path(config.model.hf_path)
        if not (folder / "config.json").is_file():
            raise UserError(f"model.hf_path={folder} holds no config.json: point it to a Hugging Face model folder")
        from transformers import AutoConfig

        from policy_split_megatron.model import architecture_from_hf

        arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
        try:
            arch.validate_parallel(tp, pp)
        except ValueError as err:
            raise UserError(f"{err}; choose parallel.tensor_parallel / parallel.pipeline_parallel that divide "
                            "them") from err
    for field in ("train_files", "eval_files"):
        for name in getattr(config.data, field):
            if not Path(name).is_file():
                raise UserError(f"data.{field}: {name} does not exist or is not a file")


def main(argv: list[str] | None = None) -> int:
    """The console entry point: runs the command; user errors become one line and status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    from policy_split_megatron.distributed import SpawnTerminated

    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SpawnTerminated as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 128 + err.signum
    except Exception as err:  # noqa: BLE001 - user errors are reported, defects re-raised
        if not is_user_error(err):
            raise
        if debug:
            traceback.print_exc()
            if isinstance(err, RankUserError):
                print(f"raised in a rank:\n{err.remote_traceback}", file=sys.stderr)
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="the whole pipeline: warm start, RL, held-out evaluation, HF export, curves")
    _add_run_arguments(run)
    train = sub.add_parser("train", help="run (or resume) RL training")
    _add_run_arguments(train)
    evaluate = sub.add_parser("evaluate", help="evaluate both modes of a training checkpoint or an HF folder")
    evaluate.add_argument("path", help="HF model folder, a checkpoint step_N directory, or a checkpoints/ root")
    evaluate.add_argument("--output", help="JSON file for the results, with the pass@k curves next to it as .png "
                          "(default: print only)")
    evaluate.add_argument("--benchmark", action="append", default=[], metavar="[NAME=]FILE",
                          help="a prompt file to evaluate on, scored by the verifier its records name (prepare-data "
                          "writes them); repeat for several. Default: the run's held-out set")
    evaluate.add_argument("--compare", metavar="PATH_B", help="a second model folder or checkpoint, evaluated alike "
                          "and shown side by side")
    evaluate.add_argument("--plot", help="PNG of the pass@k curves (default: next to --output)")
    evaluate.add_argument("--save-samples", action="store_true",
                          help="also write every sample (text, reward, answer) next to --output")
    _add_run_arguments(evaluate)
    check = sub.add_parser("check", help="build each model family on Megatron (TP=1,2) and compare with transformers")
    check.add_argument("--families", nargs="+", default=["llama", "qwen2", "qwen3"])
    check.add_argument("--tp", nargs="+", type=int, default=[1, 2], help="tensor-parallel sizes to check")
    sub.add_parser("convert", help="training checkpoint <-> Hugging Face folder (to-hf / from-hf; see docs/conversion.md)",
                   add_help=False)
    sub.add_parser("prepare-data", help="downloaded Hugging Face dataset files -> prompt records (docs/data.md)",
                   add_help=False)
    plot = sub.add_parser("plot", help="draw a run's training curves (both modes on one figure) to PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--output", help="PNG path (default RUN_DIR/curves.png)")
    # Overrides may follow options (`evaluate PATH --output f.json train.seed=1`): argparse leaves
    # such trailing positionals unparsed, so collect the section.field=value ones here.
    if argv[:1] == ["convert"]:  # its own parser: tools/convert_checkpoint.py, same arguments
        quiet_third_party()
        from policy_split_megatron.bridge.checkpoint_convert import main as convert_main

        return convert_main(argv[1:], prog=f"{PROG} convert")
    if argv[:1] == ["prepare-data"]:  # its own parser: tools/prepare_data.py, same arguments
        from policy_split_megatron.data.prepare import main as prepare_main

        return prepare_main(argv[1:], prog=f"{PROG} prepare-data")
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    quiet_third_party()
    command = args.command or "run"
    if command == "check":
        from policy_split_megatron.model.check import run_model_check

        return 0 if run_model_check(tuple(args.families), tuple(args.tp)) else 1
    if command == "plot":
        from policy_split_megatron.trainer.plot import plot_run

        print(f"wrote {plot_run(args.run_dir, args.output)}")
        return 0

    config = load_cli_config(getattr(args, "config", None), getattr(args, "overrides", []))
    nproc = getattr(args, "nproc", None)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from policy_split_megatron.console import log_warnings_to

    log_warnings_to(Path(config.logging.dir) / WARNINGS_LOG)
    if command != "evaluate":
        preflight(config)
    if command == "evaluate":
        from policy_split_megatron.trainer.evaluate_command import run_evaluate_command

        run_evaluate_command(config, args.path, output=args.output, nproc=nproc, benchmarks=args.benchmark,
                             compare=args.compare, plot=args.plot, save_samples=args.save_samples)
        return 0

    from policy_split_megatron.trainer.launch import launch_training
    from policy_split_megatron.trainer.summary import run_summary

    metrics = launch_training(config, nproc)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) != 0:
        return 0  # under torchrun/srun every rank returns here; rank 0 reports
    if command == "run":
        from policy_split_megatron.trainer.plot import plot_run

        if config.train.steps > 0 and Path(config.logging.dir, "metrics.jsonl").exists():
            print(f"curves: {plot_run(config.logging.dir)}")
    print(run_summary(config, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
