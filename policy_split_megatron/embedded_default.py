"""The embedded default run: what `policy-split` with no arguments trains, on a 2-core CPU, with
nothing downloaded.

These are overrides of the library defaults (which follow the paper, for real models). Each value is
chosen for a random ~0.8M-parameter char-level model that must go from nothing to partial accuracy
and then show Policy Split's effects within minutes; the reason stands next to it. The tree is
applied first, then any YAML file, then command-line overrides, so every value can be changed.
"""

from __future__ import annotations

import copy
from typing import Any

# Short: the paper's 443-character HE prompt would make every HE row ~15x longer than its normal
# twin with a character tokenizer (and dominate the step time); the instruction is the same idea.
EMBEDDED_HE_PROMPT = "Explore unusual answers."

EMBEDDED_DEFAULT: dict[str, Any] = {
    "data": {
        # 3 numbers from 2..20: a tiny model reaches 10-50% in a few hundred supervised steps, and
        # every problem still has >= 2 different correct answers (4 numbers from 2..10 stayed at
        # ~1% after 300 steps: see docs/embedded_default.md).
        "countdown": {"num_numbers": 3, "min_number": 2, "max_number": 20, "max_target": 50},
        "countdown_train_size": 1500,
        "countdown_eval_size": 128,
        "prompts_per_step": 16,
        # The Countdown verifier takes microseconds: one worker per rank is plenty on 2 cores.
        "reward_workers": 1,
    },
    "rollout": {
        "he_system_prompt": EMBEDDED_HE_PROMPT,
        "normal": {"temperature": 1.0, "max_tokens": 24},  # answers are <= ~15 characters
        "explore": {"temperature": 1.0, "max_tokens": 24},
        "max_model_len": 256,
        "kv_cache_bytes": 256 << 20,
    },
    "algorithm": {"policy_split": {"he_system_prompt": EMBEDDED_HE_PROMPT}},
    "optimizer": {"lr": 1e-4},
    "warm_start": {"steps": 400, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20},
    "train": {"steps": 40, "micro_batch_tokens": 8192},
    "checkpoint": {"every_steps": 10},
    "evaluation": {"max_prompts": 128, "samples_per_prompt": 8},
    "logging": {"dir": "runs/embedded_default"},
}


def embedded_default_tree() -> dict[str, Any]:
    """A fresh copy of the embedded default's override tree."""
    return copy.deepcopy(EMBEDDED_DEFAULT)
