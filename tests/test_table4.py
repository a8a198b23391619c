"""Table 4 (mora.tables.table4), the compression ablation: rows, the paper's figures beside ours, claim 5's
verdicts, the rank-sweep notes, plots, and the grid behind it.  Runs are synthetic (tests/fake_runs.py) with
a made-up ΔW analysis, so no training happens."""

from __future__ import annotations

import json

import pytest
from fake_runs import curve, fake_run, sft_run

from mora import analyze
from mora.reproduce import grid_overrides
from mora.results import load_results
from mora.tables import TABLES, render, table4
from mora.tables.common import HELD, NOT_HELD, NOT_TESTED


def variant_run(root, compression, r, acc, effective_rank=10.0, lr=1e-2):
    """A fake MoRA run of ``compression`` at rank ``r`` with an analysis summary in its result.json."""
    fake_run(root, "mora", r, lr, acc, compression=compression)
    overall = {"shape": [128, 128], "layers": 14, "max_rank": 128, "numerical_rank": 4 * effective_rank,
               "relative_rank": 2 * effective_rank, "effective_rank": effective_rank}
    analyze.record(root / f"uuid-mora_{compression}-r{r}-lr{lr:g}", {"by_type": {"q_proj": overall}, "overall": overall})


def ablation(root, small: dict, large: dict, small_r=8, large_r=64):
    """Fake runs of the four variants at two ranks; ``small``/``large`` map compression → char acc curve."""
    for r, curves in ((small_r, small), (large_r, large)):
        for compression, acc in curves.items():
            variant_run(root, compression, r, acc, effective_rank=r / 2 if compression != "truncation" else r / 8)
    return root


PAPER_LIKE = dict(
    small={"truncation": curve(0.3, 0.4, 0.5, 0.55, 0.595), "sharing": curve(0.3, 0.5, 0.6, 0.62, 0.625),
           "decouple": curve(0.3, 0.5, 0.6, 0.63, 0.636), "rope": curve(0.4, 0.6, 0.8, 1, 1)},
    large={"truncation": curve(0.5, 0.6, 0.66, 0.666, 0.666), "sharing": curve(0.6, 1, 1, 1, 1),
           "decouple": curve(0.6, 0.9, 1, 1, 1), "rope": curve(0.6, 1, 1, 1, 1)},
)


def render_table(runs, out_dir, stem="table4"):
    rendered = table4.render(load_results(runs), out_dir, stem)
    return rendered.markdown.read_text(), rendered


def row(markdown, prefix):
    line = next(line for line in markdown.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_rows_put_the_papers_gsm8k_beside_our_uuid_numbers(tmp_path):
    md, rendered = render_table(ablation(tmp_path / "runs", **PAPER_LIKE), tmp_path / "out")
    assert "table4" in TABLES
    assert row(md, "| truncation | 8 |") == ["truncation", "8", "—", "1e-2", "800", "59.5", "1.6", "—", "1.0", "4.0 (128)",
                                            "59.5 (r=8)"]
    # pocket r=64 stands for the paper's large rank, r=256
    assert row(md, "| rotation (rope) | 64 |")[-1] == "67.9 (r=256)"
    assert "## Math" not in md  # no math runs: no math table
    assert row(md, "| rotation (rope) | 8 |")[5:9] == ["100.0", "100.0", "900", "4.0"]
    assert row(md, "| decouple | 64 |")[7] == "700"
    # rows in the paper's order: by rank, then truncation, sharing, decouple, rotation
    order = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "| 8 |" in line]
    assert order[:4] == ["truncation", "sharing", "decouple", "rotation (rope)"]
    assert "| rotation | 256 | 67.9 |" in md  # the paper's own table, as printed
    assert [p.name for p in rendered.plots][:2] == ["table4_curves.png", "table4_rank.png"]
    assert all(p.stat().st_size > 10_000 for p in rendered.plots)


def test_claim5_held_on_paper_like_runs(tmp_path):
    md, rendered = render_table(ablation(tmp_path / "runs", **PAPER_LIKE), tmp_path / "out")
    assert [(v.claim.split(" (")[0], v.verdict) for v in rendered.verdicts] == [("Claim 5a", HELD), ("Claim 5b", HELD)]
    assert rendered.verdicts[0].evidence == ("r=8: rope 100.0% (100% at step 900) vs truncation 59.5%, sharing 62.5%, "
                                             "decouple 63.6%")
    assert rendered.verdicts[1].evidence == ("r=64: sharing 100.0% (100% at step 500), decouple 100.0% (100% at step "
                                             "700), rope 100.0% (100% at step 500); spread 0.0 points")
    assert rendered.verdicts[0].markdown() in md and "within 1.0 percentage points" in md


def test_claim5_did_not_hold(tmp_path):
    small = {**PAPER_LIKE["small"], "sharing": curve(0.5, 0.9, 1, 1, 1)}  # sharing beats rope at the small rank
    large = {**PAPER_LIKE["large"], "decouple": curve(0.5, 0.8, 0.9, 0.95, 0.95)}  # 5 points apart at the large
    _, rendered = render_table(ablation(tmp_path / "runs", small, large), tmp_path / "out")
    assert [v.verdict for v in rendered.verdicts] == [NOT_HELD, NOT_HELD]
    assert rendered.verdicts[1].evidence.endswith("spread 5.0 points")


def test_a_tie_at_100_percent_is_decided_by_speed():
    def runs(rope_step):
        out = {}
        for compression, step in (("rope", rope_step), ("sharing", 500), ("decouple", 700)):
            acc = {s: 1.0 if s >= step else 0.5 for s in (300, 500, 700, 900, 1000)}
            out[compression] = table4.summarize({
                "name": compression, "config": {"method": {"name": "mora", "r": 8, "compression": compression},
                                                "optim": {"lr": 1e-2}, "train": {"max_steps": 1000}},
                "curves": {"eval": [[s, {"char_acc": a}] for s, a in acc.items()]}, "metrics": {"char_acc": 1.0}})
        return out

    assert table4.rotation_helps(runs(300))
    assert not table4.rotation_helps(runs(500))  # as fast as sharing: no help
    assert table4.spread(runs(300)) == 0.0


def test_claim5b_untested_with_one_rank(tmp_path):
    ablation(tmp_path / "runs", PAPER_LIKE["small"], {})
    _, rendered = render_table(tmp_path / "runs", tmp_path / "out")
    assert [v.verdict for v in rendered.verdicts] == [HELD, NOT_TESTED]


def test_rank_sweep_says_where_rotation_stops_helping(tmp_path):
    runs = tmp_path / "runs"
    for r, (rope, others) in {1: (0.5, 0.3), 2: (0.8, 0.6), 4: (1.0, 0.9), 8: (1.0, 1.0), 16: (1.0, 1.0)}.items():
        for compression, final in (("rope", rope), ("decouple", others), ("sharing", others)):
            variant_run(runs, compression, r, curve(final / 2, final, final, final, final), effective_rank=3 * r)
    md, rendered = render_table(runs, tmp_path / "out", stem="table4-sweep-rank")
    assert "# Table 4 — Compression ablation (table4-sweep-rank)" in md
    assert "r=1 helps; r=2 helps; r=4 helps; r=8 does not; r=16 does not." in md
    assert "From which rank on does rotation stop helping? **r=8** (it still helps at r=4)." in md
    assert "All three reach 100% final char accuracy from **r=8** on." in md
    # a variant's table draws no spectrum, and its GSM8K figure appears only at the paper's own rank
    assert [p.name for p in rendered.plots] == ["table4-sweep-rank_curves.png", "table4-sweep-rank_rank.png"]
    assert row(md, "| rotation (rope) | 8 |")[-1] == "64.2 (r=8)" and row(md, "| rotation (rope) | 16 |")[-1] == "—"


def test_main_table_draws_the_committed_delta_spectrum(tmp_path):
    spectra = {"layer": "model.layers.0.self_attn.q_proj", "rules": analyze.RULES, "runs": [
        {"run": f"run{i}", "label": label, "method": method, "r": r, "shape": [16, 16], "numerical_rank": rank,
         "relative_rank": rank, "effective_rank": rank / 2, "singular_values": [1.0 / (j + 1) if j < rank else 0.0 for j in range(16)]}
        for i, (label, method, r, rank) in enumerate([("LoRA", "lora", 8, 8), ("MoRA rope", "mora_rope", 8, 16), ("FFT", "fft", None, 16)])]}
    path = tmp_path / "out" / table4.SPECTRA  # results/runs/delta_spectrum.json, beside the runs
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(spectra))
    runs = ablation(tmp_path / "runs" / "table4", **PAPER_LIKE)
    report = render("table4", runs, tmp_path / "out")
    assert report.stem == "table4"
    assert [p.name for p in report.rendered.plots] == ["table4_curves.png", "table4_rank.png", "delta_spectrum.png"]
    assert "![delta_spectrum](delta_spectrum.png)" in report.rendered.markdown.read_text()


def test_only_mora_compression_runs_belong_in_the_ablation(tmp_path):
    fake_run(tmp_path / "runs", "lora", 8, 1e-3, curve(0.1, 0.2, 0.3, 0.4, 0.5))
    with pytest.raises(ValueError, match="not MoRA compression variants"):
        table4.render(load_results(tmp_path / "runs"), tmp_path, "table4")


def test_grid_and_rank_sweep():
    main = [p for p in grid_overrides("table4", "pocket", None) if "experiment=table4" in p]  # UUID (math: below)
    assert len(main) == 8
    assert {(p[-3].split("=")[1], p[-2], p[-1]) for p in main} == {
        (c, f"method.r={r}", f"optim.lr={lr}") for c in table4.VARIANTS for r, lr in ((8, 0.01), (64, 0.003))}
    sweep = grid_overrides("table4", "pocket", "rank")
    assert {(p[-3].split("=")[1], int(p[-2].split("=")[1])) for p in sweep} == {
        (c, r) for c in ("sharing", "decouple", "rope") for r in (1, 2, 4, 8, 16, 32)}
    assert len(sweep) == 18 and {p[-1] for p in sweep} == {"optim.lr=0.01"}
    # the sweep's r=8 runs are the main grid's: the same overrides, so the same run directories
    assert sum(point in main for point in sweep) == 3


# ------------------------------------------------------------------------------------------ the math half
def math_ablation(root, small: dict, large: dict, gsm8k: float = 0.0):
    """Fake math runs (Table 2's task) of the variants at r=8 and r=64; ``small``/``large``: compression → perplexity."""
    for r, ppls in ((8, small), (64, large)):
        for compression, ppl in ppls.items():
            sft_run(root, "math", "mora", r, 3e-3, ppl, compression=compression, gsm8k_answer_is=gsm8k)
            sft_run(root, "math", "mora", r, 1e-2, ppl + 1, compression=compression, gsm8k_answer_is=gsm8k)  # a worse LR
    return root


def test_math_runs_get_their_own_table_and_claim5_verdicts(tmp_path):
    runs = ablation(tmp_path / "runs", **PAPER_LIKE)
    math_ablation(runs, small={"truncation": 60.0, "sharing": 59.0, "decouple": 58.5, "rope": 58.0},
                  large={"truncation": 57.0, "sharing": 55.2, "decouple": 55.0, "rope": 55.1})
    md, rendered = render_table(runs, tmp_path / "out")
    # every variant and rank at its best LR by response perplexity (3e-3), GSM8K over its 40 problems
    assert row(md, "| rotation (rope) | 8 | — | 3e-3 |") == ["rotation (rope)", "8", "—", "3e-3", "0.0 (40)", "64.2 (r=8)", "58", "—"]
    assert row(md, "| truncation | 64 | — | 3e-3 |")[4:7] == ["0.0 (40)", "66.6 (r=256)", "57"]
    math_verdicts = {v.claim: v for v in rendered.verdicts if "[math]" in v.claim}
    a, b = (next(v for c, v in math_verdicts.items() if c.startswith(f"Claim 5{x} ")) for x in "ab")
    assert a.verdict == HELD and "by response perplexity" in a.evidence and "rope 58" in a.evidence
    assert b.verdict == HELD and "spread 0.4%" in b.evidence  # 55.2 / 55.0 − 1, within 1%
    assert len(rendered.verdicts) == 4  # UUID 5a, 5b and math 5a, 5b


def test_math_claims_by_gsm8k_once_it_is_off_the_floor(tmp_path):
    runs = math_ablation(tmp_path / "runs", small={"sharing": 3.0, "decouple": 3.0, "rope": 3.0},
                         large={"sharing": 3.0, "decouple": 3.0, "rope": 3.0}, gsm8k=0.5)
    verdicts = table4.render(load_results(runs), tmp_path / "out", "table4").verdicts
    a, b = verdicts
    assert "by GSM8K" in a.evidence and a.verdict == NOT_HELD  # a tie is not rotation helping
    assert b.verdict == HELD and "spread 0.0 points" in b.evidence


def test_the_grid_runs_the_math_half_through_table2s_math_task():
    """The math rows are Table 2's ``experiment=table2_math`` runs: the two it shares with Table 2 (rope r=8,
    sharing r=64) have the same overrides, so the same run directories, trained once."""
    math = [p for p in grid_overrides("table4", "pocket", None) if "experiment=table2_math" in p]
    assert {(p[-3].split("=")[1], int(p[-2].split("=")[1])) for p in math} == {
        (c, r) for c in table4.VARIANTS for r in (8, 64)}
    table2 = grid_overrides("table2", "pocket", None)
    assert sum(point in table2 for point in math) == 2
