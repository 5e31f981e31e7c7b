"""Benchmark: `prepare-data deepmath` on a DeepMath-103K-shaped Parquet set, and the Parquet column
projection it relies on against decoding every column.

    .venv/bin/python bench/bench_prepare_data.py [--rows 103110] [--solution-words 700] [--repeats 3]

Writes (in a temporary directory, nothing downloaded) four Parquet files with DeepMath-103K's
columns: question, final_answer, difficulty, topic and three r1_solution_* columns of
--solution-words random words each (the solutions are most of the real dataset's bytes). Then,
taking the best of --repeats each:

  projected   iterate every row reading only the 4 columns prepare-data needs
  full        iterate every row decoding all 7 columns (what reading without projection costs)
  prepare     prepare_dataset("deepmath", ...): layout check, conversion, seeded 20K subset, JSONL

and prints the times and full / projected.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from policy_split_megatron.data.datasets import read_parquet_rows
from policy_split_megatron.data.prepare import prepare_dataset

NEEDED = ["question", "final_answer", "difficulty", "topic"]


def write_files(folder: Path, rows: int, solution_words: int) -> list[Path]:
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(5000)]

    def text(n: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(n))

    files = []
    for part in range(4):
        count = rows // 4 + (part < rows % 4)
        table = pa.Table.from_pylist([
            {"question": f"Q{part}-{i}: " + text(30), "final_answer": str(i), "difficulty": 5.0, "topic": "Algebra",
             "r1_solution_1": text(solution_words), "r1_solution_2": text(solution_words),
             "r1_solution_3": text(solution_words)} for i in range(count)])
        files.append(folder / f"train-{part:05d}-of-00004.parquet")
        pq.write_table(table, files[-1])
    return files


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=103_110)
    parser.add_argument("--solution-words", type=int, default=700)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_files(folder, args.rows, args.solution_words)
        size = sum(f.stat().st_size for f in files) / 2**30
        projected = best(lambda: sum(1 for f in files for _ in read_parquet_rows(f, NEEDED)), args.repeats)
        full = best(lambda: sum(1 for f in files for _ in read_parquet_rows(f)), args.repeats)
        prepare = best(lambda: prepare_dataset("deepmath", files, folder / "out.jsonl",
                                               subset_size=min(20_000, args.rows)), args.repeats)
    print(f"{args.rows} rows, {size:.2f} GiB of Parquet in 4 files")
    print(f"  projected read (4 columns)  {projected:7.2f} s")
    print(f"  full read (7 columns)       {full:7.2f} s   full / projected = {full / projected:.1f}")
    print(f"  prepare-data deepmath       {prepare:7.2f} s")


if __name__ == "__main__":
    main()
