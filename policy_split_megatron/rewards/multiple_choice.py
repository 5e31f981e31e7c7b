"""Multiple-choice letters: the response's last \\boxed{X}, else its last "answer is X" / "Answer: X".

    multiple_choice_reward(record, response, *, letters="ABCDEFGHIJ", require_think_close=False,
                           answer_field="answer") -> (1.0 | 0.0, info)

The answer field holds the correct letter ("B", or "(B)"). Inside \\boxed{} the forms "B", "(B)", "B.",
"\\text{B}", "\\textbf{B}" and "B) the text of the option" are read as B (lower case accepted there). The
fallback phrases need an upper-case letter ("the answer is a number" is not "A"). Only letters of `letters`
count. Text after the last "</think>" is searched when there is one (see math_answer for the option).
`choice_answer_key` is the chosen letter: what maj@n votes on.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from policy_split_megatron.rewards.extract import after_think, last_boxed

_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_BOXED_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)]|\s|$)")
_PHRASE_RE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*[:\s]*\(?([A-Z])\)?(?![A-Za-z0-9])")


def _letter_set(letters: str) -> str:
    if not letters or not letters.isalpha():
        raise ValueError(f"multiple_choice letters must be letters, e.g. 'ABCD', got {letters!r}")
    return letters.upper()


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen letter (upper case) or None."""
    allowed = _letter_set(letters)
    boxed = last_boxed(text)
    if boxed is not None:
        content = boxed.strip()
        for _ in range(3):
            content = _WRAPPER_RE.sub(r"\1", content).strip()
        match = _BOXED_LETTER_RE.match(content)
        if match and match.group(1).upper() in allowed:
            return match.group(1).upper()
        return None
    for match in reversed(list(_PHRASE_RE.finditer(text))):
        if match.group(1) in allowed:
            return match.group(1)
    return None


def choice_answer_key(
    prompt_record: Mapping[str, Any],
    response_text: str,
    *,
    letters: str = "ABCDEFGHIJ",
    require_think_close: bool = False,
    answer_field: str = "answer",
) -> str | None:
    """The letter the response chose, as `multiple_choice_reward` reads it; None when it chose none."""
    final = after_think(response_text, require_think_close)
    return None if final is None else extract_choice(final, letters)


def multiple_choice_reward(
    prompt_record: Mapping[str, Any],
    response_text: str,
    *,
    letters: str = "ABCDEFGHIJ",
    require_think_close: bool = False,
    answer_field: str = "answer",
) -> tuple[float, dict]:
    allowed = _letter_set(letters)
    gold = str(prompt_record.get(answer_field, "") or "").strip().strip("()").strip().upper()
    if len(gold) != 1 or gold not in allowed:
        raise ValueError(
            f"multiple_choice reward: the record's {answer_field!r} must be one of the letters {allowed!r}, "
            f"got {prompt_record.get(answer_field)!r}"
        )
    final = after_think(response_text, require_think_close)
    if final is None:
        return 0.0, {"reason": "no_think_close", "extracted": None}
    choice = extract_choice(final, allowed)
    if choice is None:
        return 0.0, {"reason": "no_choice", "extracted": None}
    correct = choice == gold
    return (1.0 if correct else 0.0), {"reason": "ok" if correct else "wrong_choice", "extracted": choice}


multiple_choice_reward.answer_key = choice_answer_key  # what maj@n votes on (rewards/base.py)
