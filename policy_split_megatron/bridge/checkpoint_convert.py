"""Training checkpoint <-> Hugging Face folder, at any tensor-parallel size on either side.

    checkpoint_to_hf(checkpoint, out_dir, tensor_parallel=1, dtype="auto")   step_N (or a root with
        `latest`) -> safetensors shards + index, config.json, tokenizer, generation_config.json
    hf_to_checkpoint(hf_dir, checkpoint_root, tensor_parallel=1)            HF folder -> step_000000
        (model only, see below) + `latest`, loadable by `load_checkpoint` at any TP

Both check everything that can be checked from file headers in the calling process, before any
process is started or any weight is read: the paths (missing, `.partial`, incomplete), the
architecture of config.json against the tensor shapes stored in the checkpoint or the safetensors
headers (each mismatched field named, with the file it came from), and that TP divides the heads.
Then the work runs as a collective over TP processes: in place when this process already belongs
to a torch.distributed world (its TP must be the one asked for) or was launched by torchrun/srun,
otherwise in `tensor_parallel` local gloo processes (`spawn_local`).

A checkpoint can be converted at a TP other than the one it was saved with: megatron-core re-shards
it on load, including the embedding and output rows, whose padding (to a multiple of 128 x TP)
differs between TP sizes (the padding rows are zero and never exported).

The imported checkpoint holds the model and no optimizer or RNG state (there is none to carry
over; a fresh AdamW state would also pin the learning rate of whoever wrote it). `load_checkpoint`
knows this from the checkpoint and leaves the optimizer it is given fresh. Its common state is
{"step": 0, "imported_from": <hf_dir>}; there is no data-sampler state.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from policy_split_megatron.bridge.hf_folder import (
    DEFAULT_MAX_SHARD_BYTES,
    DTYPES,
    HFFolderError,
    dtype_name,
    read_config,
    resolve_dtype,
)
from policy_split_megatron.model.architecture import ModelArchitecture, architecture_from_hf
from policy_split_megatron.trainer.checkpoint import HF_METADATA_DIR, LATEST, CheckpointError, latest_checkpoint


class ConversionError(ValueError):
    """The inputs of a conversion do not fit together (architecture, parallel layout, paths)."""


# -- checkpoints ----------------------------------------------------------------------------------

_E = "embedding.word_embeddings.weight"
_QKV = "decoder.layers.self_attention.linear_qkv.weight"
_QKV_BIAS = "decoder.layers.self_attention.linear_qkv.bias"
_PROJ = "decoder.layers.self_attention.linear_proj.weight"
_QNORM = "decoder.layers.self_attention.q_layernorm.weight"
_FC1 = "decoder.layers.mlp.linear_fc1.weight"
_FC2 = "decoder.layers.mlp.linear_fc2.weight"
_OUT = "output_layer.weight"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's headers say: model tensor global shapes, parameter dtype, common state."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype
    common: dict[str, Any]

    @property
    def metadata_dir(self) -> Path | None:
        folder = self.path / HF_METADATA_DIR
        return folder if (folder / "config.json").is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete `step_N` directory from a `step_N` directory or a checkpoints root with `latest`;
    CheckpointError for a missing path, a `.partial` save, or an incomplete directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a step_N checkpoint directory or a checkpoints/ "
                              "root that holds `latest`")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory: give a step_N checkpoint directory or a checkpoints/ root")
    if path.name.endswith(".partial"):
        raise CheckpointError(f"{path} is a partial checkpoint (a save in progress, or one that was killed) and is "
                              "never read: convert a complete step_N directory, or the checkpoints/ root (`latest`)")
    if (path / LATEST).exists():
        return latest_checkpoint(path)  # CheckpointError when `latest` names an incomplete directory
    if (path / "metadata.json").exists():
        return path
    complete = sorted(p.name for p in path.glob("step_*") if (p / "metadata.json").exists() and p.suffix != ".partial")
    partial = sorted(p.name for p in path.glob("step_*.partial"))
    if complete:
        hint = f"it holds complete checkpoints ({', '.join(complete)}) but no `{LATEST}`: name one of them"
    elif partial:
        hint = f"it holds only partial saves ({', '.join(partial)}), which are never read"
    else:
        hint = "a complete checkpoint has metadata.json (written last by a save that finished)"
    raise CheckpointError(f"{path} is not a complete checkpoint: {hint}")


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """The headers of a complete checkpoint directory (no tensor data is read)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from policy_split_megatron.cpu_shims import megatron_on_cpu

    path = Path(path)
    try:
        with megatron_on_cpu():
            metadata = dist_checkpointing.load_tensors_metadata(str(path))
            common = dist_checkpointing.load_common_state_dict(str(path)).get("common", {})
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing here
        raise CheckpointError(f"{path} cannot be read as a megatron-core distributed checkpoint: {err}") from err
    shapes = {k: tuple(v.global_shape) for k, v in metadata.items()
              if isinstance(v, ShardedTensor) and not k.startswith("optimizer.")}
    if _E not in shapes and _QKV not in shapes:
        raise CheckpointError(f"{path} holds no model weights of a GPT model (no {_E} or {_QKV})")
    dtype = metadata[_E].dtype if _E in metadata else metadata[_QKV].dtype
    return CheckpointInfo(path, shapes, dtype, dict(common))


def check_checkpoint_architecture(arch: ModelArchitecture, info: CheckpointInfo, config_path: str | Path) -> None:
    """Refuse a config.json that does not describe the checkpoint's tensors, naming every
    mismatched field (ConversionError)."""
    shapes = info.shapes
    needed = [_E, _QKV, _PROJ, _FC1, _FC2]
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise ConversionError(f"{info.path} lacks {', '.join(missing)}: not a checkpoint of a dense decoder this "
                              "bridge supports (Llama, Qwen2, Qwen3)")
    rows, hidden = shapes[_E]
    layers, qkv_rows = shapes[_QKV][:2]
    q_width = shapes[_PROJ][2]
    kv_width = (qkv_rows - q_width) // 2
    ffn = shapes[_FC2][2]
    ck_qk_norm, ck_bias, ck_tied = _QNORM in shapes, _QKV_BIAS in shapes, _OUT not in shapes
    problems = []

    def differs(field: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            problems.append(f"{field}: {ours} in config.json, {theirs} in the checkpoint")

    differs("num_hidden_layers", arch.num_layers, layers)
    differs("hidden_size", arch.hidden_size, hidden)
    differs("intermediate_size", arch.ffn_hidden_size, ffn)
    if arch.qk_norm != ck_qk_norm:
        problems.append(
            f"model_type: config.json says {arch.family} ({'with' if arch.qk_norm else 'without'} QK-norm) but the "
            f"checkpoint {'has' if ck_qk_norm else 'has no'} q/k layernorm weights (Qwen3 has them, Llama/Qwen2 not)"
        )
    if arch.qkv_bias != ck_bias:
        problems.append(
            f"attention bias: config.json says {arch.family} {'with' if arch.qkv_bias else 'without'} QKV bias "
            f"(Qwen2, or attention_bias=true) but the checkpoint {'has' if ck_bias else 'has no'} linear_qkv bias"
        )
    q_bad = arch.num_attention_heads * arch.head_dim != q_width
    kv_bad = arch.num_key_value_heads * arch.head_dim != kv_width
    if ck_qk_norm and arch.qk_norm:  # the q/k norm weights give head_dim
        head_dim, known = shapes[_QNORM][-1], True
        differs("head_dim", arch.head_dim, head_dim)
    else:  # head_dim cannot be read; trust it when it fits one of q and kv
        head_dim, known = arch.head_dim, q_bad != kv_bad
    for field, heads, width, bad in (("num_attention_heads", arch.num_attention_heads, q_width, q_bad),
                                     ("num_key_value_heads", arch.num_key_value_heads, kv_width, kv_bad)):
        if known and width % head_dim == 0:
            if heads != width // head_dim:
                problems.append(f"{field}: {heads} in config.json, {width // head_dim} in the checkpoint "
                                f"(head_dim {head_dim})")
        elif bad:
            problems.append(f"{field} x head_dim: {heads} x {arch.head_dim} = {heads * arch.head_dim} in "
                            f"config.json, {width} in the checkpoint")
    saved_world = int(info.common.get("world_size") or 64)
    if not any(arch.padded_vocab_size(tp) == rows for tp in range(1, saved_world + 1)):
        problems.append(f"vocab_size: {arch.vocab_size} in config.json, but the checkpoint's embedding has "
                        f"{rows} rows (the vocabulary padded to a multiple of 128 x TP)")
    if arch.tie_word_embeddings != ck_tied:
        problems.append(f"tie_word_embeddings: {str(arch.tie_word_embeddings).lower()} in config.json, but the "
                        f"checkpoint {'has no' if ck_tied else 'has an'} output layer of its own")
    if problems:
        raise ConversionError(f"{config_path} does not match the checkpoint {info.path}:\n  - " + "\n  - ".join(problems))


# -- Hugging Face folders -----------------------------------------------------------------------

_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")


def expected_hf_shapes(arch: ModelArchitecture) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF tensor name -> (shape, the config.json fields that give it), for every tensor of `arch`."""
    from policy_split_megatron.bridge.families import hf_names

    h, f, v, d = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    heads = f"num_attention_heads={arch.num_attention_heads} x head_dim={d}"
    kv_heads = f"num_key_value_heads={arch.num_key_value_heads} x head_dim={d}"
    by_suffix = {
        "embed_tokens.weight": ((v, h), f"vocab_size={v}, hidden_size={h}"),
        "lm_head.weight": ((v, h), f"vocab_size={v}, hidden_size={h}"),
        "input_layernorm.weight": ((h,), f"hidden_size={h}"),
        "post_attention_layernorm.weight": ((h,), f"hidden_size={h}"),
        "model.norm.weight": ((h,), f"hidden_size={h}"),
        "q_proj.weight": ((q, h), f"{heads}, hidden_size={h}"),
        "k_proj.weight": ((kv, h), f"{kv_heads}, hidden_size={h}"),
        "v_proj.weight": ((kv, h), f"{kv_heads}, hidden_size={h}"),
        "q_proj.bias": ((q,), heads),
        "k_proj.bias": ((kv,), kv_heads),
        "v_proj.bias": ((kv,), kv_heads),
        "q_norm.weight": ((d,), f"head_dim={d}"),
        "k_norm.weight": ((d,), f"head_dim={d}"),
        "o_proj.weight": ((h, q), f"hidden_size={h}, {heads}"),
        "gate_proj.weight": ((f, h), f"intermediate_size={f}, hidden_size={h}"),
        "up_proj.weight": ((f, h), f"intermediate_size={f}, hidden_size={h}"),
        "down_proj.weight": ((h, f), f"hidden_size={h}, intermediate_size={f}"),
    }
    out = {}
    for name in hf_names(arch):
        suffix = next(s for s in by_suffix if name.endswith(s))
        out[name] = by_suffix[suffix]
    return out


def _safetensors_shapes(hf_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ConversionError(f"{hf_dir} holds no model.safetensors or model.safetensors.index.json "
                              "(only safetensors checkpoints are converted)")
    shapes = {}
    for file in files:
        if not (hf_dir / file).exists():
            raise ConversionError(f"{index} names {file}, which is missing from {hf_dir}")
        with safe_open(hf_dir / file, framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def check_hf_architecture(arch: ModelArchitecture, hf_dir: str | Path) -> None:
    """Refuse HF weights that config.json does not describe (missing, extra or misshapen tensors),
    naming the fields (ConversionError)."""
    hf_dir = Path(hf_dir)
    shapes = _safetensors_shapes(hf_dir)
    expected = expected_hf_shapes(arch)
    problems = []
    present_layers = {int(m.group(1)) for n in shapes if (m := _LAYER_NAME.match(n))}
    if present_layers and max(present_layers) + 1 != arch.num_layers:
        problems.append(f"num_hidden_layers: {arch.num_layers} in config.json, {max(present_layers) + 1} in the weights")
    family = (f"model_type={arch.family}" + (", QKV bias" if arch.qkv_bias else "")
              + (", QK-norm" if arch.qk_norm else ""))
    for name, (shape, fields) in expected.items():
        m = _LAYER_NAME.match(name)
        if name not in shapes:
            if m and int(m.group(1)) > max(present_layers, default=-1):
                continue  # reported as num_hidden_layers above
            problems.append(f"the weights lack {name}, which config.json's {family} needs")
        elif shapes[name] != shape:
            problems.append(f"{name} has shape {shapes[name]}, config.json implies {shape} ({fields})")
    for name in shapes:
        m = _LAYER_NAME.match(name)
        if m and name not in expected and int(m.group(1)) < arch.num_layers and not name.endswith("inv_freq"):
            problems.append(f"the weights hold {name}, which config.json's {family} does not have")
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ConversionError(f"{hf_dir / 'config.json'} does not match the weights in {hf_dir}:\n  - "
                              + "\n  - ".join(shown))


def _architecture(config_path: Path) -> ModelArchitecture:
    try:
        return architecture_from_hf(read_config(config_path.parent))
    except (HFFolderError, KeyError, TypeError, ValueError) as err:
        raise ConversionError(f"{config_path}: {err}") from err


def _check_tp(arch: ModelArchitecture, tensor_parallel: int, config_path: Path) -> None:
    if tensor_parallel < 1:
        raise ConversionError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    try:
        arch.validate_parallel(tensor_parallel, 1)
    except ValueError as err:
        raise ConversionError(f"{config_path}: {err}") from err


def _check_destination_empty(path: Path, overwrite: bool, what: str) -> None:
    if overwrite or not path.exists():
        return
    if not path.is_dir() or any(path.iterdir()):
        raise ConversionError(f"{path} already exists and is not empty: choose a new {what}, or allow overwriting "
                              "(--overwrite)")


# -- running the collective --------------------------------------------------------------------


def _run_collective(fn, tensor_parallel: int, *args):
    """fn(rank, world_size, *args) as a collective at TP=tensor_parallel, PP=1: in this process's
    world when there is one, in the world of a torchrun/srun launch, or in local gloo processes.
    Returns rank 0's result."""
    import torch.distributed as dist

    from policy_split_megatron.distributed import (
        ParallelLayout,
        destroy_distributed,
        init_distributed,
        spawn_local,
    )

    if dist.is_initialized():
        from megatron.core import parallel_state

        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        if (tp, pp) != (tensor_parallel, 1):
            raise ConversionError(f"this process group runs TP={tp}, PP={pp}; the conversion asked for "
                                  f"TP={tensor_parallel}, PP=1")
        dist.barrier()  # every rank has finished its checks before rank 0 creates anything
        return fn(dist.get_rank(), dist.get_world_size(), *args)
    from policy_split_megatron.trainer.launch import launched_world

    if launched_world() is not None:
        init_distributed(ParallelLayout(tensor_parallel, 1))
        try:
            return fn(dist.get_rank(), dist.get_world_size(), *args)
        finally:
            destroy_distributed()
    # Local processes joined by gloo convert on CPU (gloo does not gather CUDA tensors); hide GPUs
    # from them. Under torchrun/srun the launched ranks use their GPUs (NCCL).
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        return spawn_local(fn, tensor_parallel, ParallelLayout(tensor_parallel, 1), *args,
                           timeout=7 * 24 * 3600, quiet=True)[0]
    finally:
        if hidden is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = hidden


def _quiet_checkpoint_io() -> None:
    import warnings

    # deprecation notices of torch.distributed.checkpoint about the API/format megatron-core uses
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(torch\.distributed\.checkpoint|megatron\.core\.dist_checkpointing)")


def _export_rank(rank, world_size, checkpoint, out_dir, metadata_dir, arch, params_dtype, dtype,
                 max_shard_bytes, overwrite, show_progress) -> str:
    _quiet_checkpoint_io()
    from policy_split_megatron.bridge.hf_folder import write_hf_folder
    from policy_split_megatron.model import build_policy_model
    from policy_split_megatron.trainer.checkpoint import load_checkpoint

    model = build_policy_model(arch, params_dtype=params_dtype)
    load_checkpoint(checkpoint, model, None)
    write_hf_folder(model, arch, out_dir, metadata_dir=metadata_dir, dtype=dtype, max_shard_bytes=max_shard_bytes,
                    show_progress=show_progress and rank == 0, overwrite=overwrite)
    return str(out_dir)


def _import_rank(rank, world_size, hf_dir, root, arch, params_dtype, step, show_progress) -> str:
    _quiet_checkpoint_io()
    from policy_split_megatron.bridge.convert import SafetensorsSource, load_hf_weights
    from policy_split_megatron.model import build_policy_model
    from policy_split_megatron.trainer.checkpoint import save_checkpoint

    model = build_policy_model(arch, params_dtype=params_dtype)
    source = _ProgressSource(SafetensorsSource(hf_dir), show_progress and rank == 0)
    load_hf_weights(model, arch, source)
    source.close()
    final = save_checkpoint(root, step, model, None, {"imported_from": str(hf_dir)}, hf_metadata_dir=hf_dir,
                            save_rng=False)
    return str(final)


class _ProgressSource:
    """A SafetensorsSource that draws a progress bar of the tensors read (and answers `in`
    without reading the tensor)."""

    def __init__(self, source, show: bool):
        from tqdm import tqdm

        self.source = source
        self.bar = tqdm(total=len(source), unit="tensor", desc="HF import", disable=not show)

    def __contains__(self, name) -> bool:
        return name in self.source._weight_map

    def __getitem__(self, name):
        tensor = self.source[name]
        self.bar.update(1)
        return tensor

    def __iter__(self):
        return iter(self.source)

    def __len__(self):
        return len(self.source)

    def close(self) -> None:
        self.bar.close()


# -- public API -----------------------------------------------------------------------------------


def checkpoint_to_hf(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    tensor_parallel: int = 1,
    dtype: str = "auto",
    metadata_dir: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Write the model of a training checkpoint as a Hugging Face folder at `out_dir`.

    `checkpoint_dir`: a `step_N` directory or a checkpoints root (its `latest` is converted).
    `tensor_parallel`: processes the model is loaded into (any size dividing the heads, whatever the
    checkpoint was saved with). `dtype`: 'float32', 'bfloat16', or 'auto' (the checkpoint's
    parameter dtype). `metadata_dir`: the HF folder for config.json/tokenizer/generation config;
    default the checkpoint's own `hf_metadata/`. Returns `out_dir`."""
    checkpoint = resolve_checkpoint(checkpoint_dir)
    info = read_checkpoint(checkpoint)
    if metadata_dir is None:
        if info.metadata_dir is None:
            raise ConversionError(f"{checkpoint} carries no {HF_METADATA_DIR}/config.json (saved without "
                                  "hf_metadata_dir): pass metadata_dir / --metadata-dir = the Hugging Face folder the "
                                  "run started from")
        metadata = info.metadata_dir
    else:
        metadata = Path(metadata_dir)
        if not metadata.is_dir():
            raise ConversionError(f"metadata_dir {metadata} does not exist")
    config_path = metadata / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{metadata} holds no config.json: metadata_dir must be a Hugging Face model folder")
    arch = _architecture(config_path)
    check_checkpoint_architecture(arch, info, config_path)
    _check_tp(arch, tensor_parallel, config_path)
    if info.dtype not in DTYPES.values():
        raise ConversionError(f"{checkpoint} holds {info.dtype} parameters; only float32/bfloat16 checkpoints are "
                              "converted")
    try:
        target = info.dtype if dtype == "auto" else resolve_dtype(dtype)
    except HFFolderError as err:
        raise ConversionError(str(err)) from err
    out_dir = Path(out_dir)
    _check_destination_empty(out_dir, overwrite, "output folder")
    _run_collective(_export_rank, tensor_parallel, str(checkpoint), str(out_dir), str(metadata), arch, info.dtype,
                    dtype_name(target), max_shard_bytes, True, show_progress)
    return out_dir


def hf_to_checkpoint(
    hf_dir: str | Path,
    checkpoint_root: str | Path,
    *,
    tensor_parallel: int = 1,
    params_dtype: str = "float32",
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Write a Hugging Face folder as training checkpoint `step_000000` under `checkpoint_root`
    (with `latest` and the folder's config/tokenizer in `hf_metadata/`): the model only, in
    `params_dtype`, loadable by `load_checkpoint` at any TP. Returns the step directory.

    `checkpoint_root` must be new or empty (an existing run's `latest` would move back to step 0),
    unless `overwrite`."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ConversionError(f"{hf_dir} does not exist: give a Hugging Face model folder (config.json + safetensors)")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir} holds no config.json: give a Hugging Face model folder")
    arch = _architecture(config_path)
    _check_tp(arch, tensor_parallel, config_path)
    check_hf_architecture(arch, hf_dir)
    try:
        dtype = resolve_dtype(params_dtype)
    except HFFolderError as err:
        raise ConversionError(str(err)) from err
    root = Path(checkpoint_root)
    _check_destination_empty(root, overwrite, "checkpoints root")
    final = _run_collective(_import_rank, tensor_parallel, str(hf_dir), str(root), arch, dtype, 0, show_progress)
    return Path(final)


# -- command line -------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'4GB', '500MB', '2GiB', '123' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4GB, 500MB, 1048576)")
    number, unit = float(m.group(1)), (m.group(2) or "b").lower().rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    return int(number * base**power)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert between training checkpoints and Hugging Face folders (docs/conversion.md).")
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("to-hf", help="training checkpoint -> Hugging Face folder")
    to_hf.add_argument("checkpoint", help="a step_N checkpoint directory, or a checkpoints/ root with `latest`")
    to_hf.add_argument("out", help="output folder (created; must be new or empty unless --overwrite)")
    to_hf.add_argument("--tp", type=int, default=1, help="tensor-parallel processes to load the model into (default 1)")
    to_hf.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                       help="dtype of the written weights (default auto: the checkpoint's parameter dtype)")
    to_hf.add_argument("--metadata-dir", help="HF folder with config.json/tokenizer (default: the checkpoint's "
                       f"{HF_METADATA_DIR}/)")
    to_hf.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD_BYTES,
                       help="largest safetensors shard, e.g. 2GB (default 4GiB)")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    to_hf.add_argument("--no-progress", action="store_true", help="no progress bar")
    from_hf = sub.add_parser("from-hf", help="Hugging Face folder -> training checkpoint step_000000")
    from_hf.add_argument("hf_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer)")
    from_hf.add_argument("checkpoint_root", help="checkpoints root to create (step_000000/ and `latest`)")
    from_hf.add_argument("--tp", type=int, default=1, help="tensor-parallel processes (default 1); the checkpoint "
                         "loads at any TP")
    from_hf.add_argument("--params-dtype", choices=list(DTYPES), default="float32",
                         help="dtype of the checkpoint's parameters (the trainer's model.params_dtype)")
    from_hf.add_argument("--overwrite", action="store_true", help="write into a root that already holds checkpoints")
    from_hf.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _describe_folder(folder: Path) -> str:
    lines = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            lines.append(f"  {path.relative_to(folder)}  ({_human(path.stat().st_size)})")
    return "\n".join(lines)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The converter's command line; returns the exit status (2 for refused inputs)."""
    from policy_split_megatron.console import quiet_third_party

    args = build_parser(prog).parse_args(argv)
    quiet_third_party()
    is_main = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0
    try:
        if args.direction == "to-hf":
            out = checkpoint_to_hf(args.checkpoint, args.out, tensor_parallel=args.tp, dtype=args.dtype,
                                   metadata_dir=args.metadata_dir, max_shard_bytes=args.max_shard_size,
                                   overwrite=args.overwrite, show_progress=not args.no_progress)
            if is_main:
                config = json.loads((out / "config.json").read_text())
                print(f"wrote Hugging Face folder {out} ({config.get('model_type')}, dtype {config.get('dtype')}, "
                      f"converted at TP={args.tp}):\n{_describe_folder(out)}")
        else:
            step = hf_to_checkpoint(args.hf_dir, args.checkpoint_root, tensor_parallel=args.tp,
                                    params_dtype=args.params_dtype, overwrite=args.overwrite,
                                    show_progress=not args.no_progress)
            if is_main:
                print(f"wrote training checkpoint {step} (model only, {args.params_dtype}, step 0; "
                      f"{Path(args.checkpoint_root) / LATEST} points at it):\n{_describe_folder(step)}")
    except (ConversionError, CheckpointError, HFFolderError) as err:
        print(f"{prog or 'convert_checkpoint'}: error: {err}", file=sys.stderr)
        return 2
    return 0
