"""Table 1 — UUID memorisation: how fast each method memorises random UUID pairs (claim 1 of the paper).

Runs: ``results/runs/table1/`` (``make reproduce-table1``; grid ``conf/grids/table1.yaml``).  Writes
``<stem>.md`` — the best learning rate of each method and rank, every learning rate tried, the paper's
figures (:data:`mora.tables.paper.TABLE1_UUID`) and notes computed from the runs — and
``<stem>_curves.png`` (training loss and eval char accuracy).  Claim 1 is judged in two halves
(:func:`claims`).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import paper
from .common import (
    DASH, HELD, NOT_HELD, NOT_TESTED, Rendered, Run, Verdict, best_per_group, code_note, committed_sweep, delta_rank, draw_loss,
    fmt_lr, lr_search_notes, markdown_table, num, pct, pyplot, rendered_by, save_figure, scale_note, summarize,
)

NAME = "table1"
TITLE = "Table 1 — UUID memorisation"

#: the points of training the paper reports (steps 300/500/700/900 of 1,000)
FRACTIONS = (0.3, 0.5, 0.7, 0.9)
#: how far (as a fraction of training) an evaluation may lie from a reported point and still stand for it
TOLERANCE = 0.05


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md`` and ``out_dir/<stem>_curves.png``.  ``about``: the grid's own words
    on how its scale was chosen, quoted under the notes."""
    if not results:
        raise ValueError(f"{NAME}: no results to render")
    out_md, out_png = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}_curves.png"
    groups = best_per_group([summarize(r) for r in results], "char_acc")
    best = [b for b, _ in groups]
    verdicts = claims(best)
    headers, rows = _main_rows(best)
    sweep = [
        [run.label, run.r or DASH, fmt_lr(run.lr), pct(run.final.get("char_acc")), pct(run.final.get("exact_match")),
         num(run.final.get("final_loss")), run.first_step_reaching("char_acc", 1.0) or DASH, f"`{run.name}`",
         "✓" if run is chosen else ""]
        for chosen, members in groups for run in members
    ]
    image = os.path.relpath(out_png, out_md.parent)
    text = "\n\n".join([
        f"# {TITLE}",
        rendered_by(NAME, results),
        "## This suite: best learning rate per method and rank",
        markdown_table(headers, rows),
        "Character and exact-match accuracy in %. The learning rate of each row is the best of its sweep by final "
        "char accuracy (ties: lower final loss). *Steps to 100%* is the first evaluation at 100% char accuracy, so "
        "its resolution is the evaluation interval. *ΔW effective rank*: the mean over the adapted layers of the "
        "effective rank of the learned update (`mora-analyze`; exp of the entropy of σ/Σσ) — how many directions "
        "the update spreads over (LoRA's is at most r).",
        f"![training loss and char accuracy]({image})",
        "## Every learning rate tried (was any row under-tuned?)",
        markdown_table(["method", "r", "lr", "final char acc", "final exact match", "final loss", "steps to 100%",
                        "run", "chosen"], sweep),
        f"## The paper ({paper.TABLE1_UUID.cited()})",
        f"{paper.TABLE1_UUID.unit}.",
        paper.TABLE1_UUID.markdown(),
        "## Notes",
        "\n".join(f"- {line}" for line in notes(groups, verdicts, committed_sweep(out_dir, NAME, stem))),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    _plot(best, out_png)
    return Rendered(markdown=out_md, plots=(out_png,), verdicts=tuple(verdicts))


def _main_rows(best: list[Run]) -> tuple[list[str], list[list]]:
    """Headers and rows of the main table.  The accuracy columns are named by step when every row
    trained for the same number of steps, by fraction of training otherwise."""
    same_length = len({run.max_steps for run in best}) == 1
    headers = ["method", "r", "lr", "trainable params"]
    headers += [f"char acc @{round(f * best[0].max_steps)}" if same_length else f"char acc @{f:.0%}" for f in FRACTIONS]
    headers += ["final char acc", "final exact match", "final loss", "steps to 100%", "ΔW effective rank"]
    rows = []
    for run in best:
        cells = []
        for fraction in FRACTIONS:
            target = round(fraction * run.max_steps)
            point = run.nearest_eval(target, "char_acc", TOLERANCE * run.max_steps)
            cells.append(DASH if point is None else pct(point[1]) + ("" if point[0] == target else f" (step {point[0]})"))
        rows.append([
            run.label, run.r or DASH, fmt_lr(run.lr), DASH if run.trainable is None else f"{run.trainable:,}", *cells,
            pct(run.final.get("char_acc")), pct(run.final.get("exact_match")), num(run.final.get("final_loss")),
            run.first_step_reaching("char_acc", 1.0) or DASH,
            DASH if delta_rank(run) is None else f"{delta_rank(run):.1f}",
        ])
    return headers, rows


def notes(groups: list[tuple[Run, list[Run]]], verdicts: list[Verdict], sweep: str | None = None) -> list[str]:
    """The notes under the table, every sentence computed from the runs: their scale, whether each of the
    paper's claims held, how well each row's learning rate was searched, and where the runs came from."""
    best = [b for b, _ in groups]
    everything = [run for _, members in groups for run in members]
    return [
        scale_note(everything, paper.TABLE1_UUID.setup),
        *(verdict.markdown() for verdict in verdicts),
        *_fft_note(best),
        *lr_search_notes(groups, sweep),
        *_unanalysed_note(best),
        code_note(everything),
    ]


def _unanalysed_note(best: list[Run]) -> list[str]:
    """Which rows have no ΔW analysis (runs trained before the trainer analysed every run)."""
    missing = [run.method() for run in best if delta_rank(run) is None]
    if not missing:
        return []
    return [f"No ΔW analysis for {', '.join(missing)} (trained before runs were analysed): rerun the grid, or "
            "`mora-analyze runs/<name>` on the run directories and collect their result.json again."]


def _reached(step: int | None, run: Run) -> str:
    return f"at step {step}" if step is not None else f"never (in {run.max_steps} steps)"


def claims(best: list[Run]) -> list[Verdict]:
    """Claim 1 of the paper, in its two halves, judged on the best-LR rows: at the smallest rank with both
    a LoRA and a MoRA row (1a) and at the largest (1b)."""
    by_rank: dict[int, dict[str, Run]] = {}
    for run in best:
        if run.family in ("lora", "mora") and run.r is not None:
            current = by_rank.setdefault(run.r, {}).get(run.family)
            if current is None or run.final.get("char_acc", -1) > current.final.get("char_acc", -1):
                by_rank[run.r][run.family] = run
    shared = sorted(r for r, fam in by_rank.items() if len(fam) == 2)
    claim_a = "Claim 1a (at small rank MoRA beats LoRA in final char accuracy)"
    claim_b = "Claim 1b (at large rank MoRA reaches 100% char accuracy earlier than LoRA)"
    if not shared:
        missing = "no rank has both a LoRA and a MoRA run"
        return [Verdict(claim_a, NOT_TESTED, missing), Verdict(claim_b, NOT_TESTED, missing)]
    lora, mora = by_rank[shared[0]]["lora"], by_rank[shared[0]]["mora"]
    a, b = mora.final.get("char_acc"), lora.final.get("char_acc")
    verdicts = [Verdict(claim_a, HELD if a is not None and b is not None and a > b else NOT_HELD,
                        f"r={shared[0]}: {mora.label} {pct(a)}% vs LoRA {pct(b)}%")]
    if len(shared) < 2:
        verdicts.append(Verdict(claim_b, NOT_TESTED, f"LoRA and MoRA share only rank {shared[0]}"))
    else:
        lora, mora = by_rank[shared[-1]]["lora"], by_rank[shared[-1]]["mora"]
        m, l = mora.first_step_reaching("char_acc", 1.0), lora.first_step_reaching("char_acc", 1.0)
        verdicts.append(Verdict(claim_b, HELD if m is not None and (l is None or m < l) else NOT_HELD,
                                f"r={shared[-1]}: {mora.label} {_reached(m, mora)}, LoRA {_reached(l, lora)}"))
    return verdicts


def _fft_note(best: list[Run]) -> list[str]:
    """Where full fine-tuning stands (not a claim of the paper for this table, but worth knowing)."""
    fft = [run for run in best if run.family == "fft"]
    others = [run for run in best if run.family != "fft"]
    if not (fft and others):
        return []
    f = fft[0].final.get("char_acc", -1)
    o = max(run.final.get("char_acc", -1) for run in others)
    tops = ", ".join(run.legend() for run in others if run.final.get("char_acc", -1) == o)
    verdict = "yes" if f > o else "tied" if f == o else "no"
    return [f"Is full fine-tuning the best row? **{verdict}** — FFT {pct(f)}% final char accuracy; "
            f"best other: {tops} {pct(o)}%."]


def _plot(best: list[Run], out_png: Path) -> None:
    """Two panels: training loss (log scale) and eval char accuracy, with the paper's 30/50/70/90% marks."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    draw_loss(loss_ax, best)
    for i, run in enumerate(best):
        points = sorted((step, 100 * m["char_acc"]) for step, m in run.evals.items() if "char_acc" in m)
        if points:
            acc_ax.plot(*zip(*points), color=f"C{i}", marker="o", markersize=3, label=run.legend())
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("eval char accuracy (%)")
    acc_ax.set_ylim(-2, 102)
    acc_ax.grid(axis="y", alpha=0.3)
    total = max(run.max_steps for run in best)
    for ax in (loss_ax, acc_ax):
        for fraction in FRACTIONS:
            ax.axvline(fraction * total, color="0.75", linestyle="--", linewidth=0.8, zorder=0)
    acc_ax.legend(fontsize=8)
    fig.suptitle("UUID memorisation (best learning rate per method and rank)")
    save_figure(fig, out_png)
