"""Countdown: parser/verifier (safe, exact), answer extraction, canonical form, solution enumeration,
deterministic disjoint generators. Every expected value is worked out by hand in the comments."""

import builtins
from fractions import Fraction

import pytest

from policy_split_megatron.tasks import countdown as cd
from policy_split_megatron.tasks.countdown import (
    CountdownConfig,
    ExpressionError,
    canonical_form,
    evaluate,
    extract_expression,
    generate_problems,
    parse_expression,
    parse_prompt,
    prompt_text,
    solution_counts,
    solutions,
    split_of,
    verify_expression,
    verify_response,
)

# 3 5 2 -> 16 : (3+5)*2 = 16 is the only answer (3*5=15, 3*5+2=17, 5*2+3=13, ... none other is 16)
NUMS, TARGET = (3, 5, 2), 16


# ------------------------------------------------------------------------------------------ verifier
def test_correct_expression():
    result = verify_expression("(3+5)*2", NUMS, TARGET)
    assert result.correct and result.reason == "ok" and result.value == 16


def test_wrong_value():
    result = verify_expression("3*5+2", NUMS, TARGET)  # 17
    assert not result.correct and result.reason == "wrong_value" and result.value == 17


def test_reused_number():
    result = verify_expression("(3+5)*2+2-2", NUMS, TARGET)  # = 16 but 2 is given once, used three times
    assert not result.correct and result.reason == "reused_number"


def test_duplicate_given_number_may_be_used_twice():
    # numbers (2, 2, 3): 2*2*3 = 12 uses each given 2 once
    assert verify_expression("2*2*3", (2, 2, 3), 12).correct
    assert verify_expression("2*2*2", (2, 2, 3), 8).reason == "reused_number"


def test_unknown_number():
    result = verify_expression("8*2", NUMS, TARGET)  # 8 is not given
    assert not result.correct and result.reason == "unknown_number"


def test_division_by_zero_is_incorrect():
    # 5-5 is not allowed here anyway, so give numbers that make a zero divisor: (2, 2, 3) -> 3/(2-2)
    result = verify_expression("3/(2-2)", (2, 2, 3), 1)
    assert not result.correct and result.reason == "division_by_zero"


def test_exact_rational_arithmetic():
    # 1/3 * 3 = 1 exactly with fractions (a float would give 0.9999999999999999 for some orders)
    assert evaluate(parse_expression("1/3*3")) == 1
    # 10/4 = 5/2 is not the integer 2: no integer division
    assert verify_expression("10/4", (10, 4), 2).reason == "wrong_value"
    assert verify_expression("5/3-6/9", (5, 3, 6, 9), 1).correct  # 5/3 - 2/3 = 1


def test_exactly_once_rule():
    # "3+5" = 8 leaves 2 unused: fine at most once, wrong exactly once
    assert verify_expression("3+5", NUMS, 8, rule="at_most_once").correct
    assert verify_expression("3+5", NUMS, 8, rule="exactly_once").reason == "unused_number"
    assert verify_expression("(3+5)*2", NUMS, 16, rule="exactly_once").correct
    with pytest.raises(ValueError, match="rule"):
        verify_expression("3+5", NUMS, 8, rule="twice")


@pytest.mark.parametrize("text", ["", "   ", "3+", "(3+5", "3+5)", "3 5", "3++5", "-3+5", "3.0*5", "3^2",
                                  "2**4", "1e1", "16=16", "x", "()", "(3+5)*2;"])
def test_malformed_text_is_incorrect(text):
    result = verify_expression(text, NUMS, TARGET)
    assert not result.correct and result.reason in ("parse_error", "no_answer")


@pytest.mark.parametrize("text", ["__import__('os').system('touch /tmp/pwned')", "eval('16')",
                                  "exec('x=1')", "(lambda: 16)()", "open('/etc/passwd')", "16 if 1 else 0"])
def test_injection_is_rejected_without_executing(text, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the verifier must never call eval/exec/compile/__import__")

    for name in ("eval", "exec", "compile", "__import__"):
        monkeypatch.setattr(builtins, name, forbidden)
    result = verify_expression(text, NUMS, TARGET)
    assert not result.correct and result.reason == "parse_error"


def test_limits():
    with pytest.raises(ExpressionError):
        parse_expression("(" * 40 + "3" + ")" * 40)  # deeper than MAX_NESTING
    with pytest.raises(ExpressionError):
        parse_expression("1" * 10)  # more than 9 digits
    with pytest.raises(ExpressionError):
        parse_expression("1+" * 200 + "1")  # longer than 256 characters
    assert verify_expression("(" * 40 + "3" + ")" * 40, NUMS, 3).reason == "parse_error"


# ------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("response, expected", [
    (" (3+5)*2", "(3+5)*2"),
    (" (3+5)*2 = 16", "(3+5)*2"),
    ("scratch\n(3+5)*2=16\n", "(3+5)*2"),  # last non-empty line
    ("<think>3*5=15</think> <answer>(3+5)*2</answer>", "(3+5)*2"),
    ("<think>no answer yet", "<think>no answer yet"),
    ("", None),
    ("  \n ", None),
    ("= 16", None),
])
def test_extract_expression(response, expected):
    assert extract_expression(response) == expected


def test_verify_response_end_to_end():
    assert verify_response(" 2*(5+3) = 16", NUMS, TARGET).correct
    assert verify_response(" 2*(5+3) = 17", NUMS, TARGET).correct  # the claimed value after "=" is ignored
    assert verify_response("", NUMS, TARGET).reason == "no_answer"


# ------------------------------------------------------------------------------------------ canonical
@pytest.mark.parametrize("a, b", [
    ("(3+5)*2", "2*(5+3)"),  # commutative + and *
    ("(3+5)*2", "((3)+(5))*(2)"),  # redundant parentheses
    ("3+(5+2)", "(2+3)+5"),  # associative +
    ("10-(4-2)", "10+2-4"),  # a-(b-c) = a+c-b
    ("8/(4/2)", "8*2/4"),  # a/(b/c) = a*c/b
    ("8/2/4", "8/(2*4)"),
])
def test_canonical_equal(a, b):
    assert canonical_form(a) == canonical_form(b)


@pytest.mark.parametrize("a, b", [
    ("2*(3+5)", "2*3+2*5"),  # distributivity is not applied
    ("3-5", "5-3"),
    ("8/2", "2/8"),
    ("3+5", "3*5"),
])
def test_canonical_different(a, b):
    assert canonical_form(a) != canonical_form(b)


def test_canonical_text_is_sorted_and_valid():
    # numbers before compound operands, numbers by value; sums inside products get parentheses
    assert canonical_form("(5+3)*2") == "2*(3+5)"
    assert canonical_form("10-(4-2)") == "2+10-4"
    assert canonical_form("8/(4/2)") == "2*8/4"
    for text in ("(5+3)*2", "10-(4-2)", "9/(3/2-1)", "(1+2)/(3-4*5)"):
        assert evaluate(parse_expression(canonical_form(text))) == evaluate(parse_expression(text))


# ------------------------------------------------------------------------------------------ enumeration
def test_solutions_by_hand():
    assert solutions((3, 5, 2), 16) == ["2*(3+5)"]
    # 1 3 4 -> 2: 3-1, 4-3+1, 4/(3-1) ... and nothing else (1*... variants: 1*(3-1)? that uses 1 twice)
    assert solutions((1, 3, 4), 2) == ["3-1", "1+4-3", "4/(3-1)"]
    # exactly once only keeps the three-number answers
    assert solutions((1, 3, 4), 2, rule="exactly_once") == ["1+4-3", "4/(3-1)"]


def test_enumerated_texts_are_canonical_and_correct():
    table = cd._all_expressions((2, 3, 7), "at_most_once")
    assert len(table) > 50
    for text, value in table.items():
        assert canonical_form(text) == text
        assert evaluate(parse_expression(text)) == value
        assert verify_expression(text, (2, 3, 7), value).correct


def test_solution_counts_agree_with_solutions():
    counts = solution_counts((2, 3, 7))
    for target in (1, 4, 5, 10, 13, 42):
        assert counts.get(target, 0) == len(solutions((2, 3, 7), target))
    assert counts[42] == 1  # 2*3*7 only


# ------------------------------------------------------------------------------------------ prompts
def test_prompt_round_trip():
    assert prompt_text((3, 5, 2), 16) == "3 5 2 -> 16"
    assert parse_prompt("3 5 2 -> 16") == ((3, 5, 2), 16)
    with pytest.raises(ValueError, match="Countdown prompt"):
        parse_prompt("what is 3 + 5?")


# ------------------------------------------------------------------------------------------ generators
SMALL = CountdownConfig(num_numbers=3, min_number=1, max_number=9, max_target=30, min_solutions=2,
                        eval_fraction=0.3)


def test_generator_is_deterministic():
    a = generate_problems(SMALL, "train", 40, seed=3)
    b = generate_problems(SMALL, "train", 40, seed=3)
    c = generate_problems(SMALL, "train", 40, seed=4)
    assert [(p.numbers, p.target) for p in a] == [(p.numbers, p.target) for p in b]
    assert [(p.numbers, p.target) for p in a] != [(p.numbers, p.target) for p in c]


def test_train_and_eval_are_disjoint_and_solvable():
    train = generate_problems(SMALL, "train", 120, seed=0)
    evals = generate_problems(SMALL, "eval", 60, seed=0)
    other_seed_eval = generate_problems(SMALL, "eval", 60, seed=7)
    train_keys = {p.key for p in train}
    assert len(train_keys) == 120  # no duplicate inside a split
    assert not train_keys & {p.key for p in evals}
    assert not train_keys & {p.key for p in other_seed_eval}
    for split, problems in (("train", train), ("eval", evals)):
        for p in problems:
            assert split_of(p.numbers, p.target, SMALL.eval_fraction) == split
            assert p.num_solutions >= 2 and p.target not in p.numbers
            assert 1 <= p.target <= 30 and len(set(p.numbers)) == 3
            assert list(p.solutions) == solutions(p.numbers, p.target)
            for s in p.solutions:
                assert verify_expression(s, p.numbers, p.target).correct


def test_split_is_order_free():
    assert split_of((3, 5, 2), 16) == split_of((2, 3, 5), 16)
    assert cd.problem_key((5, 2, 3), 16) == "2,3,5->16"


def test_record_format():
    problem = generate_problems(SMALL, "train", 1, seed=0)[0]
    record = problem.to_record()
    assert record["prompt"] == problem.prompt and record["answer"] == str(problem.target)
    meta = record["metadata"]
    assert meta["numbers"] == list(problem.numbers) and meta["target"] == problem.target
    assert meta["reference"] == problem.solutions[0] and meta["num_solutions"] == len(meta["solutions"])


def test_too_small_family_raises_clearly():
    tiny = CountdownConfig(num_numbers=2, min_number=1, max_number=3, max_target=10, min_solutions=1)
    with pytest.raises(ValueError, match="could only generate"):
        generate_problems(tiny, "train", 500, seed=0, max_attempts=2000)


def test_config_validation():
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownConfig(num_numbers=6)
    with pytest.raises(ValueError, match="rule"):
        CountdownConfig(rule="any")
    with pytest.raises(ValueError, match="eval_fraction"):
        CountdownConfig(eval_fraction=0.0)


def test_default_family_has_several_answers():
    # the embedded default: 4 numbers from 2..10; every problem has >= 2 distinct answers
    problems = generate_problems(CountdownConfig(), "eval", 20, seed=0)
    assert all(p.num_solutions >= 2 and len(p.numbers) == 4 for p in problems)
    assert Fraction(sorted(p.num_solutions for p in problems)[10]) >= 3  # median well above 2
