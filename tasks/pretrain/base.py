"""Build the pocket base: ``make pocket-base`` (= ``python -m tasks.pretrain.base``).

1. train ``mora-run experiment=pocket_base`` (FFT of ``pocket_llama`` on the pocket corpus; resumable:
   rerunning after a kill continues from the last checkpoint, and a finished run is not retrained);
2. copy its ``final/`` weights, tokenizer, ``config.yaml`` and ``result.json`` into
   ``<cache>/models/pocket_base`` — what ``model=pocket_base`` loads;
3. commit-ready record: its ``result.json`` into ``results/runs/pocket_base/`` and the rendered
   ``results/pocket_base.md`` (validation perplexity, greedy continuations, the corpus's sources).

The copy is atomic (a half-copied base is never visible), and skipped when the cache already holds the
base built by the same run (same ``result.json``).  ``--force`` retrains from scratch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from mora.config import validate
from mora.paths import REPO_ROOT, cache_path
from mora.reproduce import compose_run, run_in_subprocess
from mora.run import run_name

OVERRIDES = ["experiment=pocket_base"]


def base_dir() -> Path:
    return cache_path("models/pocket_base")


def install(run_dir: Path, target: Path) -> Path:
    """Copy a finished run's model into ``target`` (replacing it atomically)."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run_dir / "final", staging)
    for name in ("config.yaml", "result.json"):
        shutil.copy(run_dir / name, staging / f"run_{name}")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="retrain from scratch")
    args = parser.parse_args(argv)
    overrides = OVERRIDES + (["force=true"] if args.force else [])
    cfg = validate(compose_run(OVERRIDES))
    run_dir = Path(cfg.runs_dir) / run_name(cfg, OVERRIDES)
    if code := run_in_subprocess(overrides, "pocket_base"):
        return code
    target = base_dir()
    installed = target / "run_result.json"
    if not args.force and installed.is_file() and installed.read_bytes() == (run_dir / "result.json").read_bytes():
        print(f"pocket base: {target} is up to date")
    else:
        print(f"pocket base: installed {install(run_dir, target)}")
    record(run_dir)
    return 0


def record(run_dir: Path) -> None:
    """``results/runs/pocket_base/<name>.json`` and the rendered ``results/pocket_base.md``."""
    from mora.tables import render

    collected = REPO_ROOT / "results" / "runs" / "pocket_base"
    shutil.rmtree(collected, ignore_errors=True)
    collected.mkdir(parents=True)
    shutil.copy(run_dir / "result.json", collected / f"{run_dir.name}.json")
    print(f"pocket base: wrote {render('pocket_base', collected, REPO_ROOT / 'results').rendered.markdown}")


if __name__ == "__main__":
    sys.exit(main())
