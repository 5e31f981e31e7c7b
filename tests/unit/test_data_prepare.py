"""`prepare-data`: hub files in each dataset's real column layout (written here, Parquet through
pyarrow, JSONL, CSV) -> prompt records with the paper's templates, read back by the trainer's loader
and scored by the verifiers; renamed columns and bad rows refused with their location, or skipped
and counted."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policy_split_megatron.cli import main as cli_main
from policy_split_megatron.data import DatasetError, load_prompt_dataset
from policy_split_megatron.data.benchmarks import DAPO_PREFIX, DAPO_SUFFIX, MATH_TEMPLATE
from policy_split_megatron.data.prepare import prepare_dataset
from policy_split_megatron.rewards import math_reward, multiple_choice_reward

ROOT = Path(__file__).resolve().parents[2]
# Policy Split, App. C.1, verbatim (written out here, not taken from the code under test)
PAPER_CHOICE_INSTRUCTION = ("Select one option from the given choices that accurately answers the question, and "
                            "enclose your final answer (which should be the uppercase letter index of the chosen "
                            "option) within \\boxed{}.")


def _parquet(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def deepmath_rows(n):
    return [{"question": f"What is {i} + {i}?", "final_answer": str(2 * i), "difficulty": 5.0 + i % 3,
             "topic": "Mathematics -> Algebra", "r1_solution_1": "long " * 50, "r1_solution_2": "x",
             "r1_solution_3": "y"} for i in range(n)]


def test_deepmath_seeded_subset(tmp_path):
    source = _parquet(tmp_path / "train-00000-of-00001.parquet", deepmath_rows(40))
    out = tmp_path / "deepmath.jsonl"
    report = prepare_dataset("deepmath", [source], out, subset_size=10, seed=3)
    records = _records(out)
    assert report.written == 10 and report.subset == 10 and report.rows == 40
    # the subset is kept in file order, and is the seed's: same seed -> same rows, other seed -> others
    numbers = [int(r["answer"]) // 2 for r in records]
    assert numbers == sorted(numbers) and len(set(numbers)) == 10
    again = prepare_dataset("deepmath", [source], tmp_path / "again.jsonl", subset_size=10, seed=3)
    assert _records(tmp_path / "again.jsonl") == records and again.written == 10
    prepare_dataset("deepmath", [source], tmp_path / "other.jsonl", subset_size=10, seed=4)
    assert [r["answer"] for r in _records(tmp_path / "other.jsonl")] != [r["answer"] for r in records]
    first = records[0]
    i = numbers[0]
    assert first["prompt"] == MATH_TEMPLATE.format(query=f"What is {i} + {i}?")
    assert first["prompt"].startswith("Solve the following math problem. Put your final answer within \\boxed{}.\n\n")
    assert first["metadata"]["dataset"] == "deepmath" and first["metadata"]["reward"] == "math"
    assert first["metadata"]["topic"] == "Mathematics -> Algebra" and "r1_solution_1" not in first["metadata"]
    assert first["metadata"]["origin"].startswith(f"{source}: row ")
    # the trainer's loader reads it, and the math verifier scores it
    loaded = load_prompt_dataset(out)
    assert len(loaded) == 10 and loaded[0]["prompt"] == first["prompt"]
    assert math_reward(loaded[0], f"so \\boxed{{{2 * i}}}")[0] == 1.0
    assert math_reward(loaded[0], f"so \\boxed{{{2 * i + 1}}}")[0] == 0.0


def test_deepmath_default_subset_is_the_papers_20k(tmp_path):
    source = _parquet(tmp_path / "d.parquet", deepmath_rows(5))
    with pytest.raises(DatasetError, match=r"subset of 20000 rows .* only 5 usable rows.*--subset-size 0"):
        prepare_dataset("deepmath", [source], tmp_path / "o.jsonl")
    assert prepare_dataset("deepmath", [source], tmp_path / "o.jsonl", subset_size=0).written == 5


DAPO_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("index", pa.string())])),
])


def _dapo_content(problem):
    return (f"{DAPO_PREFIX} The last line of your response should be of the form Answer: $Answer (without quotes) "
            f"where $Answer is the answer to the problem.\n\n{problem}{DAPO_SUFFIX}")


def test_dapo_unwraps_and_deduplicates(tmp_path):
    rows = [{"data_source": "math_dapo", "prompt": [{"content": _dapo_content(f"Find {k} squared."), "role": "user"}],
             "ability": "MATH", "reward_model": {"ground_truth": str(k * k), "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": f"uuid-{k}"}} for k in (3, 4, 5)]
    source = _parquet(tmp_path / "dapo-math-17k.parquet", rows * 3, DAPO_SCHEMA)  # shipped ~100x in the hub file
    out = tmp_path / "dapo.jsonl"
    report = prepare_dataset("dapo", [source], out)
    records = _records(out)
    assert report.rows == 9 and report.duplicates == 6 and report.written == 3
    assert [r["answer"] for r in records] == ["9", "16", "25"]
    assert records[0]["prompt"] == MATH_TEMPLATE.format(query="Find 3 squared.")
    assert "Answer:" not in records[0]["prompt"]
    assert records[0]["metadata"]["extra_info"] == {"index": "uuid-3"}
    # open-r1's processed copy: the prompt is a string (still wrapped), the answer also in `solution`
    processed = _jsonl(tmp_path / "processed.jsonl", [
        {"prompt": _dapo_content("Find 6 squared."), "solution": "36", "data_source": "math_dapo",
         "source_prompt": [{"content": _dapo_content("Find 6 squared."), "role": "user"}], "ability": "MATH",
         "reward_model": {"ground_truth": "36", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "u6"}}])
    prepare_dataset("dapo", [processed], tmp_path / "p.jsonl")
    assert _records(tmp_path / "p.jsonl")[0]["prompt"] == MATH_TEMPLATE.format(query="Find 6 squared.")


def test_math500_and_aime_layouts(tmp_path):
    math500 = _jsonl(tmp_path / "test.jsonl", [
        {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "...", "answer": "\\frac{3}{4}",
         "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"}])
    prepare_dataset("math500", [math500], tmp_path / "m.jsonl")
    (record,) = _records(tmp_path / "m.jsonl")
    assert record["answer"] == "\\frac{3}{4}" and record["metadata"]["unique_id"] == "test/algebra/1.json"
    assert math_reward(record, "</think> \\boxed{0.75}")[0] == 1.0

    h4 = _parquet(tmp_path / "train-00000-of-00001.parquet", [
        {"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "url": "https://x", "year": "2024"}])
    maxwell = _parquet(tmp_path / "aime_2024_problems.parquet", [
        {"ID": "2024-I-1", "Problem": "Find y.", "Solution": "...", "Answer": 113}])
    report = prepare_dataset("aime2024", [h4, maxwell], tmp_path / "aime24.jsonl")
    records = _records(tmp_path / "aime24.jsonl")
    assert [r["answer"] for r in records] == ["204", "113"]  # an integer answer column becomes text
    assert records[1]["prompt"] == MATH_TEMPLATE.format(query="Find y.") and records[1]["metadata"]["ID"] == "2024-I-1"
    assert "Maxwell-Jia" in report.layouts[str(maxwell)] and "HuggingFaceH4" in report.layouts[str(h4)]

    part1 = _jsonl(tmp_path / "aime2025-I.jsonl", [{"question": "Find z.", "answer": "70"}])
    part2 = _jsonl(tmp_path / "aime2025-II.jsonl", [{"question": "Find w.", "answer": "468"}])
    assert prepare_dataset("aime2025", [part1, part2], tmp_path / "aime25.jsonl").written == 2


def test_gpqa_diamond_csv_shuffles_options_with_the_seed(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    columns = ["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
               "Incorrect Answer 3", "Explanation", "Subdomain", "Record ID", "High-level domain"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for q in range(12):
            writer.writerow({"Pre-Revision Question": "old", "Question": f"Which one is right, {q}?\nThink.",
                             "Correct Answer": f" right {q}\n", "Incorrect Answer 1": f"wrong a{q}",
                             "Incorrect Answer 2": f"wrong b{q}", "Incorrect Answer 3": f"wrong c{q}",
                             "Explanation": "...", "Subdomain": "Physics (general)", "Record ID": f"rec{q}",
                             "High-level domain": "Physics"})
    out = tmp_path / "gpqa.jsonl"
    prepare_dataset("gpqa_diamond", [path], out, seed=1)
    records = _records(out)
    for q, record in enumerate(records):
        line = next(x for x in record["prompt"].splitlines() if x.endswith(f"right {q}"))
        assert line == f"{record['answer']}. right {q}"  # the answer letter is the correct option's
        assert record["prompt"].startswith(PAPER_CHOICE_INSTRUCTION + "\n\n### Question\n")
        assert f"### Question\nWhich one is right, {q}?\nThink.\n\n### Choices\nA. " in record["prompt"]
        assert multiple_choice_reward(record, f"\\boxed{{{record['answer']}}}")[0] == 1.0
        assert record["metadata"]["Record ID"] == f"rec{q}" and record["metadata"]["reward"] == "multiple_choice"
    letters = [r["answer"] for r in records]
    assert len(set(letters)) > 1  # GPQA lists the correct option first: it must not stay "A"
    prepare_dataset("gpqa_diamond", [path], tmp_path / "same.jsonl", seed=1)
    assert [r["answer"] for r in _records(tmp_path / "same.jsonl")] == letters
    prepare_dataset("gpqa_diamond", [path], tmp_path / "other.jsonl", seed=2)
    assert [r["answer"] for r in _records(tmp_path / "other.jsonl")] != letters


MMLU_SCHEMA = pa.schema([("question_id", pa.int64()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                         ("answer", pa.string()), ("answer_index", pa.int64()), ("cot_content", pa.string()),
                         ("category", pa.string()), ("src", pa.string())])


def _mmlu_row(qid, options, answer_index, answer=None):
    return {"question_id": qid, "question": f"Question {qid}?", "options": options,
            "answer": answer or "ABCDEFGHIJ"[answer_index], "answer_index": answer_index, "cot_content": "",
            "category": "physics", "src": "ori_mmlu-physics"}


def test_mmlu_pro_parquet(tmp_path):
    source = _parquet(tmp_path / "test-00000-of-00001.parquet", [
        _mmlu_row(1, [f"opt {i}" for i in range(10)], 7), _mmlu_row(2, ["yes", "no", "maybe"], 2)], MMLU_SCHEMA)
    prepare_dataset("mmlu_pro", [source], tmp_path / "mmlu.jsonl")
    first, second = _records(tmp_path / "mmlu.jsonl")
    assert first["answer"] == "H" and first["prompt"].endswith("\nH. opt 7\nI. opt 8\nJ. opt 9")
    assert second["prompt"].endswith("### Choices\nA. yes\nB. no\nC. maybe") and second["answer"] == "C"
    assert first["metadata"]["category"] == "physics" and first["metadata"]["question_id"] == 1
    assert multiple_choice_reward(first, "The answer is \\boxed{H}")[0] == 1.0


def test_renamed_column_is_refused_naming_file_column_and_columns_present(tmp_path):
    renamed = _jsonl(tmp_path / "math500.jsonl", [{"question": "1+1?", "answer": "2", "subject": "x"}])
    with pytest.raises(DatasetError) as err:
        prepare_dataset("math500", [renamed], tmp_path / "o.jsonl")
    message = str(err.value)
    assert str(renamed) in message and "missing ['problem']" in message
    assert "Columns present: ['question', 'answer', 'subject']" in message
    # Parquet: the schema is checked before any row is read; every known layout says what it misses
    table = _parquet(tmp_path / "aime.parquet", [{"prob": "x", "Answer": "1"}])
    with pytest.raises(DatasetError, match=r"aime\.parquet: not a AIME 2024 file: .*missing \['problem', 'answer'\]"
                                           r".*missing \['Problem'\].*Columns present: \['prob', 'Answer'\]"):
        prepare_dataset("aime2024", [table], tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(DatasetError, match="no such local file or directory .*is not downloaded"):
        prepare_dataset("math500", ["HuggingFaceH4/MATH-500"], tmp_path / "o.jsonl")


def test_bad_rows_refused_with_location_or_skipped_and_counted(tmp_path):
    rows = [{"problem": "ok 1", "answer": "1"}, {"problem": "ok 2", "answer": None}, {"problem": "   ", "answer": "3"},
            {"problem": "ok 4", "answer": "4"}]
    table = _parquet(tmp_path / "m.parquet", rows)
    with pytest.raises(DatasetError, match=r"m\.parquet: row 1: answer column 'answer' is empty \(null\) "
                                           r"\(pass --on-bad-row skip"):
        prepare_dataset("math500", [table], tmp_path / "o.jsonl")
    report = prepare_dataset("math500", [table], tmp_path / "o.jsonl", on_bad_row="skip")
    assert report.written == 2 and report.rows == 4
    assert report.bad_rows == [(f"{table}: row 1", "answer column 'answer' is empty (null)"),
                               (f"{table}: row 2", "column 'problem' is blank")]
    assert "skipped 2 bad row(s)" in report.summary() and f"{table}: row 2: column 'problem' is blank" in report.summary()
    # JSONL: an invalid line and a row missing a column are bad rows with their line numbers
    lines = tmp_path / "m.jsonl"
    lines.write_text(json.dumps({"problem": "a", "answer": "1"}) + "\n{not json\n"
                     + json.dumps({"problem": "b"}) + "\n")
    report = prepare_dataset("math500", [lines], tmp_path / "o.jsonl", on_bad_row="skip")
    assert report.written == 1
    assert report.bad_rows[0][0] == f"{lines}: line 2" and "invalid JSON" in report.bad_rows[0][1]
    assert report.bad_rows[1] == (f"{lines}: line 3", "missing column(s) ['answer'] (columns present: ['problem'])")
    # MMLU-Pro: a letter outside the options, and a letter that disagrees with answer_index
    mmlu = _parquet(tmp_path / "mm.parquet", [_mmlu_row(1, ["a", "b"], 1, answer="E"),
                                             _mmlu_row(2, ["a", "b", "c"], 2, answer="B")], MMLU_SCHEMA)
    with pytest.raises(DatasetError, match=r"row 0: column 'answer' must be one of the letters AB, got 'E'"):
        prepare_dataset("mmlu_pro", [mmlu], tmp_path / "o.jsonl")
    with pytest.raises(DatasetError, match="no usable rows"):
        prepare_dataset("mmlu_pro", [mmlu], tmp_path / "o.jsonl", on_bad_row="skip")


def test_command_line_and_tool(tmp_path, capsys):
    source = _jsonl(tmp_path / "test.jsonl", [{"problem": "2+2?", "answer": "4"}])
    out = tmp_path / "out" / "math500.jsonl"
    assert cli_main(["prepare-data", "math500", str(source), "--output", str(out)]) == 0
    assert "wrote 1 records" in capsys.readouterr().out and _records(out)[0]["answer"] == "4"
    assert cli_main(["prepare-data", "mmlu_pro", str(source), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("policy-split prepare-data: error: ") and "missing ['question', 'options']" in error
    tool = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_data.py"), "math500", str(source), "-o",
                           str(tmp_path / "t.jsonl")], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert tool.returncode == 0, tool.stderr
    assert _records(tmp_path / "t.jsonl") == _records(out)
