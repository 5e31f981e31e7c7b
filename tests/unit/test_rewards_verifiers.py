"""Reward functions: loading by dotted path (and its errors), the output normalisation, and the shipped
verifiers (math-verify, multiple choice, Countdown)."""

import sys
import textwrap

import pytest

from policy_split_megatron.rewards import (
    RewardLoadError,
    RewardOutput,
    as_reward_output,
    extract_choice,
    load_reward_fn,
    resolve_callable,
)
from policy_split_megatron.rewards.countdown import countdown_reward
from policy_split_megatron.rewards.extract import after_think, last_boxed
from policy_split_megatron.rewards.math_answer import math_reward
from policy_split_megatron.rewards.multiple_choice import multiple_choice_reward


# ------------------------------------------------------------------------------------------ loading
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent('''
        def exact_match(prompt_record, response_text, *, case_sensitive=True):
            a, b = response_text.strip(), str(prompt_record["answer"])
            if not case_sensitive:
                a, b = a.lower(), b.lower()
            return float(a == b), {"normalised": a}

        def plain(prompt_record, response_text):
            return response_text == "yes"

        def bad_type(prompt_record, response_text):
            return "1.0"

        NOT_CALLABLE = 3
    '''))
    (tmp_path / "broken_rewards.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("my_rewards", "broken_rewards"):
        sys.modules.pop(name, None)


def test_load_user_function_with_options(user_module):
    reward = load_reward_fn("my_rewards:exact_match", case_sensitive=False)
    out = reward({"answer": "Paris"}, " paris ")
    assert out == RewardOutput(1.0, {"normalised": "paris"})
    assert load_reward_fn("my_rewards:exact_match")({"answer": "Paris"}, "paris").reward == 0.0
    # the dotted form without a colon works too; a bool result counts as 1.0/0.0
    assert load_reward_fn("my_rewards.plain")({}, "yes") == RewardOutput(1.0, {})


def test_builtin_aliases():
    assert resolve_callable("countdown") is countdown_reward
    assert resolve_callable("math") is math_reward
    assert resolve_callable("multiple_choice") is multiple_choice_reward


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("broken_rewards:fn", "cannot import module 'broken_rewards'.*does_not_exist_anywhere"),
    ("my_rewards:missing", "has no attribute 'missing'"),
    ("my_rewards:NOT_CALLABLE", "not callable"),
    ("justaname", "neither a 'package.module:function' path"),
    ("my_rewards:", "expected 'package.module:function'"),
    ("", "package.module:function"),
])
def test_load_errors(user_module, spec, message):
    with pytest.raises(RewardLoadError, match=message):
        load_reward_fn(spec)


def test_unknown_option_fails_at_load_time(user_module):
    with pytest.raises(RewardLoadError, match="case_sensitve"):
        load_reward_fn("my_rewards:exact_match", case_sensitve=False)


def test_bad_return_type(user_module):
    with pytest.raises(TypeError, match="must return a float"):
        load_reward_fn("my_rewards:bad_type")({}, "x")
    with pytest.raises(ValueError, match="non-finite"):
        as_reward_output(float("nan"))
    assert as_reward_output((0.5, {"a": 1})) == RewardOutput(0.5, {"a": 1})


# ------------------------------------------------------------------------------------------ extraction
def test_last_boxed_balanced_braces():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no box") is None


def test_after_think():
    assert after_think("a</think>b</think>c") == "c"
    assert after_think("plain") == "plain"
    assert after_think("plain", require_think_close=True) is None


# ------------------------------------------------------------------------------------------ math
@pytest.mark.parametrize("answer, response, expected", [
    ("0.5", r"so the answer is \boxed{\frac{1}{2}}", 1.0),
    (r"\frac{1}{2}", r"\boxed{0.5}", 1.0),
    ("0.5", r"\boxed{\frac{1}{3}}", 0.0),
    ("10", r"first \boxed{3}, corrected: \boxed{10}", 1.0),  # the LAST box counts
    ("10", r"first \boxed{10}, corrected: \boxed{3}", 0.0),
    (r"x^2+1", r"\boxed{1+x^2}", 1.0),
    ("10", "the answer is 10", 0.0),  # no \boxed{}
    (7, r"\boxed{7}", 1.0),  # numeric answers in the file are fine
])
def test_math_reward(answer, response, expected):
    assert math_reward({"answer": answer}, response)[0] == expected


def test_math_reward_think_option():
    record = {"answer": "4"}
    response = r"<think>maybe \boxed{5}</think> so \boxed{4}"
    assert math_reward(record, response)[0] == 1.0  # only the text after </think> is read
    assert math_reward(record, r"<think>\boxed{4}</think> I think 5")[0] == 0.0
    assert math_reward(record, r"\boxed{4}")[0] == 1.0  # default: </think> not required
    reward, info = math_reward(record, r"\boxed{4}", require_think_close=True)
    assert reward == 0.0 and info["reason"] == "no_think_close"
    with pytest.raises(ValueError, match="no 'answer'"):
        math_reward({}, r"\boxed{4}")


# ------------------------------------------------------------------------------------------ multiple choice
@pytest.mark.parametrize("response, expected", [
    (r"\boxed{B}", "B"),
    (r"\boxed{(C)}", "C"),
    (r"\boxed{\text{D}}", "D"),
    (r"\boxed{b}", "B"),
    (r"\boxed{A) the first option}", "A"),
    (r"\boxed{A} no wait \boxed{C}", "C"),
    ("The answer is (B).", "B"),
    ("Answer: D", "D"),
    ("the answer is A, final answer is C", "C"),
    ("the answer is a number", None),  # an article, not an option
    ("the answer is Apple", None),
    (r"\boxed{Z}", None),  # not an option letter
    ("I do not know", None),
])
def test_extract_choice(response, expected):
    assert extract_choice(response, "ABCDEFGHIJ") == expected


def test_multiple_choice_reward():
    assert multiple_choice_reward({"answer": "B"}, r"\boxed{B}")[0] == 1.0
    assert multiple_choice_reward({"answer": "(B)"}, "The answer is B")[0] == 1.0
    assert multiple_choice_reward({"answer": "B"}, r"\boxed{C}")[0] == 0.0
    # E is not an option when letters="ABCD": the boxed E is not a choice at all
    reward, info = multiple_choice_reward({"answer": "B"}, r"\boxed{E}", letters="ABCD")
    assert reward == 0.0 and info["reason"] == "no_choice"
    with pytest.raises(ValueError, match="one of the letters"):
        multiple_choice_reward({"answer": "E"}, r"\boxed{E}", letters="ABCD")


# ------------------------------------------------------------------------------------------ countdown
def test_countdown_reward_from_metadata():
    record = {"prompt": "3 5 2 -> 16", "answer": "16",
              "metadata": {"numbers": [3, 5, 2], "target": 16, "rule": "at_most_once"}}
    reward, info = countdown_reward(record, " 2*(5+3) = 16")
    assert reward == 1.0 and info["canonical"] == "2*(3+5)" and info["extracted"] == "2*(5+3)"
    assert countdown_reward(record, " 3*5+2")[0] == 0.0  # 17
    assert countdown_reward(record, "__import__('os').system('echo hacked')")[0] == 0.0
    # the record's rule is used; the option overrides it
    assert countdown_reward(record, " 3+5+2*4")[0] == 0.0  # 4 is not given
    assert countdown_reward({**record, "metadata": {**record["metadata"], "target": 8}}, " 3+5")[0] == 1.0
    assert countdown_reward({**record, "metadata": {**record["metadata"], "target": 8}}, " 3+5",
                            rule="exactly_once")[0] == 0.0


def test_countdown_reward_from_prompt_text():
    assert countdown_reward({"prompt": "3 5 2 -> 16", "answer": "16"}, "(3+5)*2")[0] == 1.0
    with pytest.raises(ValueError, match="countdown reward"):
        countdown_reward({"prompt": "what is 2+2?", "answer": "4"}, "4")


def test_countdown_via_loader():
    reward = load_reward_fn("countdown")
    assert reward({"prompt": "3 5 2 -> 16"}, " (3+5)*2").reward == 1.0


def test_answer_keys_are_what_the_verifiers_read():
    """maj@n votes on these: the same extraction as the verifier, so a key is wrong exactly when the
    reward is 0 for the same text."""
    from policy_split_megatron.rewards import load_reward_fn

    math = load_reward_fn("math")
    record = {"prompt": "?", "answer": "\\frac{1}{2}"}
    assert math.has_answer_key
    assert math.answer_key(record, "think \\boxed{3} </think> so \\boxed{ \\frac{1} {2} }") == "\\frac{1}{2}"
    assert math.answer_key(record, "no box here") is None and math.answer_key(record, "\\boxed{  }") is None
    strict = load_reward_fn("math", require_think_close=True)
    assert strict.answer_key(record, "\\boxed{7}") is None  # the verifier scores it 0: no vote either
    choice = load_reward_fn("multiple_choice", letters="ABCD")
    assert choice.answer_key({"answer": "B"}, "so \\boxed{(c)}") == "C"
    assert choice.answer_key({"answer": "B"}, "\\boxed{E}") is None  # not an allowed letter
    countdown = load_reward_fn("countdown")
    task = {"prompt": "8 2 10 6 -> 32", "answer": "32"}
    assert countdown.answer_key(task, " 2*(6+10)") == countdown.answer_key(task, " (10+6)*2")
    assert countdown.answer_key(task, "") is None
    by_path = load_reward_fn("policy_split_megatron.rewards.math_answer:math_reward")  # the same function
    assert by_path.has_answer_key and by_path.answer_key(record, "\\boxed{2}") == "2"
    assert not load_reward_fn("tests.unit.test_rewards_verifiers:_always_one").has_answer_key
    keyed = load_reward_fn("tests.unit.test_rewards_verifiers:_first_word", lower=True)
    assert keyed.answer_key(record, " Yes it is") == "yes"  # a user's extractor gets the bound options


def _always_one(prompt_record, response_text):
    return 1.0


def _first_word(prompt_record, response_text, *, lower=False):
    return 1.0


def _first_word_key(prompt_record, response_text, *, lower=False):
    word = response_text.split()[0]
    return word.lower() if lower else word


_first_word.answer_key = _first_word_key
