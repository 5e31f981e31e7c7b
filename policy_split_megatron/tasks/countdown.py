"""Countdown: the embedded verifiable task with many correct answers per prompt (docs/tasks.md).

A problem is a few small numbers and a target, e.g. numbers (3, 5, 2), target 16. An answer is an
arithmetic expression over the given numbers with + - * / and parentheses that evaluates EXACTLY
(rational arithmetic) to the target.

Rule (``rule="at_most_once"``, the default): every given number may be used at most once; a number that
appears twice in the list may be used twice. The TinyZero rule (``"exactly_once"``: every number used
once) is available, but at 3 numbers it often leaves a single answer; "at most once" leaves several, which
is what diversity metrics and the high-entropy mode need. The rule travels with every generated record.

Grammar (nothing else is accepted, and nothing is ever passed to eval/exec):

    expr   := term   (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INTEGER | "(" expr ")"          INTEGER: ASCII digits, no sign; spaces are ignored

Model output format: the response is the expression, optionally followed by "= <value>", then EOS, e.g.
" 2*(3+5)" or " 2*(3+5) = 16". `extract_expression` takes the text after the last "</think>" (if any),
the content of the last "<answer>...</answer>" (if any), then the last non-empty line, then the part
before the first "=".

Canonical form (to count DIFFERENT correct answers): chains of + and - are flattened into a multiset of
added terms and a multiset of subtracted terms, chains of * and / into multiplied and divided factors,
recursively, and each multiset is sorted. So "(3+5)*2", "2*(5+3)" and "2*((3)+5)" are one answer, as are
"a-(b-c)" and "a+c-b", and "a/(b/c)" and "a*c/b". Distributivity is NOT applied: "2*(3+5)" and "2*3+2*5"
are different answers (and the second reuses 2 anyway). The canonical string is itself a valid
expression with the same value; the reference solutions are canonical strings.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Sequence

RULES = ("at_most_once", "exactly_once")
MAX_EXPRESSION_CHARS = 256  # longer answers are rejected before parsing
MAX_NESTING = 32  # deeper parentheses are rejected (no recursion blow-up)
MAX_INTEGER_DIGITS = 9

PROMPT_SEPARATOR = " -> "


# --------------------------------------------------------------------------------------------------
# Expression trees


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class BinOp:
    op: str  # one of "+-*/"
    left: "Node"
    right: "Node"


Node = Num | BinOp


class ExpressionError(ValueError):
    """The text is not an expression of the Countdown grammar (or is too long / too deep)."""


_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise ExpressionError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        number, symbol = match.groups()
        if number is not None and len(number) > MAX_INTEGER_DIGITS:
            raise ExpressionError(f"integer {number[:12]}... has more than {MAX_INTEGER_DIGITS} digits")
        tokens.append(number if number is not None else symbol)
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over the token list; depth-limited."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return token

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = BinOp(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = BinOp(op, node, self.factor())
        return node

    def factor(self) -> Node:
        token = self.take()
        if token.isdigit():
            return Num(int(token))
        if token == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ExpressionError(f"parentheses nested deeper than {MAX_NESTING}")
            node = self.expr()
            if self.take() != ")":
                raise ExpressionError("expected ')'")
            self.depth -= 1
            return node
        raise ExpressionError(f"expected a number or '(', got {token!r}")


def parse_expression(text: str) -> Node:
    """Parse `text` with the Countdown grammar; raises ExpressionError on anything else."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.pos]!r} after a complete expression")
    return node


def evaluate(node: Node) -> Fraction:
    """Exact value; raises ZeroDivisionError on division by zero."""
    if isinstance(node, Num):
        return Fraction(node.value)
    left, right = evaluate(node.left), evaluate(node.right)
    if node.op == "+":
        return left + right
    if node.op == "-":
        return left - right
    if node.op == "*":
        return left * right
    if right == 0:
        raise ZeroDivisionError("division by zero")
    return left / right


def leaves(node: Node) -> list[int]:
    """The numbers an expression uses, left to right (with repeats)."""
    if isinstance(node, Num):
        return [node.value]
    return leaves(node.left) + leaves(node.right)


# --------------------------------------------------------------------------------------------------
# Canonical form


def _flatten(node: Node, kind: str, positive: bool, plus: list[Node], minus: list[Node]) -> None:
    """Collect the operands of a +/- chain (kind "sum") or */÷ chain (kind "product")."""
    ops = ("+", "-") if kind == "sum" else ("*", "/")
    if isinstance(node, BinOp) and node.op in ops:
        _flatten(node.left, kind, positive, plus, minus)
        _flatten(node.right, kind, positive if node.op == ops[0] else not positive, plus, minus)
    else:
        (plus if positive else minus).append(node)


def _sort_key(item: tuple[Node, str]) -> tuple:
    node, text = item
    return (0, node.value, "") if isinstance(node, Num) else (1, 0, text)


def _canonical(node: Node) -> tuple[str, str]:
    """(canonical text, kind) where kind is "num", "sum" or "product"."""
    if isinstance(node, Num):
        return str(node.value), "num"
    kind = "sum" if node.op in "+-" else "product"
    plus: list[Node] = []
    minus: list[Node] = []
    _flatten(node, kind, True, plus, minus)

    def rendered(operands: list[Node]) -> list[str]:
        out = []
        for operand in operands:
            text, sub_kind = _canonical(operand)
            out.append((operand, f"({text})" if kind == "product" and sub_kind == "sum" else text))
        return [text for _, text in sorted(out, key=_sort_key)]

    pos_op, neg_op = ("+", "-") if kind == "sum" else ("*", "/")
    text = pos_op.join(rendered(plus)) + "".join(neg_op + t for t in rendered(minus))
    return text, kind


def canonical_form(expression: str | Node) -> str:
    """Canonical text of an expression (module docstring). Raises ExpressionError on bad text."""
    node = parse_expression(expression) if isinstance(expression, str) else expression
    return _canonical(node)[0]


# --------------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class Verification:
    correct: bool
    reason: str  # "ok" or why not: "no_answer", "parse_error", "unknown_number", "reused_number",
    # "unused_number" (exactly_once), "division_by_zero", "wrong_value"
    expression: str | None = None  # the extracted expression text
    value: Fraction | None = None  # its exact value, when it could be evaluated
    canonical: str | None = None  # canonical form, when the expression parsed
    detail: str = ""


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"Countdown rule must be one of {RULES}, got {rule!r}")


def verify_expression(
    expression: str | None, numbers: Sequence[int], target: int | Fraction, rule: str = "at_most_once"
) -> Verification:
    """Check one expression against a problem. Never raises on bad model text (returns incorrect)."""
    _check_rule(rule)
    if expression is None or not expression.strip():
        return Verification(False, "no_answer", expression)
    try:
        node = parse_expression(expression)
    except ExpressionError as err:
        return Verification(False, "parse_error", expression, detail=str(err))
    canonical = canonical_form(node)
    available = Counter(int(n) for n in numbers)
    used = Counter(leaves(node))
    for number, count in used.items():
        if number not in available:
            return Verification(False, "unknown_number", expression, canonical=canonical,
                                detail=f"{number} is not one of {list(numbers)}")
        if count > available[number]:
            return Verification(False, "reused_number", expression, canonical=canonical,
                                detail=f"{number} used {count} times, given {available[number]}")
    if rule == "exactly_once" and used != available:
        missing = sorted((available - used).elements())
        return Verification(False, "unused_number", expression, canonical=canonical,
                            detail=f"numbers not used: {missing}")
    try:
        value = evaluate(node)
    except ZeroDivisionError:
        return Verification(False, "division_by_zero", expression, canonical=canonical)
    if value != Fraction(target):
        return Verification(False, "wrong_value", expression, value, canonical, detail=f"{value} != {target}")
    return Verification(True, "ok", expression, value, canonical)


_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_expression(response: str) -> str | None:
    """The answer expression of a model response (output format in the module docstring), or None."""
    if not isinstance(response, str):
        return None
    text = response
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    tagged = _ANSWER_TAG_RE.findall(text)
    if tagged:
        text = tagged[-1]
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    answer = lines[-1].split("=", 1)[0].strip()
    return answer or None


def verify_response(
    response: str, numbers: Sequence[int], target: int, rule: str = "at_most_once"
) -> Verification:
    """extract_expression + verify_expression."""
    return verify_expression(extract_expression(response), numbers, target, rule)


# --------------------------------------------------------------------------------------------------
# Prompt text


def prompt_text(numbers: Sequence[int], target: int) -> str:
    """The question shown to the model, e.g. "3 5 2 -> 16" (short: the embedded model is char-level)."""
    return " ".join(str(int(n)) for n in numbers) + PROMPT_SEPARATOR + str(int(target))


_PROMPT_RE = re.compile(r"^\s*(\d+(?:\s+\d+)*)\s*->\s*(\d+)\s*$")


def parse_prompt(text: str) -> tuple[tuple[int, ...], int]:
    """Inverse of prompt_text: "3 5 2 -> 16" -> ((3, 5, 2), 16). Raises ValueError otherwise."""
    match = _PROMPT_RE.match(text)
    if match is None:
        raise ValueError(f"not a Countdown prompt ('<numbers> -> <target>'): {text[:80]!r}")
    return tuple(int(n) for n in match.group(1).split()), int(match.group(2))


def response_text(expression: str) -> str:
    """The SFT target for one solution: a space then the expression (EOS is appended by the trainer)."""
    return " " + expression


# --------------------------------------------------------------------------------------------------
# Solution enumeration


# One enumerated expression: (canonical text, kind, added operands, subtracted operands, value), where the
# operands are those of the top-level chain (kind "sum": + and -, "product": * and /) as sorted
# (sort key, rendered text) pairs. Combining two entries merges chains without walking trees; the text
# is exactly canonical_form() of the expression (checked by the tests).
_Entry = tuple


def _chain_operands(entry: _Entry, kind: str) -> tuple[tuple, tuple]:
    text, entry_kind, plus, minus, value = entry
    if entry_kind == kind:
        return plus, minus
    rendered = f"({text})" if kind == "product" and entry_kind == "sum" else text
    key = (0, value, "") if entry_kind == "num" else (1, 0, rendered)
    return ((key, rendered),), ()


def _combine(left: _Entry, op: str, right: _Entry, value: Fraction) -> _Entry:
    kind = "sum" if op in "+-" else "product"
    lp, lm = _chain_operands(left, kind)
    rp, rm = _chain_operands(right, kind)
    if op in "+*":
        plus, minus = tuple(sorted(lp + rp)), tuple(sorted(lm + rm))
    else:
        plus, minus = tuple(sorted(lp + rm)), tuple(sorted(lm + rp))
    pos_op, neg_op = ("+", "-") if kind == "sum" else ("*", "/")
    text = pos_op.join(r for _, r in plus) + "".join(neg_op + r for _, r in minus)
    return (text, kind, plus, minus, value)


@functools.lru_cache(maxsize=4096)
def _expressions_by_mask(numbers: tuple[int, ...]) -> tuple[dict[str, Fraction], ...]:
    """For every subset (bitmask over positions) of `numbers`: {canonical text: value} of all
    expressions using exactly that subset, each position once. Exhaustive; ~1 ms for 3 numbers,
    ~10-20 ms for 4."""
    n = len(numbers)
    table: list[dict[str, _Entry]] = [dict() for _ in range(1 << n)]
    for i, number in enumerate(numbers):
        table[1 << i][str(number)] = (str(number), "num", (), (), Fraction(number))
    for mask in range(1, 1 << n):
        if mask & (mask - 1) == 0:
            continue
        out = table[mask]
        sub = (mask - 1) & mask
        while sub:
            rest = mask ^ sub
            for left in table[sub].values():
                lval = left[4]
                for right in table[rest].values():
                    rval = right[4]
                    for op in "+-*/":
                        if op == "+":
                            value = lval + rval
                        elif op == "-":
                            value = lval - rval
                        elif op == "*":
                            value = lval * rval
                        elif rval == 0:
                            continue
                        else:
                            value = lval / rval
                        entry = _combine(left, op, right, value)
                        out.setdefault(entry[0], entry)
            sub = (sub - 1) & mask
    return tuple({text: entry[4] for text, entry in level.items()} for level in table)


@functools.lru_cache(maxsize=4096)
def _all_expressions_cached(ordered: tuple[int, ...], rule: str) -> dict[str, Fraction]:
    table = _expressions_by_mask(ordered)
    if rule == "exactly_once":
        return dict(table[-1])
    merged: dict[str, Fraction] = {}
    for entry in table[1:]:
        merged.update(entry)  # duplicate numbers: the same text from two masks is one answer
    return merged


def _all_expressions(numbers: Sequence[int], rule: str) -> dict[str, Fraction]:
    """{canonical: value} of every expression allowed by `rule` (numbers sorted: order is irrelevant).
    The returned dict is shared (cached): do not modify it."""
    _check_rule(rule)
    return _all_expressions_cached(tuple(sorted(int(n) for n in numbers)), rule)


def solutions(numbers: Sequence[int], target: int, rule: str = "at_most_once") -> list[str]:
    """All distinct correct answers (canonical forms), sorted by length then text."""
    goal = Fraction(target)
    found = [key for key, value in _all_expressions(numbers, rule).items() if value == goal]
    return sorted(found, key=lambda s: (len(s), s))


def solution_counts(numbers: Sequence[int], rule: str = "at_most_once") -> dict[int, int]:
    """{integer target: number of distinct correct answers} for every positive integer reachable."""
    _check_rule(rule)
    return dict(_solution_counts_cached(tuple(sorted(int(n) for n in numbers)), rule))


@functools.lru_cache(maxsize=4096)
def _solution_counts_cached(ordered: tuple[int, ...], rule: str) -> tuple[tuple[int, int], ...]:
    counts: Counter[int] = Counter()
    for value in _all_expressions_cached(ordered, rule).values():
        if value.denominator == 1 and value > 0:
            counts[int(value)] += 1
    return tuple(sorted(counts.items()))


# --------------------------------------------------------------------------------------------------
# Problems and generators


@dataclass(frozen=True)
class CountdownConfig:
    """Problem family. Defaults are the embedded default's (docs/tasks.md): 4 distinct numbers from 2..10,
    targets 1..50, "at most once", >= 2 answers: 4,545 problems (about 4,090 train / 455 eval), median 4
    distinct answers each (quartiles 3 / 4 / 7, max 60). With 3 numbers from 1..20 and targets <= 100,
    only 2,410 problems have two answers or more and their median is 2."""

    num_numbers: int = 4  # numbers per problem: 2..4 (solutions are enumerated exhaustively)
    min_number: int = 2  # numbers are drawn uniformly from [min_number, max_number]; 1 is left out by
    max_number: int = 10  # default: "x*1", "x/1" would make trivially different answers
    distinct_numbers: bool = True  # draw without replacement
    min_target: int = 1  # targets are integers in [min_target, max_target] ...
    max_target: int = 50
    exclude_given_targets: bool = True  # ... and not one of the numbers (else a bare number is an answer)
    rule: str = "at_most_once"  # "at_most_once" | "exactly_once" (module docstring)
    min_solutions: int = 2  # only problems with at least this many distinct correct answers
    eval_fraction: float = 0.1  # share of (numbers, target) keys reserved for evaluation (hash split)

    def __post_init__(self):
        def bad(name, rule):
            raise ValueError(f"CountdownConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        _check_rule(self.rule)
        if not 2 <= self.num_numbers <= 4:
            bad("num_numbers", "in [2, 4]")
        if not 0 <= self.min_number <= self.max_number:
            bad("max_number", f">= min_number ({self.min_number}) >= 0")
        if self.distinct_numbers and self.max_number - self.min_number + 1 < self.num_numbers:
            bad("max_number", f"large enough for {self.num_numbers} distinct numbers")
        if not 0 <= self.min_target <= self.max_target:
            bad("max_target", f">= min_target ({self.min_target}) >= 0")
        if self.min_solutions < 1:
            bad("min_solutions", ">= 1")
        if not 0.0 < self.eval_fraction < 1.0:
            bad("eval_fraction", "in (0, 1)")


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]  # in the order shown in the prompt
    target: int
    rule: str = "at_most_once"
    solutions: tuple[str, ...] = field(default=(), compare=False)  # canonical, sorted by length then text

    @property
    def key(self) -> str:
        return problem_key(self.numbers, self.target)

    @property
    def num_solutions(self) -> int:
        return len(self.solutions)

    @property
    def prompt(self) -> str:
        return prompt_text(self.numbers, self.target)

    @property
    def reference(self) -> str:
        """One solution (the shortest, ties by text): the SFT reference."""
        return self.solutions[0]

    def to_record(self) -> dict:
        """A prompt record in the data/ format (prompt, answer, metadata)."""
        return {
            "prompt": self.prompt,
            "answer": str(self.target),
            "metadata": {
                "task": "countdown",
                "numbers": list(self.numbers),
                "target": self.target,
                "rule": self.rule,
                "num_solutions": self.num_solutions,
                "solutions": list(self.solutions),
                "reference": self.reference,
            },
        }


def problem_key(numbers: Iterable[int], target: int) -> str:
    """Order-free identity of a problem: "2,3,5->16"."""
    return ",".join(str(n) for n in sorted(int(n) for n in numbers)) + f"->{int(target)}"


def split_of(numbers: Iterable[int], target: int, eval_fraction: float = 0.1) -> str:
    """"eval" or "train": a fixed hash of the problem key, so the two sets never share a problem
    (whatever the seeds, sizes or order in which they are generated)."""
    digest = hashlib.sha256(problem_key(numbers, target).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2.0**64
    return "eval" if bucket < eval_fraction else "train"


def generate_problems(
    config: CountdownConfig, split: str, count: int, seed: int = 0, max_attempts: int | None = None
) -> list[CountdownProblem]:
    """`count` distinct problems of `split` ("train" | "eval"), deterministic in (config, split, seed).

    Each problem is solvable under config.rule with >= config.min_solutions distinct answers (all of them
    enumerated in `solutions`). Raises ValueError if the family has too few such problems.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(f"countdown:{split}:{seed}")
    pool = range(config.min_number, config.max_number + 1)
    seen: set[str] = set()
    problems: list[CountdownProblem] = []
    attempts = 0
    max_attempts = max_attempts if max_attempts is not None else 50 * count + 1000
    while len(problems) < count:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could only generate {len(problems)} of {count} distinct {split} Countdown problems in "
                f"{max_attempts} draws: widen the number/target ranges or lower min_solutions ({config})"
            )
        if config.distinct_numbers:
            numbers = tuple(rng.sample(pool, config.num_numbers))
        else:
            numbers = tuple(rng.choice(pool) for _ in range(config.num_numbers))
        counts = solution_counts(numbers, config.rule)
        candidates = sorted(
            t for t, c in counts.items()
            if config.min_target <= t <= config.max_target and c >= config.min_solutions
            and not (config.exclude_given_targets and t in numbers)
            and split_of(numbers, t, config.eval_fraction) == split
            and problem_key(numbers, t) not in seen
        )
        if not candidates:
            continue
        target = rng.choice(candidates)
        seen.add(problem_key(numbers, target))
        problems.append(CountdownProblem(numbers, target, config.rule, tuple(solutions(numbers, target, config.rule))))
    return problems
