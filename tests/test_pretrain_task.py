"""The pretraining task: its data sources (local, streamed in C4's schema, pocket, hub), held-out
perplexity, the bad-input paths of the driver, and ReLoRA/ReMoRA pretraining through the real trainer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mora.config import ConfigError
from mora.data.packing import pack
from mora.models import CHAR_TOKENIZER_DIR
from tasks import TASKS
from tasks.pretrain import C4_REVISION, PretrainTaskConfig
from tasks.sources import DataConfig, load_split

from test_trainer import mora_run, offline_env  # the real driver, in a subprocess

TEXTS = [f"Document number {i} talks about topic {i % 7}, at some length: " + "words " * (i % 13) for i in range(60)]


@pytest.fixture
def tokenizer():
    return AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task_for(tmp_path, tokenizer, **options):
    cfg = PretrainTaskConfig(**options)
    return TASKS["pretrain"](cfg, tokenizer, tmp_path)


def test_local_jsonl_is_split_by_document_and_packed_without_loss(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    task = task_for(tmp_path, tokenizer, data=DataConfig(path=str(data), eval_fraction=0.2), seq_len=32, eval_tokens=64)
    assert task.cfg.data.source == "local"  # setting a path selects local files
    train = task.train_dataset()
    held_out = [r["text"] for r in load_split(task.cfg.data, "eval")]
    trained = {t for t in TEXTS if t not in held_out}
    assert held_out and trained and not set(held_out) & trained  # whole documents on either side
    # the training blocks are exactly the packed training documents, in file order
    expected = list(pack([tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS if t in trained], 32,
                         tokenizer.eos_token_id))
    assert train["input_ids"] == expected
    blocks = task.eval_blocks()
    assert len(blocks) == 2 and all(len(b["input_ids"]) == 32 for b in blocks)  # 64 tokens = 2 blocks
    batch = task.collate(train.select(range(3)).to_list())
    assert torch.equal(batch["labels"], batch["input_ids"])  # language modelling: every token is a label


def test_plain_text_files_and_an_explicit_eval_path(tmp_path, tokenizer):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS[:5]):
        (folder / f"{i}.txt").write_text(text)
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"text": TEXTS[-1]}])
    task = task_for(tmp_path, tokenizer, data=DataConfig(path=str(folder), eval_path=str(held_out)), seq_len=16, eval_tokens=16)
    tokens = [t for block in task.train_dataset()["input_ids"] for t in block]
    assert len(tokens) == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in TEXTS[:5])
    assert task.eval_blocks()[0]["input_ids"] == tokenizer(TEXTS[-1], add_special_tokens=False)["input_ids"][:16]


def test_the_c4_streaming_path_runs_on_a_local_file_in_c4_schema(tmp_path, tokenizer):
    rows = [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.org/{i}"} for i, t in enumerate(TEXTS)]
    data = write_jsonl(tmp_path / "c4-train.00000-of-01024.json", rows)
    held_out = write_jsonl(tmp_path / "c4-validation.00000-of-00008.json", rows[:4])
    task = task_for(tmp_path, tokenizer, data=DataConfig(path=str(data), eval_path=str(held_out), streaming=True),
                    seq_len=32, eval_tokens=32)
    assert task.streamed
    stream = task.train_dataset()  # a torch IterableDataset packing on the fly, as for allenai/c4 from the hub
    assert isinstance(stream, torch.utils.data.IterableDataset)
    expected = list(pack([tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS], 32, tokenizer.eos_token_id))
    assert [e["input_ids"] for e in stream] == expected
    assert len(task.eval_blocks()) == 1


def test_the_hub_source_is_c4_at_a_pinned_revision_and_refused_offline(monkeypatch):
    cfg = PretrainTaskConfig(data=DataConfig(source="hub", hub_id="allenai/c4", hub_config="en", revision=C4_REVISION))
    assert len(C4_REVISION) == 40 and PretrainTaskConfig().data.hub_id == "allenai/c4"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        TASKS["pretrain"].preflight(cfg)
    message = str(error.value)
    assert "\n" not in message and "'allenai/c4'" in message and C4_REVISION in message and "task.data.path=" in message


def test_a_missing_pocket_corpus_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MORA_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match=r"is not built; build it with `make corpus`$"):
        TASKS["pretrain"].preflight(PretrainTaskConfig(data=DataConfig(source="pocket")))


@pytest.mark.parametrize("bad, message", [
    ("missing.jsonl", "is not a file or a directory"),
    ("wrong_field.jsonl", r"lack the field\(s\) \['text'\]"),
])
def test_bad_local_data_is_one_line_exit_2_and_writes_nothing(tmp_path, bad, message):
    write_jsonl(tmp_path / "wrong_field.jsonl", [{"content": "no text field"}])
    runs = tmp_path / "runs"
    proc = mora_run("task=pretrain", f"task.data.path={tmp_path / bad}", f"runs_dir={runs}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mora-run: error:"), proc.stderr
    assert re.search(message, lines[0])
    assert not runs.exists()


def test_hub_source_offline_through_the_driver_is_one_line(tmp_path):
    proc = mora_run("task=pretrain", "task.data.source=hub", f"runs_dir={tmp_path / 'runs'}", env=offline_env())
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "allenai/c4" in proc.stderr and "task.data.path=" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_remora_pretraining_through_the_trainer_records_perplexity_samples_and_sources(tmp_path):
    """The paper's pretraining recipe in miniature: MoRA (sharing) with restarts and compression cycling,
    embeddings/norms/head trained in full, perplexity curve and greedy samples in result.json."""
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS * 3])
    proc = mora_run(
        "task=pretrain", f"task.data.path={data}", "task.seq_len=64", "task.eval_tokens=128", "task.samples=[Document]",
        "task.sample_tokens=8", "method=remora", "method.r=4", "method.restart_every=4", "method.restart_warmup=1",
        "method.dropout=0", "method.modules_to_save=[embed_tokens,lm_head,norm]", "train.max_steps=10",
        "train.global_batch=4", "train.micro_batch=4", "train.eval_every=5", "train.log_every=1", "train.save_every=5",
        "train.analyze=false", "launcher.cpu_threads=1", f"runs_dir={tmp_path}", "name=r",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    evals = result["curves"]["eval"]
    assert [step for step, _ in evals] == [5, 10]
    assert all(m["perplexity"] > 1 for _, m in evals) and evals[-1][1]["perplexity"] < evals[0][1]["perplexity"] * 1.5
    assert result["metrics"]["perplexity"] == evals[-1][1]["perplexity"]
    assert result["task"]["data"] == {"source": "local", "path": str(data), "eval_path": None}
    assert result["task"]["samples"][0]["prompt"] == "Document" and isinstance(result["task"]["samples"][0]["continuation"], str)
    trainable = result["params"]["trainable"]
    assert trainable > result["params"]["lora_equivalent"] - trainable  # embeddings and head dominate: trained in full


def test_the_pretraining_schedule_is_cosine_with_a_rewarm_after_each_merge():
    """Table 3's jagged schedule (pocket recipe: 400 steps, 40 warmup, merges every 80, 4-step re-warm): the LR
    climbs back linearly to the cosine value at every merge, and is the plain cosine elsewhere."""
    from mora.train import lr_lambda

    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * (step - 40) / 360))  # noqa: E731
    lr = {step: lr_lambda(step, total=400, warmup=40, schedule="cosine", restart_every=80, restart_warmup=4)
          for step in range(400)}
    assert lr[0] == pytest.approx(1 / 40) and lr[39] == pytest.approx(1.0)  # the initial warmup
    for merge in (80, 160, 240, 320):
        assert [lr[merge + i] for i in range(5)] == pytest.approx([cosine(merge + i) * (i + 1) / 4 for i in range(4)]
                                                                  + [cosine(merge + 4)])
        assert lr[merge - 1] == pytest.approx(cosine(merge - 1))  # untouched before the merge
    untouched = [s for s in range(40, 400) if s % 80 >= 4]
    assert all(lr[s] == pytest.approx(cosine(s)) for s in untouched)
