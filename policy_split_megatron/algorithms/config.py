"""Typed configuration of the RL algorithms. Every field is documented where it is declared and checked
in __post_init__; defaults follow the papers (section/table cited) or, where they are silent, the choice
recorded in docs/algorithms.md.

Papers: PS = Policy Split (arXiv 2604.11510); COV = Cui et al. (arXiv 2505.22617); LB = Lei & Baehr
(arXiv 2604.09676); EA = cheng2025 (arXiv 2506.14758); EDGE = arXiv 2507.21848; FORK = arXiv 2506.01939;
ERPD = arXiv 2605.25582; DAPO = arXiv 2503.14476; DRGRPO = Dr. GRPO, arXiv 2503.20783; GSPO = arXiv 2507.18071;
RLOO = arXiv 2402.14740; TIS = Yao et al. 2025 (truncated importance sampling for the rollout mismatch).
Combinations that do not make sense are refused in AlgorithmConfig.__post_init__ (reasons: docs/algorithms.md).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from policy_split_megatron.algorithms.advantages import ADVANTAGE_ESTIMATORS
from policy_split_megatron.algorithms.aggregation import LOSS_AGG_MODES, NORMALISED_MODE
from policy_split_megatron.algorithms.common import KL_ESTIMATORS
from policy_split_megatron.algorithms.entropy_baselines import EDA_NORMALIZERS
from policy_split_megatron.algorithms.erpd import SIGNAL_CONSTRUCTIONS, STAGE1_OBJECTIVES
from policy_split_megatron.algorithms.modes import DEFAULT_HE_SYSTEM_PROMPT, HE_PROMPT_PLACEMENTS
from policy_split_megatron.algorithms.policy_split import CLAMP_ORDERS, ENTROPY_ESTIMATES
from policy_split_megatron.algorithms.ppo import RATIO_LEVELS
from policy_split_megatron.algorithms.rollout_correction import CORRECTION_LEVELS, CORRECTION_MODES
from policy_split_megatron.algorithms.schedules import SCHEDULE_KINDS, schedule_value

ALGORITHM_NAMES = (
    "policy_split", "grpo", "entropy_reg", "entropy_adv", "entropy_driven_adv",
    "forking_tokens", "clip_cov", "kl_cov", "erpd",
)
CENTERINGS = ("micro_batch", "global")
ENTROPY_SOURCES = ("current", "old")


def _one_of(owner: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name} must be one of {tuple(allowed)}, got {value!r}")


def _check(owner: str, name: str, ok: bool, rule: str, value) -> None:
    if not ok:
        raise ValueError(f"{owner}.{name} must be {rule}, got {value!r}")


@dataclass
class ScheduleConfig:
    """A coefficient over optimizer steps (formulas in algorithms/schedules.py)."""

    kind: str = "constant"  # "constant" | "linear" | "cosine" | "robbins_monro"
    initial: float = 1.0  # value at step 0
    final: float = 0.0  # floor: reached at total_steps (linear/cosine), approached (robbins_monro)
    total_steps: int | None = None  # annealing length N; required by linear/cosine
    t0: float = 100.0  # robbins_monro time scale: v_{t0} = final + (initial - final) / 2**power
    power: float = 1.0  # robbins_monro exponent p in (0.5, 1] (Robbins-Monro conditions)

    def __post_init__(self):
        _one_of("schedule", "kind", self.kind, SCHEDULE_KINDS)
        if self.kind in ("linear", "cosine"):
            _check("schedule", "total_steps", bool(self.total_steps) and self.total_steps > 0,
                   f"a positive integer for kind={self.kind!r}", self.total_steps)
        if self.kind == "robbins_monro":
            _check("schedule", "power", 0.5 < self.power <= 1.0, "in (0.5, 1]", self.power)
            _check("schedule", "t0", self.t0 > 0, "> 0", self.t0)

    def value(self, step: int) -> float:
        return schedule_value(self.kind, step, initial=self.initial, final=self.final,
                              total_steps=self.total_steps, t0=self.t0, power=self.power)


@dataclass
class AdvantageConfig:
    """Group advantage (GRPO Eq. 2 of PS, or RLOO); used by every algorithm that has rewards, Policy Split's A included."""

    estimator: str = "grpo"  # "grpo": r - group mean; "rloo": r - mean of the OTHER responses (RLOO)
    normalize_by_std: bool = True  # divide by the group std (GRPO); False = Dr. GRPO's r - mean (and RLOO's)
    std_unbiased: bool = True  # Bessel-corrected std (torch.std, verl); False = population std
    eps: float = 1e-6  # added to the std (verl's epsilon)

    def __post_init__(self):
        _one_of("advantage", "estimator", self.estimator, ADVANTAGE_ESTIMATORS)
        _check("advantage", "eps", self.eps >= 0, ">= 0", self.eps)


@dataclass
class PPOConfig:
    """PPO-clip surrogate (Eq. 7-8 of PS) and the optional reference KL."""

    clip_eps_low: float | None = 0.2  # PS Table 8: 0.2; None (with clip_eps_high None) = no clip
    clip_eps_high: float | None = 0.2  # > clip_eps_low = DAPO clip-higher (e.g. 0.28)
    dual_clip_c: float | None = None  # dual-clip cap for A < 0 (verl clip_ratio_c = 3.0); None = off
    kl_coef: float = 0.0  # reference-KL loss coefficient; PS Table 8: 0.0 (off)
    kl_estimator: str = "k3"  # "k1" | "k2" | "k3" | "abs": per-token estimator of KL(pi || pi_ref)
    # "token": rho per token (PPO/GRPO); "sequence": GSPO's length-normalised sequence ratio, clipped per
    # sequence (GSPO §4.1: clip_eps_low=3e-4, clip_eps_high=4e-4; needs loss_agg_mode="seq-mean-token-mean")
    ratio_level: str = "token"

    def __post_init__(self):
        for name in ("clip_eps_low", "clip_eps_high"):
            value = getattr(self, name)
            _check("ppo", name, value is None or value >= 0, "None or >= 0", value)
        _check("ppo", "clip_eps_low", self.clip_eps_low is None or self.clip_eps_low < 1, "< 1", self.clip_eps_low)
        _check("ppo", "dual_clip_c", self.dual_clip_c is None or self.dual_clip_c > 1, "None or > 1", self.dual_clip_c)
        _check("ppo", "kl_coef", self.kl_coef >= 0, ">= 0", self.kl_coef)
        _one_of("ppo", "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _one_of("ppo", "ratio_level", self.ratio_level, RATIO_LEVELS)


@dataclass
class PolicySplitConfig:
    """Policy Split (PS §3). HE = high-entropy mode."""

    eta: float = 0.03  # η, weight of the HE bonus (PS §4.1)
    # η', bonus on normal-conditioned rows (PS §4.4 ablation; 0 = the method). >0 raises normal-mode entropy
    eta_normal: float = 0.0
    kappa: float = 2.0  # κ, clamp |bonus| against |A|/κ (PS §4.1); 0 = no clamp (authors' code default)
    alpha: float = 0.5  # α of Eq. 6: weight of -log π^HE vs -log π (PS §4.1)
    clamp_order: str = "paper"  # "paper": η·clip(B, ±|A|/κ) (Eq. 3); "reference_code": clip(η·B, ±|A|/κ)
    # "logprob": b from -log π_old (paper, code default); "entropy": full-vocab entropies
    entropy_estimate: str = "logprob"
    zscore_unbiased: bool = True  # Eq. 4 std: torch.std unbiased, as the authors' code
    zscore_eps: float = 1e-6  # Eq. 4 epsilon added to the std (authors' code)
    # responses per prompt sampled in the normal mode: G/2 (PS Eq. 9); PS's "rollout size 8" read as G = 8
    n_normal: int = 4
    n_explore: int = 4  # responses per prompt sampled in the HE mode (G/2)
    # True: G counts both modes, one group of n_normal + n_explore (authors' code); False: per-mode groups (ablation)
    joint_groups: bool = True
    he_system_prompt: str = DEFAULT_HE_SYSTEM_PROMPT  # the HE instruction s (PS §3.1, App. C.2, verbatim)
    # "system": a real system turn (Eq. 1); "user_prefix": prepended to the user turn
    he_prompt_placement: str = "system"
    kl_metric_estimator: str = "k1"  # estimator of the inter-mode KL metrics (authors log verl's kl_penalty)

    def __post_init__(self):
        _check("policy_split", "eta", self.eta >= 0, ">= 0", self.eta)
        _check("policy_split", "kappa", self.kappa == 0 or self.kappa >= 1, "0 (no clamp) or >= 1", self.kappa)
        _check("policy_split", "alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]", self.alpha)
        _one_of("policy_split", "clamp_order", self.clamp_order, CLAMP_ORDERS)
        _one_of("policy_split", "entropy_estimate", self.entropy_estimate, ENTROPY_ESTIMATES)
        _check("policy_split", "zscore_eps", self.zscore_eps >= 0, ">= 0", self.zscore_eps)
        for name in ("n_normal", "n_explore"):
            value = getattr(self, name)
            _check("policy_split", name, isinstance(value, int) and value >= 1, "an int >= 1", value)
        prompt = self.he_system_prompt
        _check("policy_split", "he_system_prompt", isinstance(prompt, str) and bool(prompt.strip()),
               "a non-empty string", prompt)
        _one_of("policy_split", "he_prompt_placement", self.he_prompt_placement, HE_PROMPT_PLACEMENTS)
        _one_of("policy_split", "kl_metric_estimator", self.kl_metric_estimator, KL_ESTIMATORS)

    @property
    def rollouts_per_prompt(self) -> int:
        """Responses generated per prompt over both modes (the paper's G; one joint group when joint_groups)."""
        return self.n_normal + self.n_explore


@dataclass
class EntropyRegConfig:
    """Entropy Regularization baseline: loss -= c_t * agg(H) (PS App. B.3; verl entropy_coeff)."""

    coef: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", initial=0.003))  # PS: 0.003

    def __post_init__(self):
        _check("entropy_reg.coef", "initial", self.coef.initial >= 0, ">= 0", self.coef.initial)


@dataclass
class EntropyAdvConfig:
    """Entropy Advantage (EA): A + min(α·H.detach(), |A|/κ)."""

    alpha: float = 0.4  # α (PS App. B.3, EA)
    kappa: float = 2.0  # κ > 1 keeps the sign of A (PS App. B.3, EA)
    entropy_source: str = "current"  # "current": entropy of the update's forward pass (EA code); "old": π_old's

    def __post_init__(self):
        _check("entropy_adv", "alpha", self.alpha >= 0, ">= 0", self.alpha)
        _check("entropy_adv", "kappa", self.kappa > 1, "> 1 (so the bonus never flips the sign of A)", self.kappa)
        _one_of("entropy_adv", "entropy_source", self.entropy_source, ENTROPY_SOURCES)


@dataclass
class EntropyDrivenAdvConfig:
    """Entropy-Driven Advantage (EDGE, signal level): A_i / (P_i / mean P)."""

    normalizer: str = "group"  # "group": mean P over the GRPO group (EDGE paper); "batch": over the batch (EDGE code)
    eps: float = 1e-6  # keeps P_i = 0 finite

    def __post_init__(self):
        _one_of("entropy_driven_adv", "normalizer", self.normalizer, EDA_NORMALIZERS)
        _check("entropy_driven_adv", "eps", self.eps > 0, "> 0", self.eps)


@dataclass
class ForkingTokensConfig:
    """Forking Tokens only (FORK): gradient on the top fraction of tokens by entropy."""

    top_fraction: float = 0.2  # ρ: keep the top 20 % highest-entropy tokens (FORK; PS App. B.3)

    def __post_init__(self):
        _check("forking_tokens", "top_fraction", 0.0 < self.top_fraction <= 1.0, "in (0, 1]", self.top_fraction)


@dataclass
class ClipCovConfig:
    """Clip-Cov (COV Eq. 11-12; verl compute_policy_loss_clip_cov)."""

    ratio: float = 2e-4  # fraction of valid tokens detached (COV, PS App. B.3)
    lb: float = 1.0  # strict lower bound of the covariance band (COV)
    ub: float = 5.0  # strict upper bound of the covariance band (COV)
    centering: str = "micro_batch"  # "micro_batch" (verl) | "global": caller passes all-reduced means

    def __post_init__(self):
        _check("clip_cov", "ratio", 0.0 < self.ratio <= 1.0, "a fraction in (0, 1]", self.ratio)
        _check("clip_cov", "ub", self.ub > self.lb, f"> lb = {self.lb}", self.ub)
        _one_of("clip_cov", "centering", self.centering, CENTERINGS)


@dataclass
class KLCovConfig:
    """KL-Cov (COV Eq. 13-14; verl compute_policy_loss_kl_cov), with an optionally annealed β (LB)."""

    ratio: float = 2e-4  # k as a FRACTION (COV: 2e-3 for 7B, 2e-4 for 32B; original code's k_percent is in %)
    # β (COV: 1, constant)
    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", initial=1.0))
    centering: str = "micro_batch"  # "micro_batch" (verl) | "global"

    def __post_init__(self):
        _check("kl_cov", "ratio", 0.0 < self.ratio <= 1.0, "a fraction in (0, 1] (2e-4 = 0.02 %)", self.ratio)
        _check("kl_cov.beta", "initial", self.beta.initial >= 0, ">= 0", self.beta.initial)
        _one_of("kl_cov", "centering", self.centering, CENTERINGS)


@dataclass
class ERPDConfig:
    """ERPD (arXiv 2605.25582); the paper's losses are not public: defaults are this package's choices."""

    stage: int = 1  # 1: weakly constrained off-policy optimisation; 2: distillation into the base
    stage1_objective: str = "pg"  # "pg" | "ce" | "mse"
    stage1_clip_eps: float | None = None  # clip of the stage-1 ratio to the stored log-probs; None = no clip
    ce_reward_threshold: float = 0.0  # "ce": responses with reward > threshold are the positives
    ce_advantage_weighted: bool = False  # "ce": weight each positive by max(A, 0) instead of 1
    mse_target_scale: float = 0.1  # "mse": target log π/π_ref = scale * A (scale = 1/β of a KL-regularised optimum)
    signal: str = "log_ratio"  # stage 2: "log_ratio" | "log_ratio_clipped" | "sign" | "reference_corrected"
    signal_clip: float = 1.0  # "log_ratio_clipped": |signal| <= signal_clip (nats)
    signal_scale: float = 1.0  # multiplies the (teacher-averaged) signal
    distill_clip_eps: float | None = 0.2  # stage-2 clip of π/π_base (PPO's 0.2); None = no clip
    distill_kl_coef: float = 0.1  # stage-2 KL(π_base || π) penalty coefficient
    distill_kl_estimator: str = "k3"  # per-token estimator of that KL
    kl_drop_bound: float | None = None  # drop the surrogate of tokens whose per-token KL exceeds this; None = off
    # stage 2: the teachers, Hugging Face model folders of the policy's architecture (e.g. a stage-1 run's
    # <run>/hf export); a stage-2 run needs at least one. Checkpoints: convert them first (tools/convert_checkpoint.py)
    teachers: list[str] = field(default_factory=list)

    def __post_init__(self):
        _check("erpd", "stage", self.stage in (1, 2), "1 or 2", self.stage)
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        _check("erpd", "teachers", isinstance(self.teachers, (list, tuple))
               and all(isinstance(t, str) and t.strip() for t in self.teachers),
               "a list of model folder paths", self.teachers)
        self.teachers = list(self.teachers)  # non-empty for a stage-2 RUN: checked by RunConfig (the trainer's need)
        _one_of("erpd", "stage1_objective", self.stage1_objective, STAGE1_OBJECTIVES)
        eps = self.stage1_clip_eps
        _check("erpd", "stage1_clip_eps", eps is None or eps > 0, "None or > 0", eps)
        _check("erpd", "mse_target_scale", self.mse_target_scale > 0, "> 0", self.mse_target_scale)
        _one_of("erpd", "signal", self.signal, SIGNAL_CONSTRUCTIONS)
        _check("erpd", "signal_clip", self.signal_clip > 0, "> 0", self.signal_clip)
        _check("erpd", "distill_clip_eps", self.distill_clip_eps is None or 0 < self.distill_clip_eps < 1,
               "None or in (0, 1)", self.distill_clip_eps)
        _check("erpd", "distill_kl_coef", self.distill_kl_coef >= 0, ">= 0", self.distill_kl_coef)
        _one_of("erpd", "distill_kl_estimator", self.distill_kl_estimator, KL_ESTIMATORS)
        bound = self.kl_drop_bound
        _check("erpd", "kl_drop_bound", bound is None or bound > 0, "None or > 0", bound)


@dataclass
class RolloutCorrectionConfig:
    """Rollout/trainer log-prob mismatch correction (algorithms/rollout_correction.py); off by default."""

    enabled: bool = False  # needs the engine's log-prob of every sampled token (RolloutBatch.engine_log_probs)
    level: str = "token"  # "token" | "sequence" | "geometric" (geometric: mask mode only)
    mode: str = "truncate"  # "truncate": w = min(pi_old/pi_engine, cap) (TIS); "mask": drop outside [lower, upper]
    cap: float = 2.0  # C of truncate (TIS; verl rollout_is_threshold, slime --use-tis: 2.0); >= 1 keeps w = 1 at rho = 1
    lower: float = 0.5  # mask: lowest kept ratio (verl's default lower = 1 / upper)
    upper: float = 2.0  # mask: highest kept ratio

    def __post_init__(self):
        _one_of("rollout_correction", "level", self.level, CORRECTION_LEVELS)
        _one_of("rollout_correction", "mode", self.mode, CORRECTION_MODES)
        _check("rollout_correction", "cap", self.cap >= 1, ">= 1 (a cap below 1 would reweight matched tokens)",
               self.cap)
        _check("rollout_correction", "lower", 0 <= self.lower <= 1, "in [0, 1]", self.lower)
        _check("rollout_correction", "upper", self.upper >= 1, ">= 1", self.upper)
        if self.mode == "truncate" and self.level == "geometric":
            raise ValueError("rollout_correction.level='geometric' is a rejection criterion: use mode='mask' "
                             "(truncating a geometric mean is not an importance weight)")


@dataclass
class DAPOConfig:
    """DAPO's dynamic sampling and overlong handling (DAPO §3.2, §3.4; algorithms/dapo.py). Clip-higher is
    ppo.clip_eps_high (DAPO: 0.28), the token-level loss is loss_agg_mode="token-mean" (the default)."""

    dynamic_sampling: bool = False  # drop groups whose task rewards are all equal; generate more prompts
    max_generation_rounds: int = 10  # rounds per step, the first included (verl max_num_gen_batches = 10)
    dynamic_sampling_tolerance: float = 0.0  # a group is "all equal" when max(r) - min(r) <= this
    overlong_filtering: bool = False  # truncated responses (no EOS, cut at the length limit) leave the loss
    overlong_buffer: int = 0  # L_cache of the soft overlong punishment (Eq. 13; DAPO: 4096); 0 = off
    overlong_penalty_factor: float = 1.0  # scales Eq. 13's penalty (1.0 = the paper)

    def __post_init__(self):
        _check("dapo", "max_generation_rounds", isinstance(self.max_generation_rounds, int)
               and self.max_generation_rounds >= 1, "an int >= 1", self.max_generation_rounds)
        _check("dapo", "dynamic_sampling_tolerance", self.dynamic_sampling_tolerance >= 0, ">= 0",
               self.dynamic_sampling_tolerance)
        _check("dapo", "overlong_buffer", isinstance(self.overlong_buffer, int) and self.overlong_buffer >= 0,
               "an int >= 0 (tokens; 0 = no soft penalty)", self.overlong_buffer)
        _check("dapo", "overlong_penalty_factor", self.overlong_penalty_factor >= 0, ">= 0",
               self.overlong_penalty_factor)


@dataclass
class AlgorithmConfig:
    """Root: which algorithm runs, and the settings of all of them (only the named one is used)."""

    name: str = "policy_split"  # one of ALGORITHM_NAMES
    # "token-mean" (DAPO's token-level loss) | "seq-mean-token-mean" | "seq-mean-token-sum" |
    # "seq-mean-token-sum-norm" (Dr. GRPO: token sums / loss_norm_length); verl meaning; PS silent, verl default
    loss_agg_mode: str = "token-mean"
    loss_norm_length: int | None = None  # Dr. GRPO's constant L (e.g. rollout max_tokens); that mode only
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    policy_split: PolicySplitConfig = field(default_factory=PolicySplitConfig)
    entropy_reg: EntropyRegConfig = field(default_factory=EntropyRegConfig)
    entropy_adv: EntropyAdvConfig = field(default_factory=EntropyAdvConfig)
    entropy_driven_adv: EntropyDrivenAdvConfig = field(default_factory=EntropyDrivenAdvConfig)
    forking_tokens: ForkingTokensConfig = field(default_factory=ForkingTokensConfig)
    clip_cov: ClipCovConfig = field(default_factory=ClipCovConfig)
    kl_cov: KLCovConfig = field(default_factory=KLCovConfig)
    erpd: ERPDConfig = field(default_factory=ERPDConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    dapo: DAPOConfig = field(default_factory=DAPOConfig)

    def __post_init__(self):
        _one_of("algorithm", "name", self.name, ALGORITHM_NAMES)
        _one_of("algorithm", "loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        if self.loss_agg_mode == NORMALISED_MODE:
            n = self.loss_norm_length
            _check("algorithm", "loss_norm_length", isinstance(n, int) and n >= 1,
                   f"a positive int with loss_agg_mode={NORMALISED_MODE!r} (Dr. GRPO's constant, e.g. the "
                   "rollout's max_tokens)", n)
        if self.name in ("clip_cov", "kl_cov") and self.ppo.dual_clip_c is not None:
            raise ValueError(f"algorithm.ppo.dual_clip_c is not used by {self.name} (verl semantics); set it to None")
        _refuse_combinations(self)


def _refuse_combinations(cfg: AlgorithmConfig) -> None:
    """Combinations that have no meaning (each reason in docs/algorithms.md, "Combinations")."""
    if cfg.ppo.ratio_level == "sequence":
        if cfg.name in ("clip_cov", "kl_cov", "erpd"):
            raise ValueError(f"algorithm.ppo.ratio_level='sequence' (GSPO) cannot be combined with {cfg.name}: "
                             f"{cfg.name} defines its own per-token loss (token covariance / ERPD stages); use "
                             "ratio_level='token'")
        if cfg.loss_agg_mode != "seq-mean-token-mean":
            raise ValueError("algorithm.ppo.ratio_level='sequence' (GSPO) averages over sequences (GSPO §4.1, 1/G "
                             "sum over responses): set algorithm.loss_agg_mode='seq-mean-token-mean', got "
                             f"{cfg.loss_agg_mode!r}")
    if cfg.rollout_correction.enabled and cfg.name == "erpd":
        raise ValueError("algorithm.rollout_correction cannot be combined with erpd: stage 1's ce/mse objectives "
                         "are regressions, not importance-weighted policy gradients, and stage 2's ratio is taken "
                         "to the frozen base, not to the policy that sampled; set rollout_correction.enabled=False")
    if cfg.name == "erpd" and cfg.erpd.stage == 2 and (cfg.dapo.dynamic_sampling or cfg.dapo.overlong_buffer):
        raise ValueError("algorithm.dapo.dynamic_sampling / overlong_buffer act on rewards, and ERPD stage 2's "
                         "signal (teacher log-ratios) does not use rewards; turn them off for stage 2")


def config_from_dict(cls, data: Mapping[str, Any] | None):
    """Build a config dataclass from nested plain dicts (e.g. YAML); unknown keys are an error."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        sub = hints[key]
        if dataclasses.is_dataclass(sub) and isinstance(value, Mapping):
            value = config_from_dict(sub, value)
        kwargs[key] = value
    return cls(**kwargs)
