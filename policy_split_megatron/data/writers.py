"""Writers: JSONL files of prompt records, and the embedded Countdown train/eval sets.

The embedded default writes its data with `write_countdown_dataset` and then reads it back with
`load_prompt_dataset`, exactly like user data. Files (in `folder`):

    countdown_train.jsonl, countdown_eval.jsonl   one record per line:
        {"prompt": "8 2 10 6 -> 32", "answer": "32",
         "metadata": {"task": "countdown", "key": "2,6,8,10->32", "numbers": [8, 2, 10, 6], "target": 32,
                      "rule": "at_most_once", "num_solutions": 5,
                      "solutions": ["8*(6-2)", "2*(6+10)", ...], "reference": "8*(6-2)"}}
    countdown_meta.json                           the parameters the files were made with

Calling it again with the same parameters reuses the files (nothing is regenerated); different
parameters rewrite them. Write from one process only (rank 0), then barrier.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from policy_split_megatron.tasks.countdown import CountdownConfig, generate_problems

TRAIN_FILE = "countdown_train.jsonl"
EVAL_FILE = "countdown_eval.jsonl"
META_FILE = "countdown_meta.json"
META_VERSION = 1


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSON lines, atomically (a temporary file renamed over `path`). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


@dataclass(frozen=True)
class CountdownFiles:
    train: Path
    eval: Path
    meta: Path
    reused: bool  # True when existing files with the same parameters were kept


def countdown_records(config: CountdownConfig, split: str, count: int, seed: int) -> list[dict]:
    records = []
    for problem in generate_problems(config, split, count, seed=seed):
        record = problem.to_record()
        record["metadata"] = {"task": "countdown", "key": problem.key, **record["metadata"]}
        records.append(record)
    return records


def write_countdown_dataset(
    folder: str | Path,
    config: CountdownConfig | None = None,
    *,
    train_size: int = 2000,
    eval_size: int = 200,
    seed: int = 0,
    overwrite: bool = False,
) -> CountdownFiles:
    """Write the Countdown train and eval sets (disjoint by construction) as JSONL into `folder`."""
    config = config or CountdownConfig()
    folder = Path(folder)
    files = CountdownFiles(folder / TRAIN_FILE, folder / EVAL_FILE, folder / META_FILE, reused=False)
    meta = {
        "version": META_VERSION,
        "config": dataclasses.asdict(config),
        "train_size": train_size,
        "eval_size": eval_size,
        "seed": seed,
    }
    if not overwrite and all(p.is_file() for p in (files.train, files.eval, files.meta)):
        try:
            existing = json.loads(files.meta.read_text())
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing == meta:
            return dataclasses.replace(files, reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    files.meta.unlink(missing_ok=True)  # the meta file is written last: it marks complete output
    write_jsonl(files.train, countdown_records(config, "train", train_size, seed))
    write_jsonl(files.eval, countdown_records(config, "eval", eval_size, seed))
    files.meta.write_text(json.dumps(meta, indent=2) + "\n")
    return files
