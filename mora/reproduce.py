"""Reproduce one paper table: run its grid (only the runs not finished yet), then render the table.

    python -m mora.reproduce table1                  # pocket scale, one LR per method  (make reproduce-table1)
    python -m mora.reproduce table1 sweep=lr         # each method over its LR grid; the table keeps the best
    python -m mora.reproduce table1 scale=paper      # LLaMA-2-7B on GPUs (see conf/grids/table1.yaml)
    python -m mora.reproduce table1 --dry-run        # print the mora-run commands instead

The grid lives in ``conf/grids/<table>.yaml``: the runs of the table, each a method with its rank,
learning rate and other method settings (``set``), each either one value or one per scale.  Every run is composed exactly as ``mora-run experiment=<table> <overrides>``
would compose it (same name, same directory, same resume/skip rules), trained, and its ``result.json``
copied to ``results/runs/<table>[-paper]/`` — the committed files ``make tables`` renders from.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from .run import CONF_DIR, REPO_ROOT, launch, run_name
from .config import validate


def grid_overrides(table: str, scale: str, sweep: str | None) -> list[list[str]]:
    """The ``mora-run`` overrides of every run in the table's grid."""
    grid = OmegaConf.load(CONF_DIR / "grids" / f"{table}.yaml")
    common = [f"experiment={table}", *([f"scale={scale}"] if scale != "pocket" else []), *grid.scales[scale]]
    points = []
    for run in grid.runs:
        settings = {k: v[scale] if isinstance(v, DictConfig) else v for k, v in (run.get("set") or {}).items()}
        method = [f"method={run.method}"] + [f"method.{k}={v}" for k, v in settings.items()]
        if run.method != "fft":
            method.append(f"method.r={run.r[scale]}")
        lrs = run.lr_grid[scale] if sweep == "lr" else [run.lr[scale]]
        points += [[*common, *method, f"optim.lr={lr}"] for lr in lrs]
    return points


def compose_run(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a grid in conf/grids/, e.g. table1")
    parser.add_argument("options", nargs="*", help="scale=pocket|paper, sweep=lr")
    parser.add_argument("--dry-run", action="store_true", help="print the mora-run commands and stop")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.options)
    scale, sweep = options.get("scale", "pocket"), options.get("sweep")

    from .results import render

    points = grid_overrides(args.table, scale, sweep)
    names = []
    for overrides in points:
        cfg = compose_run(overrides)
        checked = validate(cfg)
        name = run_name(checked, overrides)
        names.append(Path(checked.runs_dir) / name)
        if args.dry_run:
            print("mora-run " + " ".join(overrides))
            continue
        print(f"\n=== {len(names)}/{len(points)}  {name}", flush=True)
        launch(cfg, overrides)
    if args.dry_run:
        return
    collected = REPO_ROOT / "results" / "runs" / (args.table if scale == "pocket" else f"{args.table}-{scale}")
    shutil.rmtree(collected, ignore_errors=True)
    collected.mkdir(parents=True)
    for run_dir in names:
        shutil.copy(run_dir / "result.json", collected / f"{run_dir.name}.json")
    render(args.table, collected, REPO_ROOT / "results")


if __name__ == "__main__":
    main()
