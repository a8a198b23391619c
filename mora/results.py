"""Run results in, paper tables out: the ``result.json`` schema, its readers, and the table renderers.

Every run leaves ``runs/<name>/result.json`` (written by the trainer through :func:`write_result`)::

    {"schema": 1, "name": "uuid-mora_rope-r8-lr3e-4-s42",
     "config":  {...the resolved run config...},
     "params":  {"trainable": 0, "total": 0, "rank_summary": ..., "lora_equivalent": ...},
     "metrics": {"char_acc": 1.0, "exact_match": 0.98, "final_loss": 0.01},    # final values
     "curves":  {"loss": [[10, 2.3], ...], "lr": [[10, 3e-4], ...], "grad_norm": [...],
                 "tokens_per_s": [...], "eval": [[300, {"char_acc": 0.5, "exact_match": 0.1}], ...]},
     "timing":  {"wall_s": 0.0, "tokens_per_s": 0.0, "peak_mem_mb": 0.0, ...},
     "env":     {...mora.envinfo.capture()...},
     "finished_at": "2026-11-23T19:00:00+00:00"}

Tables are *computed* from these files, never typed: ``python -m mora.results render table1`` reads
every ``result.json`` under ``results/runs/table1`` and writes ``results/table1.md`` and
``results/table1_curves.png``.  The paper's own figures are a separate, cited constant
(:data:`PAPER_TABLE1`) printed beside ours, and the notes under a table say — from the numbers — whether
each of the paper's claims held in these runs.

A later table adds one ``render_tableN(results, out_md, out_png)`` and one entry in :data:`TABLES`; the
pieces it needs (:func:`summarize`, :func:`best_per_group`, :func:`markdown_table`,
:func:`plot_loss_curves`) are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import yaml

SCHEMA_VERSION = 1
GRIDS_DIR = Path(__file__).resolve().parent.parent / "conf" / "grids"
RESULT_FILE = "result.json"

# ---------------------------------------------------------------------------------------------------
# Writing and reading runs
# ---------------------------------------------------------------------------------------------------


def write_result(
    run_dir: str | Path, *, config: dict, name: str, params: dict, metrics: dict, curves: dict, timing: dict,
    env: dict,
) -> dict:
    """Write ``run_dir/result.json`` (atomically: a reader never sees half a file) and return it as a
    reader will load it.  Tensors and numpy scalars become numbers, anything else unknown a string."""
    result = {
        "schema": SCHEMA_VERSION, "name": name, "config": config, "params": params, "metrics": metrics,
        "curves": curves, "timing": timing, "env": env,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
    path = Path(run_dir) / RESULT_FILE
    tmp = path.with_name(RESULT_FILE + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return json.loads(text)


def load_results(paths: str | Path | Iterable[str | Path]) -> list[dict]:
    """Load result files: each path is a result file, a run directory, or a directory searched
    recursively for run directories (``*/result.json``) and holding collected results (``<name>.json``,
    as ``mora.reproduce`` commits them).  Sorted by run name; a path that does not exist is an error."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such result file or run directory: {path}")
        files |= {path} if path.is_file() else set(path.rglob(RESULT_FILE)) | set(path.glob("*.json"))
    return sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["name"])


def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, one dict per line: training lines (``step``, ``loss``,
    ``learning_rate`` or ``lr``, ``tokens_per_s``, ...) and evaluation lines (``step``, ``eval/<metric>``).
    A partial last line (a run killed mid-write) is dropped; a broken line elsewhere is an error."""
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records


#: curve name → the metrics.jsonl keys it is read from (the first one present wins)
_SERIES = {"loss": ("loss",), "lr": ("lr", "learning_rate"), "grad_norm": ("grad_norm",), "tokens_per_s": ("tokens_per_s",)}


def curves_from_metrics(records: list[dict]) -> dict:
    """``{"loss": [[step, value], ...], "lr": ..., "grad_norm": ..., "tokens_per_s": ...,
    "eval": [[step, {metric: value}], ...]}`` from metrics.jsonl records; evaluation records of one step
    are merged and their ``eval/`` prefix dropped."""
    curves: dict[str, list] = {name: [] for name in _SERIES}
    evals: dict[int, dict] = {}
    for record in records:
        step = record["step"]
        for name, keys in _SERIES.items():
            key = next((k for k in keys if k in record), None)
            if key is not None:
                curves[name].append([step, record[key]])
        metrics = {k.removeprefix("eval/"): v for k, v in record.items() if k.startswith("eval/")}
        if metrics:
            evals.setdefault(step, {}).update(metrics)
    curves["eval"] = [[step, metrics] for step, metrics in sorted(evals.items())]
    return curves


# ---------------------------------------------------------------------------------------------------
# What a table needs from one run
# ---------------------------------------------------------------------------------------------------

_METHOD_NAMES = {"fft": "FFT", "lora": "LoRA", "lora_plus": "LoRA+", "dora": "DoRA", "asylora": "AsyLoRA", "mora": "MoRA"}


def method_label(config: dict) -> str:
    """The paper's name for a run's method: ``FFT``, ``LoRA``, ``MoRA rope``, ``ReLoRA``, ``ReMoRA``..."""
    method = config["method"]
    label = _METHOD_NAMES.get(method["name"], method["name"])
    if method.get("restart_every"):
        return "Re" + label
    if method["name"] == "mora" and method.get("compression"):
        label += f" {method['compression']}"
    return label


@dataclass
class Run:
    """One result reduced to what tables show.  ``evals`` maps an evaluation step to its metrics."""

    name: str
    family: str  # the method's config name plus "re" for restarts: "lora", "mora", "relora", "fft", ...
    label: str
    r: int | None  # None for full fine-tuning
    lr: float
    trainable: int | None
    max_steps: int
    final: dict  # final metrics (task metrics and final_loss)
    evals: dict[int, dict]
    result: dict

    def legend(self) -> str:
        return f"{self.label}" + (f" r={self.r}" if self.r is not None else "") + f" lr={fmt_lr(self.lr)}"

    def first_step_reaching(self, metric: str, target: float) -> int | None:
        """The first evaluation step where ``metric`` ≥ ``target`` (resolution: the eval interval)."""
        return next((s for s, m in sorted(self.evals.items()) if m.get(metric, -1.0) >= target - 1e-9), None)

    def nearest_eval(self, step: float, metric: str, within: float) -> tuple[int, float] | None:
        """``(eval step, value)`` of the evaluation nearest ``step`` if it is within ``within`` steps."""
        points = [(s, m[metric]) for s, m in self.evals.items() if metric in m]
        best = min(points, key=lambda p: (abs(p[0] - step), p[0]), default=None)
        return best if best is not None and abs(best[0] - step) <= within else None


def summarize(result: dict) -> Run:
    """A :class:`Run` from a result dict.  Final metrics fall back to the last curve points."""
    config, curves = result["config"], result["curves"]
    method = config["method"]
    evals = {int(step): metrics for step, metrics in curves.get("eval", [])}
    final = dict(evals[max(evals)]) if evals else {}
    if curves.get("loss"):
        final["final_loss"] = curves["loss"][-1][1]
    final.update(result.get("metrics", {}))
    steps = [point[0] for point in curves.get("loss", [])] + list(evals)
    max_steps = config["train"]["max_steps"] if config["train"].get("max_steps", -1) > 0 else max(steps, default=0)
    return Run(
        name=result["name"],
        family=("re" if method.get("restart_every") else "") + method["name"],
        label=method_label(config),
        r=None if method["name"] == "fft" else method.get("r"),
        lr=config["optim"]["lr"],
        trainable=result.get("params", {}).get("trainable"),
        max_steps=max_steps,
        final=final,
        evals=evals,
        result=result,
    )


def best_per_group(runs: list[Run], metric: str, lower_is_better: bool = False) -> list[tuple[Run, list[Run]]]:
    """Group runs by (method label, r) and pick each group's best by final ``metric`` (ties: lower
    final loss) — the best learning rate of a sweep.  Returns ``(best, all runs of the group by lr)``
    in the paper's row order: FFT first, then by rank, then by label."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.label, run.r), []).append(run)

    def score(run: Run) -> tuple[float, float]:  # smaller is better; a missing metric ranks last
        value = run.final.get(metric, float("inf") if lower_is_better else float("-inf"))
        return (value if lower_is_better else -value, run.final.get("final_loss", float("inf")))

    order = sorted(groups, key=lambda key: (key[1] is not None, key[1] or 0, key[0]))
    return [(min(groups[key], key=score), sorted(groups[key], key=lambda run: run.lr)) for key in order]


# ---------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------

DASH = "—"


def fmt_lr(lr: float) -> str:
    """``3e-4``, ``2.5e-5``: the way papers write learning rates."""
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def num(value: float | None, digits: int = 4) -> str:
    return DASH if value is None else f"{value:.{digits}g}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _distinct(values: Iterable) -> str:
    """One value, or all of them when runs differ (worth seeing in a table's notes)."""
    unique = sorted({str(v) for v in values})
    return unique[0] if len(unique) == 1 else ", ".join(unique) + " (differs between runs)"


# ---------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------


def _pyplot():
    """pyplot on the file-only Agg backend, imported on first use (the trainer never needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_loss(ax, runs: list[Run]) -> None:
    for i, run in enumerate(runs):  # colour C{i} is run i's in every panel, so one legend serves all
        points = run.result["curves"].get("loss", [])
        if points:
            ax.plot(*zip(*points), color=f"C{i}", label=run.legend())
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(axis="y", alpha=0.3)


def plot_loss_curves(results: list[dict], out_png: str | Path) -> None:
    """Training loss against step (log scale), one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_loss(ax, [summarize(r) for r in results])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Table 1: UUID memorisation
# ---------------------------------------------------------------------------------------------------

PAPER_TABLE1_SOURCE = "arXiv v1 Table 2, LLaMA-2-7B"
PAPER_TABLE1_SETUP = "LLaMA-2-7B, 10,000 UUID pairs, 1,000 steps of 1,000 pairs (arXiv v1 §3, §5.1)"
#: (method, r, {step: character accuracy %}) — copied from the paper, never computed
PAPER_TABLE1 = (
    ("FFT", None, {300: 42.5, 500: 100.0, 700: 100.0, 900: 100.0}),
    ("LoRA", 8, {300: 9.9, 500: 10.0, 700: 10.7, 900: 54.2}),
    ("MoRA", 8, {300: 10.1, 500: 15.7, 700: 87.4, 900: 100.0}),
    ("LoRA", 256, {300: 9.9, 500: 70.6, 700: 100.0, 900: 100.0}),
    ("MoRA", 256, {300: 41.6, 500: 100.0, 700: 100.0, 900: 100.0}),
)
#: the points of training the paper reports (steps 300/500/700/900 of 1,000)
TABLE1_FRACTIONS = (0.3, 0.5, 0.7, 0.9)
#: how far (as a fraction of training) an evaluation may lie from a reported point and still stand for it
TABLE1_TOLERANCE = 0.05


def render_table1(results: list[dict], out_md: str | Path, out_png: str | Path, about: str = "") -> str:
    """Write the UUID memorisation table (markdown) and its curves (PNG); return the markdown.
    ``about``: the grid's own words on how its scale was chosen, quoted under the notes."""
    if not results:
        raise ValueError("table1: no results to render")
    out_md, out_png = Path(out_md), Path(out_png)
    groups = best_per_group([summarize(r) for r in results], "char_acc")
    best = [b for b, _ in groups]
    headers, rows = _table1_rows(best)
    sweep = [
        [run.label, run.r or DASH, fmt_lr(run.lr), pct(run.final.get("char_acc")), pct(run.final.get("exact_match")),
         num(run.final.get("final_loss")), run.first_step_reaching("char_acc", 1.0) or DASH, f"`{run.name}`",
         "✓" if run is chosen else ""]
        for chosen, members in groups for run in members
    ]
    paper = [[m, r or DASH, *(f"{v:.1f}" for v in acc.values())] for m, r, acc in PAPER_TABLE1]
    image = os.path.relpath(out_png, out_md.parent)
    text = "\n\n".join([
        "# Table 1 — UUID memorisation",
        f"Rendered by `python -m mora.results render table1` from {len(results)} run result(s); do not edit by hand.",
        "## This suite: best learning rate per method and rank",
        markdown_table(headers, rows),
        "Character and exact-match accuracy in %. The learning rate of each row is the best of its sweep by final "
        "char accuracy (ties: lower final loss). *Steps to 100%* is the first evaluation at 100% char accuracy, so "
        "its resolution is the evaluation interval.",
        f"![training loss and char accuracy]({image})",
        "## Every learning rate tried (was any row under-tuned?)",
        markdown_table(["method", "r", "lr", "final char acc", "final exact match", "final loss", "steps to 100%",
                        "run", "chosen"], sweep),
        f"## The paper ({PAPER_TABLE1_SOURCE})",
        "Character accuracy (%) after the given number of training steps.",
        markdown_table(["method", "r", *map(str, PAPER_TABLE1[0][2])], paper),
        "## Notes",
        "\n".join(f"- {line}" for line in table1_notes(groups)),
        *([f"**How this scale was chosen** (from `conf/grids/table1.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    _plot_table1(best, out_png)
    return text


def _table1_rows(best: list[Run]) -> tuple[list[str], list[list]]:
    """Headers and rows of the main table.  The accuracy columns are named by step when every row
    trained for the same number of steps, by fraction of training otherwise."""
    same_length = len({run.max_steps for run in best}) == 1
    headers = ["method", "r", "lr", "trainable params"]
    headers += [f"char acc @{round(f * best[0].max_steps)}" if same_length else f"char acc @{f:.0%}" for f in TABLE1_FRACTIONS]
    headers += ["final char acc", "final exact match", "final loss", "steps to 100%"]
    rows = []
    for run in best:
        cells = []
        for fraction in TABLE1_FRACTIONS:
            target = round(fraction * run.max_steps)
            point = run.nearest_eval(target, "char_acc", TABLE1_TOLERANCE * run.max_steps)
            cells.append(DASH if point is None else pct(point[1]) + ("" if point[0] == target else f" (step {point[0]})"))
        rows.append([
            run.label, run.r or DASH, fmt_lr(run.lr), DASH if run.trainable is None else f"{run.trainable:,}", *cells,
            pct(run.final.get("char_acc")), pct(run.final.get("exact_match")), num(run.final.get("final_loss")),
            run.first_step_reaching("char_acc", 1.0) or DASH,
        ])
    return headers, rows


def table1_notes(groups: list[tuple[Run, list[Run]]]) -> list[str]:
    """The notes under Table 1, every sentence computed from the runs: their scale, whether each of the
    paper's claims held, how well each row's learning rate was searched, and where the runs came from."""
    best = [b for b, _ in groups]
    everything = [run for _, members in groups for run in members]
    configs = [run.result["config"] for run in everything]
    model = _distinct(_model_description(run) for run in everything)
    task_options = _distinct(
        ", ".join(f"{k}={v}" for k, v in c["task"].items() if k != "name") for c in configs
    )
    notes = [
        f"Scale of these runs: model {model}; task {_distinct(c['task']['name'] for c in configs)} with "
        f"{task_options}; {_distinct(run.max_steps for run in everything)} steps of global batch "
        f"{_distinct(c['train']['global_batch'] for c in configs)}. The paper: {PAPER_TABLE1_SETUP}.",
        *_table1_claims(best),
    ]
    untuned = [f"{b.label}" + (f" r={b.r}" if b.r is not None else "") for b, members in groups if len(members) == 1]
    swept = [f"{b.label}" + (f" r={b.r}" if b.r is not None else "") + f" ({len(members)} LRs)"
             for b, members in groups if len(members) > 1]
    if swept:
        notes.append("Learning rates swept for " + ", ".join(swept) + "; each row above shows its best.")
    if untuned:
        notes.append("Only one learning rate was tried for " + ", ".join(untuned) + ": those rows may be under-tuned.")
    commits = _distinct((run.result.get("env", {}).get("git") or {}).get("commit", "unknown")[:12] for run in everything)
    dirty = sum(bool((run.result.get("env", {}).get("git") or {}).get("dirty")) for run in everything)
    notes.append(f"Code: commit {commits}; {dirty} of {len(everything)} runs came from a working tree with "
                 "uncommitted changes.")
    return notes


def _model_description(run: Run) -> str:
    """The base model and its size: all parameters for full fine-tuning, the frozen ones for adapters
    (so runs of different methods on the same model describe it alike)."""
    params = run.result.get("params", {})
    total, trainable = params.get("total"), params.get("trainable")
    name = run.result["config"]["model"]["name"]
    if not isinstance(total, int):
        return name
    base = total if run.result["config"]["method"]["name"] == "fft" or not isinstance(trainable, int) else total - trainable
    return f"{name} ({base:,} parameters)"


def _reached(step: int | None, run: Run) -> str:
    return f"at step {step}" if step is not None else f"never (in {run.max_steps} steps)"


def _table1_claims(best: list[Run]) -> list[str]:
    """Claim 1 of the paper, split in its two halves, plus where FFT stands, judged on the best-LR rows."""
    by_rank: dict[int, dict[str, Run]] = {}
    for run in best:
        if run.family in ("lora", "mora") and run.r is not None:
            current = by_rank.setdefault(run.r, {}).get(run.family)
            if current is None or run.final.get("char_acc", -1) > current.final.get("char_acc", -1):
                by_rank[run.r][run.family] = run
    shared = sorted(r for r, fam in by_rank.items() if len(fam) == 2)
    claim_a = "Claim 1a (at small rank MoRA beats LoRA in final char accuracy): "
    claim_b = "Claim 1b (at large rank MoRA reaches 100% char accuracy earlier than LoRA): "
    if not shared:
        lines = [claim_a + "not tested — no rank has both a LoRA and a MoRA run.",
                 claim_b + "not tested — no rank has both a LoRA and a MoRA run."]
    else:
        lora, mora = by_rank[shared[0]]["lora"], by_rank[shared[0]]["mora"]
        a, b = mora.final.get("char_acc"), lora.final.get("char_acc")
        held = a is not None and b is not None and a > b
        lines = [claim_a + f"r={shared[0]}: **{'held' if held else 'did not hold'}** — "
                 f"{mora.label} {pct(a)}% vs LoRA {pct(b)}%."]
        if len(shared) < 2:
            lines.append(claim_b + f"not tested — LoRA and MoRA share only rank {shared[0]}.")
        else:
            lora, mora = by_rank[shared[-1]]["lora"], by_rank[shared[-1]]["mora"]
            m, l = mora.first_step_reaching("char_acc", 1.0), lora.first_step_reaching("char_acc", 1.0)
            held = m is not None and (l is None or m < l)
            lines.append(claim_b + f"r={shared[-1]}: **{'held' if held else 'did not hold'}** — "
                         f"{mora.label} {_reached(m, mora)}, LoRA {_reached(l, lora)}.")
    fft = [run for run in best if run.family == "fft"]
    others = [run for run in best if run.family != "fft"]
    if fft and others:
        f = fft[0].final.get("char_acc", -1)
        o = max(run.final.get("char_acc", -1) for run in others)
        tops = ", ".join(run.legend() for run in others if run.final.get("char_acc", -1) == o)
        verdict = "yes" if f > o else "tied" if f == o else "no"
        lines.append(f"Is full fine-tuning the best row? **{verdict}** — FFT {pct(f)}% final char accuracy; "
                     f"best other: {tops} {pct(o)}%.")
    return lines


def _plot_table1(best: list[Run], out_png: Path) -> None:
    """Two panels: training loss (log scale) and eval char accuracy, with the paper's 30/50/70/90% marks."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    _draw_loss(loss_ax, best)
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
        for fraction in TABLE1_FRACTIONS:
            ax.axvline(fraction * total, color="0.75", linestyle="--", linewidth=0.8, zorder=0)
    acc_ax.legend(fontsize=8)
    fig.suptitle("UUID memorisation (best learning rate per method and rank)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# The registry of tables and the command line
# ---------------------------------------------------------------------------------------------------

#: table name → renderer(results, out_md, out_png); its runs live in ``<runs root>/<table name>/``
TABLES: dict[str, Callable[[list[dict], Path, Path], str]] = {"table1": render_table1}


def render(table: str, runs_dir: str | Path, out_dir: str | Path) -> Path:
    """Render ``table`` from the results under ``runs_dir`` into ``out_dir/<stem>.md`` (+ PNG).

    The stem is the runs directory's name when it names a variant of the table (``table1-sweep``,
    ``table1-paper``), so variants never overwrite the default table; otherwise the table's name."""
    results = load_results(runs_dir)
    if not results:
        raise FileNotFoundError(f"{table}: no {RESULT_FILE} under {runs_dir}")
    name = Path(runs_dir).name
    stem = name if name.startswith(f"{table}-") else table
    out_md = Path(out_dir) / f"{stem}.md"
    grid = GRIDS_DIR / f"{table}.yaml"
    about = (yaml.safe_load(grid.read_text()) or {}).get("about", "") if grid.exists() else ""
    TABLES[table](results, out_md, Path(out_dir) / f"{stem}_curves.png", about)
    return out_md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mora.results",
        description="Render the paper's tables from run results (result.json files); nothing is retrained.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="render one table, or every table whose runs exist")
    cmd.add_argument("table", choices=[*TABLES, "all"])
    cmd.add_argument("--runs", help="directory of the table's runs (default: <root>/<table>)")
    cmd.add_argument("--root", default="results/runs", help="directory holding one run directory per table")
    cmd.add_argument("--out", default="results", help="where <table>.md and <table>_curves.png go")
    args = parser.parse_args(argv)

    if args.table == "all":
        if args.runs:
            parser.error("--runs names one table's runs; with 'all' use --root")
        dirs = sorted(d for d in Path(args.root).glob("*") if d.is_dir())
        todo = [(d.name.split("-")[0], d) for d in dirs if d.name.split("-")[0] in TABLES]
        for name in TABLES:
            if name not in {table for table, _ in todo}:
                print(f"{name}: skipped, no runs in {Path(args.root) / name}")
    else:
        todo = [(args.table, Path(args.runs or Path(args.root) / args.table))]
    try:
        for name, runs_dir in todo:
            print(f"{name}: wrote {render(name, runs_dir, args.out)}")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
