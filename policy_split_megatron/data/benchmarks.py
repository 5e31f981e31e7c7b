"""The datasets the paper trains and evaluates on, as files downloaded from the Hugging Face hub:
their column layouts, the paper's prompt templates (Policy Split, App. C.1) and the verifier each
needs. `data/prepare.py` turns such files into prompt records; docs/data.md lists every layout.

A `Layout` is one known column layout of a dataset (the hub repository that ships it, the columns
it must have, the optional ones kept in the record's metadata) and its row converter. A converter
takes one row and returns `Prepared(prompt, answer, metadata)` or raises `BadRow` with the reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping

MATH_TEMPLATE = "Solve the following math problem. Put your final answer within \\boxed{{}}.\n\n{query}"
"""Paper, App. C.1: MATH-500 and AIME (verbatim). The paper does not give its training prompt; we use
this one for DeepMath and DAPO too (docs/data.md)."""

CHOICE_TEMPLATE = (
    "Select one option from the given choices that accurately answers the question, and enclose your "
    "final answer (which should be the uppercase letter index of the chosen option) within \\boxed{{}}."
    "\n\n### Question\n{question}\n\n### Choices\n{choices}"
)
"""Paper, App. C.1: GPQA-Diamond and MMLU-Pro (verbatim). `{choices}` is ours: one "A. text" line
per option (the paper does not show how it lists them)."""

LETTERS = "ABCDEFGHIJ"

# DAPO-Math-17k wraps every problem in its own instruction (answer on an "Answer:" line); the paper's
# \boxed{} template replaces it, so the problem is cut out of the wrapper first.
DAPO_PREFIX = "Solve the following math problem step by step."
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


class BadRow(ValueError):
    """A row that cannot become a prompt record; the message says why (the caller adds where)."""


@dataclass(frozen=True)
class Prepared:
    prompt: str
    answer: str
    metadata: dict


Converter = Callable[[Mapping[str, Any], int], Prepared]  # (row, seed) -> Prepared


@dataclass(frozen=True)
class Layout:
    source: str
    """Where files of this layout come from: the hub repository and its files."""
    columns: tuple[str, ...]
    """Columns a file must have (checked before any row is read)."""
    convert: Converter
    optional: tuple[str, ...] = ()
    """Columns copied into the record's metadata when present (ids, subjects, difficulty); the
    converter may read them too."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    reward: str
    """Verifier of the prepared records (rewards/: "math" or "multiple_choice")."""
    layouts: tuple[Layout, ...]
    subset_size: int | None = None
    """Default size of the seeded random subset (None: every row)."""
    deduplicate: bool = False
    """Drop rows whose prompt repeats an earlier row's (DAPO-Math-17k ships each problem ~100 times)."""


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise BadRow(f"column {column!r} is empty (null)")
    if not isinstance(value, str):
        raise BadRow(f"column {column!r} must be text, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise BadRow(f"column {column!r} is blank")
    return value.strip()


def _answer(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if value is None:
            raise BadRow(f"answer column {column!r} is empty (null)")
        raise BadRow(f"answer column {column!r} must be text or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRow(f"answer column {column!r} is blank")
    return text


def format_choices(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def math_layout(source: str, question: str, answer: str, optional: tuple[str, ...] = ()) -> Layout:
    """A layout with one question column and one final-answer column, graded by math-verify."""

    def convert(row: Mapping[str, Any], seed: int) -> Prepared:
        return Prepared(MATH_TEMPLATE.format(query=_text(row, question)), _answer(row, answer), {})

    return Layout(source, (question, answer), convert, optional)


def dapo_problem(prompt: Any) -> str:
    """The problem text of a DAPO-Math-17k `prompt` cell: a chat list [{"role", "content"}] (the
    original files) or a string (open-r1's processed copy), with DAPO's instruction wrapper removed."""
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        if not users or not isinstance(users[-1], str):
            raise BadRow("column 'prompt' holds no user message with text content")
        prompt = users[-1]
    if not isinstance(prompt, str):
        raise BadRow(f"column 'prompt' must be a chat list or text, got {type(prompt).__name__}")
    text = prompt.strip()
    if text.startswith(DAPO_PREFIX) and "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    text = text.split(DAPO_SUFFIX.strip(), 1)[0].strip()
    if not text:
        raise BadRow("column 'prompt' holds no problem text")
    return text


def _dapo(row: Mapping[str, Any], seed: int) -> Prepared:
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, Mapping):
        raise BadRow(f"column 'reward_model' must be a struct with 'ground_truth', got {type(reward_model).__name__}")
    answer = _answer(reward_model, "ground_truth")
    return Prepared(MATH_TEMPLATE.format(query=dapo_problem(row.get("prompt"))), answer, {})


GPQA_CHOICE_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa(row: Mapping[str, Any], seed: int) -> Prepared:
    """GPQA stores the correct option first: shuffle the four with a seeded generator keyed by the
    question (the same order for the same question and seed, whatever the file order)."""
    question = _text(row, "Question")
    options = [_text(row, column) for column in GPQA_CHOICE_COLUMNS]
    if len(set(options)) < len(options):
        raise BadRow("two of the four options are the same text")
    key = row.get("Record ID") or question
    order = list(range(4))
    random.Random(f"{seed}:{key}").shuffle(order)
    shuffled = [options[i] for i in order]
    answer = LETTERS[order.index(0)]
    return Prepared(CHOICE_TEMPLATE.format(question=question, choices=format_choices(shuffled)), answer, {})


def _mmlu_pro(row: Mapping[str, Any], seed: int) -> Prepared:
    question = _text(row, "question")
    options = row.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRow(f"column 'options' must be a list of texts, got {type(options).__name__}")
    options = [o.strip() for o in options]
    if not 2 <= len(options) <= len(LETTERS) or not all(options):
        raise BadRow(f"column 'options' must hold 2 to {len(LETTERS)} non-blank options, got {len(options)}")
    answer = _answer(row, "answer").upper()
    if len(answer) != 1 or answer not in LETTERS[: len(options)]:
        raise BadRow(f"column 'answer' must be one of the letters {LETTERS[: len(options)]}, got {answer!r}")
    index = row.get("answer_index")
    if index is not None and index != LETTERS.index(answer):
        raise BadRow(f"column 'answer' ({answer}) and 'answer_index' ({index}) disagree")
    return Prepared(CHOICE_TEMPLATE.format(question=question, choices=format_choices(options)), answer, {})


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        "deepmath", "DeepMath-103K (the paper's training set: a seeded random 20K subset)", "math",
        (math_layout("zwhe99/DeepMath-103K: data/train-*.parquet", "question", "final_answer",
                     ("difficulty", "topic")),),
        subset_size=20_000,
    ),
    DatasetSpec(
        "dapo", "DAPO-Math-17k", "math",
        (Layout("BytedTsinghua-SIA/DAPO-Math-17k: data/dapo-math-17k.parquet (also open-r1/DAPO-Math-17k-Processed)",
                ("prompt", "reward_model"), _dapo, ("data_source", "extra_info")),),
        deduplicate=True,
    ),
    DatasetSpec(
        "math500", "MATH-500", "math",
        (math_layout("HuggingFaceH4/MATH-500: test.jsonl", "problem", "answer", ("unique_id", "subject", "level")),),
    ),
    DatasetSpec(
        "aime2024", "AIME 2024", "math",
        (math_layout("HuggingFaceH4/aime_2024: data/train-*.parquet", "problem", "answer", ("id", "year", "url")),
         math_layout("Maxwell-Jia/AIME_2024: aime_2024_problems.parquet", "Problem", "Answer", ("ID",))),
    ),
    DatasetSpec(
        "aime2025", "AIME 2025", "math",
        (math_layout("math-ai/aime25: test.jsonl; yentinglin/aime_2025: data/train-*.parquet", "problem", "answer",
                     ("id", "year", "url")),
         math_layout("opencompass/AIME2025: aime2025-I.jsonl, aime2025-II.jsonl", "question", "answer")),
    ),
    DatasetSpec(
        "gpqa_diamond", "GPQA-Diamond", "multiple_choice",
        (Layout("Idavidrein/gpqa: gpqa_diamond.csv (or its Parquet conversion)", ("Question", *GPQA_CHOICE_COLUMNS),
                _gpqa, ("Record ID", "High-level domain", "Subdomain")),),
    ),
    DatasetSpec(
        "mmlu_pro", "MMLU-Pro", "multiple_choice",
        (Layout("TIGER-Lab/MMLU-Pro: data/test-*.parquet", ("question", "options", "answer"), _mmlu_pro,
                ("question_id", "answer_index", "category", "src")),),
    ),
)}
