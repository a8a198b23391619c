"""The UUID memorisation task and the lm-eval glue (``mora.evaluate``).

What the task owes: reproducible uuid4 pairs; labels for ``loss_on=all|value``; the paper's character
accuracy; evaluation prompts that are token-for-token the training prefix; and an evaluation that
actually measures memorisation — a tiny LLaMA overfit on 4 pairs scores ≥ 0.9 through lm-eval, an
untrained one < 0.3.  The glue owes: adapters (MoRA, peft LoRA) evaluated active and never merged, the
model's train mode and the global RNG states restored afterwards.

Everything runs offline on CPU with a character tokenizer built here (printable ASCII, one id per
character, ``<pad>=0 <s>=1 </s>=2 <unk>=3``, bos added by the post-processor) — the same layout as the
suite's ``mora/assets/char_tokenizer``.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import mora
from mora import MoraConfig, MoraLinear, get_mora_model
from mora.evaluate import run_lm_eval
from tasks import TASK_CONFIGS, TASKS
from tasks.base import IGNORE_INDEX
from tasks.uuid import LM_EVAL_TASK, TASK_DIR, UUIDTask, UUIDTaskConfig, char_accuracy, encode_pair, generate_pairs
from tasks.uuid.metrics import load_pairs, process_results

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and 2 threads on a loaded 2-core box run 10-25×
    slower than 1 (measured): keep this module's tests on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()  # decode by concatenation, no spaces
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_char_tokenizer()


BUNDLED_CHAR_TOKENIZER = Path(mora.__file__).resolve().parent / "assets" / "char_tokenizer"


@pytest.fixture(params=["built_here", "bundled"], scope="module")
def any_char_tok(request, tok):
    """This module's tokenizer and the suite's bundled one (``mora/assets/char_tokenizer``), when present."""
    if request.param == "built_here":
        return tok
    if not (BUNDLED_CHAR_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("mora/assets/char_tokenizer not built yet")
    return AutoTokenizer.from_pretrained(BUNDLED_CHAR_TOKENIZER)


def build_llama(tok, seed: int = 0, hidden: int = 64, max_positions: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def make_task(tok, tmp_path, **cfg) -> UUIDTask:
    return UUIDTask(UUIDTaskConfig(**cfg), tok, tmp_path)


# ---------------------------------------------------------------------------------------------- data
def test_pairs_are_deterministic_per_seed():
    assert generate_pairs(50, seed=42) == generate_pairs(50, seed=42)
    assert generate_pairs(50, seed=42) != generate_pairs(50, seed=43)
    assert generate_pairs(50, seed=42)[:20] == generate_pairs(20, seed=42)  # more pairs extend, not reshuffle


def test_pairs_are_uuid4_with_unique_keys():
    pairs = generate_pairs(2000, seed=7)
    assert len(pairs) == 2000
    for key, value in pairs:
        for s in (key, value):
            assert UUID4.fullmatch(s), s
            assert uuid.UUID(s).version == 4 and s[14] == "4"
    assert len({k for k, _ in pairs}) == len(pairs)


def test_training_tokens_and_labels(any_char_tok):
    tok = any_char_tok
    key, value = generate_pairs(1, seed=0)[0]
    chars = [tok.convert_tokens_to_ids(c) for c in f"{key}:{value}"]
    expected = [tok.bos_token_id, *chars, tok.eos_token_id]

    every = encode_pair(tok, key, value, loss_on="all")
    assert every["input_ids"] == expected and len(expected) == 1 + 36 + 1 + 36 + 1
    assert every["labels"] == expected  # official code: loss on every token

    only_value = encode_pair(tok, key, value, loss_on="value")
    assert only_value["input_ids"] == expected
    prompt = 1 + 36 + 1  # <s> key :
    assert only_value["labels"][:prompt] == [IGNORE_INDEX] * prompt
    assert only_value["labels"][prompt:] == expected[prompt:]  # value characters and eos


def test_task_dataset_and_collate(tok, tmp_path):
    task = make_task(tok, tmp_path, num_pairs=3, loss_on="value")
    ds = task.train_dataset()
    assert len(ds) == 3 and set(ds[0]) == {"input_ids", "labels"}
    batch = task.collate([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 75)
    assert (batch["labels"] == IGNORE_INDEX).sum() == 2 * 38


def test_config_validation_and_registry():
    with pytest.raises(ValueError, match="loss_on"):
        UUIDTaskConfig(loss_on="keys")
    with pytest.raises(ValueError, match="num_pairs"):
        UUIDTaskConfig(num_pairs=0)
    cfg = UUIDTaskConfig()
    assert (cfg.name, cfg.num_pairs, cfg.data_seed, cfg.loss_on, cfg.max_gen_toks) == ("uuid", 10000, 42, "all", 40)
    assert TASKS["uuid"] is UUIDTask and TASK_CONFIGS["uuid"] is UUIDTaskConfig
    assert UUIDTask.primary_metric == "char_acc"


def test_eval_file_holds_the_training_pairs(tok, tmp_path):
    task = make_task(tok, tmp_path, num_pairs=5, data_seed=3)
    path = task.eval_file()
    assert path.parent == tmp_path
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["key"], r["value"]) for r in rows] == generate_pairs(5, seed=3)
    assert load_pairs(data_file=str(path), version=1.0)["test"][0] == rows[0]  # extra metadata ignored
    with pytest.raises(ValueError, match="data_file"):
        load_pairs(version=1.0)


# ---------------------------------------------------------------------------------------------- metric
TARGET = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        (TARGET, 1.0),
        (" " + TARGET + "\n", 1.0),  # surrounding whitespace stripped
        (TARGET[:-1] + "f", 35 / 36),  # one wrong character
        ("", 0.0),
        (TARGET[:18], 18 / 36),  # too short: missing positions are wrong
        (TARGET + "-extra-characters", 1.0),  # too long: truncated to the target's length
        ("x" + TARGET[:-1], sum(a == b for a, b in zip("x" + TARGET, TARGET)) / 36),  # shifted: position-wise
    ],
)
def test_char_accuracy(prediction, expected):
    assert char_accuracy(prediction, TARGET) == pytest.approx(expected)


def test_process_results():
    doc = {"key": "k", "value": TARGET}
    assert process_results(doc, [TARGET]) == {"exact_match": 1.0, "char_acc": 1.0}
    assert process_results(doc, [TARGET + "x"]) == {"exact_match": 0.0, "char_acc": 1.0}
    assert process_results(doc, [""]) == {"exact_match": 0.0, "char_acc": 0.0}


# ---------------------------------------------------------------------------------------------- lm-eval
def test_eval_prompt_tokens_equal_training_prefix(any_char_tok, tmp_path, monkeypatch):
    """What reaches ``model.generate`` through lm-eval is bos + "key:" exactly as in training: no
    missing/duplicate bos, no delimiter, no left padding."""
    from lm_eval.models.huggingface import HFLM

    seen = []
    original = HFLM._model_generate

    def spy(self, context, max_length, stop, **kwargs):
        seen.append((context.clone(), kwargs["attention_mask"].clone(), max_length - context.shape[1], stop))
        return original(self, context, max_length, stop, **kwargs)

    monkeypatch.setattr(HFLM, "_model_generate", spy)
    tok = any_char_tok
    task = make_task(tok, tmp_path, num_pairs=6, max_gen_toks=40)
    task.evaluate(build_llama(tok))

    contexts = {tuple(row) for context, *_ in seen for row in context.tolist()}
    prefixes = {tuple(encode_pair(tok, k, v)["input_ids"][: 1 + 36 + 1]) for k, v in task.pairs}
    assert contexts == prefixes
    assert all(p[0] == tok.bos_token_id and p[1] != tok.bos_token_id for p in prefixes)
    for _, mask, new_tokens, stop in seen:
        assert bool(mask.all())  # equal-length prompts: no padding
        assert new_tokens == 40  # max_gen_toks from the task config
        assert "\n" in stop and tok.eos_token in stop


def test_overfit_model_scores_high_untrained_low(tok, tmp_path):
    """End to end: 4 pairs memorised by full fine-tuning of a tiny random LLaMA → char_acc ≥ 0.9 through
    lm-eval; the same model before training < 0.3 (chance is ~1/16 per hex character)."""
    task = make_task(tok, tmp_path, num_pairs=4)
    model = build_llama(tok, seed=0)
    before = task.evaluate(model)
    assert before["char_acc"] < 0.3 and before["exact_match"] == 0.0

    batch = task.collate([task.train_dataset()[i] for i in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1

    after = task.evaluate(model)
    assert after["char_acc"] >= 0.9, (after, loss.item())
    assert 0.0 <= after["exact_match"] <= 1.0
    assert model.training  # evaluate() restored the train mode it found
    assert task.last_eval_info["lm_eval_version"] and task.last_eval_info["num_fewshot"] == {LM_EVAL_TASK: 0}


def test_run_lm_eval_on_mora_model_keeps_adapter_active_and_unmerged(tok, tmp_path, randomize):
    model = get_mora_model(build_llama(tok), MoraConfig(r=8, compression="rope", dropout=0.0))
    randomize(model, seed=1, scale=0.5)
    layers = model.mora_layers()
    m_before = {n: layer.M.detach().clone() for n, layer in layers.items()}
    w_before = {n: layer.base_layer.weight.detach().clone() for n, layer in layers.items()}
    adapter_calls = []
    hooks = [layer.register_forward_hook(lambda *_: adapter_calls.append(1)) for layer in layers.values()]
    model.train()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()

    path = make_task(tok, tmp_path, num_pairs=3).eval_file()
    out = run_lm_eval(
        model, tok, [LM_EVAL_TASK], include_path=TASK_DIR, batch_size=2, limit=2,
        gen_kwargs={"max_gen_toks": 8}, metadata={"data_file": str(path)},
    )
    for hook in hooks:
        hook.remove()

    assert set(out["metrics"][LM_EVAL_TASK]) == {"char_acc", "exact_match"}
    assert out["lm_eval_version"] == version("lm_eval")
    assert (out["batch_size"], out["limit"], out["n_samples"], out["num_fewshot"]) == (
        2, 2, {LM_EVAL_TASK: 2}, {LM_EVAL_TASK: 0}
    )
    assert adapter_calls, "the MoRA layers never ran during evaluation"
    for name, layer in model.mora_layers().items():
        assert isinstance(layer, MoraLinear) and not layer.merged and not layer.disabled
        assert torch.equal(layer.M, m_before[name]) and torch.equal(layer.base_layer.weight, w_before[name])
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_run_lm_eval_on_peft_lora(tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_llama(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    path = make_task(tok, tmp_path, num_pairs=2).eval_file()
    out = run_lm_eval(model, tok, [LM_EVAL_TASK], include_path=TASK_DIR, metadata={"data_file": str(path)},
                      gen_kwargs={"max_gen_toks": 4})
    assert 0.0 <= out["metrics"][LM_EVAL_TASK]["char_acc"] <= 1.0
    lora_layers = [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
    assert lora_layers and not any(m.merged for m in lora_layers)


def test_context_too_short_for_prompt_and_generation_is_refused(tok, tmp_path):
    task = make_task(tok, tmp_path, num_pairs=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        task.evaluate(build_llama(tok, max_positions=64))  # 38-token prompt + 40 new tokens > 64
