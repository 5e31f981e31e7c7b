"""The trainer with a real tokenizer and a Qwen3-style chat template, as on a cluster (issue 13, §3).

The embedded default uses a character tokenizer without a template. Here the whole trainer (`train`,
2 RL steps, TP=2) runs on a tiny random Qwen3 whose tokenizer is a byte-level BPE trained by the test
and saved with a Qwen3-style chat template (<|im_start|>/<|im_end|> turns, the `enable_thinking`
switch), <|im_end|> as EOS and <|endoftext|> as pad and second stop id (Qwen3's generation config),
and a model vocabulary padded past the tokenizer's (as Qwen's is). Checked on what the trainer
really used (its prepare_step inputs and rows, recorded in the rank): both modes' prompt ids decode
to the expected chat text (the paper's HE prompt as a real system turn, the empty think block of
enable_thinking=False), every response ends with a stop id or at max_tokens, every row of the
update is one mode's prompt followed by a response of either mode (the quarters), every metric is
logged, the first update moves the weights at the configured LR, and the HF export keeps the
tokenizer and its template.
"""

from __future__ import annotations

import json

from policy_split_megatron.algorithms.modes import DEFAULT_HE_SYSTEM_PROMPT, MODES
from tests.distributed.test_trainer_e2e import check_first_update, check_metrics
from tests.helpers.distributed import run_distributed

# Qwen3's template, reduced to what the trainer uses: a system turn (first message only), user and
# assistant turns, the generation prompt, and the empty think block when enable_thinking is false.
QWEN3_STYLE_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
PAIRS = [(a, b) for a in range(3, 9) for b in range(2, 6)]
QUESTIONS = [f"What is {a} plus {b}?" for a, b in PAIRS]
MAX_TOKENS = 16
LR = 1e-4


def _write_model_folder(folder):
    """A byte-level BPE trained on a small corpus, saved with the template, and a random tiny Qwen3
    whose vocabulary has 3 rows more than the tokenizer; EOS ids as Qwen3 declares them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from policy_split_megatron.model.tiny import save_random_hf_model

    corpus = [DEFAULT_HE_SYSTEM_PROMPT] * 3 + [f"{q} The answer is {a + b}." for q, (a, b) in zip(QUESTIONS, PAIRS)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    backend.add_tokens(["<think>", "</think>"])  # plain added tokens in Qwen3, not special ones
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"], chat_template=QWEN3_STYLE_TEMPLATE,
                                        clean_up_tokenization_spaces=False)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    save_random_hf_model("qwen3", folder, seed=3, vocab_size=len(tokenizer) + 3, eos_token_id=eos,
                         pad_token_id=pad, bos_token_id=pad, max_position_embeddings=512)
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad).save_pretrained(folder)
    return tokenizer


def _train_recording(rank, world_size, overrides):
    """`train`, with what its prepare_step got and built recorded (rank 0 returns it)."""
    import policy_split_megatron.trainer.run as run_module
    from policy_split_megatron.config import load_run_config

    seen = []
    real_prepare_step = run_module.prepare_step

    def recording(engine, cfg, prompts, samples, **kwargs):
        prepared = real_prepare_step(engine, cfg, prompts, samples, **kwargs)
        batch = prepared.update
        rows = [batch.input_ids[i, : int(batch.lengths[i])].tolist() for i in range(len(batch.lengths))]
        seen.append({"prompts": prompts, "samples": samples, "rows": rows})
        return prepared

    run_module.prepare_step = recording
    run_module.train(load_run_config(None, overrides), show_progress=False)
    return seen if rank == 0 else None


def test_trainer_with_bpe_tokenizer_and_qwen3_chat_template(tmp_path):
    model, run = tmp_path / "model", tmp_path / "run"
    tokenizer = _write_model_folder(model)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": "0"}) + "\n" for q in QUESTIONS))
    steps = run_distributed(_train_recording, 2, [
        f"model.hf_path='{model}'", f"data.train_files=['{data}']", f"data.eval_files=['{data}']",
        "data.reward='tests.distributed.test_trainer_e2e:parity_reward'", "data.prompts_per_step=4",
        "rollout.chat_template_kwargs={'enable_thinking': False}",
        f"rollout.normal={{'max_tokens': {MAX_TOKENS}}}", f"rollout.explore={{'max_tokens': {MAX_TOKENS}}}",
        "rollout.max_model_len=256", "rollout.kv_cache_bytes=134217728", "train.micro_batch_tokens=2048",
        "evaluation.max_prompts=4", "evaluation.samples_per_prompt=2", "logging.tensorboard=False",
        "warm_start.steps=0", f"optimizer.lr={LR}", "checkpoint.every_steps=1", "checkpoint.keep_last=3",
        "train.steps=2", "parallel.tensor_parallel=2", f"logging.dir='{run}'",
    ], tp=2, timeout=300)[0]
    assert len(steps) == 2

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    questions = set(QUESTIONS)
    for step in steps:
        for prompt in step["prompts"]:
            normal, explore = tokenizer.decode(prompt.normal_ids), tokenizer.decode(prompt.explore_ids)
            question = normal.removeprefix("<|im_start|>user\n").split("<|im_end|>")[0]
            assert question in questions, normal
            turn = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
            assert normal == turn
            assert explore == f"<|im_start|>system\n{DEFAULT_HE_SYSTEM_PROMPT}<|im_end|>\n" + turn
            # the template's markers are single special tokens, not their characters
            assert prompt.normal_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2
        ends = {"stop": 0, "length": 0}
        for sample in step["samples"]:
            ids = list(sample.response_ids)
            assert not {eos, pad} & set(ids[:-1]), f"a response runs past a stop id: {ids}"
            if sample.finish_reason == "stop":
                assert ids[-1] in (eos, pad), ids
            else:
                assert sample.finish_reason == "length" and len(ids) == MAX_TOKENS, (sample.finish_reason, ids)
            ends[sample.finish_reason] += 1
        assert ends["stop"] and ends["length"], f"both ways of ending should occur: {ends}"
        prompts = {p.index: p for p in step["prompts"]}
        expected = sorted(list(prompts[s.prompt_index].ids(mode)) + list(s.response_ids)
                          for s in step["samples"] for mode in MODES)
        assert sorted(step["rows"]) == expected, "the update's rows are not the four quarters of the samples"

    check_metrics(run, 2)
    check_first_update(run, LR, model_dir=model)
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(run / "hf")
    assert exported.chat_template == QWEN3_STYLE_TEMPLATE and exported.eos_token_id == eos
    assert exported.encode(QUESTIONS[0]) == tokenizer.encode(QUESTIONS[0])
