"""What every table module needs: runs reduced to table rows, the protocol's return types, formatting,
the notes every table carries, and plotting.

A table module reads result dicts (:func:`mora.results.load_results`), turns each into a :class:`Run`
with :func:`summarize`, picks the best learning rate of each method and rank with :func:`best_per_group`,
formats cells with :func:`pct` / :func:`num` / :func:`fmt_lr` and :func:`markdown_table`, and returns a
:class:`Rendered` whose :class:`Verdict` list says which of the paper's claims held.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

# ---------------------------------------------------------------------------------------------------
# What a table module returns (the protocol is described in mora/tables/__init__.py)
# ---------------------------------------------------------------------------------------------------

HELD, NOT_HELD, NOT_TESTED = "held", "did not hold", "not tested"


@dataclass(frozen=True)
class Verdict:
    """One of the paper's claims judged on these runs.  ``claim``: the claim in a few words, led by its
    number (``"Claim 1a (at small rank MoRA beats LoRA in final char accuracy)"``); ``verdict``: one of
    :data:`HELD`, :data:`NOT_HELD`, :data:`NOT_TESTED`; ``evidence``: the numbers behind it, one line
    (for *not tested*, what was missing)."""

    claim: str
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.verdict not in (HELD, NOT_HELD, NOT_TESTED):
            raise ValueError(f"verdict {self.verdict!r}: use HELD, NOT_HELD or NOT_TESTED from mora.tables.common")

    def markdown(self) -> str:
        """``Claim …: **held** — evidence.`` — the same line in a table's notes and in the index."""
        return f"{self.claim}: **{self.verdict}** — {self.evidence}."


@dataclass(frozen=True)
class Rendered:
    """What a table module's ``render`` wrote: its markdown file, its plots, and its claim verdicts."""

    markdown: Path
    plots: tuple[Path, ...]
    verdicts: tuple[Verdict, ...]


# ---------------------------------------------------------------------------------------------------
# What a table needs from one run
# ---------------------------------------------------------------------------------------------------

_METHOD_NAMES = {"fft": "FFT", "lora": "LoRA", "lora_plus": "LoRA+", "dora": "DoRA", "asylora": "AsyLoRA", "mora": "MoRA"}


def method_label(config: dict) -> str:
    """The paper's name for a run's method: ``FFT``, ``LoRA``, ``MoRA rope``, ``ReLoRA``, ``ReMoRA``, and for
    ``method=peft`` its type's (``MiSS``, ``C3A``, ...: :data:`mora.methods.PEFT_TYPES`)."""
    method = config["method"]
    if method["name"] == "peft":
        from ..methods import PEFT_TYPES  # peft's import is only paid by tables that hold such runs

        return PEFT_TYPES[method["peft_type"]].title
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
    r: int | None  # None for full fine-tuning, and for a peft type sized by its own knob rather than a budget
    lr: float
    trainable: int | None
    max_steps: int
    final: dict  # final metrics (task metrics and final_loss)
    evals: dict[int, dict]
    result: dict  # the result dict (of the first seed, for a run that averages several: see ``seeds``)
    seeds: tuple[Run, ...] = ()  # the runs averaged into this one, one per seed (mean_over_seeds); () for one run

    def method(self) -> str:
        """``LoRA r=8``, ``FFT``, ``C3A block_size=8``: the method and its rank (a peft type's budget, else the
        size knob it was given), as notes name a row."""
        if self.r is not None:
            return f"{self.label} r={self.r}"
        knob = {k: v for k, v in self.result.get("params", {}).get("peft", {}).items() if k != "type"}
        return " ".join([self.label, *(f"{k}={v}" for k, v in knob.items())])

    def legend(self) -> str:
        return f"{self.method()} lr={fmt_lr(self.lr)}"

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
        r=_row_rank(method),
        lr=config["optim"]["lr"],
        trainable=result.get("params", {}).get("trainable"),
        max_steps=max_steps,
        final=final,
        evals=evals,
        result=result,
    )


def _row_rank(method: dict) -> int | None:
    """The rank a run stands at in a table: its budget (``method.budget_r``: LoRA-R's trainable count) where it
    was sized to one, else ``method.r``; None for full fine-tuning and for a peft type sized by its own knob."""
    if method["name"] == "fft":
        return None
    return method.get("budget_r") or (None if method["name"] == "peft" else method.get("r"))


def mean_over_seeds(runs: Iterable[Run]) -> list[Run]:
    """Runs that differ only in their seed (their names, ``…-s<seed>…``, match but for it) merged into one run:
    its final and evaluation metrics are the seeds' means, its ``seeds`` the runs themselves, its name
    ``…-s{42,43,44}…``.  A run without such twins comes back as it is; groups keep their first run's place."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_SEED.sub("", run.name), []).append(run)
    return [group[0] if len(group) == 1 else _mean(group) for group in groups.values()]


_SEED = re.compile(r"-s(\d+)(?=-|$)")  # the seed part of a run name (mora.run.run_name)


def _mean(group: list[Run]) -> Run:
    def means(metrics: list[dict]) -> dict:
        return {k: statistics.fmean(m[k] for m in metrics) for k in metrics[0]
                if all(isinstance(m.get(k), (int, float)) for m in metrics)}

    steps = sorted(set.intersection(*(set(run.evals) for run in group)))
    seeds = ",".join(match.group(1) for run in group if (match := _SEED.search(run.name)))
    return replace(group[0], name=_SEED.sub(f"-s{{{seeds}}}", group[0].name, count=1),
                   final=means([run.final for run in group]),
                   evals={step: means([run.evals[step] for run in group]) for step in steps}, seeds=tuple(group))


def each_seed(runs: Iterable[Run]) -> list[Run]:
    """The runs with every run that averages seeds replaced by its seeds' own runs."""
    return [one for run in runs for one in (run.seeds or (run,))]


def over_seeds(run: Run, value: Callable[[Run], float | None]) -> float | None:
    """``value(run)``, or for a run averaging several seeds the mean of ``value`` over them (None if any is)."""
    if not run.seeds:
        return value(run)
    values = [value(seed) for seed in run.seeds]
    return None if None in values else statistics.fmean(values)


def delta_rank(run: Run, key: str = "effective_rank") -> float | None:
    """A rank of the run's learned update ΔW, the mean over its adapted layers (:mod:`mora.analyze`,
    ``result["analysis"]["overall"]``): ``effective_rank``, ``numerical_rank``, ``relative_rank``, or
    ``max_rank`` (the most a layer's ΔW could have); None for a run that was not analysed.  Over seeds: the mean."""
    return over_seeds(run, lambda one: ((one.result.get("analysis") or {}).get("overall") or {}).get(key))


def group_by_method(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by (method, r) (:meth:`Run.method`), each group by learning rate, in the paper's row order: FFT
    first, then by rank, then by label."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method(), run.r), []).append(run)
    order = sorted(groups, key=lambda key: (key[1] is not None, key[1] or 0, key[0]))
    return [sorted(groups[key], key=lambda run: run.lr) for key in order]


def best_per_group(runs: list[Run], metric: str, lower_is_better: bool = False) -> list[tuple[Run, list[Run]]]:
    """Each (method label, r) group's best run by final ``metric`` (ties: lower final loss) — the best
    learning rate of a sweep.  Returns ``(best, all runs of the group by lr)`` in :func:`group_by_method`'s
    order."""

    def score(run: Run) -> tuple[float, float]:  # smaller is better; a missing metric ranks last
        value = run.final.get(metric, float("inf") if lower_is_better else float("-inf"))
        return (value if lower_is_better else -value, run.final.get("final_loss", float("inf")))

    return [(min(members, key=score), members) for members in group_by_method(runs)]


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


def rendered_by(name: str, results: list[dict]) -> str:
    """The line under a table's title that says where it came from."""
    return f"Rendered by `python -m mora.tables render {name}` from {len(results)} run result(s); do not edit by hand."


# ---------------------------------------------------------------------------------------------------
# Notes every table carries
# ---------------------------------------------------------------------------------------------------


def distinct(values: Iterable) -> str:
    """One value, or all of them when runs differ (worth seeing in a table's notes)."""
    unique = sorted({str(v) for v in values})
    return unique[0] if len(unique) == 1 else ", ".join(unique) + " (differs between runs)"


def model_description(run: Run) -> str:
    """The base model and its size: all parameters for full fine-tuning, the frozen ones for adapters
    (so runs of different methods on the same model describe it alike)."""
    params = run.result.get("params", {})
    if isinstance(params.get("base"), int):  # recorded by the trainer before the method was attached
        return f"{run.result['config']['model']['name']} ({params['base']:,} parameters)"
    total, trainable = params.get("total"), params.get("trainable")
    name = run.result["config"]["model"]["name"]
    if not isinstance(total, int):
        return name
    base = total if run.result["config"]["method"]["name"] == "fft" or not isinstance(trainable, int) else total - trainable
    return f"{name} ({base:,} parameters)"


def scale_note(runs: list[Run], paper_setup: str) -> str:
    """``Scale of these runs: model …; task … with …; N steps of global batch B. The paper: …`` — the first
    note of a table whose runs share a task recipe, every value read from the runs."""
    configs = [run.result["config"] for run in runs]
    task_options = distinct(", ".join(_option(k, v) for k, v in c["task"].items() if k != "name") for c in configs)
    return (f"Scale of these runs: model {distinct(model_description(run) for run in runs)}; task "
            f"{distinct(c['task']['name'] for c in configs)} with {task_options}; "
            f"{distinct(run.max_steps for run in runs)} steps of global batch "
            f"{distinct(c['train']['global_batch'] for c in configs)}. The paper: {paper_setup}.")


def _option(key: str, value) -> str:
    """``key=value``; a nested block (a task's data or benchmark source) by its ``source`` alone, e.g. ``data.source=pocket``."""
    if isinstance(value, dict):
        return f"{key}.source={value.get('source')}" if "source" in value else f"{key}=…"
    return f"{key}={value}"


def lr_search_notes(groups: list[tuple[Run, list[Run]]], sweep: str | None = None) -> list[str]:
    """How well each row's learning rate was searched: swept rows, and rows that may be under-tuned.
    ``sweep``: the stem of the table's committed LR sweep (``table3-sweep``) when one was rendered beside
    it — the single-LR rows of a default table are then that sweep's choices, and the note links it."""
    swept = [f"{best.method()} ({len(members)} LRs)" for best, members in groups if len(members) > 1]
    untuned = [best.method() for best, members in groups if len(members) == 1]
    notes = []
    if swept:
        notes.append("Learning rates swept for " + ", ".join(swept) + "; each row above shows its best.")
    # a best LR at either end of three or more tried: the optimum may lie outside what was searched
    edge = [f"{best.method()} ({fmt_lr(best.lr)}, the {'largest' if best.lr == max(lrs) else 'smallest'} of {len(lrs)})"
            for best, members in groups if len(lrs := sorted({run.lr for run in members})) >= 3 and best.lr in (lrs[0], lrs[-1])]
    if edge:
        notes.append("Best at an end of the LRs tried, so the optimum may lie beyond the grid: " + ", ".join(edge) + ".")
    if untuned and sweep:
        notes.append(f"One learning rate per row here ({', '.join(untuned)}): the grid's, chosen by the committed sweep "
                     f"[{sweep}.md]({sweep}.md), which shows every learning rate tried.")
    elif untuned:
        notes.append("Only one learning rate was tried for " + ", ".join(untuned) + ": those rows may be under-tuned.")
    return notes


def committed_sweep(out_dir: str | Path, name: str, stem: str) -> str | None:
    """``<name>-sweep`` when ``stem`` is the default table and that sweep's runs were collected beside it."""
    sweep = f"{name}-sweep"
    return sweep if stem == name and (Path(out_dir) / "runs" / sweep).is_dir() else None


def code_note(runs: list[Run]) -> str:
    """Which commit the runs came from, and how many from a working tree with uncommitted changes."""
    gits = [run.result.get("env", {}).get("git") or {} for run in runs]
    commits = distinct(git.get("commit", "unknown")[:12] for git in gits)
    dirty = sum(bool(git.get("dirty")) for git in gits)
    return f"Code: commit {commits}; {dirty} of {len(runs)} runs came from a working tree with uncommitted changes."


# ---------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------


def pyplot():
    """pyplot on the file-only Agg backend, imported on first use (the trainer never needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``out_png`` (creating its folder) and close it; returns the path."""
    out_png = Path(out_png)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    pyplot().close(fig)
    return out_png


def draw_loss(ax, runs: list[Run]) -> None:
    """Training loss against step (log scale) on ``ax``, run i in colour ``C{i}`` (so panels of one
    figure that draw the same runs in the same order share one legend)."""
    for i, run in enumerate(runs):
        points = run.result["curves"].get("loss", [])
        if points:
            ax.plot(*zip(*points), color=f"C{i}", label=run.legend())
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(axis="y", alpha=0.3)


def plot_loss_curves(runs: list[Run], out_png: str | Path) -> Path:
    """A one-panel figure of :func:`draw_loss`, with a legend; returns ``out_png``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw_loss(ax, runs)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)
