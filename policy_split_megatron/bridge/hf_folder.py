"""Writing the Megatron policy as a Hugging Face model folder.

`write_hf_folder` is a collective: every rank of the world calls it with its model stage, the
weights stream through `export_hf_weights` (TP shards gathered, pipeline stages broadcast), and
global rank 0 writes them. The folder it leaves is what `transformers.AutoModelForCausalLM` and
vLLM load:

    out_dir/
      model-00001-of-0000N.safetensors ...   the weights, in the name table's order, at `dtype`
      model.safetensors.index.json           {"metadata": {"total_size"}, "weight_map": {name: file}}
      config.json                            copied from `metadata_dir`, dtype/torch_dtype set to `dtype`
      generation_config.json                 copied, or written from config.json's bos/eos/pad ids
      tokenizer files                        whatever of TOKENIZER_FILES `metadata_dir` holds

Shards are planned from the export plan's shapes before any weight moves, so file names carry
their final count and rank 0 never holds more than one shard (the peak extra memory is
`max_shard_bytes`, or one tensor when a tensor is larger). The folder appears atomically: rank 0
writes into `<out_dir>.partial` and renames it at the end; a killed export leaves only the
`.partial` folder, never a half-written `out_dir`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from policy_split_megatron.model.architecture import ModelArchitecture, architecture_from_hf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3
"""Largest shard file rank 0 assembles in memory (HF's own default is 5 GB)."""

INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
"""Tokenizer files copied next to the weights (glob patterns, matched in the metadata folder)."""


class HFFolderError(ValueError):
    """The metadata folder or the destination cannot give a consistent Hugging Face folder."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bfloat16' (or the torch dtypes) -> torch dtype; anything else is refused."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise HFFolderError(f"dtype {dtype!r} is not supported for export; choose one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# -- metadata ----------------------------------------------------------------------------------


def metadata_files(folder: str | Path) -> list[Path]:
    """config.json, generation_config.json and the tokenizer files that `folder` holds."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    patterns = (CONFIG_FILE, GENERATION_CONFIG_FILE, *TOKENIZER_FILES)
    return [folder / n for n in names if any(fnmatch.fnmatch(n, pat) for pat in patterns)]


def copy_hf_metadata(src: str | Path, dst: str | Path) -> list[str]:
    """Copy config.json, generation_config.json and tokenizer files from `src` into `dst`
    (created); return the names copied. Weights are never copied."""
    src, dst = Path(src), Path(dst)
    if not (src / CONFIG_FILE).is_file():
        raise HFFolderError(f"{src} holds no {CONFIG_FILE}: point to the Hugging Face model folder of the run")
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in metadata_files(src):
        shutil.copyfile(path, dst / path.name)
        copied.append(path.name)
    return copied


def read_config(metadata_dir: str | Path) -> dict[str, Any]:
    path = Path(metadata_dir) / CONFIG_FILE
    if not path.is_file():
        raise HFFolderError(f"{Path(metadata_dir)} holds no {CONFIG_FILE}: it must be a Hugging Face model folder "
                            "(config.json and tokenizer files)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HFFolderError(f"{path} is not valid JSON: {err}") from err


# ModelArchitecture field -> the config.json field it is read from (where the names differ)
_HF_FIELDS = {
    "family": "model_type",
    "num_layers": "num_hidden_layers",
    "ffn_hidden_size": "intermediate_size",
    "qkv_bias": "attention bias",
    "qk_norm": "QK-norm",
    "rope_scaling_factor": "rope_scaling.factor",
}


def check_config_matches(config: dict[str, Any], arch: ModelArchitecture, source: str | Path) -> None:
    """Refuse a config.json whose architecture differs from the model being exported."""
    theirs = architecture_from_hf(config).to_dict()
    ours = arch.to_dict()
    diff = [f"{_HF_FIELDS.get(k, k)}: {theirs[k]!r} in {source} but {ours[k]!r} in the model"
            for k in ours if theirs.get(k) != ours[k]]
    if diff:
        raise HFFolderError(f"{source} does not describe the exported model: " + "; ".join(diff))


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """A generation config with only the token ids of config.json (sampling settings stay unset,
    so vLLM and transformers fall back to their own defaults)."""
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            out[key] = config[key]
    try:
        import transformers

        out["transformers_version"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return out


def _write_metadata(metadata_dir: Path, folder: Path, config: dict[str, Any], dtype: torch.dtype) -> None:
    for path in metadata_files(metadata_dir):
        if path.name != CONFIG_FILE:
            shutil.copyfile(path, folder / path.name)
    config = dict(config)
    # transformers 5 reads `dtype`; 4.x and older tools read `torch_dtype`: write both.
    config["dtype"] = config["torch_dtype"] = dtype_name(dtype)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not (folder / GENERATION_CONFIG_FILE).exists():
        (folder / GENERATION_CONFIG_FILE).write_text(json.dumps(_generation_config(config), indent=2) + "\n")


# -- shards ------------------------------------------------------------------------------------


def plan_shards(
    tensors: Iterable[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_shard_bytes: int
) -> list[list[str]]:
    """Group (name, shape) in order into shards of at most `max_shard_bytes` (a larger tensor gets a
    shard of its own)."""
    if max_shard_bytes <= 0:
        raise HFFolderError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    item = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = item * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards if shards[0] else []


def shard_file_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _agree(error: str | None) -> None:
    """Raise on every rank when rank 0 found a problem (rank 0 alone sees the destination on
    machines without a shared filesystem)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise HFFolderError(error)


def partial_path(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".partial")


def write_hf_folder(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    out_dir: str | Path,
    *,
    metadata_dir: str | Path,
    dtype: str | torch.dtype,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    show_progress: bool = True,
    overwrite: bool = True,
    plan: list | None = None,
) -> Path:
    """Collective (every rank, with its model stage): write the model as a Hugging Face folder at
    `out_dir` (see the module docstring for the layout); return `out_dir`.

    `metadata_dir` holds the config.json (its architecture must be `arch`), tokenizer files and
    optionally generation_config.json of the model. `dtype` ('float32' or 'bfloat16') is the
    dtype of the written tensors and of config.json's dtype/torch_dtype. An existing `out_dir` is
    replaced when `overwrite` (the default, for a run's own export folder), refused otherwise.
    `plan`: a cached `export_plan(model, arch)`."""
    from tqdm import tqdm

    from policy_split_megatron.bridge.convert import export_hf_weights, export_plan

    out_dir = Path(out_dir)
    target = resolve_dtype(dtype)
    main = _is_main()
    error, config = None, None
    if main:
        try:
            config = read_config(metadata_dir)
            check_config_matches(config, arch, Path(metadata_dir) / CONFIG_FILE)
            if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
                raise HFFolderError(f"{out_dir} already exists and is not empty; choose a new folder or allow overwriting")
            if max_shard_bytes <= 0:
                raise HFFolderError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
        except Exception as err:  # noqa: BLE001 - reported on every rank by _agree
            error = str(err)
    _agree(error)

    plan = export_plan(model, arch) if plan is None else plan
    names_shapes = [(n, s) for task in plan for n, s in zip(task.hf_names, task.hf_shapes)]
    shards = plan_shards(names_shapes, target, max_shard_bytes)
    file_of = {name: shard_file_name(i, len(shards)) for i, names in enumerate(shards) for name in names}
    shard_of = {name: i for i, names in enumerate(shards) for name in names}
    last_of_shard = {names[-1]: i for i, names in enumerate(shards)}
    item = torch.empty((), dtype=target).element_size()
    total = sum(item * int(torch.Size(s).numel()) for _, s in names_shapes)

    partial = partial_path(out_dir)
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"HF export ({dtype_name(target)})",
               disable=not (show_progress and main))
    buffer: dict[str, torch.Tensor] = {}
    for name, tensor in export_hf_weights(model, arch, plan):
        if not main:
            continue
        if name not in shard_of:
            raise HFFolderError(f"exported tensor {name} is not in the export plan")
        buffer[name] = tensor.detach().to(device="cpu", dtype=target, copy=True).contiguous()
        bar.update(buffer[name].numel() * item)
        if name in last_of_shard:
            _save_shard(buffer, partial / file_of[name])
            buffer = {}
    bar.close()

    if main:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(file_of.items()))}
        (partial / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        _write_metadata(Path(metadata_dir), partial, config, target)
        _replace(partial, out_dir)
    if dist.is_initialized():
        dist.barrier()
    return out_dir


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _replace(partial: Path, out_dir: Path) -> None:
    """Put `partial` at `out_dir`; an existing folder is moved aside first and removed after."""
    old = out_dir.with_name(out_dir.name + ".replaced")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(partial, out_dir)
    shutil.rmtree(old, ignore_errors=True)
