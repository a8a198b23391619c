"""Table 3 — pretraining from scratch: held-out perplexity of LoRA, MoRA, ReLoRA, ReMoRA and FFT (claim 4).

Runs: ``results/runs/table3/`` (``make reproduce-table3``; grid ``conf/grids/table3.yaml``; every LR tried by
``python -m mora.reproduce table3 sweep=lr`` into the same run directories).  Writes ``<stem>.md`` — per
model, the best learning rate of each method (lowest final perplexity), every learning rate tried, the
paper's figures (:data:`mora.tables.paper.TABLE3_C4`) beside ours, and notes computed from the runs — and
``<stem>_curves.png`` (validation perplexity and training loss against step).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import paper
from .common import (
    DASH, HELD, NOT_HELD, NOT_TESTED, Rendered, Run, Verdict, best_per_group, code_note, committed_sweep, delta_rank, distinct,
    draw_loss, fmt_lr, lr_search_notes, markdown_table, method_label, model_description, num, pyplot, rendered_by, save_figure,
    summarize,
)

NAME = "table3"
TITLE = "Table 3 — Pretraining from scratch"
METRIC = "perplexity"
#: the paper's row for each of this suite's method labels (MoRA pretrains with the sharing compression)
PAPER_ROWS = {"LoRA": "LoRA", "MoRA sharing": "MoRA", "ReLoRA": "ReLoRA", "ReMoRA": "ReMoRA"}


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md`` and ``out_dir/<stem>_curves.png``."""
    if not results:
        raise ValueError(f"{NAME}: no results to render")
    out_md, out_png = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}_curves.png"
    by_model: dict[str, list[Run]] = {}
    for run in map(summarize, results):
        by_model.setdefault(run.result["config"]["model"]["name"], []).append(run)
    sections, verdicts, plotted = [], [], []
    for model, runs in sorted(by_model.items()):
        groups = best_per_group(runs, METRIC, lower_is_better=True)
        best = [b for b, _ in groups]
        plotted.append((model, best))
        model_verdicts = claims(best, model if len(by_model) > 1 else "")
        verdicts += model_verdicts
        speed = trainer_speed_note(Path(out_dir) / "runs" / "table5", model)
        sections += [
            f"## This suite: {model} — best learning rate per method",
            markdown_table(*_main_rows(best)),
            "## Every learning rate tried (was any row under-tuned?)",
            markdown_table(["method", "r", "lr", "final perplexity", "final loss", "run", "chosen"], [
                [run.label, run.r or DASH, fmt_lr(run.lr), num(run.final.get(METRIC)), num(run.final.get("final_loss")),
                 f"`{run.name}`", "✓" if run is chosen else ""]
                for chosen, members in groups for run in members]),
            "## Notes" + (f" ({model})" if len(by_model) > 1 else ""),
            "\n".join(f"- {line}" for line in [*notes(groups, model_verdicts, committed_sweep(out_dir, NAME, stem)), *speed]),
        ]
    image = os.path.relpath(out_png, out_md.parent)
    text = "\n\n".join([
        f"# {TITLE}",
        rendered_by(NAME, results),
        "Validation perplexity: exp(mean next-token NLL) over a fixed set of held-out tokens (lower is better). "
        "The learning rate of each row is the best of its sweep by final perplexity.",
        f"![validation perplexity and training loss]({image})",
        *sections,
        f"## The paper ({paper.TABLE3_C4.cited()})",
        f"{paper.TABLE3_C4.unit}; {paper.TABLE3_C4.setup}.",
        paper.TABLE3_C4.markdown(),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    _plot(plotted, out_png)
    return Rendered(markdown=out_md, plots=(out_png,), verdicts=tuple(verdicts))


def _main_rows(best: list[Run]) -> tuple[list[str], list[list]]:
    headers = ["method", "r", "lr", "trainable params", "final perplexity", "vs FFT", "paper 250M", "paper 1.3B",
               "ΔW effective rank", "tokens/s"]
    fft = next((run.final.get(METRIC) for run in best if run.family == "fft"), None)
    rows = []
    for run in best:
        ppl = run.final.get(METRIC)
        row = PAPER_ROWS.get(run.label)
        paper_cells = [num(paper.TABLE3_C4.value(row, 128, size)) if row else DASH for size in paper.TABLE3_C4.columns]
        rows.append([
            run.label, run.r or DASH, fmt_lr(run.lr), DASH if run.trainable is None else f"{run.trainable:,}", num(ppl),
            f"{ppl / fft:.2f}×" if ppl and fft else DASH, *paper_cells, num(delta_rank(run), 3),
            num(run.result.get("timing", {}).get("tokens_per_s"), 4),
        ])
    return headers, rows


def _ranked(best: list[Run], family: str) -> Run | None:
    """The best run of ``family`` (lowest perplexity), at the rank the table compares."""
    runs = [run for run in best if run.family == family and run.final.get(METRIC) is not None]
    return min(runs, key=lambda run: run.final[METRIC], default=None)


def claims(best: list[Run], model: str = "") -> list[Verdict]:
    """Claim 4 of the paper, in its two halves: ReMoRA reaches a lower perplexity than ReLoRA (4a), and
    MoRA than LoRA (4b), each pair at its best learning rate."""
    where = f" [{model}]" if model else ""
    verdicts = []
    for claim, (mora_family, lora_family) in (
        (f"Claim 4a (pretraining: ReMoRA reaches a lower perplexity than ReLoRA){where}", ("remora", "relora")),
        (f"Claim 4b (pretraining: MoRA reaches a lower perplexity than LoRA){where}", ("mora", "lora")),
    ):
        mora, lora = _ranked(best, mora_family), _ranked(best, lora_family)
        if mora is None or lora is None:
            verdicts.append(Verdict(claim, NOT_TESTED, f"no {mora_family if mora is None else lora_family} run"))
            continue
        m, l = mora.final[METRIC], lora.final[METRIC]
        verdicts.append(Verdict(claim, HELD if m < l else NOT_HELD,
                                f"{mora.method()} {num(m)} vs {lora.method()} {num(l)} ({(m / l - 1) * 100:+.1f}%)"))
    return verdicts


def notes(groups: list[tuple[Run, list[Run]]], verdicts: list[Verdict], sweep: str | None = None) -> list[str]:
    best = [b for b, _ in groups]
    everything = [run for _, members in groups for run in members]
    configs = [run.result["config"] for run in everything]
    fft_runs = [run for run in everything if run.family == "fft"]  # their size is the model's, whatever modules_to_save copies
    data = distinct(_data_description(run.result) for run in everything)
    restarts = distinct(f"every {c['method']['restart_every']} steps, {c['method']['restart_warmup']}-step re-warm"
                        for c in configs if c["method"].get("restart_every"))
    lines = [
        f"Scale of these runs: model {distinct(model_description(run) for run in fft_runs or everything)}; data {data}; "
        f"{distinct(run.max_steps for run in everything)} steps of {distinct(c['train']['global_batch'] for c in configs)} "
        f"× {distinct(c['task']['seq_len'] for c in configs)} tokens; perplexity on "
        f"{distinct(c['task']['eval_tokens'] for c in configs)} held-out tokens; restarts {restarts}. "
        f"The paper: {paper.TABLE3_C4.setup}.",
        *(verdict.markdown() for verdict in verdicts),
    ]
    fft = _ranked(best, "fft")
    if fft is not None:
        others = [run for run in best if run.family != "fft" and run.final.get(METRIC) is not None]
        if others:
            closest = min(others, key=lambda run: run.final[METRIC])
            lines.append(f"Full-rank reference: FFT {num(fft.final[METRIC])}; the closest low-rank method is "
                         f"{closest.method()} at {num(closest.final[METRIC])} ({closest.final[METRIC] / fft.final[METRIC]:.2f}× FFT).")
    return [*lines, *lr_search_notes(groups, sweep), code_note(everything)]


def trainer_speed_note(table5_runs: Path, model: str) -> list[str]:
    """The suite trainer's throughput on this pretraining recipe against a bare PyTorch loop, from the
    newest ``scripts/bench_trainer.py experiment=table3 ... --record results/runs/table5`` row, if any."""
    rows = [json.loads(p.read_text()) for p in sorted(table5_runs.glob("*-trainer-pretrain-*.json"))]
    rows = [r for r in rows if r["config"]["model"]["name"] == model and r["config"].get("experiment") == NAME]
    if not rows:
        return [f"Trainer cost: not measured for {model} (`scripts/bench_trainer.py experiment={NAME} --record results/runs/table5`)."]
    row = max(rows, key=lambda r: r["finished_at"])
    m = row["metrics"]
    return [f"Trainer cost: the suite's trainer ran this recipe ({method_label(row['config'])}) at "
            f"{m['trainer_tokens_per_s']:,.0f} tokens/s against {sum(m['bare_tokens_per_s']) / len(m['bare_tokens_per_s']):,.0f} "
            f"for a bare PyTorch loop on the same model and batch: **{m['ratio']:.2f}×** (target ≥ 0.9; "
            f"`scripts/bench_trainer.py`, {row['finished_at'][:10]})."]


def _data_description(result: dict) -> str:
    data = (result.get("task") or {}).get("data") or {}
    if data.get("source") == "pocket":
        tokens = (data.get("tokens") or {}).get("train")
        return f"the pocket English corpus ({len(data.get('sources', []))} sources" + (f", {tokens:,} training tokens)" if tokens else ")")
    if data.get("source") == "hub":
        return f"{data.get('hub_id')} {data.get('config') or ''} @ {str(data.get('revision'))[:12]}"
    return str(data.get("path") or result["config"]["task"].get("data", {}).get("source", "?"))


def _plot(per_model: list[tuple[str, list[Run]]], out_png: Path) -> None:
    """Per model: validation perplexity (log) and training loss (log) against step; restarts marked."""
    plt = pyplot()
    fig, axes = plt.subplots(len(per_model), 2, figsize=(12, 4.5 * len(per_model)), squeeze=False)
    for (model, best), (ppl_ax, loss_ax) in zip(per_model, axes):
        for i, run in enumerate(best):
            points = sorted((step, m[METRIC]) for step, m in run.evals.items() if METRIC in m)
            if points:
                ppl_ax.plot(*zip(*points), color=f"C{i}", marker="o", markersize=3, label=run.legend())
        every = {run.result["config"]["method"].get("restart_every") for run in best} - {0, None}
        for period in every:
            for step in range(period, max(run.max_steps for run in best), period):
                for ax in (ppl_ax, loss_ax):
                    ax.axvline(step, color="0.8", linestyle=":", linewidth=0.8, zorder=0)
        ppl_ax.set_yscale("log")
        ppl_ax.set_xlabel("step")
        ppl_ax.set_ylabel("validation perplexity")
        ppl_ax.set_title(model)
        ppl_ax.grid(axis="y", alpha=0.3)
        ppl_ax.legend(fontsize=8)
        draw_loss(loss_ax, best)
    fig.suptitle("Pretraining from scratch (best learning rate per method; dotted: restarts)")
    save_figure(fig, out_png)
