"""The results layer: result.json round trip, metrics.jsonl → curves, Table 1 rendering (numbers,
best-LR choice, claim verdicts, plot) and the environment capture.  Runs are synthetic: written as the
trainer writes them, from metrics.jsonl records, so no training happens here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mora import envinfo
from mora.results import (
    curves_from_metrics,
    load_results,
    main,
    plot_loss_curves,
    read_metrics_jsonl,
    render_table1,
    write_result,
)

STEPS = 1000


def fake_run(root, method, r, lr, acc, final_loss=0.05, compression=None, commit="abc123"):
    """Write runs/<name>/{metrics.jsonl,result.json} the way the trainer does.  ``acc`` maps an
    evaluation step to char accuracy (0..1); the loss decays to ``final_loss``."""
    name = f"uuid-{method}{'_' + compression if compression else ''}-r{r}-lr{lr:g}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    records = [{"step": s, "loss": final_loss * STEPS / s, "learning_rate": lr * (1 - s / STEPS)}
               for s in range(100, STEPS + 1, 100)]
    records += [{"step": s, "eval/char_acc": a, "eval/exact_match": a ** 8} for s, a in acc.items()]
    records.sort(key=lambda rec: rec["step"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
    curves = curves_from_metrics(read_metrics_jsonl(run_dir / "metrics.jsonl"))
    final_acc = acc[max(acc)]
    config = {
        "model": {"name": "tiny_llama"},
        "method": {"name": method, "r": r, "compression": compression},
        "task": {"name": "uuid", "num_pairs": 64},
        "optim": {"lr": lr},
        "train": {"max_steps": STEPS, "global_batch": 64},
    }
    return write_result(
        run_dir, config=config, name=name, params={"trainable": 100 * r, "total": 10_000},
        metrics={"char_acc": final_acc, "exact_match": final_acc ** 8, "final_loss": final_loss},
        curves=curves, timing={"wall_s": 1.0, "tokens_per_s": 10.0, "peak_mem_mb": 1.0},
        env={"git": {"commit": commit, "dirty": False}},
    )


def curve(*values):
    """Char accuracy at steps 300, 500, 700, 900, 1000."""
    return dict(zip((300, 500, 700, 900, 1000), values))


@pytest.fixture
def paper_like(tmp_path):
    """A grid that behaves like the paper's Table 1, with an LR sweep for LoRA r=8."""
    runs = tmp_path / "runs" / "table1"
    fake_run(runs, "fft", 8, 3e-5, curve(0.425, 1, 1, 1, 1))
    fake_run(runs, "lora", 8, 1e-4, curve(0.09, 0.1, 0.1, 0.3, 0.31), final_loss=0.9)
    fake_run(runs, "lora", 8, 2e-4, curve(0.099, 0.1, 0.107, 0.542, 0.542), final_loss=0.5)
    fake_run(runs, "mora", 8, 2e-4, curve(0.101, 0.157, 0.874, 1, 1), compression="rope")
    fake_run(runs, "lora", 256, 2e-4, curve(0.099, 0.706, 1, 1, 1))
    fake_run(runs, "mora", 256, 5e-5, curve(0.416, 1, 1, 1, 1), compression="sharing")
    return runs


def row(markdown, prefix):
    """The cells of the first table row starting with ``prefix`` (e.g. "| LoRA | 256 |")."""
    line = next(line for line in markdown.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_result_json_round_trip(paper_like):
    results = load_results([paper_like])
    assert [r["name"] for r in results] == sorted(r["name"] for r in results) and len(results) == 6
    one = load_results(paper_like / "uuid-lora-r256-lr0.0002")[0]
    assert set(one) >= {"name", "config", "params", "metrics", "curves", "timing", "env", "finished_at"}
    assert one["curves"]["eval"][2] == [700, {"char_acc": 1, "exact_match": 1}]
    assert one["curves"]["lr"][0] == [100, pytest.approx(2e-4 * 0.9)]  # learning_rate → lr
    with pytest.raises(FileNotFoundError):
        load_results(paper_like / "missing")


def test_metrics_jsonl_reader_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 2.0, "lr": 1e-4}\n{"step": 10, "eval/char_acc": 0.5}\n'
                    '{"step": 10, "eval/exact_match": 0.1}\n{"step": 20, "lo')
    curves = curves_from_metrics(read_metrics_jsonl(path))
    assert curves["loss"] == [[10, 2.0]] and curves["lr"] == [[10, 1e-4]]
    assert curves["eval"] == [[10, {"char_acc": 0.5, "exact_match": 0.1}]]  # one step's evals merged
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_metrics_jsonl(path)


def test_table1_shows_computed_numbers_and_best_lr(paper_like, tmp_path):
    md = render_table1(load_results(paper_like), tmp_path / "out/table1.md", tmp_path / "out/table1_curves.png")
    assert (tmp_path / "out/table1.md").read_text() == md
    assert "| lr | trainable params | char acc @300 | char acc @500 | char acc @700 | char acc @900 |" in md
    assert row(md, "| LoRA | 256 |") == ["LoRA", "256", "2e-4", "25,600", "9.9", "70.6", "100.0", "100.0",
                                          "100.0", "100.0", "0.05", "700"]
    assert row(md, "| LoRA | 8 |")[2] == "2e-4"  # the better LR of the sweep (54.2% beats 31.0%)
    assert row(md, "| LoRA | 8 |")[-1] == "—"  # never reached 100%
    assert row(md, "| MoRA rope | 8 |")[-1] == "900"
    assert row(md, "| FFT | — |")[2] == "3e-5"
    sweep = md.split("## Every learning rate tried")[1]
    assert row(sweep, "| LoRA | 8 | 1e-4 |")[-1] == "" and row(sweep, "| LoRA | 8 | 2e-4 |")[-1] == "✓"
    assert "| MoRA | 8 | 10.1 | 15.7 | 87.4 | 100.0 |" in md  # the paper's figures, beside ours
    assert "arXiv v1 Table 2, LLaMA-2-7B" in md
    assert "tiny_llama (10,000 parameters)" in md and "num_pairs=64" in md and "global batch 64" in md
    assert "Learning rates swept for LoRA r=8 (2 LRs)" in md
    assert "Only one learning rate was tried for FFT, MoRA rope r=8, LoRA r=256, MoRA sharing r=256: those rows may be under-tuned." in md


def test_table1_claims_held(paper_like, tmp_path):
    md = render_table1(load_results(paper_like), tmp_path / "t.md", tmp_path / "t.png")
    assert ("Claim 1a (at small rank MoRA beats LoRA in final char accuracy): r=8: **held** — "
            "MoRA rope 100.0% vs LoRA 54.2%.") in md
    assert "r=256: **held** — MoRA sharing at step 500, LoRA at step 700." in md
    assert ("Is full fine-tuning the best row? **tied** — FFT 100.0% final char accuracy; best other: "
            "MoRA rope r=8 lr=2e-4, LoRA r=256 lr=2e-4, MoRA sharing r=256 lr=5e-5 100.0%.") in md


def test_table1_claims_did_not_hold(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "fft", 8, 3e-5, curve(0.2, 0.4, 0.6, 0.8, 0.9))
    fake_run(runs, "lora", 8, 2e-4, curve(0.1, 0.3, 0.7, 0.95, 1.0))
    fake_run(runs, "mora", 8, 2e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), compression="rope")
    fake_run(runs, "lora", 256, 2e-4, curve(0.5, 1, 1, 1, 1))
    fake_run(runs, "mora", 256, 5e-5, curve(0.2, 0.6, 0.9, 0.99, 0.99), compression="sharing")
    md = render_table1(load_results(runs), tmp_path / "t.md", tmp_path / "t.png")
    assert "r=8: **did not hold** — MoRA rope 50.0% vs LoRA 100.0%." in md
    assert "r=256: **did not hold** — MoRA sharing never (in 1000 steps), LoRA at step 500." in md
    assert ("Is full fine-tuning the best row? **no** — FFT 90.0% final char accuracy; "
            "best other: LoRA r=8 lr=2e-4, LoRA r=256 lr=2e-4 100.0%.") in md


def test_table1_claims_not_tested_without_a_pair(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mora", 8, 2e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), compression="rope")
    md = render_table1(load_results(runs), tmp_path / "t.md", tmp_path / "t.png")
    assert md.count("not tested — no rank has both a LoRA and a MoRA run.") == 2
    assert "full fine-tuning" not in md


def test_best_lr_tie_goes_to_lower_loss(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "lora", 8, 1e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), final_loss=0.4)
    fake_run(runs, "lora", 8, 3e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), final_loss=0.2)
    md = render_table1(load_results(runs), tmp_path / "t.md", tmp_path / "t.png")
    assert row(md, "| LoRA | 8 |")[2] == "3e-4"


def test_table1_reports_the_nearest_evaluation_or_none(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "lora", 8, 1e-4, {310: 0.2, 500: 0.4, 1000: 0.5})
    md = render_table1(load_results(runs), tmp_path / "t.md", tmp_path / "t.png")
    assert row(md, "| LoRA | 8 |")[4:8] == ["20.0 (step 310)", "40.0", "—", "—"]  # 700, 900: no eval within ±50


def test_plots_are_written(paper_like, tmp_path):
    results = load_results(paper_like)
    render_table1(results, tmp_path / "t.md", tmp_path / "curves.png")
    plot_loss_curves(results, tmp_path / "loss.png")
    for png in ("curves.png", "loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_renders_every_table_with_runs(paper_like, tmp_path, capsys):
    assert main(["render", "all", "--root", str(paper_like.parent), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/table1.md").exists() and (tmp_path / "out/table1_curves.png").stat().st_size > 0
    assert main(["render", "all", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 0
    assert "table1: skipped" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["render", "table1", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1


def test_envinfo_capture_keys_and_types():
    env = envinfo.capture()
    assert set(env) == {"git", "packages", "python", "platform", "hostname", "cpu", "ram_gb", "cuda", "torch_threads"}
    assert set(env["packages"]) == set(envinfo.PACKAGES) and env["packages"]["torch"]
    assert isinstance(env["cpu"]["cores"], int) and env["ram_gb"] > 0 and env["torch_threads"] >= 1
    assert isinstance(env["cuda"]["available"], bool) and env["cuda"]["count"] == len(env["cuda"]["devices"])
    if env["git"] is not None:
        assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool)


def test_envinfo_finds_the_repo_from_the_package_not_the_cwd(tmp_path, monkeypatch):
    code = "import json; from mora import envinfo; print(json.dumps(envinfo.capture()['git']))"
    from_elsewhere = json.loads(subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                                               text=True, check=True).stdout)
    assert from_elsewhere["commit"] == envinfo.capture()["git"]["commit"]
    monkeypatch.setattr(envinfo, "REPO_ROOT", tmp_path)  # an installed copy outside any checkout
    assert envinfo.capture()["git"] is None
