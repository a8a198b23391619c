"""The shoot-out (issue 9): its table (mora.tables.shootout) from synthetic runs, and its grid
(conf/grids/shootout.yaml: every run composes, names are unique, every budget-matched run reaches its budget).
No training happens (runs are written as the trainer writes them, tests/fake_runs.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_runs import curve, fake_run

from mora.results import load_results
from mora.tables import TABLES, shootout
from mora.tables.common import HELD, method_label, summarize

LORA8, LORA64 = 39_040, 312_320  # LoRA's trainable counts at r=8 and r=64 on the pocket model


def run(root, method, r, lr, acc, *, trainable, peft=None, budget_r=None, compression=None, rank_summary=None,
        tokens_per_s=(1000.0, 1000.0, 100.0), peak_mb=700.0, final_loss=0.05):
    """A fake run (fake_runs.fake_run) made to look like the shoot-out's: its method config, trainable count,
    size knob, throughput curve (one slow interval: an evaluation) and peak memory."""
    fake_run(root, method, r, lr, acc, compression=compression, final_loss=final_loss)
    old = root / f"uuid-{method}{'_' + compression if compression else ''}-r{r}-lr{lr:g}"
    name = old.name if peft is None else f"uuid-peft_{peft['type'].lower()}-r{r}-lr{lr:g}"
    path = old.rename(old.with_name(name)) / "result.json"
    result = json.loads(path.read_text())
    result["name"] = name
    result["config"]["method"].update(budget_r=budget_r, **({"peft_type": peft["type"]} if peft else {}))
    result["params"] = {"trainable": trainable, "total": 460_800 + trainable,
                        **({"peft": peft} if peft else {}), **({"rank_summary": rank_summary} if rank_summary else {})}
    result["timing"].update(tokens_seen=1_200_000, peak_mem_mb=peak_mb)  # 1,200 tokens per step × 1,000 steps
    result["curves"]["tokens_per_s"] = [[100 * (i + 1), rate] for i, rate in enumerate(tokens_per_s)]
    path.write_text(json.dumps(result))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs" / "shootout"
    root.mkdir(parents=True)
    run(root, "lora", 8, 1e-3, curve(0.1, 0.2, 0.3, 0.4, 0.5), trainable=LORA8, final_loss=0.5)
    run(root, "lora", 8, 3e-3, curve(0.2, 0.4, 0.6, 0.8, 0.9), trainable=LORA8)
    run(root, "mora", 8, 1e-2, curve(0.5, 1, 1, 1, 1), trainable=37_088, compression="rope",
        rank_summary={"128x128": 44, "128x344": 60}, peak_mb=720.0)
    run(root, "peft", 8, 3e-3, curve(0.3, 0.6, 0.9, 1, 1), trainable=39_840, budget_r=8, peft={"type": "MISS", "r": 15})
    run(root, "peft", 8, 3e-1, curve(0.1, 0.2, 0.3, 0.3, 0.3), trainable=49_408, peft={"type": "C3A", "block_size": 8},
        tokens_per_s=(500.0, 500.0, 50.0))
    run(root, "lora", 64, 3e-3, curve(0.8, 1, 1, 1, 1), trainable=LORA64)
    run(root, "mora", 64, 3e-3, curve(1, 1, 1, 1, 1), trainable=312_728, compression="sharing",
        rank_summary={"128x128": 128, "128x344": 174})
    run(root, "peft", 64, 3e-1, curve(0.4, 1, 1, 1, 1), trainable=197_632, peft={"type": "C3A", "block_size": 2})
    run(root, "fft", 8, 1e-3, curve(1, 1, 1, 1, 1), trainable=421_760)
    return root


def row(markdown, section, prefix):
    """The cells of the first row starting with ``prefix`` in the section whose heading starts ``section``."""
    text = markdown.split(section, 1)[1].split("\n## ", 1)[0]
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_budget_ranks_its_methods_against_loras_count(runs, tmp_path):
    rendered = shootout.render(load_results(runs), tmp_path / "out", "shootout")
    md = rendered.markdown.read_text()
    small, large = "## Budget r=8: LoRA r=8's 39,040", "## Budget r=64: LoRA r=64's 312,320"
    rows = md.split(small)[1].split("## ")[0]
    order = [line.split("|")[1].strip() for line in rows.splitlines() if line.startswith("| ") and "method" not in line]
    assert order == ["MoRA rope", "MiSS", "LoRA", "C3A", "FFT"]  # by final char acc, then steps to 100%; FFT last
    assert row(md, small, "| MiSS |") == ["MiSS", "r=15", "3e-3", "39,840", "+2.0%", "100.0", "100.0", "900", "—", "1200", "700"]
    assert row(md, small, "| MoRA rope |")[1:5] == ["r̂=44–60", "1e-2", "37,088", "-5.0%"]
    assert row(md, small, "| LoRA |")[2] == "3e-3"  # the better of its two LRs
    assert row(md, small, "| C3A |")[1:5] == ["block_size=8", "3e-1", "49,408", "+26.6%"]  # sized by hand: nearest budget
    assert row(md, small, "| C3A |")[9] == "2400"  # 1,200 tokens per step at the median 500 tok/s
    assert row(md, large, "| C3A |")[1:5] == ["block_size=2", "3e-1", "197,632", "-36.7%"]
    assert row(md, large, "| FFT |")[4] == "—"
    assert "Off budget by more than ±5%" in md and "C3A at r=8 (block_size=8: +26.6%)" in md
    assert "MoRA rope at r=8" not in md  # exactly −5.0%: within
    assert "Budget r=8, best first: MoRA rope 100.0%, MiSS 100.0%, LoRA 90.0%, C3A 30.0%." in md
    assert rendered.plots == (tmp_path / "out" / "shootout_accuracy.png",) and rendered.plots[0].stat().st_size > 0
    assert [v.verdict for v in rendered.verdicts] == [HELD, HELD]  # claim 1a at r=8; 1b at r=64 (MoRA 300, LoRA 500)


def test_every_lr_is_listed_with_the_chosen_one(runs, tmp_path):
    md = shootout.render(load_results(runs), tmp_path, "shootout").markdown.read_text()
    sweep = "## Every learning rate tried"
    assert row(md, sweep, "| LoRA | 8 | r=8 | 1e-3 |")[-1] == "" and row(md, sweep, "| LoRA | 8 | r=8 | 3e-3 |")[-1] == "✓"
    assert "Only one learning rate was tried for" in md


def with_seed(root, name, seed, acc):
    """A copy of run ``name`` as seed ``seed`` (``<name>-s<seed>``) whose char accuracy curve is ``acc``."""
    result = json.loads((root / name / "result.json").read_text())
    result["name"] = f"{name}-s{seed}"
    result["config"]["train"]["seed"] = seed
    result["curves"]["eval"] = [[step, {"char_acc": a, "exact_match": a ** 8}] for step, a in acc.items()]
    result["metrics"].update(char_acc=acc[max(acc)], exact_match=acc[max(acc)] ** 8)
    (root / result["name"]).mkdir()
    (root / result["name"] / "result.json").write_text(json.dumps(result))


def test_sweep_seed_rows_are_means_over_seeds_with_their_range(tmp_path):
    """``sweep=seed``: the runs of a row differ only in their seed; the row is their mean, its accuracy cells
    carry the lowest and highest seed, steps to 100% waits for every seed, and every seed is listed."""
    root = tmp_path / "runs"
    root.mkdir()
    run(root, "lora", 8, 3e-3, curve(0.2, 0.4, 0.6, 0.8, 0.9), trainable=LORA8)
    run(root, "mora", 8, 1e-2, curve(0.5, 1, 1, 1, 1), trainable=37_088, compression="rope")
    run(root, "lora", 64, 3e-3, curve(0.8, 1, 1, 1, 1), trainable=LORA64)
    run(root, "mora", 64, 3e-3, curve(1, 1, 1, 1, 1), trainable=312_728, compression="sharing")
    for name in [p.name for p in root.iterdir()]:
        with_seed(root, name, 42, curve(0.2, 0.4, 0.6, 0.8, 0.9) if "lora-r8" in name else curve(0.5, 1, 1, 1, 1))
        with_seed(root, name, 43, curve(0.2, 0.4, 0.6, 0.7, 0.7) if "lora-r8" in name else curve(0.5, 0.9, 1, 1, 1))
        shutil.rmtree(root / name)
    rendered = shootout.render(load_results(root), tmp_path / "out", "shootout-sweep-seed")
    md = rendered.markdown.read_text()
    small = "## Budget r=8"
    assert row(md, small, "| LoRA |")[5] == "80.0 (70.0–90.0)"
    assert row(md, small, "| MoRA rope |")[5:8] == ["100.0 (100.0–100.0)", "100.0 (100.0–100.0)", "700"]  # seed 43: 700
    assert row(md, "## Every seed", "| LoRA | 8 | r=8 | 3e-3 | 43 |")[4:9] == ["43", "70.0", "5.8", "—",
                                                                          "`uuid-lora-r8-lr0.003-s43`"]
    assert "Each row averages seeds 42, 43 at the learning rate the LR sweep chose ([shootout.md](shootout.md))" in md
    assert "the grid's, chosen by the committed sweep [shootout.md](shootout.md)" in md
    assert rendered.verdicts[0].verdict == HELD  # claim 1a, judged on the means: MoRA rope 100% vs LoRA 80%


def test_budget_of_each_run(runs):
    by_name = {r.name: r for r in shootout.with_budgets([summarize(x) for x in load_results(runs)])[0]}
    assert by_name["uuid-peft_miss-r8-lr0.003"].r == 8  # method.budget_r
    assert by_name["uuid-peft_c3a-r64-lr0.3"].r == 64  # 197,632 is nearer 312,320 than 39,040 (in ratio)
    assert by_name["uuid-fft-r8-lr0.001"].r is None


def test_runs_without_lora_cannot_be_budgeted(tmp_path):
    run(tmp_path, "peft", 8, 3e-3, curve(1, 1, 1, 1, 1), trainable=39_840, budget_r=8, peft={"type": "MISS", "r": 15})
    with pytest.raises(ValueError, match="no LoRA run among the results"):
        shootout.render(load_results(tmp_path), tmp_path / "out", "shootout")


def test_registered_and_peft_types_named_as_their_papers():
    assert TABLES["shootout"] is shootout
    assert method_label({"method": {"name": "peft", "peft_type": "GRALORA"}}) == "GraLoRA"


# ------------------------------------------------------------------------------------------ the grid
@pytest.fixture(scope="module")
def grid():
    """``(validated config, overrides)`` of every run ``make reproduce-shootout`` trains."""
    from mora.config import validate
    from mora.reproduce import compose_run, grid_overrides

    return [(validate(compose_run(o)), o) for o in grid_overrides("shootout", "pocket", "lr")]


@pytest.mark.slow
def test_the_grid_runs_every_method_at_both_budgets_over_three_lrs_and_one_beyond_an_end_that_won(grid):
    from omegaconf import OmegaConf

    from mora.run import run_name

    names = [run_name(cfg, o) for cfg, o in grid]
    assert len(names) == len(set(names)) == 77 + 47
    uuid = [(cfg, o) for cfg, o in grid if cfg.experiment == "shootout"]
    cpt = [(cfg, o) for cfg, o in grid if cfg.experiment == "table2_cpt"]
    # 3 LRs per row, and a fourth one ×3 step beyond an end that won: 11 of the 22 UUID rows, 11 of the 12 cpt rows
    assert len(uuid) == 66 + 11 and len(cpt) == 36 + 11  # the second family: 12 methods at the small budget
    for runs in (uuid, cpt):
        labels = {method_label({"method": OmegaConf.to_container(cfg.method)}) for cfg, _ in runs}
        assert labels == {"LoRA", "DoRA", "MoRA rope", "MoRA sharing", "MiSS", "GraLoRA", "HiRA", "RandLoRA", "C3A",
                          "SHiRA", "VeRA", "FFT"}
    assert all(cfg.train.max_steps == 500 and cfg.task.name == "uuid" for cfg, _ in uuid)
    assert all(cfg.task.name == "cpt" and cfg.task.domain == "finance" for cfg, _ in cpt)
    # LoRA, DoRA, MoRA rope and FFT on finance are Table 2's own runs: the same overrides, trained once
    from mora.reproduce import grid_overrides

    table2 = grid_overrides("table2", "pocket", "lr")
    assert sum(o in table2 for _, o in cpt) == 16


@pytest.mark.slow
def test_every_budget_matched_run_of_the_grid_reaches_its_budget(grid):
    """The preflight of every distinct ``budget_r`` run (what mora-run checks before training)."""
    from mora.preflight import check_method

    # on the UUID model (the pocket base of the second family is built by `make pocket-base`, which tests do not run)
    budgeted = {(cfg.method.peft_type, cfg.method.budget_r): cfg for cfg, _ in grid
                if cfg.method.budget_r and cfg.experiment == "shootout"}
    assert len(budgeted) == 8  # MiSS, GraLoRA, HiRA, SHiRA at r=8 and r=64
    for cfg in budgeted.values():
        check_method(cfg)  # raises ConfigError when the budget cannot be reached


def test_the_shootout_table_is_its_lr_sweep(capsys):
    """``sweep: lr`` in the grid: ``python -m mora.reproduce shootout`` runs every LR (its runs are the table's own,
    results/runs/shootout/), while Table 1's default run stays one LR per method."""
    from mora.reproduce import main

    main(["shootout", "--dry-run"])
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 124 and sum(c.startswith("mora-run experiment=shootout") for c in commands) == 77
    assert sum("method=lora " in c and "method.r=8 " in c and "experiment=shootout" in c for c in commands) == 3


def test_sweep_seed_reruns_each_uuid_row_at_its_lr_once_per_seed(grid):
    """``sweep=seed``: the 22 UUID rows (those with a seed_grid) at their ``lr`` with seeds 42, 43 and 44; seed 42
    is the LR sweep's own run (same overrides but the seed, which is the config's default: the same name)."""
    from mora.reproduce import compose_run, grid_overrides
    from mora.run import run_name

    points = grid_overrides("shootout", "pocket", "seed")
    assert len(points) == 22 * 3 and all(p[0] == "experiment=shootout" for p in points)
    assert [p[-1] for p in points[:3]] == ["train.seed=42", "train.seed=43", "train.seed=44"]
    names = [run_name(compose_run(p), p) for p in points[:3]]
    assert names == ["uuid-lora-r8-lr3e-3-s42", "uuid-lora-r8-lr3e-3-s43", "uuid-lora-r8-lr3e-3-s44"]
    assert names[0] in {run_name(cfg, o) for cfg, o in grid}


def test_an_unknown_grid_is_one_error_line(capsys):
    from mora.reproduce import main

    with pytest.raises(SystemExit) as exit_info:
        main(["tabel2"])
    assert exit_info.value.code == 2
    assert "no grid 'tabel2': choose one of shootout, table1, table2, table3, table4" in capsys.readouterr().err


# ------------------------------------------------------------------------------- continual pretraining
def cpt_run(root, method, r, lr, ppl, *, trainable, general=80.0, **kwargs):
    """A fake continual-pretraining run (finance) of the shoot-out: ``run`` rewritten to task=cpt."""
    scratch = root.parent / "scratch"  # written apart: its UUID name may be taken in root
    scratch.mkdir(exist_ok=True)
    run(scratch, method, r, lr, curve(0, 0, 0, 0, 0), trainable=trainable, **kwargs)
    path = next(scratch.iterdir())
    new = path.rename(root / ("cpt-" + path.name.removeprefix("uuid-") + "-domain=finance"))
    result = json.loads((new / "result.json").read_text())
    result["name"], result["config"]["task"] = new.name, {"name": "cpt", "domain": "finance", "seq_len": 256}
    result["metrics"] = {"perplexity": ppl, "general_perplexity": general, "final_loss": 3.0}
    (new / "result.json").write_text(json.dumps(result))


def test_continual_pretraining_is_a_second_column_family(runs, tmp_path):
    cpt_run(runs, "lora", 8, 1e-3, 70.0, trainable=78_080)
    cpt_run(runs, "lora", 8, 3e-3, 60.0, trainable=78_080, general=95.0)
    cpt_run(runs, "mora", 8, 3e-3, 55.0, trainable=77_000, compression="rope", rank_summary={"128x128": 62})
    cpt_run(runs, "peft", 8, 3e-3, 65.0, trainable=79_680, budget_r=8, peft={"type": "MISS", "r": 15})
    cpt_run(runs, "fft", 8, 1e-3, 40.0, trainable=1_315_968, general=150.0)
    md = shootout.render(load_results(runs), tmp_path, "shootout").markdown.read_text()
    section = "## Second family: continual pretraining (finance)"
    # LoRA's own count on the cpt model (78,080) defines this family's budget; rows best first by domain perplexity
    assert "### Budget r=8: LoRA r=8's 78,080 trainable parameters" in md
    assert row(md, section, "| MoRA rope |") == ["MoRA rope", "r̂=62", "3e-3", "77,000", "-1.4%", "55", "80", "—", "1200", "700"]
    assert row(md, section, "| LoRA |")[2:7] == ["3e-3", "78,080", "+0.0%", "60", "95"]  # its better LR
    assert row(md, section, "| FFT |")[5:7] == ["40", "150"]
    order = [line.split("|")[1].strip() for line in md.split(section)[1].split("### Every")[0].splitlines()
             if line.startswith("| ") and not line.startswith("| method")]
    assert order == ["MoRA rope", "LoRA", "MiSS", "FFT"]
    assert "Continual pretraining (finance), budget r=8, best first by domain perplexity: MoRA rope 55, LoRA 60, MiSS 65." in md
    assert "| LoRA | 8 | r=8 | 1e-3 | 70 | 80 |" in md  # every LR tried
    # the UUID family is untouched: its budgets are still LoRA's counts on the UUID model
    assert f"## Budget r=8: LoRA r=8's {LORA8:,} trainable parameters" in md


def test_rank_against_score_is_spearmans_rho_with_the_counter_examples():
    """ρ over the methods of a budget, ties sharing their mean rank; the lowest-rank update that memorised and
    the highest-rank one that did not; nothing when there is no spread to correlate."""
    from dataclasses import replace

    from mora.tables.shootout import _ranks, rank_against_score

    assert _ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    template = summarize(json.loads(json.dumps({
        "name": "x", "config": {"method": {"name": "lora", "r": 8}, "optim": {"lr": 1e-3}, "train": {"max_steps": 10},
                                "task": {"name": "uuid"}},
        "curves": {}, "metrics": {}})))

    def method(label, rank, acc):
        return replace(template, label=label, final={"char_acc": acc},
                       result={**template.result, "analysis": {"overall": {"effective_rank": rank}}})

    rows = [method("A", 10.0, 1.0), method("B", 90.0, 0.4), method("C", 60.0, 1.0), method("D", 5.0, 0.3)]
    line, = rank_against_score(rows, "Budget r=8", "final char accuracy", lambda run: run.final["char_acc"],
                               memorised=lambda run: run.final["char_acc"] >= 1)
    # ranks by ΔW rank: A 2, B 4, C 3, D 1; by accuracy: A 3.5, B 2, C 3.5, D 1 → ρ = 0.316
    assert line == ("Budget r=8: ΔW effective rank against final char accuracy, Spearman ρ = +0.32 over 4 methods; "
                    "the lowest-rank update that memorised every UUID: A (10.0), the highest-rank one that did not: "
                    "B (90.0).")
    assert rank_against_score(rows[:2], "b", "s", lambda run: run.final["char_acc"]) == []  # too few to correlate
    same = [method(m.label, delta, 1.0) for m, delta in zip(rows, (1, 2, 3, 4))]
    assert rank_against_score(same, "b", "s", lambda run: run.final["char_acc"]) == []  # every score equal
