"""Math answers checked with math-verify: the last \\boxed{...} of the response against the record's answer.

    math_reward(record, response, *, require_think_close=False, answer_field="answer") -> (1.0 | 0.0, info)

The answer (record[answer_field], e.g. "0.5", "\\frac{1}{2}", "$x^2+1$") is parsed as LaTeX (wrapped in $...$
unless it already has $ or \\boxed); the prediction is the content of the LAST \\boxed{...} in the text after
the last "</think>" (the whole response when there is none). `require_think_close=True` scores a response
without "</think>" as 0, like the authors' grader (BITHLP/PolicySplit compute_score); it is off by default.
math-verify's timeouts use SIGALRM, which only works in the main thread: elsewhere they are disabled.
In a RewardPool worker (rewards/pool.py) they are off too: the pool's per-sample timeout, which
works in any thread and is counted in the metrics, governs there.

`math_answer_key` is the same final answer as text without spaces: what maj@n votes on.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Mapping

from policy_split_megatron.rewards.extract import after_think, last_boxed
from policy_split_megatron.rewards.pool import in_reward_worker

TIMEOUT_SECONDS = 5
POOL_PRELOAD = ("math_verify",)  # imported once by RewardPool's fork server, not by every worker


def _timeout() -> int | None:
    if in_reward_worker():
        return None
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _parse_gold(answer: str):
    from math_verify import parse

    text = answer if ("$" in answer or "\\boxed" in answer) else f"${answer}$"
    return parse(text, parsing_timeout=_timeout())


def gold_answer(prompt_record: Mapping[str, Any], answer_field: str = "answer") -> str:
    if answer_field not in prompt_record or prompt_record[answer_field] is None:
        raise ValueError(f"math reward: the prompt record has no {answer_field!r} field")
    answer = str(prompt_record[answer_field]).strip()
    if not answer:
        raise ValueError(f"math reward: the prompt record's {answer_field!r} is empty")
    return answer


def math_answer_key(
    prompt_record: Mapping[str, Any],
    response_text: str,
    *,
    require_think_close: bool = False,
    answer_field: str = "answer",
) -> str | None:
    """The response's final answer as `math_reward` reads it, with whitespace removed; None when it has none."""
    final = after_think(response_text, require_think_close)
    boxed = last_boxed(final) if final is not None else None
    if boxed is None:
        return None
    return "".join(boxed.split()) or None


def math_reward(
    prompt_record: Mapping[str, Any],
    response_text: str,
    *,
    require_think_close: bool = False,
    answer_field: str = "answer",
) -> tuple[float, dict]:
    from math_verify import parse, verify

    gold_text = gold_answer(prompt_record, answer_field)
    final = after_think(response_text, require_think_close)
    if final is None:
        return 0.0, {"reason": "no_think_close", "extracted": None}
    boxed = last_boxed(final)
    if boxed is None or not boxed.strip():
        return 0.0, {"reason": "no_boxed", "extracted": None}
    gold = _parse_gold(gold_text)
    if not gold:
        raise ValueError(f"math reward: math-verify cannot parse the reference answer {gold_text!r}")
    prediction = parse("\\boxed{" + boxed + "}", parsing_timeout=_timeout())
    if not prediction:
        return 0.0, {"reason": "unparsable", "extracted": boxed}
    correct = bool(verify(gold, prediction, timeout_seconds=_timeout()))
    return (1.0 if correct else 0.0), {"reason": "ok" if correct else "wrong_value", "extracted": boxed}


math_reward.answer_key = math_answer_key  # what maj@n votes on (rewards/base.py)
