"""Prompt datasets from local files: record format, validation errors naming file and line/row, Parquet
(pyarrow is a dependency: these fail, not skip, without it), and the Countdown writer going through
the same loader."""

import json

import pytest

from policy_split_megatron.data import DatasetError, load_prompt_dataset, write_countdown_dataset, write_jsonl
from policy_split_megatron.tasks.countdown import CountdownConfig, verify_expression

def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_records(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [
        json.dumps({"prompt": "1+1?", "answer": "2", "level": 1}),
        "",  # blank lines are ignored (line numbers still count them)
        json.dumps({"prompt": "2+2?", "answer": 4, "metadata": {"level": 2, "src": "x"}, "level": 9}),
    ])
    data = load_prompt_dataset(path)
    assert len(data) == 2 and data.paths == [str(path)] and data.skipped_empty_prompts == 0
    assert data[0] == {"prompt": "1+1?", "answer": "2", "metadata": {"level": 1},
                       "source": f"{path}: line 1", "index": 0}
    # nested metadata wins over a top-level field of the same name
    assert data[1]["metadata"] == {"level": 2, "src": "x"} and data[1]["answer"] == 4
    assert data[1]["source"] == f"{path}: line 3" and data[1]["index"] == 1


def test_custom_field_names(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps({"question": "q?", "solution": "a", "id": 7})])
    record = load_prompt_dataset(path, prompt_field="question", answer_field="solution")[0]
    assert record["prompt"] == "q?" and record["answer"] == "a" and record["metadata"] == {"id": 7}


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '], "line 2: invalid JSON"),
    (['{"prompt": "a", "answer": "1"}', '["not", "an", "object"]'], "line 2: expected a JSON object"),
    (['{"prompt": "a", "answer": "1"}', '', '{"question": "b", "answer": "1"}'],
     r"line 3: missing field 'prompt' \(fields present: \['answer', 'question'\]\)"),
    (['{"prompt": "a"}'], "line 1: missing field 'answer'"),
    (['{"prompt": 5, "answer": "1"}'], "line 1: field 'prompt' must be a string"),
    (['{"prompt": "a", "answer": "1", "metadata": [1]}'], "line 1: field 'metadata' must be an object"),
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "   ", "answer": "1"}'], "line 2: empty prompt"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError, match=message) as err:
        load_prompt_dataset(path)
    assert str(path) in str(err.value)


def test_empty_prompts_skipped_and_counted(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", ['{"prompt": "", "answer": 1}', '{"prompt": "a", "answer": 1}',
                                               '{"prompt": " ", "answer": 1}'])
    data = load_prompt_dataset(path, skip_empty_prompts=True)
    assert [r["prompt"] for r in data] == ["a"] and data.skipped_empty_prompts == 2
    assert data[0]["index"] == 0 and data[0]["source"].endswith("line 2")


def test_answer_optional(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", ['{"prompt": "a"}'])
    assert load_prompt_dataset(path, require_answer=False)[0]["answer"] is None


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(DatasetError, match="no such local file.*Hugging Face hub"):
        load_prompt_dataset("openai/gsm8k")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DatasetError, match="unsupported file type '.csv'"):
        load_prompt_dataset(tmp_path / "d.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no prompt records"):
        load_prompt_dataset(tmp_path / "empty.jsonl")


def test_json_array_and_directory(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "x", "answer": 1}, {"answer": 2}]))
    with pytest.raises(DatasetError, match=r"a.json: item 1: missing field 'prompt'"):
        load_prompt_dataset(tmp_path / "a.json")
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"prompt": "p2", "answer": 2}])
    write_jsonl(folder / "a.jsonl", [{"prompt": "p1", "answer": 1}])
    (folder / "notes.txt").write_text("ignored")
    data = load_prompt_dataset(folder)
    assert [r["prompt"] for r in data] == ["p1", "p2"] and [r["index"] for r in data] == [0, 1]
    assert len(load_prompt_dataset(folder, max_records=1)) == 1


def test_parquet_records_and_row_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"], "level": [1, 2]}), good)
    data = load_prompt_dataset(good)
    assert [r["prompt"] for r in data] == ["a", "b"] and data[1]["metadata"] == {"level": 2}
    assert data[1]["source"] == f"{good}: row 1"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "answer": ["1", "2", "3"]}), bad)
    with pytest.raises(DatasetError, match=r"bad.parquet: row 1: missing field 'prompt'"):
        load_prompt_dataset(bad)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": ["a", ""], "answer": ["1", "2"]}), empty)
    with pytest.raises(DatasetError, match=r"empty.parquet: row 1: empty prompt"):
        load_prompt_dataset(empty)


SMALL = CountdownConfig(num_numbers=3, min_number=1, max_number=9, max_target=30, eval_fraction=0.3)


def test_countdown_writer_round_trip(tmp_path):
    files = write_countdown_dataset(tmp_path, SMALL, train_size=30, eval_size=10, seed=1)
    assert not files.reused
    train, evals = load_prompt_dataset(files.train), load_prompt_dataset(files.eval)
    assert len(train) == 30 and len(evals) == 10
    assert not {r["metadata"]["key"] for r in train} & {r["metadata"]["key"] for r in evals}
    for record in list(train) + list(evals):
        meta = record["metadata"]
        assert record["prompt"] == " ".join(map(str, meta["numbers"])) + " -> " + str(meta["target"])
        assert record["answer"] == str(meta["target"]) and meta["task"] == "countdown"
        assert verify_expression(meta["reference"], meta["numbers"], meta["target"]).correct
    # same parameters: reused, untouched; different parameters: rewritten
    stamp = files.train.stat().st_mtime_ns
    again = write_countdown_dataset(tmp_path, SMALL, train_size=30, eval_size=10, seed=1)
    assert again.reused and files.train.stat().st_mtime_ns == stamp
    other = write_countdown_dataset(tmp_path, SMALL, train_size=20, eval_size=10, seed=1)
    assert not other.reused and len(load_prompt_dataset(other.train)) == 20
