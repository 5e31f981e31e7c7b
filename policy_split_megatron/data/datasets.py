"""Prompt datasets from local JSONL or Parquet files (never the Hugging Face hub).

One row is one prompt. Input fields: the prompt (field name configurable, default "prompt"), the answer
(default "answer"; what the reward function compares against) and anything else. Every row becomes a record

    {"prompt": str, "answer": <as in the file>, "metadata": dict, "source": "file.jsonl:12", "index": int}

whatever the input field names. "metadata" holds the row's other fields, updated with the row's own
"metadata" object when it has one. "index" is the record's position in the dataset (over all files).

File formats, chosen by extension:
  .jsonl          one JSON object per line; blank lines are ignored; locations are 1-based line numbers
  .json           a JSON array of objects, or JSON lines; array locations are 0-based "item" numbers
  .parquet / .pq  a table (read with pyarrow); locations are 0-based row numbers
A directory stands for its *.jsonl, *.json, *.parquet and *.pq files, in name order.

Errors (DatasetError, a ValueError) name the file and the line/row: invalid JSON, a row that is not an object,
a missing or non-string prompt field, a missing answer (unless require_answer=False), metadata that is not
an object, and an empty (blank) prompt unless skip_empty_prompts=True, which skips and counts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

JSONL_SUFFIXES = (".jsonl",)
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the line or row."""


@dataclass
class PromptDataset(Sequence):
    """A list of prompt records (module docstring) plus where they came from."""

    records: list[dict]
    paths: list[str] = field(default_factory=list)
    skipped_empty_prompts: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


def expand_paths(paths: str | Path | Iterable[str | Path], suffixes: Sequence[str] = SUPPORTED_SUFFIXES) -> list[Path]:
    """The files named; a directory stands for its files with one of `suffixes`, in name order.
    Every path must exist locally."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise DatasetError(f"{path}: directory has no {'/'.join(suffixes)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(
                f"{raw}: no such local file or directory (datasets are read from local files only; a "
                "Hugging Face hub name is not downloaded: save the data to a file first)"
            )
    if not files:
        raise DatasetError("no dataset files given")
    return files


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {SUPPORTED_SUFFIXES}")
    return suffix


def read_jsonl_rows(path: str | Path, *, yield_errors: bool = False) -> Iterator[tuple[str, Any]]:
    """(location, parsed row) per non-blank line: location is "path: line N" (1-based). An invalid
    line raises DatasetError, or with `yield_errors` is yielded as (location, DatasetError(reason))
    so the caller can skip it and go on."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                reason = f"invalid JSON ({err.msg} at column {err.colno})"
                if not yield_errors:
                    raise DatasetError(f"{where}: {reason}") from None
                row = DatasetError(reason)
            yield where, row


def read_json_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """A .json file: a JSON array of objects ("path: item N", 0-based), or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        yield from read_jsonl_rows(path)
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    for i, item in enumerate(items):
        yield f"{path}: item {i}", item


def parquet_columns(path: str | Path) -> list[str]:
    """Column names of a Parquet file (its schema only; no rows are read)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow.ArrowInvalid and friends
        raise DatasetError(f"{path}: not a readable Parquet file ({err})") from err


def read_parquet_rows(path: str | Path, columns: Sequence[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(location, row dict) per row: location is "path: row N" (0-based). `columns`
    reads only those columns (the others are never decoded: DeepMath's solutions are 5 GB)."""
    import pyarrow.parquet as pq  # a dependency of the package

    path = Path(path)
    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as err:  # pyarrow.ArrowInvalid and friends
        raise DatasetError(f"{path}: not a readable Parquet file ({err})") from err
    row = 0
    for batch in parquet_file.iter_batches(batch_size=4096, columns=list(columns) if columns else None):
        for item in batch.to_pylist():
            yield f"{path}: row {row}", item
            row += 1


def read_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Rows of one file with their locations, by extension."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl_rows(path)
    if suffix in JSON_SUFFIXES:
        return read_json_rows(path)
    return read_parquet_rows(path)


def make_record(
    where: str,
    row: Any,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    require_answer: bool = True,
) -> dict:
    """Validate one row and turn it into a record (without "index"). Raises DatasetError naming `where`."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object with a {prompt_field!r} field, got {type(row).__name__}")
    if prompt_field not in row or row[prompt_field] is None:
        raise DatasetError(f"{where}: missing field {prompt_field!r} (fields present: {sorted(row)})")
    prompt = row[prompt_field]
    if not isinstance(prompt, str):
        raise DatasetError(f"{where}: field {prompt_field!r} must be a string, got {type(prompt).__name__}")
    answer = row.get(answer_field)
    if require_answer and answer is None:
        raise DatasetError(f"{where}: missing field {answer_field!r} (fields present: {sorted(row)})")
    nested = row.get("metadata")
    if nested is not None and not isinstance(nested, dict):
        raise DatasetError(f"{where}: field 'metadata' must be an object, got {type(nested).__name__}")
    metadata = {k: v for k, v in row.items() if k not in (prompt_field, answer_field, "metadata")}
    metadata.update(nested or {})
    return {"prompt": prompt, "answer": answer, "metadata": metadata, "source": where}


def load_prompt_dataset(
    paths: str | Path | Iterable[str | Path],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    require_answer: bool = True,
    skip_empty_prompts: bool = False,
    max_records: int | None = None,
) -> PromptDataset:
    """Load and validate prompt records from local files (module docstring). `max_records` keeps the first N."""
    files = expand_paths(paths)
    for path in files:
        _suffix(path)
    records: list[dict] = []
    skipped = 0
    for path in files:
        for where, row in read_rows(path):
            record = make_record(where, row, prompt_field=prompt_field, answer_field=answer_field,
                                 require_answer=require_answer)
            if not record["prompt"].strip():
                if skip_empty_prompts:
                    skipped += 1
                    continue
                raise DatasetError(f"{where}: empty prompt in field {prompt_field!r} "
                                   "(set skip_empty_prompts to skip such rows)")
            record["index"] = len(records)
            records.append(record)
            if max_records is not None and len(records) >= max_records:
                break
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        names = ", ".join(str(p) for p in files)
        raise DatasetError(f"{names}: no prompt records" + (f" ({skipped} empty prompts skipped)" if skipped else ""))
    return PromptDataset(records, [str(p) for p in files], skipped)
