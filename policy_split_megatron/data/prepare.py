"""`policy-split prepare-data DATASET FILE... --output OUT.jsonl` (also `tools/prepare_data.py`):
files downloaded from the Hugging Face hub -> prompt records the trainer and `evaluate` load.

Files are read locally (JSONL, JSON, Parquet, CSV; a directory stands for its files); nothing is
fetched. Each file is matched to one of the dataset's known column layouts (data/benchmarks.py,
docs/data.md) before any row is read: a file with missing or renamed columns is refused with its
name, the missing columns and the columns it has. Every row then becomes

    {"prompt": <the paper's template applied>, "answer": <what the verifier checks>,
     "metadata": {"dataset", "reward", "origin": "<file>: row N", <the layout's optional columns>}}

A row that cannot be converted (blank question, missing answer, bad options) is refused with its
location, or with `--on-bad-row skip` skipped, listed and counted. Then duplicates are dropped
(DAPO-Math-17k), a seeded random subset is drawn (DeepMath: 20,000 rows, the paper's training set)
and the records are written as JSONL (atomically).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from policy_split_megatron.data.benchmarks import DATASETS, BadRow, DatasetSpec, Layout
from policy_split_megatron.data.datasets import (
    DatasetError,
    expand_paths,
    parquet_columns,
    read_json_rows,
    read_jsonl_rows,
    read_parquet_rows,
)
from policy_split_megatron.data.writers import write_jsonl

SUFFIXES = (".jsonl", ".json", ".parquet", ".pq", ".csv")
BAD_ROW_POLICIES = ("error", "skip")
SHOWN_BAD_ROWS = 20  # bad rows listed one by one in the summary; the rest are counted


@dataclass
class PrepareReport:
    dataset: str
    output: Path
    layouts: dict[str, str] = field(default_factory=dict)  # file -> source of the matched layout
    rows: int = 0  # rows read
    bad_rows: list[tuple[str, str]] = field(default_factory=list)  # (location, reason), skipped
    duplicates: int = 0
    subset: int | None = None  # size of the random subset, when one was drawn (from `rows - bad - dup`)
    written: int = 0

    def summary(self) -> str:
        spec = DATASETS[self.dataset]
        lines = [f"{spec.title}: read {self.rows} rows from {len(self.layouts)} file(s)"]
        lines += [f"  {path}: layout of {source}" for path, source in self.layouts.items()]
        if self.bad_rows:
            lines.append(f"  skipped {len(self.bad_rows)} bad row(s):")
            lines += [f"    {where}: {reason}" for where, reason in self.bad_rows[:SHOWN_BAD_ROWS]]
            if len(self.bad_rows) > SHOWN_BAD_ROWS:
                lines.append(f"    ... and {len(self.bad_rows) - SHOWN_BAD_ROWS} more")
        if self.duplicates:
            lines.append(f"  dropped {self.duplicates} duplicate prompt(s)")
        if self.subset is not None:
            lines.append(f"  kept a seeded random subset of {self.subset}")
        lines.append(f"wrote {self.written} records to {self.output} (verifier: {spec.reward}; "
                     f"train with data.train_files=[{self.output}] data.reward={spec.reward}, "
                     f"or evaluate with --benchmark {self.output})")
        return "\n".join(lines)


def _read_csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            yield f"{path}: row {number}", row


def read_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(location, row) of one input file; an invalid JSON line comes as (location, DatasetError)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet_rows(path, columns)
    if suffix == ".csv":
        return _read_csv_rows(path)
    if suffix == ".json":
        return read_json_rows(path)
    return read_jsonl_rows(path, yield_errors=True)


def file_columns(path: Path) -> list[str]:
    """A file's columns: the Parquet schema, the CSV header, or the keys of the first JSON row."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return parquet_columns(path)
    if suffix == ".csv":
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    for _, row in read_rows(path):
        if isinstance(row, dict):
            return list(row)
    return []


def match_layout(spec: DatasetSpec, path: Path) -> tuple[Layout, list[str]]:
    """(the first of the dataset's layouts whose columns the file has, the columns of that layout
    the file holds); else a DatasetError naming the file, what each known layout misses, and the
    columns the file has."""
    columns = file_columns(path)
    for layout in spec.layouts:
        if all(c in columns for c in layout.columns):
            return layout, [c for c in layout.columns + layout.optional if c in columns]
    missing = "; ".join(
        f"{layout.source} needs {list(layout.columns)}, missing {[c for c in layout.columns if c not in columns]}"
        for layout in spec.layouts)
    raise DatasetError(f"{path}: not a {spec.title} file: {missing}. Columns present: {columns}")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)  # dates, decimals: as text


def convert_row(spec: DatasetSpec, layout: Layout, where: str, row: Any, seed: int) -> dict:
    """One row -> record; raises BadRow (without the location) when it cannot be converted."""
    if isinstance(row, DatasetError):
        raise BadRow(str(row))
    if not isinstance(row, dict):
        raise BadRow(f"expected an object with columns {list(layout.columns)}, got {type(row).__name__}")
    missing = [c for c in layout.columns if c not in row]
    if missing:
        raise BadRow(f"missing column(s) {missing} (columns present: {sorted(row)})")
    prepared = layout.convert(row, seed)
    metadata = {"dataset": spec.name, "reward": spec.reward, "origin": where}
    metadata.update({c: _jsonable(row[c]) for c in layout.optional if row.get(c) is not None})
    metadata.update(prepared.metadata)
    return {"prompt": prepared.prompt, "answer": prepared.answer, "metadata": metadata}


def prepare_dataset(
    dataset: str,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    seed: int = 0,
    subset_size: int | None = -1,
    on_bad_row: str = "error",
) -> PrepareReport:
    """Convert `inputs` (files of `dataset`'s layouts) to prompt records in `output` (JSONL).

    `subset_size`: -1 = the dataset's default (DeepMath: 20,000), None or 0 = every row, N = a random
    subset of N rows drawn with `random.Random(seed)` and kept in file order."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: choose one of {sorted(DATASETS)}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DatasetError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    spec = DATASETS[dataset]
    size = spec.subset_size if subset_size == -1 else (subset_size or None)
    if size is not None and size < 0:
        raise DatasetError(f"subset size must be >= 0, got {size}")
    files = expand_paths(inputs, SUFFIXES)
    for path in files:
        if path.suffix.lower() not in SUFFIXES:
            raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use one of {SUFFIXES}")
    layouts = {path: match_layout(spec, path) for path in files}  # every file checked before any row is read
    report = PrepareReport(dataset, Path(output), {str(p): layout.source for p, (layout, _) in layouts.items()})
    records: list[dict] = []
    seen: set[str] = set()
    for path, (layout, columns) in layouts.items():
        for where, row in read_rows(path, columns):
            report.rows += 1
            try:
                record = convert_row(spec, layout, where, row, seed)
            except BadRow as err:
                if on_bad_row == "error":
                    raise DatasetError(f"{where}: {err} (pass --on-bad-row skip to skip and count such rows)") from None
                report.bad_rows.append((where, str(err)))
                continue
            if spec.deduplicate:
                if record["prompt"] in seen:
                    report.duplicates += 1
                    continue
                seen.add(record["prompt"])
            records.append(record)
    if size is not None:
        if size > len(records):
            raise DatasetError(f"asked for a random subset of {size} rows but {', '.join(map(str, files))} "
                               f"give only {len(records)} usable rows: pass --subset-size 0 to keep them all")
        keep = sorted(random.Random(seed).sample(range(len(records)), size))
        records = [records[i] for i in keep]
        report.subset = size
    if not records:
        raise DatasetError(f"{', '.join(map(str, files))}: no usable rows")
    report.written = write_jsonl(output, records)
    return report


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    lines = [f"  {name:<13} {spec.title}; verifier {spec.reward}; columns: "
             + " | ".join(f"{', '.join(layout.columns)} ({layout.source})" for layout in spec.layouts)
             for name, spec in DATASETS.items()]
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert downloaded Hugging Face dataset files into prompt records (docs/data.md).",
        epilog="datasets:\n" + "\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset the files hold")
    parser.add_argument("inputs", nargs="+", help="local Parquet/JSONL/JSON/CSV files or directories")
    parser.add_argument("--output", "-o", required=True, help="the JSONL file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subset and of GPQA's option order")
    parser.add_argument("--subset-size", type=int, default=-1,
                        help="rows kept at random (default: 20000 for deepmath, every row otherwise; 0 = all)")
    parser.add_argument("--on-bad-row", choices=BAD_ROW_POLICIES, default="error",
                        help="refuse the files at the first bad row (default) or skip, list and count bad rows")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line; returns the exit status (2 for refused inputs)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        report = prepare_dataset(args.dataset, args.inputs, args.output, seed=args.seed,
                                 subset_size=args.subset_size, on_bad_row=args.on_bad_row)
    except DatasetError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
