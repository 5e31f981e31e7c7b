"""The reward-function interface and its loading from a config string.

A reward function is any callable

    fn(prompt_record: dict, response_text: str, **options) -> float | (float, dict) | RewardOutput

`prompt_record` is a record of `data/` ({"prompt", "answer", "metadata", ...}); `response_text` is the
decoded response (special tokens skipped). The optional dict carries per-sample information (the extracted
answer, why it was wrong, ...) for logs. Shipped functions return 1.0 (correct) or 0.0.

Config names a function by a dotted path "package.module:function" (or "package.module.function"), or by
a short alias: "countdown", "math", "multiple_choice". Keyword options are bound at load time and checked
against the signature then, so a misspelt option fails before any expensive work:

    reward = load_reward_fn("my_rewards.rules:exact_match", case_sensitive=False)
    out = reward(record, "The answer is 4")      # RewardOutput(reward=1.0, info={...})

maj@n (metrics/correctness.py) votes on each sample's final answer. A reward function provides it
through an `answer_key` attribute: a function with the same signature and options that returns the
answer as the verifier reads it (hashable), or None when the response gives none. The shipped
verifiers have one; a function without it gets no maj@n:

    def exact_match_key(prompt_record, response_text, *, case_sensitive=True):
        return response_text.strip() if case_sensitive else response_text.strip().lower()
    exact_match.answer_key = exact_match_key
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

REWARD_ALIASES = {
    "countdown": "policy_split_megatron.rewards.countdown:countdown_reward",
    "math": "policy_split_megatron.rewards.math_answer:math_reward",
    "multiple_choice": "policy_split_megatron.rewards.multiple_choice:multiple_choice_reward",
}
class RewardLoadError(ImportError):
    """A reward path that cannot be resolved to a callable (or options it does not accept)."""


@dataclass(frozen=True)
class RewardOutput:
    reward: float
    info: dict = field(default_factory=dict)


def resolve_callable(spec: str) -> Callable:
    """The object named by "package.module:attr" (also "package.module.attr"; attr may be dotted)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardLoadError(f"a reward function is named 'package.module:function', got {spec!r}")
    spec = spec.strip()
    path = REWARD_ALIASES.get(spec, spec)
    if ":" in path:
        module_name, _, attr = path.partition(":")
    elif "." in path:
        module_name, _, attr = path.rpartition(".")
    else:
        raise RewardLoadError(
            f"reward function {spec!r} is neither a 'package.module:function' path nor one of the "
            f"built-in names {sorted(REWARD_ALIASES)}"
        )
    if not module_name or not attr:
        raise RewardLoadError(f"reward function {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or an error raised while importing the user's module
        raise RewardLoadError(
            f"reward function {spec!r}: cannot import module {module_name!r} "
            f"({type(err).__name__}: {err}). Is it installed or on PYTHONPATH?"
        ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardLoadError(f"reward function {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardLoadError(f"reward function {spec!r} is a {type(obj).__name__}, not callable")
    return obj


def as_reward_output(result: Any, name: str = "reward function") -> RewardOutput:
    """Normalise what a reward function returned: a number, (number, dict) or RewardOutput."""
    info: Mapping = {}
    if isinstance(result, RewardOutput):
        value, info = result.reward, result.info
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        value, info = result
    else:
        value = result
    if not isinstance(value, (int, float)) and not hasattr(value, "__float__"):  # bool counts as 1.0 / 0.0
        raise TypeError(f"{name} must return a float (or (float, dict)), got {type(result).__name__}: {result!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} returned a non-finite reward {value}")
    return RewardOutput(value, dict(info))


class RewardFunction:
    """A loaded reward function with its options bound: `fn(record, response) -> RewardOutput`."""

    def __init__(self, spec: str, options: Mapping[str, Any] | None = None):
        self.spec = spec
        self.options = dict(options or {})
        self.fn = resolve_callable(spec)
        self._answer_key = getattr(self.fn, "answer_key", None)  # module docstring: maj@n
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # builtins without a signature: cannot check
            signature = None
        if signature is not None:
            try:
                signature.bind({}, "", **self.options)
            except TypeError as err:
                raise RewardLoadError(
                    f"reward function {spec!r} cannot be called as fn(prompt_record, response_text"
                    f"{''.join(', ' + k + '=...' for k in self.options)}): {err}"
                ) from err

    def __call__(self, prompt_record: Mapping[str, Any], response_text: str) -> RewardOutput:
        return as_reward_output(self.fn(prompt_record, response_text, **self.options), f"reward {self.spec!r}")

    @property
    def has_answer_key(self) -> bool:
        return self._answer_key is not None

    def answer_key(self, prompt_record: Mapping[str, Any], response_text: str) -> Any:
        """The sample's final answer as this verifier reads it, None when it gave none."""
        if self._answer_key is None:
            raise TypeError(f"reward function {self.spec!r} has no `answer_key` attribute (rewards/base.py)")
        return self._answer_key(prompt_record, response_text, **self.options)

    def __repr__(self) -> str:
        return f"RewardFunction({self.spec!r}, options={self.options!r})"


def load_reward_fn(spec: str, **options: Any) -> RewardFunction:
    """Load the reward function named by `spec` with keyword `options` bound (module docstring)."""
    return RewardFunction(spec, options)
