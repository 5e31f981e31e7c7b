"""Answer extraction shared by the shipped verifiers: the final part of a reasoning response and the
content of its last \\boxed{...} (balanced braces, not a greedy regex)."""

from __future__ import annotations

THINK_CLOSE = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def after_think(text: str, require_think_close: bool = False) -> str | None:
    """The text after the last "</think>" when there is one; else the whole text, or None when
    `require_think_close` (the authors' grader scores a response without "</think>" as 0)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return None if require_think_close else text


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces; None when there is none
    or it is not closed. "\\boxed{\\frac{1}{2}}" -> "\\frac{1}{2}"."""
    best = -1
    for command in _BOX_COMMANDS:
        best = max(best, text.rfind(command + "{"))
    # rfind of "\boxed{" misses "\boxed {": accept one optional space too
    for command in _BOX_COMMANDS:
        best = max(best, text.rfind(command + " {"))
    if best < 0:
        return None
    start = text.index("{", best) + 1
    depth = 1
    for pos in range(start, len(text)):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:pos]
    return None
