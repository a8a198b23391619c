"""Table 4 — the compression ablation: MoRA's four compress/decompress variants at a small and a large rank
(claim 5 of the paper: rotation helps at small rank; at large rank sharing, decouple and rotation are close).

Runs: ``results/runs/table4/`` (``make reproduce-table4``; grid ``conf/grids/table4.yaml``) and its rank sweep
``results/runs/table4-sweep-rank/`` (``python -m mora.reproduce table4 sweep=rank``).  Two tasks, each judged
on its own: **UUID memorisation** (where capacity differences show fastest) and **math** — the paper's own
setting, MetaMathQA → GSM8K through the math task of Table 2 (its runs are Table 2's ``experiment=table2_math``
runs, so the rows both tables share are trained once).  Writes ``<stem>.md`` — per UUID variant and rank its
final char accuracy, when it reached 100%, the effective and numerical rank of its update ΔW
(:mod:`mora.analyze`); per math variant and rank its GSM8K accuracy and held-out response perplexity; the
paper's GSM8K figure beside both (:data:`mora.tables.paper.TABLE4_ABLATION`) —
``<stem>_curves.png`` (char accuracy against step, one panel per rank), ``<stem>_rank.png``
(final accuracy, steps to 100% and effective rank against the rank) and, from the committed spectra
``<out_dir>/runs/delta_spectrum.json`` (``results/runs/``, written by ``mora-analyze --spectrum``),
``delta_spectrum.png`` (one layer's singular values of ΔW, method by method; only with the main table).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import paper
from .common import (
    DASH, HELD, NOT_HELD, NOT_TESTED, Rendered, Run, Verdict, best_per_group, code_note, delta_rank, fmt_lr,
    lr_search_notes, markdown_table, num, pct, pyplot, rendered_by, save_figure, scale_note, summarize,
)

NAME = "table4"
TITLE = "Table 4 — Compression ablation"

#: the variants in the paper's row order; ``rope`` is the paper's "rotation"
VARIANTS = ("truncation", "sharing", "decouple", "rope")
PAPER_NAMES = {"rope": "rotation"}
#: the variants claim 5b calls close at large rank (truncation is not among them)
CLOSE_VARIANTS = ("sharing", "decouple", "rope")
#: "close": final char accuracies within this many percentage points of each other (max − min).  The paper's
#: own spreads: 0.1 points at r=256 (67.9 / 67.8 / 67.9, which it calls close), 1.7 at r=8 (62.5 / 63.6 / 64.2).
CLOSE_POINTS = 1.0
#: on the math task, where GSM8K sits near zero (pocket scale) the held-out response perplexity judges: "close" is
#: within this fraction of the best (max/min − 1); the paper's GSM8K spreads are 0.15% of the score at r=256 (close)
#: and 2.7% at r=8 (where rotation helps)
CLOSE_PERPLEXITY = 0.01
#: GSM8K accuracy judges the math claims only where every compared run scores at least this (else perplexity)
GSM8K_FLOOR = 0.05
GSM8K = "gsm8k_answer_is"
PERPLEXITY = "response_perplexity"
#: one layer's spectra in several runs, under the output directory (``results/runs/``; ``mora-analyze --spectrum``)
SPECTRA = Path("runs") / "delta_spectrum.json"


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md`` and its plots; with the main table (``stem == NAME``) also
    ``out_dir/delta_spectrum.png`` when ``out_dir/``:data:`SPECTRA` exists.  ``about``: the grid's own words."""
    if not results:
        raise ValueError(f"{NAME}: no results to render")
    out_dir = Path(out_dir)
    out_md = out_dir / f"{stem}.md"
    runs = [summarize(r) for r in results]
    if others := sorted({run.label for run in runs if _variant(run) is None}):
        raise ValueError(f"{NAME}: runs of {', '.join(others)} are not MoRA compression variants; "
                         "the ablation compares MoRA runs only")
    if tasks := sorted({_task(run) for run in runs} - {"uuid", "math"}):
        raise ValueError(f"{NAME}: runs of task {', '.join(tasks)}; the ablation runs UUID memorisation and math only")
    groups = best_per_group([run for run in runs if _task(run) == "uuid"], "char_acc")
    math_groups = best_per_group([run for run in runs if _task(run) == "math"], PERPLEXITY, lower_is_better=True)
    best, math_best = (sorted((b for b, _ in g), key=lambda run: (run.r, VARIANTS.index(_variant(run))))
                       for g in (groups, math_groups))
    verdicts = claims(best) if best else []
    verdicts += math_claims(math_best) if math_best else []
    plots = [_plot_curves(best, out_dir / f"{stem}_curves.png"), _plot_rank(best, out_dir / f"{stem}_rank.png")] if best else []
    if stem == NAME and (out_dir / SPECTRA).exists():
        from ..analyze import plot_delta_spectrum

        plots.append(plot_delta_spectrum(out_dir / SPECTRA, out_dir / "delta_spectrum.png"))
    images = [f"![{png.stem}]({os.path.relpath(png, out_md.parent)})" for png in plots]
    uuid_part = [
        "## UUID memorisation beside the paper (GSM8K)",
        markdown_table(*_rows(best)),
        "Char and exact-match accuracy in %, at the end of training; *steps to 100%* is the first evaluation at 100% "
        "char accuracy (resolution: the evaluation interval). *ΔW effective rank* and *numerical rank* are means over "
        "the adapted layers of the learned update (`mora-analyze`: exp of the entropy of σ/Σσ, and the number of σ above "
        "max(d, k)·eps·σ_max); *max* is the largest rank a layer's ΔW can have. The paper's figure is GSM8K accuracy "
        f"after MetaMath fine-tuning ({paper.TABLE4_ABLATION.cited()}); the math task's own GSM8K is in the next table.",
    ] if best else []
    math_part = [
        "## Math (the paper's setting): GSM8K after fine-tuning, beside the paper",
        markdown_table(*_math_rows(math_best)),
        "GSM8K: accuracy in % (the answer after MetaMath's `The answer is:`, greedy, zero-shot in the training prompt) "
        "over the problems scored (n); *response perplexity*: exp of the mean NLL of the response tokens of held-out "
        "problems, which chooses each row's learning rate and — where GSM8K sits near zero — judges the claims.",
    ] if math_best else []
    text = "\n\n".join([
        f"# {TITLE}" + ("" if stem == NAME else f" ({stem})"),
        rendered_by(NAME, results),
        *uuid_part,
        *math_part,
        *images,
        f"## The paper ({paper.TABLE4_ABLATION.cited()})",
        f"{paper.TABLE4_ABLATION.unit}; {paper.TABLE4_ABLATION.setup}.",
        paper.TABLE4_ABLATION.markdown(),
        "## Notes",
        "\n".join(f"- {line}" for line in notes(groups + math_groups, best, verdicts)),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return Rendered(markdown=out_md, plots=tuple(plots), verdicts=tuple(verdicts))


def _variant(run: Run) -> str | None:
    """The run's compression if it is a MoRA run of one of :data:`VARIANTS` (no restarts), else None."""
    method = run.result["config"]["method"]
    if run.family != "mora" or method.get("compression") not in VARIANTS:
        return None
    return method["compression"]


def _task(run: Run) -> str:
    return run.result["config"]["task"]["name"]


def _name(variant: str) -> str:
    """``rotation (rope)``, ``sharing``: the paper's word, and ours where they differ."""
    return f"{PAPER_NAMES[variant]} ({variant})" if variant in PAPER_NAMES else variant


def _square_ranks(run: Run) -> str:
    """r̂ of the run's layer shapes (``params.rank_summary``), e.g. ``44 / 60``."""
    ranks = sorted(set((run.result.get("params", {}).get("rank_summary") or {}).values()))
    return " / ".join(map(str, ranks)) or DASH


def _paper_gsm8k(variant: str, r: int) -> str:
    """The paper's GSM8K figure for ``variant`` at rank ``r``, if the paper ran that rank."""
    try:
        value = paper.TABLE4_ABLATION.value(PAPER_NAMES.get(variant, variant), r, "GSM8K")
    except KeyError:
        return DASH
    return DASH if value is None else f"{value:.1f}"


def _one_decimal(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def _paper_ranks(ranks: list[int]) -> dict[int, int]:
    """Which of the paper's ranks (8, 256) each of ours stands for: the same rank, and — in a table of two
    ranks, as the pocket grid's 8 and 64 — the small one for the paper's small, the large for its large."""
    paper_ranks = sorted({r for _, r, _ in paper.TABLE4_ABLATION.rows})
    same = {r: r for r in ranks if r in paper_ranks}
    return {ranks[0]: paper_ranks[0], ranks[-1]: paper_ranks[-1], **same} if len(ranks) == 2 else same


def _rows(best: list[Run]) -> tuple[list[str], list[list]]:
    """The main table: one row per variant and rank, the paper's GSM8K figure beside the rank it stands for."""
    stands_for = _paper_ranks(sorted({run.r for run in best}))
    headers = ["variant", "r", "r̂", "lr", "trainable params", "final char acc", "final exact match", "steps to 100%",
               "ΔW effective rank", "ΔW numerical rank (max)", "paper GSM8K (r)"]
    rows = []
    for run in best:
        variant = _variant(run)
        max_rank = delta_rank(run, "max_rank")
        figure = f"{_paper_gsm8k(variant, stands_for[run.r])} (r={stands_for[run.r]})" if run.r in stands_for else DASH
        rows.append([
            _name(variant), run.r, _square_ranks(run), fmt_lr(run.lr), DASH if run.trainable is None else f"{run.trainable:,}",
            pct(run.final.get("char_acc")), pct(run.final.get("exact_match")), run.first_step_reaching("char_acc", 1.0) or DASH,
            _one_decimal(delta_rank(run, "effective_rank")),
            DASH if max_rank is None else f"{_one_decimal(delta_rank(run, 'numerical_rank'))} ({max_rank})",
            figure,
        ])
    return headers, rows


def _math_rows(best: list[Run]) -> tuple[list[str], list[list]]:
    """The math table: one row per variant and rank, GSM8K here beside the paper's figure for the rank it stands for."""
    stands_for = _paper_ranks(sorted({run.r for run in best}))
    headers = ["variant", "r", "r̂", "lr", "GSM8K here (n)", "paper GSM8K (r)", "response perplexity", "ΔW effective rank"]
    rows = []
    for run in best:
        variant, n = _variant(run), run.result.get("task", {}).get("benchmarks", {}).get("gsm8k", {}).get("n_samples")
        n = sum(n.values()) if isinstance(n, dict) else n  # lm-eval's count per task
        figure = f"{_paper_gsm8k(variant, stands_for[run.r])} (r={stands_for[run.r]})" if run.r in stands_for else DASH
        rows.append([_name(variant), run.r, _square_ranks(run), fmt_lr(run.lr),
                     f"{pct(run.final.get(GSM8K))}" + (f" ({n})" if n else ""), figure,
                     num(run.final.get(PERPLEXITY)), _one_decimal(delta_rank(run, "effective_rank"))])
    return headers, rows


# ---------------------------------------------------------------------------------------------------
# Claim 5 and the rank sweep
# ---------------------------------------------------------------------------------------------------


def _by_rank(best: list[Run]) -> dict[int, dict[str, Run]]:
    table: dict[int, dict[str, Run]] = {}
    for run in best:
        table.setdefault(run.r, {})[_variant(run)] = run
    return table


def _accuracy(run: Run) -> float:
    return run.final.get("char_acc", float("-inf"))


def _describe(run: Run) -> str:
    """``rope 100.0% (100% at step 350)``: a variant's final char accuracy, and when it first memorised all."""
    step = run.first_step_reaching("char_acc", 1.0)
    return f"{_variant(run)} {pct(run.final.get('char_acc'))}%" + (f" (100% at step {step})" if step else "")


def rotation_helps(variants: dict[str, Run]) -> bool:
    """Rope beats every other variant at this rank: higher final char accuracy than each, or — where they
    tie — 100% reached strictly earlier (so a tie at the ceiling is decided by speed, never counted as help)."""
    rope = variants["rope"]
    for variant, other in variants.items():
        if variant == "rope":
            continue
        if _accuracy(rope) < _accuracy(other):
            return False
        if _accuracy(rope) == _accuracy(other):
            mine, theirs = rope.first_step_reaching("char_acc", 1.0), other.first_step_reaching("char_acc", 1.0)
            if mine is None or (theirs is not None and mine >= theirs):
                return False
    return True


def spread(variants: dict[str, Run]) -> float:
    """Percentage points between the best and the worst final char accuracy of :data:`CLOSE_VARIANTS`."""
    values = [100 * _accuracy(variants[v]) for v in CLOSE_VARIANTS]
    return max(values) - min(values)


def claims(best: list[Run]) -> list[Verdict]:
    """Claim 5 in two halves: at the smallest rank where rope and at least one other variant ran (5a), and at
    the largest rank where sharing, decouple and rope all ran (5b)."""
    claim_a = "Claim 5a (at small rank rotation beats the other compressions)"
    claim_b = f"Claim 5b (at large rank sharing, decouple and rotation are close: within {CLOSE_POINTS:.1f} points)"
    table = _by_rank(best)
    with_rope = sorted(r for r, variants in table.items() if "rope" in variants and len(variants) > 1)
    if not with_rope:
        verdicts = [Verdict(claim_a, NOT_TESTED, "no rank has rope and another variant")]
    else:
        variants = table[with_rope[0]]
        others = ", ".join(_describe(variants[v]) for v in VARIANTS if v in variants and v != "rope")
        verdicts = [Verdict(claim_a, HELD if rotation_helps(variants) else NOT_HELD,
                            f"r={with_rope[0]}: {_describe(variants['rope'])} vs {others}")]
    complete = [r for r, variants in table.items() if set(CLOSE_VARIANTS) <= set(variants)]
    large = max(complete, default=None)
    if large is None or (with_rope and large <= with_rope[0]):
        verdicts.append(Verdict(claim_b, NOT_TESTED, "no rank above the small one has sharing, decouple and rope all run"))
    else:
        gap = spread(table[large])
        verdicts.append(Verdict(claim_b, HELD if gap <= CLOSE_POINTS else NOT_HELD,
                                f"r={large}: " + ", ".join(_describe(table[large][v]) for v in CLOSE_VARIANTS)
                                + f"; spread {gap:.1f} points"))
    return verdicts


def _math_judge(variants: dict[str, Run]) -> tuple[str, dict[str, float]]:
    """Which metric judges these math runs — GSM8K where every one scores at least :data:`GSM8K_FLOOR`, else
    held-out response perplexity — and each variant's value as a loss (lower is better)."""
    if all(run.final.get(GSM8K, 0.0) >= GSM8K_FLOOR for run in variants.values()):
        return "GSM8K", {v: -run.final[GSM8K] for v, run in variants.items()}
    return "response perplexity", {v: run.final.get(PERPLEXITY, float("inf")) for v, run in variants.items()}


def _math_describe(metric: str, losses: dict[str, float]) -> str:
    return ", ".join(f"{v} {pct(-x) + '%' if metric == 'GSM8K' else num(x)}" for v, x in losses.items())


def math_claims(best: list[Run]) -> list[Verdict]:
    """Claim 5 on the math task, as :func:`claims` on UUID: rope strictly best at the smallest rank with rope and
    another variant (5a); sharing, decouple and rope close at the largest complete rank (5b) — by GSM8K (within
    :data:`CLOSE_POINTS`) where it is off the floor, else by response perplexity (within :data:`CLOSE_PERPLEXITY`)."""
    claim_a = "Claim 5a [math] (at small rank rotation beats the other compressions)"
    claim_b = "Claim 5b [math] (at large rank sharing, decouple and rotation are close)"
    table = _by_rank(best)
    with_rope = sorted(r for r, variants in table.items() if "rope" in variants and len(variants) > 1)
    if not with_rope:
        verdicts = [Verdict(claim_a, NOT_TESTED, "no rank has rope and another math variant")]
    else:
        metric, losses = _math_judge(table[with_rope[0]])
        helps = all(losses["rope"] < x for v, x in losses.items() if v != "rope")
        verdicts = [Verdict(claim_a, HELD if helps else NOT_HELD, f"r={with_rope[0]}, by {metric}: {_math_describe(metric, losses)}")]
    complete = [r for r, variants in table.items() if set(CLOSE_VARIANTS) <= set(variants)]
    large = max(complete, default=None)
    if large is None or (with_rope and large <= with_rope[0]):
        verdicts.append(Verdict(claim_b, NOT_TESTED, "no rank above the small one has sharing, decouple and rope all run"))
    else:
        metric, losses = _math_judge({v: table[large][v] for v in CLOSE_VARIANTS})
        if metric == "GSM8K":
            gap = 100 * (max(losses.values()) - min(losses.values()))
            close, spread_text = gap <= CLOSE_POINTS, f"spread {gap:.1f} points (close: within {CLOSE_POINTS:.1f})"
        else:
            gap = max(losses.values()) / min(losses.values()) - 1
            close, spread_text = gap <= CLOSE_PERPLEXITY, f"spread {gap:.1%} (close: within {CLOSE_PERPLEXITY:.0%})"
        verdicts.append(Verdict(claim_b, HELD if close else NOT_HELD,
                                f"r={large}, by {metric}: {_math_describe(metric, losses)}; {spread_text}"))
    return verdicts


def sweep_notes(best: list[Run]) -> list[str]:
    """Over every rank where sharing, decouple and rope all ran: where rotation helps, from which rank on it
    no longer does, and from which rank all three memorise everything."""
    table = _by_rank(best)
    ranks = sorted(r for r, variants in table.items() if set(CLOSE_VARIANTS) <= set(variants))
    if len(ranks) < 3:
        return []
    helps = {r: rotation_helps({v: table[r][v] for v in CLOSE_VARIANTS}) for r in ranks}
    stops = next((r for i, r in enumerate(ranks) if not any(helps[s] for s in ranks[i:])), None)
    full = next((r for i, r in enumerate(ranks) if all(_accuracy(table[s][v]) >= 1 - 1e-9 for s in ranks[i:] for v in CLOSE_VARIANTS)), None)
    return [
        "Rank sweep (rope against decouple and sharing; *helps*: higher final char accuracy than both, or the same "
        "and 100% strictly earlier): " + "; ".join(f"r={r} {'helps' if helps[r] else 'does not'}" for r in ranks) + ".",
        f"From which rank on does rotation stop helping? **{'r=' + str(stops) if stops is not None else 'it helps up to the largest rank run'}**"
        + (f" (it still helps at r={max(r for r in ranks if helps[r])})" if stops is not None and any(helps.values()) else "") + ".",
        f"All three reach 100% final char accuracy from **{'r=' + str(full) if full is not None else 'no rank run'}** on.",
    ]


def notes(groups: list[tuple[Run, list[Run]]], best: list[Run], verdicts: list[Verdict]) -> list[str]:
    everything = [run for _, members in groups for run in members]
    paper_setup = f"{paper.TABLE4_ABLATION.setup}, {paper.TABLE4_ABLATION.model}, at r=8 and r=256"
    return [
        *(scale_note([run for run in everything if _task(run) == task], paper_setup)
          for task in ("uuid", "math") if any(_task(run) == task for run in everything)),
        *(verdict.markdown() for verdict in verdicts),
        f"*Close* is defined here as final char accuracies within {CLOSE_POINTS:.1f} percentage points (max − min); "
        "the paper's own spreads are 0.1 points at r=256, which it calls close, and 1.7 at r=8.",
        *sweep_notes(best),
        "One seed per run: the verdicts do not account for seed-to-seed variation, which was not measured.",
        *lr_search_notes(groups),
        code_note(everything),
    ]


# ---------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------


def _colour(variant: str) -> str:
    return f"C{VARIANTS.index(variant)}"


def _plot_curves(best: list[Run], out_png: Path) -> Path:
    """Eval char accuracy against step, one panel per rank, one line per variant."""
    plt = pyplot()
    table = _by_rank(best)
    cols = min(len(table), 3)
    rows = -(-len(table) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False, sharey=True)
    for ax, (r, variants) in zip(axes.flat, sorted(table.items())):
        for variant in VARIANTS:
            if variant in variants:
                run = variants[variant]
                points = sorted((step, 100 * m["char_acc"]) for step, m in run.evals.items() if "char_acc" in m)
                ax.plot(*zip(*points), color=_colour(variant), marker="o", markersize=2, label=f"{_name(variant)} lr={fmt_lr(run.lr)}")
        ax.set_title(f"r = {r}")
        ax.set_xlabel("step")
        ax.set_ylim(-2, 102)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("eval char accuracy (%)")
    for ax in list(axes.flat)[len(table):]:
        ax.set_visible(False)
    fig.suptitle("UUID memorisation by MoRA compression variant")
    save_figure(fig, out_png)
    return out_png


def _plot_rank(best: list[Run], out_png: Path) -> Path:
    """Against the rank r (log scale), per variant: final char accuracy, the step 100% was first reached
    (absent where never), and the effective rank of ΔW."""
    plt = pyplot()
    fig, (acc_ax, step_ax, erank_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    table = _by_rank(best)
    for variant in VARIANTS:
        runs = [table[r][variant] for r in sorted(table) if variant in table[r]]
        if not runs:
            continue
        style = dict(color=_colour(variant), marker="o", label=_name(variant))
        for ax, value in ((acc_ax, lambda run: 100 * _accuracy(run)),
                          (step_ax, lambda run: run.first_step_reaching("char_acc", 1.0)),
                          (erank_ax, lambda run: delta_rank(run, "effective_rank"))):
            points = [(run.r, value(run)) for run in runs if value(run) is not None]  # never reached / not analysed
            if points:
                ax.plot(*zip(*points), **style)
    for ax, label in ((acc_ax, "final char accuracy (%)"), (step_ax, "first step at 100% char accuracy"),
                      (erank_ax, "ΔW effective rank (mean over layers)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("r (LoRA-equivalent rank)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.suptitle("MoRA compression variants against the rank")
    save_figure(fig, out_png)
    return out_png
