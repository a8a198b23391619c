"""Table 2 — fine-tuning: instruction tuning (MMLU), math (GSM8K, MATH) and continual pretraining (BioMed,
Finance), every baseline at a small and a large rank (claims 2 and 3 of the paper).

Runs: ``results/runs/table2/`` (``make reproduce-table2``; grid ``conf/grids/table2.yaml``, one experiment per
task: ``conf/experiment/table2_<task>.yaml``).  Writes ``<stem>.md`` — one row per method and rank, each
task's columns from that row's best learning rate *on that task* (by the task's held-out response
perplexity, never by the test benchmark), ours beside the paper's (:data:`mora.tables.paper.TABLE2_FINETUNING`),
then per task every learning rate tried and the notes — and ``<stem>_loss.png`` (training loss, one panel
per task).

**A task's columns come from its :class:`TaskSpec`** in :data:`TASK_SPECS`: the metric keys, the paper's
column each stands beside, chance levels, and the task's claims.  A task joins the table by adding its
spec there (the continual-pretraining task adds BioMed and Finance); a task without runs leaves its
columns "not run", and a benchmark a run could not evaluate (MATH offline) says why, never a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import paper
from .common import (
    DASH, HELD, NOT_HELD, NOT_TESTED, Rendered, Run, Verdict, best_per_group, code_note, committed_sweep, distinct,
    draw_loss, fmt_lr, lr_search_notes, markdown_table, model_description, num, pct, pyplot, rendered_by, save_figure,
    summarize,
)

NAME = "table2"
TITLE = "Table 2 — Fine-tuning"

#: this suite's method labels → the paper's row names (MoRA is "MoRA" at either compression)
PAPER_METHODS = {"FFT": "FFT", "LoRA": "LoRA", "LoRA+": "LoRA+", "ReLoRA": "ReLoRA", "AsyLoRA": "AsyLoRA", "DoRA": "DoRA",
                 "MoRA rope": "MoRA", "MoRA sharing": "MoRA"}
#: the paper's small and large rank; the runs' smallest and largest adapter ranks stand for them
PAPER_RANKS = (8, 256)
#: claim 2's "≈": MoRA's held-out response perplexity within this fraction of LoRA's (either way) …
PERPLEXITY_TOLERANCE = 0.05
#: … and, on a benchmark that is above chance in both runs, accuracies within this many points (the paper's
#: MoRA/LoRA gaps on these columns are 0.1-0.7 points)
ACCURACY_POINTS = 1.0
#: z of a two-sided 95% interval: an accuracy within z·σ of the chance level (binomial σ over n questions) is
#: marked "at chance"
Z95 = 1.96
NOT_RUN = "not run"
#: footnote marks of benchmarks a run could not evaluate ("†" marks chance level)
_MARKS = "‡§¶#"


@dataclass(frozen=True)
class Column:
    """One column of the main table.

    Args:
        key: the metric's key in a run's ``result.json`` ``metrics``.
        header: the column's heading.
        paper: the column of :data:`~mora.tables.paper.TABLE2_FINETUNING` printed beside ours (None: ours only).
        percent: an accuracy in [0, 1] printed as a percentage; otherwise a number (lower is better: perplexity).
        chance: the accuracy of guessing (MMLU's four choices: 0.25); cells within the 95% binomial interval
            of it are marked.
        benchmark: the key under ``result["task"]["benchmarks"]`` that says why the metric is missing, and
            how many questions it scored (``n_samples``).
    """

    key: str
    header: str
    paper: str | None = None
    percent: bool = True
    chance: float | None = None
    benchmark: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task's part of Table 2.

    Args:
        task: the task's name (``task.name`` of its runs), also the key of its columns.
        title: what was fine-tuned on what, as a section heading.
        columns: its columns of the main table, in order.
        select: the metric that chooses each row's learning rate on this task, and whether lower is better.
        claims: the paper's claims this task tests, judged on the best run of each (label, r) row.
        notes: extra notes computed from the task's runs (data caveats, which answer rule a column uses).
        match: which run configs belong to these columns (default: ``task.name == task``); e.g. one task
            split over two column groups by an option (continual pretraining's ``task.domain``).
    """

    task: str
    title: str
    columns: tuple[Column, ...]
    select: str = "response_perplexity"
    lower_is_better: bool = True
    claims: Callable[[dict[tuple[str, int | None], Run]], list[Verdict]] | None = None
    notes: Callable[[list[Run]], list[str]] = field(default=lambda runs: [])
    match: Callable[[dict], bool] | None = None

    def owns(self, run: Run) -> bool:
        config = run.result["config"]
        return self.match(config) if self.match else config["task"]["name"] == self.task


def roughly_equal_claim(claim: str, columns: tuple[Column, ...]) -> Callable[[dict], list[Verdict]]:
    """Claim "MoRA ≈ LoRA" on a task, at every rank with both a LoRA and a MoRA row: ≈ means held-out response
    perplexity within :data:`PERPLEXITY_TOLERANCE` of LoRA's, and every accuracy column that is above chance in
    both runs within :data:`ACCURACY_POINTS` points.  Held when ≈ at every such rank."""

    def judge(best: dict[tuple[str, int | None], Run]) -> list[Verdict]:
        ranks = sorted({r for (label, r) in best if label == "LoRA" and r is not None}
                       & {r for (label, r) in best if label.startswith("MoRA") and r is not None})
        if not ranks:
            return [Verdict(claim, NOT_TESTED, "no rank has both a LoRA and a MoRA run")]
        evidence, close = [], True
        for r in ranks:
            lora = best[("LoRA", r)]
            mora = min((run for (label, rank), run in best.items() if rank == r and label.startswith("MoRA")),
                       key=lambda run: run.final.get("response_perplexity", math.inf))
            m, l = mora.final.get("response_perplexity"), lora.final.get("response_perplexity")
            if m is None or l is None:
                return [Verdict(claim, NOT_TESTED, f"r={r}: no response perplexity")]
            gap = m / l - 1
            close &= abs(gap) <= PERPLEXITY_TOLERANCE
            parts = [f"r={r}: perplexity {mora.label} {num(m)} vs LoRA {num(l)} ({gap:+.1%})"]
            for column in columns:
                a, b = mora.final.get(column.key), lora.final.get(column.key)
                if column.percent and a is not None and b is not None and not (_at_chance(mora, column) or _at_chance(lora, column)):
                    close &= abs(a - b) * 100 <= ACCURACY_POINTS
                    parts.append(f"{column.header} {pct(a)} vs {pct(b)}")
            evidence.append(", ".join(parts))
        rule = f"≈: perplexity within {PERPLEXITY_TOLERANCE:.0%}, accuracies above chance within {ACCURACY_POINTS:.1f} points"
        return [Verdict(claim, HELD if close else NOT_HELD, "; ".join(evidence) + f" ({rule})")]

    return judge


def _instruct_notes(runs: list[Run]) -> list[str]:
    return ["MMLU columns: lm-eval's standard MMLU prompt (question, four lettered choices, `Answer:`), accuracy over "
            "all questions scored; 5-shot takes the first five dev questions of the same subject. lm-eval cuts a prompt "
            "longer than the model's context from the left (the pocket base has 1,024 positions), so the longest 5-shot "
            "prompts lose part of their first examples — never the question itself."]


def _math_notes(runs: list[Run]) -> list[str]:
    notes = ["GSM8K column: the answer after MetaMath's `The answer is:` (rule `answer_is`); the per-task table also "
             "gives the `#### N` rule and the last number of the generation. MATH: the last `\\boxed{}` answer, "
             "normalised and compared by math-verify."]
    contamination = {run.result.get("task", {}).get("contamination") for run in runs} - {None}
    notes += [f"Caveat: {text}." for text in sorted(contamination)]
    return notes


INSTRUCT_COLUMNS = (
    Column("mmlu_0shot", "MMLU 0-shot", "MMLU 0-shot", chance=0.25, benchmark="mmlu"),
    Column("mmlu_5shot", "MMLU 5-shot", "MMLU 5-shot", chance=0.25, benchmark="mmlu"),
    Column("response_perplexity", "instruct ppl", percent=False),
)
MATH_COLUMNS = (
    Column("gsm8k_answer_is", "GSM8K", "GSM8K", chance=0.0, benchmark="gsm8k"),  # a guessed number is ~never right
    Column("math_verify", "MATH", "MATH", chance=0.0, benchmark="math"),
    Column("response_perplexity", "math ppl", percent=False),
)
# ---- continual pretraining (task=cpt): one column group per task.domain ----
#: the paper's per-task figures (v1 Tables 6, 7); its domain averages are TABLE2_FINETUNING's BioMed / Finance columns
CPT_PAPER = {"biomed": paper.TABLE2_BIOMED, "finance": paper.TABLE2_FINANCE}


def _cpt_columns(domain: str, title: str) -> tuple[Column, ...]:
    """The domain average beside the paper's (over the benchmarks the run scored) and held-out domain perplexity."""
    return (Column("domain_average", title, title, benchmark="domain_average"), Column("perplexity", f"{domain} ppl", percent=False))


def _cpt_at_chance(run: Run, key: str) -> bool:
    """A cpt benchmark score within the 95% binomial interval of what an input-blind guesser scores on the same rows
    (the run records it: ``<key>_chance``, ``<key>_n``)."""
    value, chance, n = (run.final.get(k) for k in (key, f"{key}_chance", f"{key}_n"))
    if value is None or chance is None or not n:
        return False
    return abs(value - chance) <= Z95 * math.sqrt(max(chance * (1 - chance), 1e-12) / n)


def _cpt_claims(domain: str) -> Callable[[dict], list[Verdict]]:
    """Claim 3 on one domain, by held-out domain perplexity at each row's best LR: 3a MoRA below LoRA at every rank with
    both; 3b FFT below every adapter row.  Domain averages ride along in the evidence (they decide nothing at chance)."""

    def judge(best: dict[tuple[str, int | None], Run]) -> list[Verdict]:
        claim_a = f"Claim 3a (continual pretraining: MoRA beats LoRA) [{domain}]"
        claim_b = f"Claim 3b (continual pretraining: full fine-tuning stays best) [{domain}]"
        ppl = {key: run.final["perplexity"] for key, run in best.items() if run.final.get("perplexity")}
        evidence, beats = [], True
        for r in sorted({r for (label, r) in ppl if label == "LoRA" and r is not None}):
            moras = [(p, label) for (label, rank), p in ppl.items() if rank == r and label.startswith("MoRA")]
            if not moras:
                continue
            (m, label), l = min(moras), ppl[("LoRA", r)]
            beats &= m < l
            averages = [best[key].final.get("domain_average") for key in ((label, r), ("LoRA", r))]
            evidence.append(f"r={r}: ppl {label} {num(m)} vs LoRA {num(l)} ({m / l - 1:+.1%})"
                            + (f", average {pct(averages[0])} vs {pct(averages[1])}" if None not in averages else ""))
        verdicts = [Verdict(claim_a, HELD if beats else NOT_HELD, "; ".join(evidence) + " (held-out domain perplexity)")
                    if evidence else Verdict(claim_a, NOT_TESTED, "no rank has both a LoRA and a MoRA run")]
        adapters = {key: p for key, p in ppl.items() if key[1] is not None}
        if ("FFT", None) in ppl and adapters:
            closest = min(adapters, key=adapters.get)
            verdicts.append(Verdict(claim_b, HELD if ppl["FFT", None] < adapters[closest] else NOT_HELD,
                                    f"ppl FFT {num(ppl['FFT', None])} vs the best adapter, {closest[0]} r={closest[1]}, "
                                    f"{num(adapters[closest])}"))
        else:
            verdicts.append(Verdict(claim_b, NOT_TESTED, "no FFT run beside an adapter run"))
        return verdicts

    return judge


def _cpt_notes(domain: str) -> Callable[[list[Run]], list[str]]:
    """Per task, each row (its best LR) beside the paper's figure; chance-level cells marked †; why a benchmark is missing."""

    def notes(runs: list[Run]) -> list[str]:
        best = [chosen for chosen, _ in best_per_group(runs, "perplexity", lower_is_better=True)]
        ranks = _rank_map({domain: {(run.label, run.r): run for run in best}})
        lines = []
        for run in best:
            described = (run.result.get("task") or {}).get("benchmarks") or {}
            cells = []
            for key, info in described.items():
                if key == "domain_average":
                    continue
                value = run.final.get(key)
                ours = f"n/a ({info.get('why')})" if value is None else pct(value) + ("†" if _cpt_at_chance(run, key) else "")
                try:
                    theirs = CPT_PAPER[domain].value(PAPER_METHODS.get(run.label), None if run.r is None else ranks[run.r], info["title"])
                except KeyError:
                    theirs = None
                cells.append(f"{info['title']} {ours} / {DASH if theirs is None else f'{theirs:.1f}'}")
            general = run.final.get("general_perplexity")
            lines.append(f"{run.method()}: " + ", ".join(cells) + (f"; general ppl {num(general)}" if general else ""))
        return [f"Per task (ours at the row's best LR / the paper's, {CPT_PAPER[domain].source}; † at the level of an "
                "input-blind guesser — uniform or majority answer — within the 95% binomial interval; general ppl: the "
                "base's own held-out general text, forgetting): " + " · ".join(lines),
                "Benchmarks: AdaptLLM's filled-in prompts, each option scored as ' ' + option by mean token NLL (generation "
                "to a newline for NER and ConvFinQA), AdaptLLM's metric per task (tasks/cpt/lm_eval_tasks/metrics.py).",
                *(f"{domain} average: {why}; the paper averages all of them." for why in sorted(
                    {((run.result.get("task") or {}).get("benchmarks") or {}).get("domain_average", {}).get("why") for run in runs} - {None}))]

    return notes


#: every task of Table 2, in the paper's column order; a task joins with one spec here
TASK_SPECS: list[TaskSpec] = [
    TaskSpec("instruct", "Instruction tuning (Tulu v2 → MMLU)", INSTRUCT_COLUMNS,
             claims=roughly_equal_claim("Claim 2a (instruction tuning: MoRA ≈ LoRA)", INSTRUCT_COLUMNS), notes=_instruct_notes),
    TaskSpec("math", "Math (MetaMathQA → GSM8K, MATH)", MATH_COLUMNS,
             claims=roughly_equal_claim("Claim 2b (math: MoRA ≈ LoRA)", MATH_COLUMNS), notes=_math_notes),
    *(TaskSpec(f"cpt_{domain}", f"Continual pretraining, {title} (AdaptLLM's corpus → its {title} tasks)", _cpt_columns(domain, title),
               select="perplexity", claims=_cpt_claims(domain), notes=_cpt_notes(domain),
               match=lambda config, d=domain: config["task"]["name"] == "cpt" and config["task"].get("domain") == d)
      for domain, title in (("biomed", "BioMed"), ("finance", "Finance"))),
]


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md`` and ``out_dir/<stem>_loss.png``."""
    if not results:
        raise ValueError(f"{NAME}: no results to render")
    out_md, out_png = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}_loss.png"
    runs = [summarize(r) for r in results]
    by_task = {spec.task: [run for run in runs if spec.owns(run)] for spec in TASK_SPECS}
    groups = {spec.task: best_per_group(by_task[spec.task], spec.select, spec.lower_is_better)
              for spec in TASK_SPECS if by_task[spec.task]}
    best = {task: {(b.label, b.r): b for b, _ in task_groups} for task, task_groups in groups.items()}
    verdicts = [v for spec in TASK_SPECS if spec.task in best and spec.claims for v in spec.claims(best[spec.task])]
    verdicts += [Verdict(v.claim, NOT_TESTED, f"no {spec.task} run")
                 for spec in TASK_SPECS if spec.task not in best and spec.claims for v in spec.claims({})]
    footnotes: dict[str, str] = {}
    sections = [
        f"# {TITLE}",
        rendered_by(NAME, results),
        "## This suite beside the paper",
        markdown_table(*_main_rows(best, footnotes)),
        "Each cell: ours / the paper's (" + paper.TABLE2_FINETUNING.cited() + "), accuracy in %; *ppl* is held-out "
        "response perplexity (ours only; lower is better). Each task's cells come from the row's best learning rate on "
        "that task by its held-out perplexity (of the responses; continual pretraining: of domain text). "
        + " ".join(f"{mark} {text}" for text, mark in footnotes.items()),
        f"![training loss per task]({out_png.name})",
    ]
    for spec in TASK_SPECS:
        if spec.task in groups:
            sections += _task_section(spec, groups[spec.task], committed_sweep(out_dir, NAME, stem))
    unknown = sorted({run.result["config"]["task"]["name"] for run in runs if not any(spec.owns(run) for spec in TASK_SPECS)})
    sections += [
        f"## The paper ({paper.TABLE2_FINETUNING.cited()})",
        f"{paper.TABLE2_FINETUNING.unit}; {paper.TABLE2_FINETUNING.setup}.",
        paper.TABLE2_FINETUNING.markdown(),
        "## Notes",
        "\n".join(f"- {line}" for line in notes(runs, verdicts, groups, unknown)),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n\n".join(sections) + "\n")
    _plot(groups, out_png)
    return Rendered(markdown=out_md, plots=(out_png,), verdicts=tuple(verdicts))


def _rank_map(best: dict[str, dict]) -> dict[int, int]:
    """The runs' adapter ranks → the paper's: the smallest stands for r=8, the largest for r=256."""
    ranks = sorted({r for rows in best.values() for (_, r) in rows if r is not None})
    if set(ranks) <= set(PAPER_RANKS):
        return {r: r for r in ranks}
    return {r: PAPER_RANKS[0] if r == ranks[0] else PAPER_RANKS[1] for r in ranks}


def _row_order(key: tuple[str, int | None]) -> tuple:
    label, r = key
    order = list(PAPER_METHODS)
    return (r is not None, r or 0, order.index(label) if label in order else len(order), label)


def _main_rows(best: dict[str, dict], footnotes: dict[str, str]) -> tuple[list[str], list[list]]:
    rank_map = _rank_map(best)
    keys = sorted({key for rows in best.values() for key in rows}, key=_row_order)
    headers = ["method", "r"] + [column.header for spec in TASK_SPECS for column in spec.columns]
    rows = []
    for label, r in keys:
        paper_row = (PAPER_METHODS.get(label), None if r is None else rank_map[r])
        cells = [label, DASH if r is None else (f"{r} (paper {paper_row[1]})" if paper_row[1] != r else r)]
        for spec in TASK_SPECS:
            run = best.get(spec.task, {}).get((label, r))
            cells += [_cell(run, column, paper_row, footnotes) for column in spec.columns]
        rows.append(cells)
    return headers, rows


def _paper_value(column: Column, paper_row: tuple[str | None, int | None]) -> str:
    method, r = paper_row
    if column.paper is None or method is None:
        return ""
    try:
        value = paper.TABLE2_FINETUNING.value(method, r, column.paper)
    except KeyError:
        return " / —"
    return f" / {DASH if value is None else f'{value:.1f}'}"


def _cell(run: Run | None, column: Column, paper_row: tuple, footnotes: dict[str, str]) -> str:
    theirs = _paper_value(column, paper_row)
    if run is None:
        return NOT_RUN + theirs
    value = run.final.get(column.key)
    if value is None:
        info = (run.result.get("task", {}).get("benchmarks") or {}).get(column.benchmark or "", {})
        why = info.get("why") or "not in the run's metrics"
        text = f"{column.header}: not evaluated — {why}."
        mark = footnotes.setdefault(text, _MARKS[sum(m in _MARKS for m in footnotes.values()) % len(_MARKS)])
        return f"n/a{mark}" + theirs
    if not column.percent:
        return num(value)
    text = pct(value)
    if _at_chance(run, column):
        text += "†"
        footnotes.setdefault(f"at chance level: within the 95% binomial interval of {column.chance:.0%} for the number "
                             "of questions scored.", "†")
    return text + theirs


def _questions(run: Run, column: Column) -> int | None:
    """How many questions ``column``'s benchmark scored in ``run`` (the first few-shot setting's count)."""
    info = (run.result.get("task", {}).get("benchmarks") or {}).get(column.benchmark or "", {})
    runs = info.get("runs") or {"": info}
    counts = [sum((one.get("n_samples") or {}).values()) for one in runs.values()]
    return max(counts, default=0) or None


def _at_chance(run: Run, column: Column) -> bool:
    value, n = run.final.get(column.key), _questions(run, column)
    if column.chance is None or value is None or not n:
        return False
    return abs(value - column.chance) <= Z95 * math.sqrt(column.chance * (1 - column.chance) / n)


def _task_section(spec: TaskSpec, groups: list[tuple[Run, list[Run]]], sweep: str | None = None) -> list[str]:
    """A task's every-LR table and notes; ``sweep``: the committed LR sweep the rows' single LRs came from."""
    keys = [column.key for column in spec.columns]
    extra = sorted({k for _, members in groups for run in members for k in run.final
                    if not k.endswith(("_n", "_chance"))} - set(keys) - {"final_loss", "response_nll", "eval_nll"})
    rows = [[run.label, run.r or DASH, fmt_lr(run.lr), *(_detail(run, k) for k in keys + extra), num(run.final.get("final_loss")),
             f"`{run.name}`", "✓" if run is chosen else ""]
            for chosen, members in groups for run in members]
    everything = [run for _, members in groups for run in members]
    return [
        f"## {spec.title}: every learning rate tried",
        markdown_table(["method", "r", "lr", *keys, *extra, "final loss", "run", "chosen"], rows),
        "\n".join(f"- {line}" for line in [*_data_notes(everything), *spec.notes(everything),
                                           *lr_search_notes(groups, sweep)]),
    ]


def _detail(run: Run, key: str) -> str:
    value = run.final.get(key)
    return num(value) if "perplexity" in key or "nll" in key else pct(value)


def _data_notes(runs: list[Run]) -> list[str]:
    """Where the task's training rows came from, and what encoding did to them."""
    def source(result: dict) -> str:
        data = (result.get("task") or {}).get("data") or {}
        if data.get("source") == "pocket":
            packages = sorted({f"{s['package']} {s['version']}" for s in data.get("sources", [])})
            names = ", ".join(s["name"] for s in data.get("sources", []))
            return f"{data.get('name')} ({names}; from {', '.join(packages)}; not the paper's data)"
        if data.get("source") == "hub":
            return f"{data.get('hub_id')} @ {str(data.get('revision'))[:12]}"
        return str(data.get("path"))

    def encoding(result: dict) -> str:
        stats = ((result.get("task") or {}).get("encoding") or {}).get("train")
        if not stats:  # a language-modelling task (continual pretraining) packs its text: nothing is cut or dropped
            seq_len = result["config"]["task"].get("seq_len")
            return f"packed into blocks of {seq_len} tokens, every token trained" if seq_len else "?"
        return (f"{stats['examples']:,} of {stats['rows']:,} examples, {stats['truncated']:,} truncated to "
                f"{stats['max_length']} tokens, {stats['dropped']:,} dropped with no response token left")

    return [f"Training data: {distinct(source(run.result) for run in runs)}; encoded: {distinct(encoding(run.result) for run in runs)}."]


def notes(runs: list[Run], verdicts: list[Verdict], groups: dict, unknown: list[str]) -> list[str]:
    configs = [run.result["config"] for run in runs]
    lines = [
        f"Scale of these runs: model {distinct(model_description(run) for run in runs)}; "
        f"{distinct(run.max_steps for run in runs)} steps of global batch {distinct(c['train']['global_batch'] for c in configs)}; "
        f"examples cut at {distinct(c['task'].get('max_length') for c in configs)} tokens. The paper: "
        f"{paper.TABLE2_FINETUNING.setup}.",
        *(verdict.markdown() for verdict in verdicts),
        f"Row learning rates are chosen per task by held-out response perplexity, not by the benchmarks, so no test set "
        f"tunes them. Tasks without runs show \"{NOT_RUN}\".",
    ]
    if unknown:
        lines.append(f"Runs of tasks without a column spec were left out: {', '.join(unknown)} (add a TaskSpec to mora/tables/table2.py).")
    return [*lines, code_note(runs)]


def _plot(groups: dict[str, list[tuple[Run, list[Run]]]], out_png: Path) -> None:
    """Training loss of each row's chosen run, one panel per task."""
    plt = pyplot()
    tasks = [spec for spec in TASK_SPECS if spec.task in groups]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 4.5), squeeze=False)
    for ax, spec in zip(axes[0], tasks):
        draw_loss(ax, [best for best, _ in groups[spec.task]])
        ax.set_title(spec.title)
        ax.legend(fontsize=7)
    save_figure(fig, out_png, dpi=110)
