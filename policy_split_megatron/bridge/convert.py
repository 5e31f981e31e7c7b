"""Moving weights between Hugging Face tensors and the TP/PP-sharded Megatron policy.

`load_hf_weights` fills this rank's shards from HF tensors (each rank reads only what it needs).
`export_hf_weights` is a collective over the model-parallel group that yields full HF tensors on
every rank: TP shards are all-gathered, pipeline stages broadcast what they own. Both walk the
table in `families.py`; the export plan is computed once per model and can be reused (weight sync
calls it every step).

FP8 models with `fp8_param` keep their GEMM weights as Transformer Engine quantized tensors
(`Float8Tensor` and friends): `load_hf_weights` quantizes into them (their `copy_`), and the export
dequantizes them to their nominal dtype (the params dtype, BF16), which is what HF checkpoints and
the rollout engine expect. Plain tensors (every CPU and BF16 model) are exported as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from policy_split_megatron.bridge.families import TE_ALIASES, mappings_for
from policy_split_megatron.bridge.layouts import ParamMapping
from policy_split_megatron.model.architecture import ModelArchitecture

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_TE_TO_LOCAL = {te: local for local, te in TE_ALIASES.items()}


class WeightMismatchError(ValueError):
    """HF weights and the model config do not describe the same model."""


class SafetensorsSource(Mapping):
    """Lazy read-only view of a HF checkpoint folder (`model.safetensors` or a sharded index)."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").exists():
            with safe_open(folder / "model.safetensors", framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(
                f"{folder} holds no model.safetensors or model.safetensors.index.json: "
                "point to a Hugging Face model folder"
            )
        self._folder, self._weight_map, self._handles = folder, weight_map, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._weight_map[name]
        if file not in self._handles:
            self._handles[file] = safe_open(self._folder / file, framework="pt")
        return self._handles[file].get_tensor(name)

    def __iter__(self):
        return iter(self._weight_map)

    def __len__(self) -> int:
        return len(self._weight_map)


@dataclass(frozen=True)
class LocalParam:
    """A parameter of this rank's model stage, resolved against the name table."""

    local_name: str
    mapping: ParamMapping
    layer: int | None  # global layer index, None for non-layer parameters

    @property
    def hf_names(self) -> tuple[str, ...]:
        return tuple(n.format(layer=self.layer) for n in self.mapping.hf)


def resolve_parameters(model: torch.nn.Module, arch: ModelArchitecture) -> list[LocalParam]:
    by_pattern = {m.megatron: m for m in mappings_for(arch)}
    layer_numbers = {}
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        # `layer_number` is megatron-core's 1-based GLOBAL index: it already includes the
        # pipeline-stage offset, so the table never computes offsets itself.
        layer_numbers = {i: layer.layer_number - 1 for i, layer in enumerate(decoder.layers)}
    resolved = []
    for name, _ in model.named_parameters():
        match = _LAYER.match(name)
        layer = None
        pattern = name
        if match:
            local_index, suffix = int(match.group(1)), match.group(2)
            layer = layer_numbers[local_index]
            pattern = "decoder.layers.{layer}." + _TE_TO_LOCAL.get(suffix, suffix)
        if pattern not in by_pattern:
            raise WeightMismatchError(f"Megatron parameter '{name}' has no entry in the {arch.family} name table")
        resolved.append(LocalParam(name, by_pattern[pattern], layer))
    return resolved


def exportable(param: torch.Tensor) -> torch.Tensor:
    """A parameter's values as a plain tensor for export: a Transformer Engine FP8 parameter
    (`fp8_param=True`) is dequantized to its nominal dtype; anything else is returned detached and
    untouched (no copy)."""
    tensor = param.detach()
    if type(tensor) is torch.Tensor:  # every CPU / BF16 / FP32 parameter: the path is unchanged
        return tensor
    from megatron.core.fp8_utils import dequantize_fp8_tensor, is_float8tensor

    return dequantize_fp8_tensor(tensor) if is_float8tensor(tensor) else tensor


def _tp() -> tuple[int, int]:
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, arch: ModelArchitecture, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy HF tensors into this rank's shards. Raises WeightMismatchError naming the first
    missing tensor or wrong shape, before any parameter is modified."""
    rank, size = _tp()
    params = dict(model.named_parameters())
    plan = []
    for entry in resolve_parameters(model, arch):
        missing = [n for n in entry.hf_names if n not in tensors]
        if missing:
            raise WeightMismatchError(
                f"HF weights lack '{missing[0]}' (needed for Megatron '{entry.local_name}'); "
                f"the checkpoint does not match a {arch.family} model with this config"
            )
        plan.append(entry)
    for entry in plan:
        shard = entry.mapping.layout.shard([tensors[n] for n in entry.hf_names], rank, size, arch)
        param = params[entry.local_name]
        if shard.shape != param.shape:
            raise WeightMismatchError(
                f"'{entry.hf_names[0]}' gives shape {tuple(shard.shape)} for Megatron '{entry.local_name}' "
                f"of shape {tuple(param.shape)} at TP={size}: the config does not match the weights"
            )
        param.copy_(shard)


def model_chunks(model) -> list[torch.nn.Module]:
    """This rank's model chunks: one GPTModel stage, or one per virtual pipeline stage (a list)."""
    return list(model) if isinstance(model, (list, tuple)) else [model]


@dataclass(frozen=True)
class ExportTask:
    """One Megatron parameter to export: which pipeline stage (and virtual-stage chunk of it) owns it
    and the shapes/dtype of the HF tensors it becomes (so other stages can receive them without asking)."""

    owner_stage: int
    chunk: int
    local_name: str
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype
    mapping: ParamMapping


def export_plan(model, arch: ModelArchitecture) -> list[ExportTask]:
    """The ordered export tasks of the whole model (all pipeline stages). `model`: this rank's stage,
    or its list of virtual-stage chunks. Collective over the pipeline group; cache the result, it
    depends only on the model's structure."""
    _, tp_size = _tp()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    local = []
    for chunk, module in enumerate(model_chunks(model)):
        params = dict(module.named_parameters())
        for entry in resolve_parameters(module, arch):
            if entry.local_name == "output_layer.weight" and arch.tie_word_embeddings:
                continue  # a copy of the embedding, exported from the first stage
            param = params[entry.local_name]
            meta = [torch.empty(param.shape, dtype=param.dtype, device="meta")] * tp_size
            if entry.mapping.layout.name == "replicated":
                meta = meta[:1]
            shapes = tuple(tuple(t.shape) for t in entry.mapping.layout.unshard(meta, arch))
            local.append(ExportTask(stage, chunk, entry.local_name, entry.hf_names, shapes, param.dtype, entry.mapping))
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    if pp_size == 1:
        return local
    gathered: list = [None] * pp_size
    dist.all_gather_object(gathered, local, group=parallel_state.get_pipeline_model_parallel_group())
    return [task for stage_tasks in gathered for task in stage_tasks]


@torch.no_grad()
def export_hf_weights(
    model, arch: ModelArchitecture, plan: list[ExportTask] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) for every HF tensor, on every rank of the model-parallel group.
    `model`: this rank's stage or its virtual-stage chunks. All ranks must consume the iterator in
    step (it issues collectives)."""
    plan = export_plan(model, arch) if plan is None else plan
    params = [dict(module.named_parameters()) for module in model_chunks(model)]
    tp_rank, tp_size = _tp()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    for task in plan:
        if task.owner_stage == stage:
            local = exportable(params[task.chunk][task.local_name])
            if task.mapping.layout.name == "replicated" or tp_size == 1:
                shards = [local] * (1 if task.mapping.layout.name == "replicated" else tp_size)
            else:
                shards = [torch.empty_like(local) for _ in range(tp_size)]
                dist.all_gather(shards, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            full = task.mapping.layout.unshard(shards, arch)
        else:
            full = [torch.empty(s, dtype=task.dtype, device=_device()) for s in task.hf_shapes]
        if pp_size > 1:
            group = parallel_state.get_pipeline_model_parallel_group()
            src = dist.get_global_rank(group, task.owner_stage)
            full = [t.contiguous() for t in full]
            for tensor in full:
                dist.broadcast(tensor, src=src, group=group)
        yield from zip(task.hf_names, full)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
