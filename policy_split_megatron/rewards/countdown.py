"""The embedded Countdown verifier as a reward function (rules in tasks/countdown.py).

    countdown_reward(record, response, *, rule=None) -> (1.0 | 0.0, info)

The problem is read from record["metadata"] ("numbers", "target", "rule"; written by
data/writers.write_countdown_dataset), else from top-level "numbers"/"target", else parsed from the prompt
text "3 5 2 7 -> 16". `rule` overrides the record's rule (default "at_most_once"). info: "reason" (see
tasks.countdown.Verification), "extracted" (the expression) and "canonical" (its canonical form, for counting
distinct correct answers; None when it did not parse). `countdown_answer_key` is that canonical form
(else the extracted text): what maj@n votes on.
"""

from __future__ import annotations

from typing import Any, Mapping

from policy_split_megatron.tasks.countdown import (
    ExpressionError,
    canonical_form,
    extract_expression,
    parse_prompt,
    verify_response,
)


def countdown_problem(prompt_record: Mapping[str, Any]) -> tuple[list[int], int, str | None]:
    """(numbers, target, rule or None) of a Countdown record."""
    metadata = prompt_record.get("metadata") or {}
    for source in (metadata, prompt_record):
        if "numbers" in source and "target" in source:
            return [int(n) for n in source["numbers"]], int(source["target"]), source.get("rule")
    try:
        numbers, target = parse_prompt(str(prompt_record.get("prompt", "")))
    except ValueError as err:
        raise ValueError(
            "countdown reward: the record has no metadata.numbers/metadata.target and its prompt is not "
            f"'<numbers> -> <target>': {err}"
        ) from err
    return list(numbers), target, metadata.get("rule")


def countdown_reward(
    prompt_record: Mapping[str, Any], response_text: str, *, rule: str | None = None
) -> tuple[float, dict]:
    numbers, target, record_rule = countdown_problem(prompt_record)
    result = verify_response(response_text, numbers, target, rule or record_rule or "at_most_once")
    info = {"reason": result.reason, "extracted": result.expression, "canonical": result.canonical}
    return (1.0 if result.correct else 0.0), info


def countdown_answer_key(prompt_record: Mapping[str, Any], response_text: str, *, rule: str | None = None) -> str | None:
    """The canonical form of the response's expression (its stripped text when it does not parse); None
    when the response has no expression."""
    expression = extract_expression(response_text)
    if expression is None or not expression.strip():
        return None
    try:
        return canonical_form(expression)
    except ExpressionError:
        return expression.strip()


countdown_reward.answer_key = countdown_answer_key  # what maj@n votes on (rewards/base.py)
