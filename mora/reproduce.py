"""Reproduce one paper table: run its grid (only the runs not finished yet), then render the table.

    python -m mora.reproduce table1                  # pocket scale, one LR per method  (make reproduce-table1)
    python -m mora.reproduce table1 sweep=lr         # each method over its LR grid; the table keeps the best
    python -m mora.reproduce table4 sweep=rank       # the runs that have an r_grid, at each of its ranks
    python -m mora.reproduce shootout sweep=seed     # the runs that have a seed_grid, at their lr, once per seed
    python -m mora.reproduce table1 scale=paper      # LLaMA-2-7B on GPUs (see conf/grids/table1.yaml)
    python -m mora.reproduce table1 --dry-run        # print the mora-run commands instead

The grid lives in ``conf/grids/<table>.yaml``: the runs of the table, each a method with its rank,
learning rate and other method settings (``set``), each either one value or one per scale; optionally
``lr_grid`` (the LRs of ``sweep=lr``), ``r_grid`` (the ranks of ``sweep=rank``, which runs only the
entries that have one) and ``seed_grid`` (the seeds of ``sweep=seed``: the entries that have one, each at its
``lr``, once per seed — seed-to-seed variation at the chosen LR); for a table spanning several tasks (Table 2), ``experiment`` (the run's
``conf/experiment/`` file, default ``<table>``) and ``overrides`` (more ``mora-run`` arguments, e.g.
``[task.domain=finance]``: part of the run's name); and ``only`` (a scale: the run exists at that scale only).
A grid whose table *is* its LR sweep (the shoot-out: every method keeps its best of three LRs) says
``sweep: lr`` at its top: the sweep is then what ``python -m mora.reproduce <table>`` runs, and its runs are
the table's own (``results/runs/<table>/``).
Every run is ``mora-run experiment=<its experiment> <overrides>`` (same name, same directory, same
resume/skip rules), trained in a child process (``--jobs`` of them at once), and its ``result.json`` copied to
``results/runs/<table>[-paper][-sweep[-rank|-seed]]/`` — the committed files ``make tables`` renders from
(``results/<table>[-paper][-sweep[-rank|-seed]].md``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from .config import validate
from .run import CONF_DIR, REPO_ROOT, run_name


def grid_overrides(table: str, scale: str, sweep: str | None) -> list[list[str]]:
    """The ``mora-run`` overrides of every run in the table's grid."""
    grid = OmegaConf.load(CONF_DIR / "grids" / f"{table}.yaml")
    # scales.<scale> is a list of overrides, or a mapping of named variants (e.g. the paper's two model sizes),
    # each such list: the grid then runs once per variant
    variants = grid.scales[scale]
    variants = list(variants.values()) if isinstance(variants, DictConfig) else [variants]
    points = []
    for variant, run in ((v, r) for v in variants for r in grid.runs):
        common = [f"experiment={run.get('experiment') or table}", *([f"scale={scale}"] if scale != "pocket" else []), *variant,
                  *run.get("overrides", [])]
        if (sweep in GRIDS and GRIDS[sweep] not in run) or run.get("only") not in (None, scale):
            continue
        settings = {k: v[scale] if isinstance(v, DictConfig) else v for k, v in (run.get("set") or {}).items()}
        # a dotted key (peft_kwargs.block_size) is an entry of a free-form dict, which Hydra adds with ++
        method = [f"method={run.method}"] + [f"{'++' if '.' in k else ''}method.{k}={v}" for k, v in settings.items()]
        if sweep == "rank":
            ranks = list(run.r_grid[scale])
        else:  # fft has no rank; peft types are sized by set: budget_r or peft_kwargs.*
            ranks = [run.r[scale]] if run.get("r") is not None else [None]
        lrs = run.lr_grid[scale] if sweep == "lr" else [run.lr[scale]]
        seeds = list(run.seed_grid[scale]) if sweep == "seed" else [None]  # None: the config's train.seed
        points += [[*common, *method, *([f"method.r={r}"] if r is not None else []), f"optim.lr={lr}",
                    *([f"train.seed={seed}"] if seed is not None else [])]
                   for r in ranks for lr in lrs for seed in seeds]
    return points


#: the sweeps that run only the grid entries holding their grid (``sweep=lr`` runs every entry over its lr_grid)
GRIDS = {"rank": "r_grid", "seed": "seed_grid"}


def run_in_subprocess(overrides: list[str], label: str) -> int:
    """``mora-run <overrides>`` in a child process, its output prefixed with ``label``; the exit code."""
    command = [sys.executable, "-m", "mora.run", *overrides]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            print(f"[{label}] {line}", end="", flush=True)
    return child.returncode


class Progress:
    """One line per run as it ends — how many are done, the time so far, an ETA — and a closing summary.
    Runs already finished before the start (``finished``: their labels) are skipped in seconds: the ETA is the
    mean time of the runs trained so far times the number still to train."""

    def __init__(self, total: int, finished: set[str], clock=time.monotonic):
        self.total, self.finished, self.clock = total, finished, clock
        self.start, self.done, self.trained = clock(), 0, 0
        self.lock = threading.Lock()

    def track(self, run):
        """``run`` (``(overrides, label) -> exit code``), reporting each run as it ends."""
        def tracked(overrides: list[str], label: str) -> int:
            code = run(overrides, label)
            with self.lock:
                self.done += 1
                self.trained += label not in self.finished
                print(f"reproduce: {self.done}/{self.total} done ({label}{'' if code == 0 else f': exit {code}'}) "
                      f"· {_minutes(self.clock() - self.start)} so far{self._eta()}", flush=True)
            return code
        return tracked

    def _eta(self) -> str:
        left = self.total - len(self.finished) - self.trained
        if not self.trained or left <= 0:
            return ""
        return f" · ETA ≈ {_minutes((self.clock() - self.start) / self.trained * left)}"

    def summary(self) -> str:
        return (f"{self.total} run(s) ({len(self.finished)} already finished, {self.trained} trained) in "
                f"{_minutes(self.clock() - self.start)}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def compose_run(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a grid in conf/grids/, e.g. table1")
    parser.add_argument("options", nargs="*", help="scale=pocket|paper, sweep=lr|rank|seed")
    parser.add_argument("--dry-run", action="store_true", help="print the mora-run commands and stop")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process "
                        "(CPU pocket scale: one per core, with launcher.cpu_threads=1)")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.options)
    grid_file = CONF_DIR / "grids" / f"{args.table}.yaml"
    if not grid_file.is_file():
        tables = ", ".join(sorted(p.stem for p in grid_file.parent.glob("*.yaml")))
        parser.error(f"no grid {args.table!r}: choose one of {tables} (conf/grids/)")
    default_sweep = OmegaConf.load(grid_file).get("sweep")  # the table is its LR sweep (the shoot-out)
    scale, sweep = options.get("scale", "pocket"), options.get("sweep", default_sweep)
    if sweep not in (None, "lr", "rank", "seed"):
        parser.error(f"sweep={sweep}: choose sweep=lr (each run over its lr_grid), sweep=rank (over its r_grid) or "
                     "sweep=seed (over its seed_grid)")

    from .tables import render_all

    points = grid_overrides(args.table, scale, sweep)
    run_dirs = []
    for overrides in points:  # validate the whole grid before training any of it
        cfg = validate(compose_run(overrides))
        run_dirs.append(Path(cfg.runs_dir) / run_name(cfg, overrides))
    if args.dry_run:
        print("\n".join("mora-run " + " ".join(overrides) for overrides in points))
        return
    progress = Progress(len(points), finished={d.name for d in run_dirs if (d / "result.json").is_file()})
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(progress.track(run_in_subprocess), points, [d.name for d in run_dirs]))
    if failed := [d.name for d, code in zip(run_dirs, codes) if code]:
        sys.exit(f"reproduce: {len(failed)} run(s) failed: {', '.join(failed)}")
    sweep_name = "" if sweep == default_sweep else {None: "", "lr": "sweep", "rank": "sweep-rank", "seed": "sweep-seed"}[sweep]
    variant = "-".join(v for v in (args.table, scale if scale != "pocket" else "", sweep_name) if v)
    collected = REPO_ROOT / "results" / "runs" / variant
    shutil.rmtree(collected, ignore_errors=True)
    collected.mkdir(parents=True)
    for run_dir in run_dirs:
        shutil.copy(run_dir / "result.json", collected / f"{run_dir.name}.json")
    reports = render_all(REPO_ROOT / "results" / "runs", REPO_ROOT / "results")  # every table and the index
    print(f"reproduce: {progress.summary()}; results in {collected.relative_to(REPO_ROOT)}/; "
          f"re-rendered {len(reports)} table(s) in results/", flush=True)


if __name__ == "__main__":
    main()
