"""``python -m mora.tables render <table>|all``: render the paper's tables from run results; nothing is retrained."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import TABLES, index, render, render_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mora.tables",
        description="Render the paper's tables from run results (result.json files); nothing is retrained.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="render one table, or every table whose runs exist and then the index")
    cmd.add_argument("table", choices=[*TABLES, "all"])
    cmd.add_argument("--runs", help="directory of the table's runs (default: <root>/<table>); a directory named "
                     "<table>-<variant> renders into <out>/<table>-<variant>.md")
    cmd.add_argument("--root", default="results/runs", help="directory holding one runs directory per table")
    cmd.add_argument("--out", default="results", help="where <table>.md, its plots and README.md (the index) go")
    args = parser.parse_args(argv)

    if args.table == "all" and args.runs:
        parser.error("--runs names one table's runs; with 'all' use --root")
    try:
        if args.table == "all":
            reports = render_all(args.root, args.out)
        else:
            reports = [render(args.table, args.runs or Path(args.root) / args.table, args.out)]
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for report in reports:
        print(f"{report.table.NAME}: wrote {report.rendered.markdown}")
    if args.table == "all":
        rendered = {report.table.NAME for report in reports}
        for name in TABLES:
            if name not in rendered:
                print(f"{name}: skipped, no runs in {Path(args.root) / name}")
        print(f"index: wrote {Path(args.out) / index.FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
