"""The tables layer (mora.tables): Table 1 rendering (numbers, best-LR choice, claim verdicts, plot), the
index results/README.md, the paper's figures, the registry and the command line.  Runs are synthetic
(tests/fake_runs.py), so no training happens."""

from __future__ import annotations

import statistics
import sys
import types

import pytest
from fake_runs import curve, fake_run
from fake_runs import paper_like as write_paper_like

from mora.results import load_results
from mora.tables import TABLES, Verdict, _load, paper, render_all, table1
from mora.tables.__main__ import main
from mora.tables.common import HELD, NOT_HELD, NOT_TESTED, plot_loss_curves, summarize


@pytest.fixture
def paper_like(tmp_path):
    return write_paper_like(tmp_path / "runs" / "table1")


def render_table1(runs, out_dir):
    """Table 1 from the runs under ``runs`` into ``out_dir/table1.md``: (markdown text, Rendered)."""
    rendered = table1.render(load_results(runs), out_dir, "table1")
    return rendered.markdown.read_text(), rendered


def row(markdown, prefix):
    """The cells of the first table row starting with ``prefix`` (e.g. "| LoRA | 256 |")."""
    line = next(line for line in markdown.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


# ---------------------------------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------------------------------


def test_table1_shows_computed_numbers_and_best_lr(paper_like, tmp_path):
    md, rendered = render_table1(paper_like, tmp_path / "out")
    assert rendered.markdown == tmp_path / "out/table1.md" and rendered.plots == (tmp_path / "out/table1_curves.png",)
    assert "| lr | trainable params | char acc @300 | char acc @500 | char acc @700 | char acc @900 |" in md
    assert row(md, "| LoRA | 256 |") == ["LoRA", "256", "2e-4", "25,600", "9.9", "70.6", "100.0", "100.0",
                                          "100.0", "100.0", "0.05", "700", "—"]  # no ΔW analysis in fake runs
    assert row(md, "| LoRA | 8 |")[2] == "2e-4"  # the better LR of the sweep (54.2% beats 31.0%)
    assert row(md, "| LoRA | 8 |")[-2] == "—"  # never reached 100% (the last column: ΔW effective rank)
    assert row(md, "| MoRA rope | 8 |")[-2] == "900"
    assert row(md, "| FFT | — |")[2] == "3e-5"
    sweep = md.split("## Every learning rate tried")[1]
    assert row(sweep, "| LoRA | 8 | 1e-4 |")[-1] == "" and row(sweep, "| LoRA | 8 | 2e-4 |")[-1] == "✓"
    assert "| MoRA | 8 | 10.1 | 15.7 | 87.4 | 100.0 |" in md  # the paper's figures, beside ours
    assert "## The paper (arXiv v1 Table 2, LLaMA-2-7B)" in md
    assert "tiny_llama (10,000 parameters)" in md and "num_pairs=64" in md and "global batch 64" in md
    assert "Learning rates swept for LoRA r=8 (2 LRs)" in md
    assert "Only one learning rate was tried for FFT, MoRA rope r=8, LoRA r=256, MoRA sharing r=256: those rows may be under-tuned." in md
    assert "Rendered by `python -m mora.tables render table1` from 6 run result(s)" in md


def test_table1_effective_rank_column_reads_the_run_analysis(paper_like, tmp_path):
    from mora.analyze import record

    overall = {"shape": [128, 128], "layers": 14, "max_rank": 128, "numerical_rank": 8.0, "relative_rank": 8.0,
               "effective_rank": 6.3}
    record(paper_like / "uuid-lora-r256-lr0.0002", {"by_type": {"q_proj": overall}, "overall": overall})
    md, _ = render_table1(paper_like, tmp_path / "out")
    assert row(md, "| LoRA | 256 |")[-1] == "6.3" and row(md, "| MoRA rope | 8 |")[-1] == "—"
    assert "No ΔW analysis for FFT, LoRA r=8, MoRA rope r=8, MoRA sharing r=256 (trained before" in md


def test_table1_claims_held(paper_like, tmp_path):
    md, rendered = render_table1(paper_like, tmp_path)
    assert rendered.verdicts == (
        Verdict("Claim 1a (at small rank MoRA beats LoRA in final char accuracy)", HELD,
                "r=8: MoRA rope 100.0% vs LoRA 54.2%"),
        Verdict("Claim 1b (at large rank MoRA reaches 100% char accuracy earlier than LoRA)", HELD,
                "r=256: MoRA sharing at step 500, LoRA at step 700"),
    )
    assert ("- Claim 1a (at small rank MoRA beats LoRA in final char accuracy): **held** — "
            "r=8: MoRA rope 100.0% vs LoRA 54.2%.") in md
    assert ("Is full fine-tuning the best row? **tied** — FFT 100.0% final char accuracy; best other: "
            "MoRA rope r=8 lr=2e-4, LoRA r=256 lr=2e-4, MoRA sharing r=256 lr=5e-5 100.0%.") in md


def test_table1_claims_did_not_hold(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "fft", 8, 3e-5, curve(0.2, 0.4, 0.6, 0.8, 0.9))
    fake_run(runs, "lora", 8, 2e-4, curve(0.1, 0.3, 0.7, 0.95, 1.0))
    fake_run(runs, "mora", 8, 2e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), compression="rope")
    fake_run(runs, "lora", 256, 2e-4, curve(0.5, 1, 1, 1, 1))
    fake_run(runs, "mora", 256, 5e-5, curve(0.2, 0.6, 0.9, 0.99, 0.99), compression="sharing")
    md, rendered = render_table1(runs, tmp_path)
    assert [v.verdict for v in rendered.verdicts] == [NOT_HELD, NOT_HELD]
    assert "**did not hold** — r=8: MoRA rope 50.0% vs LoRA 100.0%." in md
    assert "**did not hold** — r=256: MoRA sharing never (in 1000 steps), LoRA at step 500." in md
    assert ("Is full fine-tuning the best row? **no** — FFT 90.0% final char accuracy; "
            "best other: LoRA r=8 lr=2e-4, LoRA r=256 lr=2e-4 100.0%.") in md


def test_table1_claims_not_tested_without_a_pair(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mora", 8, 2e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), compression="rope")
    md, rendered = render_table1(runs, tmp_path)
    assert [v.verdict for v in rendered.verdicts] == [NOT_TESTED, NOT_TESTED]
    assert md.count("**not tested** — no rank has both a LoRA and a MoRA run.") == 2
    assert "full fine-tuning" not in md


def test_best_lr_tie_goes_to_lower_loss(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "lora", 8, 1e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), final_loss=0.4)
    fake_run(runs, "lora", 8, 3e-4, curve(0.1, 0.2, 0.3, 0.4, 0.5), final_loss=0.2)
    md, _ = render_table1(runs, tmp_path)
    assert row(md, "| LoRA | 8 |")[2] == "3e-4"


def test_table1_reports_the_nearest_evaluation_or_none(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "lora", 8, 1e-4, {310: 0.2, 500: 0.4, 1000: 0.5})
    md, _ = render_table1(runs, tmp_path)
    assert row(md, "| LoRA | 8 |")[4:8] == ["20.0 (step 310)", "40.0", "—", "—"]  # 700, 900: no eval within ±50


def test_plots_are_written(paper_like, tmp_path):
    _, rendered = render_table1(paper_like, tmp_path)
    loss = plot_loss_curves([summarize(r) for r in load_results(paper_like)], tmp_path / "loss.png")
    for png in (*rendered.plots, loss):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------
# The index, the registry, the command line
# ---------------------------------------------------------------------------------------------------


def test_index_lists_every_table_with_its_verdicts_and_durations(paper_like, tmp_path, monkeypatch):
    sweep = tmp_path / "runs" / "table1-sweep"
    fake_run(sweep, "lora", 8, 1e-3, curve(0.1, 0.2, 0.3, 0.4, 0.5), wall_s=3600)
    fake_run(sweep, "lora", 8, 3e-3, curve(0.1, 0.2, 0.3, 0.4, 0.6), wall_s=300)
    unrun = types.SimpleNamespace(NAME="table9", TITLE="Table 9 — not run yet", render=None)
    monkeypatch.setitem(TABLES, "table9", unrun)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/bench.md").write_text("made elsewhere\n")
    reports = render_all(tmp_path / "runs", tmp_path / "out")
    assert [(r.table.NAME, r.stem) for r in reports] == [("table1", "table1"), ("table1", "table1-sweep")]
    index = (tmp_path / "out/README.md").read_text()
    assert index.startswith("# Results\n\nGenerated by `python -m mora.tables render all` (`make tables`) "
                            "from the run JSONs under `../runs/`; do not edit by hand.")
    main_row = "| [Table 1 — UUID memorisation](table1.md) | 6 | pocket | Test CPU (2 cores), no GPU | 3m 30s | 2 held |"
    assert main_row in index
    sweep_row = ("| [Table 1 — UUID memorisation (sweep)](table1-sweep.md) | 2 | pocket | Test CPU (2 cores), no GPU "
                 "| 1h 05m | 2 not tested |")
    assert sweep_row in index
    table_section = index.split("## [Table 1 — UUID memorisation](table1.md)")[1].split("\n## ")[0]
    assert ("What was run: 6 run(s) from [`../runs/table1/`](../runs/table1) (grid `conf/grids/table1.yaml`): "
            "FFT (lr 3e-5); LoRA r=8 (lr 1e-4, 2e-4); MoRA rope r=8 (lr 2e-4); LoRA r=256 (lr 2e-4); "
            "MoRA sharing r=256 (lr 5e-5).") in table_section
    assert "Scale: pocket; model tiny_llama (10,000 parameters); 1000 steps of global batch 64." in table_section
    assert "Machine: Test CPU (2 cores), no GPU; torch 2.0.0+test." in table_section
    assert "Time: 3m 30s, the sum of the runs' wall times (longest run 1m 00s)." in table_section
    assert "Plots: [table1_curves.png](table1_curves.png)." in table_section
    for verdict in reports[0].rendered.verdicts:  # the same lines as in the table's notes
        assert f"  - {verdict.markdown()}" in table_section
    assert "- Table 9 — not run yet (no runs in `../runs/table9/`)" in index
    assert "- [bench.md](bench.md)" in index.split("## Other files here")[1]


def test_index_tells_runs_on_gpus_apart(tmp_path):
    gpu_env = {"cpu": {"model": "Xeon", "cores": 64}, "packages": {"torch": "2.5.0+cu124"},
               "cuda": {"available": True, "count": 2, "devices": [{"name": "H100", "memory_gb": 80.0}] * 2}}
    fake_run(tmp_path / "runs/table1", "lora", 8, 1e-3, curve(0.1, 0.2, 0.3, 0.4, 0.5), env=gpu_env)
    fake_run(tmp_path / "runs/table1", "lora", 8, 3e-3, curve(0.1, 0.2, 0.3, 0.4, 0.5), env={})
    render_all(tmp_path / "runs", tmp_path / "out")
    index = (tmp_path / "out/README.md").read_text()
    assert ("Machine: Xeon (64 cores), 2× H100, unknown CPU, no GPU (differs between runs); "
            "torch 2.5.0+cu124, unknown (differs between runs).") in index


def test_registered_tables_follow_the_protocol(monkeypatch):
    for name, module in TABLES.items():
        assert module.NAME == name and module.TITLE and callable(module.render)
    broken = types.ModuleType("mora.tables.table9")
    broken.NAME, broken.TITLE = "table1", "Table 9"
    monkeypatch.setitem(sys.modules, "mora.tables.table9", broken)
    with pytest.raises(TypeError, match="NAME = 'table9'"):
        _load("table9")
    with pytest.raises(ValueError, match="use HELD, NOT_HELD or NOT_TESTED"):
        Verdict("Claim 9", "yes", "because")


def test_cli_renders_every_table_with_runs_then_the_index(paper_like, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["render", "all", "--root", str(paper_like.parent), "--out", str(out)]) == 0
    assert (out / "table1.md").exists() and (out / "table1_curves.png").stat().st_size > 0
    assert "Table 1 — UUID memorisation" in (out / "README.md").read_text()
    assert main(["render", "all", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")]) == 0
    assert "table1: skipped" in capsys.readouterr().out
    assert "No table has runs yet." in (tmp_path / "out2/README.md").read_text()
    (tmp_path / "empty").mkdir()
    assert main(["render", "table1", "--runs", str(tmp_path / "empty"), "--out", str(out)]) == 1


def test_cli_renders_a_variant_into_its_own_stem(paper_like, tmp_path):
    variant = paper_like.rename(paper_like.parent / "table1-sweep")
    assert main(["render", "table1", "--runs", str(variant), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table1-sweep.md", "table1-sweep_curves.png"]


# ---------------------------------------------------------------------------------------------------
# The paper's figures: exactly the spec's (/work/shared/MORA_SPEC.md)
# ---------------------------------------------------------------------------------------------------


def test_paper_figures_are_the_specs():
    assert paper.TABLE1_UUID.value("MoRA", 8, 700) == 87.4 and paper.TABLE1_UUID.value("FFT", None, 300) == 42.5
    assert paper.TABLE1_UUID.value("LoRA", 8, 900) == 54.2 and paper.TABLE1_UUID.source == "arXiv v1 Table 2"
    ft = paper.TABLE2_FINETUNING
    assert ft.source == "arXiv v1 Table 1" and len(ft.rows) == 13
    assert [ft.value("MoRA", 256, c) for c in ft.columns] == [49.9, 51.4, 67.9, 19.2, 55.4, 68.7]
    assert ft.value("ReLoRA", 256, "MMLU 0-shot") is None and ft.value("ReLoRA", 256, "Finance") == 57.9
    assert ft.value("AsyLoRA", 8, "MMLU 5-shot") == 52.2 and ft.value("FFT", None, "MATH") == 20.1
    biomed = paper.TABLE2_BIOMED
    assert biomed.source == "arXiv v1 Table 6" and biomed.value("MoRA", 8, "RCT") == 59.9
    assert statistics.mean(next(v for m, r, v in biomed.rows if (m, r) == ("LoRA", 8))) == pytest.approx(52.05)
    assert paper.TABLE2_FINANCE.source == "arXiv v1 Table 7" and paper.TABLE2_FINANCE.value("MoRA", 8, "NER") == 68.9
    assert paper.TABLE2_FINANCE.value("FFT", None, "FPB") == 74.3
    assert paper.TABLE3_C4.value("ReMoRA", 128, "1.3B") == 23.34 and paper.TABLE3_C4.value("LoRA", 128, "250M") == 33.40
    assert "| LoRA | 128 | 33.40 | 28.56 |" in paper.TABLE3_C4.markdown()
    assert paper.TABLE4_ABLATION.value("truncation", 256, "GSM8K") == 66.6
    assert paper.TABLE4_ABLATION.value("rotation", 8, "GSM8K") == 64.2
    assert [(c.slowdown, c.source) for c in paper.COST_CLAIMS] == [(1.03, "arXiv v1 §4"), (1.15, "ICLR 2025 reviews")]
    with pytest.raises(KeyError, match="no row MoRA r=16"):
        paper.TABLE1_UUID.value("MoRA", 16, 300)


def test_a_best_lr_at_an_end_of_its_grid_is_flagged(tmp_path):
    """Three LRs tried and the best is the largest (or smallest): the note says the optimum may lie beyond."""
    from mora.tables.common import best_per_group, lr_search_notes

    for lr, final in ((1e-3, 0.3), (3e-3, 0.5), (1e-2, 0.7)):  # LoRA: best at the largest
        fake_run(tmp_path, "lora", 8, lr, curve(0.1, 0.1, 0.1, 0.1, final))
    for lr, final in ((1e-3, 0.3), (3e-3, 0.9), (1e-2, 0.7)):  # MoRA: best inside the grid
        fake_run(tmp_path, "mora", 8, lr, curve(0.1, 0.1, 0.1, 0.1, final), compression="rope")
    notes = lr_search_notes(best_per_group([summarize(r) for r in load_results(tmp_path)], "char_acc"))
    assert "Best at an end of the LRs tried, so the optimum may lie beyond the grid: LoRA r=8 (1e-2, the largest of 3)." in notes


def test_what_was_run_lists_each_methods_lrs_once_per_task(tmp_path):
    """A table spanning tasks (Table 2, the shoot-out) lists each task's methods apart, every LR once; a peft
    type sized by its own knob rather than a budget is named by that knob."""
    import json

    from fake_runs import sft_run

    from mora.tables.index import what_was_run

    for task in ("math", "instruct"):
        for lr in (1e-3, 3e-3):
            sft_run(tmp_path / task, task, "lora", 8, lr, ppl=5.0)
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/*/result.json"))]
    c3a = json.loads(json.dumps(results[0]))
    c3a["config"]["method"] = {"name": "peft", "peft_type": "C3A", "r": 8}
    c3a["params"]["peft"] = {"type": "C3A", "block_size": 8}
    runs = [summarize(result) for result in [*results, c3a]]
    assert runs[-1].r is None and runs[-1].method() == "C3A block_size=8"
    assert what_was_run(runs) == ("*instruct*: C3A block_size=8 (lr 1e-3); LoRA r=8 (lr 1e-3, 3e-3) — "
                                  "*math*: LoRA r=8 (lr 1e-3, 3e-3)")
    assert what_was_run(runs[:2]) == "LoRA r=8 (lr 1e-3, 3e-3)"


def test_mean_over_seeds_merges_runs_that_differ_only_in_their_seed():
    from dataclasses import replace

    from mora.tables.common import delta_rank, each_seed, mean_over_seeds, over_seeds

    def one(name, acc, rank, evals):
        template = summarize({"name": name, "config": {"method": {"name": "lora", "r": 8}, "optim": {"lr": 1e-3},
                                                       "train": {"max_steps": 10}}, "curves": {}, "metrics": {}})
        return replace(template, final={"char_acc": acc, "note": "text"}, evals=evals,
                       result={**template.result, "analysis": {"overall": {"effective_rank": rank}}})

    a = one("uuid-lora-r8-lr1e-3-s42", 0.5, 6.0, {5: {"char_acc": 0.2}, 10: {"char_acc": 0.5}})
    b = one("uuid-lora-r8-lr1e-3-s43", 1.0, 8.0, {10: {"char_acc": 1.0}})
    other = one("uuid-lora-r8-lr3e-3-s42", 0.9, 7.0, {10: {"char_acc": 0.9}})
    merged, alone = mean_over_seeds([a, other, b])
    assert alone is other
    assert merged.name == "uuid-lora-r8-lr1e-3-s{42,43}" and merged.seeds == (a, b)
    assert merged.final == {"char_acc": 0.75}  # numbers only
    assert merged.evals == {10: {"char_acc": 0.75}}  # the steps every seed evaluated
    assert delta_rank(merged) == 7.0 and delta_rank(other) == 7.0
    assert over_seeds(merged, lambda run: None if run is b else 1.0) is None
    assert each_seed([merged, other]) == [a, b, other]
