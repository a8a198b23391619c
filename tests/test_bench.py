"""The cost benchmarks: Table 5's training step (mora.bench), its table (mora.tables.table5) and the
adapter bench's CLI — on micro models, a step or two each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mora import bench
from mora.adapters import MoraLinear
from mora.bench import BenchMethod, BenchModel
from mora.tables import render_all, table5
from mora.tables.common import HELD, NOT_HELD, NOT_TESTED

REPO = Path(__file__).resolve().parents[1]
MICRO = BenchModel(name="micro", hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, vocab_size=50,
                   batch=2, seq_len=16, dtype="float32", warmup=1, steps=2)


def test_rows_parse_and_refuse_unknown_labels():
    assert [m.label for m in bench.METHODS[:4]] == ["frozen", "fft", "lora-r8", "mora_rope-r8"]
    for method in bench.METHODS:
        assert BenchMethod.parse(method.label) == method
    assert BenchMethod.parse("mora_sharing-r256").config().compression == "sharing"
    for bad in ("lora", "fft-r8", "rope-r8", "lora-rx"):
        with pytest.raises(ValueError, match="unknown Table 5 row"):
            BenchMethod.parse(bad)


@pytest.mark.parametrize("label", ["frozen", "fft", "lora-r8", "mora_rope-r8", "mora_sharing-r8", "dora-r8"])
def test_measure_trains_what_each_method_trains(label):
    row = bench.measure(MICRO, BenchMethod.parse(label), "cpu")
    assert len(row["step_ms"]) == MICRO.steps and row["ms_per_step"] > 0 and row["peak_mem_mb"] > 0
    assert row["tokens_per_s"] == pytest.approx(MICRO.tokens / (row["ms_per_step"] / 1e3))
    embeddings = MICRO.vocab_size * MICRO.hidden_size
    if label == "frozen":
        assert row["trainable"] == embeddings
    elif label == "fft":
        assert row["trainable"] == row["total"]
    elif label.startswith("mora"):  # exactly the Ms of the seven projections
        torch.manual_seed(0)
        model, _ = bench.attach(MICRO.build("cpu"), BenchMethod.parse(label), 1e-4)
        assert row["trainable"] == sum(m.M.numel() for m in model.modules() if isinstance(m, MoraLinear)) > 0
    else:
        assert 0 < row["trainable"] < row["total"] - embeddings


def test_session_runs_each_row_in_its_own_process_and_renders(tmp_path):
    collected = tmp_path / "results" / "table5"
    records = bench.run_session([MICRO], [BenchMethod.parse("lora-r8"), BenchMethod.parse("mora_rope-r8")], "cpu",
                                collected, tmp_path / "runs")
    names = sorted(p.name for p in collected.glob("*.json"))
    assert names == ["table5-cpu-micro-lora-r8.json", "table5-cpu-micro-mora_rope-r8.json"]
    assert (tmp_path / "runs" / "table5-cpu-micro-lora-r8" / "result.json").exists()
    assert len({r["config"]["bench"]["id"] for r in records}) == 1
    assert all(r["env"]["cpu"]["model"] is not None for r in records)
    (report,) = render_all(tmp_path / "results", tmp_path / "out")  # the index reads the rows like runs
    text = report.rendered.markdown.read_text()
    assert "### micro on" in text and "MoRA rope" in text and "arXiv v1 §4" in text
    assert report.rendered.verdicts[0].verdict == NOT_TESTED  # a micro model only, not LLaMA-2-7B's width
    assert "Table 5 — Training cost" in (tmp_path / "out" / "README.md").read_text()


def _record(key: str, r: int | None, ms: float, session: str = "cpu-1", kind: str = "cpu", mem: float = 1000.0) -> dict:
    spec = BenchModel(name="m", hidden_size=4096, intermediate_size=8, num_layers=1, num_heads=1, vocab_size=8,
                      batch=1, seq_len=4, dtype="float32", warmup=1, steps=2)
    row = {"step_ms": [ms, ms], "ms_per_step": ms, "tokens_per_s": 4e3 / ms, "peak_mem_mb": mem, "trainable": 10,
           "total": 100, "env": {"cpu": {"model": "CPU"}, "cuda": {"devices": [{"name": "GPU"}]}}, "wall_s": 1.0}
    record = bench.result_record(spec, BenchMethod(key, r), row, {"id": session, "device_kind": kind, "load_before": 0.5})
    record["config"]["bench"]["load_after"] = 0.5
    return record


def test_table5_ratios_come_from_the_latest_session_of_each_group(tmp_path):
    results = [
        _record("frozen", None, 50.0), _record("lora", 8, 100.0), _record("mora_rope", 8, 90.0, mem=900.0),
        _record("lora", 256, 200.0), _record("mora_sharing", 256, 260.0),
        _record("lora", 8, 10.0, session="cpu-0"),  # an older session of the same group: ignored
    ]
    rendered = table5.render(results, tmp_path, "table5")
    text = rendered.markdown.read_text()
    rope = next(line for line in text.splitlines() if line.startswith("| MoRA rope"))
    assert "| 0.90× | 0.90× | 1.80× |" in rope  # × LoRA time, × LoRA memory, × frozen base
    verdict = rendered.verdicts[0]
    assert verdict.verdict == NOT_HELD and "1.30×" in verdict.evidence and "the CPU slice" in verdict.evidence
    gpu = [_record("lora", 8, 100.0, "gpu-1", "gpu"), _record("mora_rope", 8, 99.0, "gpu-1", "gpu")]
    judged = table5.claims(table5._groups(results + gpu))[0]
    assert judged.verdict == HELD and "the GPU rows" in judged.evidence  # the GPU decides when it was measured
    assert table5.claims(table5._groups([_record("fft", None, 5.0)]))[0].verdict == NOT_TESTED


def test_adapter_bench_runs_on_a_chosen_device_and_dtype(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_adapter", REPO / "scripts" / "bench_adapter.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "bench.md"
    assert module.main(["--device", "cpu", "--dtype", "bfloat16", "--tokens", "8", "--shapes", "64x96", "--ranks", "2",
                        "--repeats", "1", "--warmup", "0", "--min-repeats", "1", "--merge-repeats", "1",
                        "--out", str(out)]) == 0
    text = out.read_text()
    assert "8 tokens × one layer, bfloat16" in text and "| 64→96 | 2 |" in text and "bfloat16 base" in text


def test_trainer_rows_render_in_their_own_section(tmp_path):
    trainer = {
        "schema": 1, "name": "table5-cpu-trainer-uuid-tiny_llama-mora_rope", "params": {}, "curves": {},
        "config": {"method": {"name": "mora", "compression": "rope", "r": 8}, "model": {"name": "tiny_llama"},
                   "task": {"name": "uuid"}, "optim": {"lr": 1e-3}, "scale": "pocket",
                   "train": {"micro_batch": 16, "precision": "fp32", "max_steps": 100},
                   "bench": {"kind": "trainer", "id": "cpu-2", "device_kind": "cpu", "target": 0.9}},
        "metrics": {"trainer_tokens_per_s": 950.0, "bare_tokens_per_s": [1000.0, 1000.0], "ratio": 0.95},
        "timing": {"wall_s": 1.0}, "env": {"cpu": {"model": "CPU", "cores": 2}},
    }
    text = table5.render([_record("lora", 8, 100.0), trainer], tmp_path, "table5").markdown.read_text()
    assert "### The trainer's own cost" in text
    assert "| uuid | tiny_llama | MoRA rope | 16 | fp32 | 950 | 1,000 / 1,000 | 0.950 | ≥ 0.9 |" in text
