"""The shoot-out (issue 9): MoRA against peft's other high-rank methods at equal trainable budgets, on UUID
memorisation — the task where a high-rank update should matter most — and, as a second column family, on
continual pretraining (``task=cpt``: held-out domain perplexity, and forgetting on the base's own text).

Runs: ``results/runs/shootout/`` (``make reproduce-shootout``: every method over three learning
rates; grid ``conf/grids/shootout.yaml``).  Writes ``<stem>.md`` — for each budget (LoRA r=8's trainable
count and a large one), each method's best learning rate with its size knob, trainable count against the
budget, final char accuracy and exact match, steps to 100%, the effective rank of ΔW (``mora-analyze``),
step time and peak memory; every learning rate tried; claim 1 of the paper judged on these runs
(:func:`mora.tables.table1.claims`) and notes computed from the runs — and ``<stem>_accuracy.png``, eval
char accuracy against step for every method, one panel per budget.  The continual-pretraining runs (Table 2's
``experiment=table2_cpt``, so the rows both share are trained once) get their own section per budget: each
method's best learning rate by held-out domain perplexity, with the same size, budget, rank and cost columns.

A run's budget is its ``method.budget_r``, else its ``method.r`` (LoRA, DoRA, MoRA: their knob is the rank);
a peft type sized by hand — one whose knob cannot land within ±5% of any budget — joins the budget whose
LoRA count is nearest its own (in ratio), and its *vs LoRA* cell says how far off it is.  Full fine-tuning is
the reference row of every budget.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import replace
from pathlib import Path

from .common import (
    DASH, Rendered, Run, best_per_group, code_note, delta_rank, distinct, each_seed, fmt_lr, lr_search_notes,
    markdown_table, mean_over_seeds, model_description, num, over_seeds, pct, pyplot, rendered_by, save_figure,
    summarize,
)
from .table1 import claims

NAME = "shootout"
TITLE = "Shoot-out — high-rank PEFT methods at equal budgets (UUID memorisation, continual pretraining)"


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md`` and ``out_dir/<stem>_accuracy.png``."""
    from ..budget import TOLERANCE  # imports peft: paid only when there is a shoot-out to render

    if not results:
        raise ValueError(f"{NAME}: no results to render")
    everything = mean_over_seeds(summarize(r) for r in results)  # `sweep=seed`: one row per method, over seeds
    runs, lora_counts = with_budgets([run for run in everything if _task(run) != "cpt"])
    groups = best_per_group(runs, "char_acc")
    best = [b for b, _ in groups]
    budgets = sorted(lora_counts)
    fft = [run for run in best if run.family == "fft"]
    out_md, out_png = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}_accuracy.png"
    verdicts = claims(best)
    sections = []
    for r in budgets:
        rows = sorted((run for run in best if run.r == r), key=_rank_key) + fft
        sections += [f"## Budget r={r}: LoRA r={r}'s {lora_counts[r]:,} trainable parameters",
                     markdown_table(HEADERS, [_uuid_row(run, lora_counts) for run in rows])]
    seeded = any(run.seeds for run in runs)
    sweep = [[run.label, run.r or DASH, size(run), fmt_lr(run.lr), *([_seed(one)] if seeded else []),
              pct(one.final.get("char_acc")), pct(one.final.get("exact_match")),
              one.first_step_reaching("char_acc", 1.0) or DASH, f"`{one.name}`", "✓" if run is chosen else ""]
             for chosen, members in groups for run in members for one in each_seed([run])]
    image = os.path.relpath(out_png, out_md.parent)
    cpt_sections, cpt_notes = cpt_family([run for run in everything if _task(run) == "cpt"])
    text = "\n\n".join([
        f"# {TITLE}",
        rendered_by(NAME, results),
        *sections,
        ("Each row is the method at the learning rate the LR sweep chose, averaged over seeds (see the notes); "
         if seeded else
         "Each row is the method's best learning rate by final char accuracy (ties: lower final loss); ") +
        "rows are ordered by final char accuracy, then by steps to 100%; FFT (every weight trained) closes each budget as "
        "the reference. Accuracies in %. *size*: the method's size knob (MoRA: the sides r̂ of its square "
        f"matrices). *vs LoRA*: trainable count against the budget (budget matching allows ±{TOLERANCE:.0%}). "
        "*Steps to 100%*: the first evaluation at 100% char accuracy (resolution: the evaluation interval). "
        "*ΔW eff. rank*: the mean over the adapted layers of the effective rank of the learned update "
        "(`mora-analyze`). *ms/step*: tokens per step over the median throughput of the run's logging intervals "
        "(evaluation excluded). *peak MB*: the run's peak memory (CPU: the process's peak resident set). Both are "
        "measured in the run itself; `make reproduce-shootout` trains two runs at a time on a 2-core machine, so "
        "compare rows with each other, not with one run on an idle machine.",
        f"![char accuracy against step at each budget]({image})",
        "## Every seed (how much of a gap is noise?)" if seeded else
        "## Every learning rate tried (was any row under-tuned?)",
        markdown_table(["method", "budget r", "size", "lr", *(["seed"] if seeded else []), "final char acc",
                        "final exact match", "steps to 100%", "run", "chosen"], sweep),
        *cpt_sections,
        "## Notes",
        "\n".join(f"- {line}" for line in notes(groups, lora_counts, verdicts, seeded) + cpt_notes),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    _plot(best, budgets, lora_counts, out_png, seeded)
    return Rendered(markdown=out_md, plots=(out_png,), verdicts=tuple(verdicts))


def _task(run: Run) -> str:
    return run.result["config"]["task"]["name"]


HEADERS = ["method", "size", "lr", "trainable", "vs LoRA", "final char acc", "final exact match", "steps to 100%",
           "ΔW eff. rank", "ms/step", "peak MB"]


def with_budgets(runs: list[Run]) -> tuple[list[Run], dict[int, int]]:
    """The runs with ``r`` set to their budget (None for FFT), and LoRA's trainable count at each budget."""
    lora_counts = {run.r: run.trainable for run in runs if run.family == "lora" and run.trainable}
    if not lora_counts:
        raise ValueError(f"{NAME}: no LoRA run among the results — LoRA's trainable counts define the budgets")
    return [replace(run, r=budget_of(run, lora_counts)) for run in runs], lora_counts


def budget_of(run: Run, lora_counts: dict[int, int]) -> int | None:
    """The LoRA rank whose trainable count the run stands against (see the module docstring)."""
    if run.family == "fft" or run.r is not None:
        return run.r
    return min(lora_counts, key=lambda r: abs(math.log(run.trainable / lora_counts[r])))


def size(run: Run) -> str:
    """The run's size knob as set: ``r=15``, ``block_size=8``, ``r̂=44–61`` (MoRA), — (FFT, IA3)."""
    params, method = run.result.get("params", {}), run.result["config"]["method"]
    if knob := {k: v for k, v in params.get("peft", {}).items() if k != "type"}:
        return ", ".join(f"{k}={v}" for k, v in knob.items())
    if method["name"] == "mora" and params.get("rank_summary"):
        sides = sorted(set(params["rank_summary"].values()))
        return f"r̂={sides[0]}" + (f"–{sides[-1]}" if len(sides) > 1 else "")
    return DASH if method["name"] in ("fft", "peft") else f"r={method['r']}"


def ms_per_step(run: Run) -> float | None:
    """Milliseconds per optimizer step: tokens per step over the median tokens/s of the logging intervals
    (an interval holding an evaluation is slower; the median leaves it out)."""
    rates = [rate for _, rate in run.result["curves"].get("tokens_per_s", [])]
    tokens = run.result.get("timing", {}).get("tokens_seen")
    if not rates or not tokens or not run.max_steps:
        return None
    return 1000 * tokens / run.max_steps / statistics.median(rates)


def _char_acc(run: Run) -> float:
    return run.final.get("char_acc", 0.0)


def _rank_key(run: Run) -> tuple:
    reached = run.first_step_reaching("char_acc", 1.0)
    return (-_char_acc(run), reached if reached is not None else math.inf, run.label)


def _vs_lora(run: Run, lora_counts: dict[int, int]) -> str:
    if run.r is None or run.trainable is None:
        return DASH
    return f"{run.trainable / lora_counts[run.r] - 1:+.1%}"


def _row(run: Run, lora_counts: dict[int, int], scores: list) -> list:
    """A table row: the method and its budget, then ``scores`` (the family's own columns), then ΔW's effective
    rank and the run's cost."""
    rank, step_ms = delta_rank(run), over_seeds(run, ms_per_step)
    peak = over_seeds(run, lambda one: one.result.get("timing", {}).get("peak_mem_mb"))
    return [
        run.label, size(run), fmt_lr(run.lr), DASH if run.trainable is None else f"{run.trainable:,}",
        _vs_lora(run, lora_counts), *scores, DASH if rank is None else f"{rank:.1f}",
        DASH if step_ms is None else f"{step_ms:.0f}", DASH if peak is None else f"{peak:,.0f}",
    ]


def _uuid_row(run: Run, lora_counts: dict[int, int]) -> list:
    return _row(run, lora_counts, [_with_range(run, "char_acc"), _with_range(run, "exact_match"),
                                   run.first_step_reaching("char_acc", 1.0) or DASH])


def rank_against_score(rows: list[Run], where: str, score_name: str, score, memorised=None) -> list[str]:
    """Does a higher-rank update score better?  Spearman's ρ between ΔW's effective rank and ``score`` over the
    methods of one budget (the methods' best LRs), and — where ``memorised`` splits them — the lowest-rank update
    that memorised and the highest-rank one that did not: the counter-examples to "rank is what matters"."""
    pairs = [(delta_rank(run), score(run), run) for run in rows]
    pairs = [(rank, value, run) for rank, value, run in pairs if rank is not None and math.isfinite(value)]
    if len(pairs) < 3 or len({v for _, v, _ in pairs}) < 2 or len({k for k, _, _ in pairs}) < 2:
        return []
    rho = statistics.correlation(_ranks([k for k, _, _ in pairs]), _ranks([v for _, v, _ in pairs]))
    line = f"{where}: ΔW effective rank against {score_name}, Spearman ρ = {rho:+.2f} over {len(pairs)} methods"
    if memorised:
        yes = [(rank, run) for rank, _, run in pairs if memorised(run)]
        no = [(rank, run) for rank, _, run in pairs if not memorised(run)]
        if yes and no:
            (low, low_run), (high, high_run) = min(yes, key=lambda p: p[0]), max(no, key=lambda p: p[0])
            line += (f"; the lowest-rank update that memorised every UUID: {low_run.label} ({low:.1f}), "
                     f"the highest-rank one that did not: {high_run.label} ({high:.1f})")
    return [line + "."]


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing their mean rank (what Spearman's ρ correlates)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _with_range(run: Run, metric: str) -> str:
    """The metric in %, and for a run over seeds its lowest and highest seed: ``99.5 (98.4–100.0)``."""
    if not run.seeds:
        return pct(run.final.get(metric))
    values = [one.final.get(metric, 0.0) for one in run.seeds]
    return f"{pct(run.final.get(metric))} ({pct(min(values))}–{pct(max(values))})"


def _seed(run: Run):
    return run.result["config"]["train"].get("seed")


def _seed_note(runs: list[Run], seeded: bool) -> str:
    seeds = ", ".join(map(str, sorted({_seed(run) for run in runs})))
    if seeded:
        return (f"Each row averages seeds {seeds} at the learning rate the LR sweep chose ([{NAME}.md]({NAME}.md)): "
                "accuracies are the mean and, in brackets, the lowest and highest seed; *steps to 100%* is the first "
                "evaluation at which every seed was at 100%; ΔW rank, ms/step and peak MB are means.")
    return (f"One seed per run (train.seed {seeds}): a gap of a few points between two methods is not tested against "
            f"seed-to-seed variation, which `python -m mora.reproduce {NAME} sweep=seed` measures "
            f"([{NAME}-sweep-seed.md]({NAME}-sweep-seed.md) where it has run).")


def notes(groups: list[tuple[Run, list[Run]]], lora_counts: dict[int, int], verdicts, seeded: bool) -> list[str]:
    """The notes under the table, every sentence computed from the runs (``seeded``: rows average seeds)."""
    from ..budget import within_budget

    best = [b for b, _ in groups]
    everything = each_seed(run for _, members in groups for run in members)
    configs = [run.result["config"] for run in everything]
    task_options = distinct(", ".join(f"{k}={v}" for k, v in c["task"].items() if k != "name") for c in configs)
    lines = [
        f"Scale of these runs: model {distinct(model_description(run) for run in everything)}; task "
        f"{distinct(c['task']['name'] for c in configs)} with {task_options}; "
        f"{distinct(run.max_steps for run in everything)} steps of global batch "
        f"{distinct(c['train']['global_batch'] for c in configs)}.",
        _seed_note(everything, seeded),
        *(verdict.markdown() for verdict in verdicts),
    ]
    for r in sorted(lora_counts):
        rows = sorted((run for run in best if run.r == r), key=_rank_key)
        if rows:
            lines.append(f"Budget r={r}, best first: " + ", ".join(
                f"{run.label} {pct(run.final.get('char_acc'))}%" for run in rows) + ".")
            lines += rank_against_score(rows, f"Budget r={r}", "final char accuracy", _char_acc,
                                        memorised=lambda run: _char_acc(run) >= 1)
    off = [f"{run.label} at r={run.r} ({size(run)}: {_vs_lora(run, lora_counts)})" for run in best
           if run.r is not None and run.trainable and not within_budget(run.trainable, lora_counts[run.r])]
    if off:
        lines.append("Off budget by more than ±5% (their knob cannot land closer on this model, or closer is too "
                     "slow to train; see the grid): " + ", ".join(off) + ".")
    if missing := [f"{run.label} r={run.r}" if run.r else run.label for run in best if delta_rank(run) is None]:
        lines.append(f"No ΔW analysis for {', '.join(missing)}: `mora-analyze runs/<name>` on their run "
                     "directories and collect their result.json again.")
    return lines + lr_search_notes(groups, sweep=NAME if seeded else None) + [code_note(everything)]


# ---------------------------------------------------------------------------------------------------
# The second column family: continual pretraining
# ---------------------------------------------------------------------------------------------------

CPT_HEADERS = ["method", "size", "lr", "trainable", "vs LoRA", "domain ppl", "general ppl (forgetting)", "ΔW eff. rank",
               "ms/step", "peak MB"]


def cpt_family(runs: list[Run]) -> tuple[list[str], list[str]]:
    """The continual-pretraining sections (one table per budget, every LR tried) and their notes; nothing when
    there are no cpt runs.  Rows: each method's best LR by held-out domain perplexity (lower is better)."""
    if not runs:
        return [], []
    runs, lora_counts = with_budgets(runs)
    groups = best_per_group(runs, "perplexity", lower_is_better=True)
    best = [b for b, _ in groups]
    fft = [run for run in best if run.family == "fft"]
    domain = distinct(run.result["config"]["task"].get("domain") for run in runs)
    sections = [f"## Second family: continual pretraining ({domain})",
                "The same methods at the same budgets, continually pretraining the pocket base on the pocket "
                f"{domain} corpus (Table 2's `experiment=table2_cpt`). *domain ppl*: perplexity on held-out {domain} "
                "documents, which chooses each row's learning rate; *general ppl*: perplexity on the base's own held-out "
                "text (forgetting). Rows best first; other columns as above."]
    lines = []
    for r in sorted(lora_counts):
        rows = sorted((run for run in best if run.r == r), key=_perplexity) + fft
        sections += [f"### Budget r={r}: LoRA r={r}'s {lora_counts[r]:,} trainable parameters",
                     markdown_table(CPT_HEADERS, [_cpt_row(run, lora_counts) for run in rows])]
        lines.append(f"Continual pretraining ({domain}), budget r={r}, best first by domain perplexity: " + ", ".join(
            f"{run.label} {num(_perplexity(run))}" for run in rows if run.family != "fft") + ".")
        lines += rank_against_score([run for run in rows if run.family != "fft"],
                                    f"Continual pretraining ({domain}), budget r={r}",
                                    "domain perplexity (lower is better)", _perplexity)
    sweep = [[run.label, run.r or DASH, size(run), fmt_lr(run.lr), num(run.final.get("perplexity")),
              num(run.final.get("general_perplexity")), f"`{run.name}`", "✓" if run is chosen else ""]
             for chosen, members in groups for run in members]
    sections += ["### Every learning rate tried (continual pretraining)",
                 markdown_table(["method", "budget r", "size", "lr", "domain ppl", "general ppl", "run", "chosen"], sweep)]
    return sections, lines + [f"Continual pretraining: {line}" for line in lr_search_notes(groups)]


def _perplexity(run: Run) -> float:
    return run.final.get("perplexity", math.inf)


def _cpt_row(run: Run, lora_counts: dict[int, int]) -> list:
    return _row(run, lora_counts, [num(run.final.get("perplexity")), num(run.final.get("general_perplexity"))])


def _plot(best: list[Run], budgets: list[int], lora_counts: dict[int, int], out_png: Path, seeded: bool) -> None:
    """Eval char accuracy against step, one panel per budget, one line per method (its best learning rate, in
    the table); a method keeps its colour in every panel — ten colours in the small budget's ranking, then the
    same ones dotted — and FFT is dashed black.  One legend beside the panels."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets) + 2, 5), sharey=True, squeeze=False)
    order = sorted(best, key=lambda run: (run.r != budgets[0], *_rank_key(run)))
    styles = {"FFT": ("k", "--")}
    for run in order:
        styles.setdefault(run.label, (f"C{(len(styles) - 1) % 10}", "-" if len(styles) <= 10 else ":"))
    for ax, budget in zip(axes[0], budgets):
        for run in (run for run in order if run.r == budget or run.family == "fft"):
            points = sorted((step, 100 * m["char_acc"]) for step, m in run.evals.items() if "char_acc" in m)
            color, style = styles[run.label]
            if points:
                ax.plot(*zip(*points), color=color, marker="o", markersize=3, linestyle=style, label=run.label)
        ax.set_xlabel("step")
        ax.set_ylim(-2, 102)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"LoRA r={budget}'s budget ({lora_counts[budget]:,} trainable)")
    axes[0][0].set_ylabel("eval char accuracy (%)")
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    labels = [label for label in styles if label in handles]  # beside the last panel, where tight_layout sees it
    axes[0][-1].legend([handles[label] for label in labels], labels, fontsize=8, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("UUID memorisation at equal trainable budgets (each method at its best learning rate"
                 + (", the mean over seeds)" if seeded else ")"))
    save_figure(fig, out_png)
