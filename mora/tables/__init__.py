"""The paper's tables, one module per table, computed from run JSONs — never typed.

    python -m mora.tables render all           # every table that has runs, then results/README.md  (make tables)
    python -m mora.tables render table1        # one table from results/runs/table1/
    python -m mora.tables render table1 --runs results/runs/table1-sweep   # a variant → results/table1-sweep.md

Where things are
    mora/results.py          the run-JSON schema and its IO (write_result, load_results, ...)
    mora/tables/common.py    what every table needs: Run/summarize, best_per_group, formatting, notes, plots,
                             and the protocol's types Rendered and Verdict
    mora/tables/paper.py     every figure of the paper, with its citation (print it beside yours)
    mora/tables/tableN.py    one table: its rows, its notes, its claim verdicts, its plots
    mora/tables/index.py     results/README.md: what each table ran, where, how long, which claims held

Adding a table (copy mora/tables/table1.py, the model of a table module)
    1. Write ``mora/tables/<name>.py`` that defines::

           NAME = "<name>"                  # the module's own name; its runs are results/runs/<name>[-variant]/,
                                            # its grid conf/grids/<name>.yaml
           TITLE = "Table 2 — Fine-tuning"  # the markdown's heading, and its entry in the index

           def render(results: list[dict], out_dir: Path, stem: str, about: str) -> Rendered:
               '''Write out_dir/<stem>.md (and plots out_dir/<stem>_<what>.png); return what was written.'''

       ``results``: the loaded result dicts of one runs directory (never empty).  ``stem``: the file name to
       write, ``NAME`` itself or a variant's (``table1-sweep`` for runs in ``results/runs/table1-sweep/``),
       so name every file from ``stem``, never from ``NAME``.  ``about``: the grid's ``about:`` text ("" when
       none), how its scale was chosen; quote it under the notes.
       Return ``Rendered(markdown=path, plots=(png, ...), verdicts=(Verdict(claim, verdict, evidence), ...))``
       with one :class:`Verdict` per claim of the paper the table tests: ``verdict`` is ``HELD``,
       ``NOT_HELD`` or ``NOT_TESTED`` (the runs cannot decide it; ``evidence`` says what is missing), and
       ``evidence`` is one line of numbers.  Print each as ``verdict.markdown()`` in the table's notes, so
       the table and the index say the same thing.
    2. Add ``"<name>",`` to ``_MODULES`` below — one line.  The module is checked on import.
    3. Build from :mod:`mora.tables.common` (reuse, don't copy) and take the paper's figures from
       :mod:`mora.tables.paper`; every other number comes from the runs.
    4. Test it in tests/test_tables.py with synthetic runs (``fake_run`` there writes one as the trainer does).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from ..results import RESULT_FILE, load_results
from . import index
from .common import HELD, NOT_HELD, NOT_TESTED, Rendered, Verdict

__all__ = ["HELD", "NOT_HELD", "NOT_TESTED", "Rendered", "Report", "TABLES", "TableModule", "Verdict",
           "render", "render_all"]

GRIDS_DIR = Path(__file__).resolve().parents[2] / "conf" / "grids"


class TableModule(Protocol):
    """What a table module defines (see the module docstring)."""

    NAME: str
    TITLE: str

    def render(self, results: list[dict], out_dir: Path, stem: str, about: str) -> Rendered: ...


@dataclass(frozen=True)
class Report:
    """One runs directory rendered: which table, from which runs, and what its module wrote."""

    table: TableModule
    stem: str
    runs_dir: Path
    results: list[dict]
    rendered: Rendered


def render(table: str, runs_dir: str | Path, out_dir: str | Path) -> Report:
    """Render ``table`` from the results under ``runs_dir`` into ``out_dir``.

    The stem is the runs directory's name when it names a variant of the table (``table1-sweep``,
    ``table1-paper``), so variants never overwrite the default table; otherwise the table's name."""
    module = TABLES[table]
    results = load_results(runs_dir)
    if not results:
        raise FileNotFoundError(f"{table}: no {RESULT_FILE} under {runs_dir}")
    name = Path(runs_dir).name
    stem = name if name.startswith(f"{table}-") else table
    grid = GRIDS_DIR / f"{table}.yaml"
    about = (yaml.safe_load(grid.read_text()) or {}).get("about", "") if grid.exists() else ""
    rendered = module.render(results, Path(out_dir), stem, about)
    return Report(table=module, stem=stem, runs_dir=Path(runs_dir), results=results, rendered=rendered)


def runs_dirs(root: str | Path) -> list[tuple[str, Path]]:
    """``(table, runs directory)`` for every directory under ``root`` named for a table or a variant of one
    (``table1``, ``table1-sweep``), sorted by directory name."""
    dirs = sorted(d for d in Path(root).glob("*") if d.is_dir())
    return [(d.name.split("-")[0], d) for d in dirs if d.name.split("-")[0] in TABLES]


def render_all(root: str | Path, out_dir: str | Path) -> list[Report]:
    """Render every table that has runs under ``root``, then the index ``out_dir/README.md``."""
    reports = [render(table, runs_dir, out_dir) for table, runs_dir in runs_dirs(root)]
    index.write_index(reports, out_dir, list(TABLES.values()), runs_root=root)
    return reports


def _load(name: str) -> TableModule:
    """Import ``mora.tables.<name>`` and check that it follows the protocol."""
    module = importlib.import_module(f"{__name__}.{name}")
    if getattr(module, "NAME", None) != name:
        raise TypeError(f"{module.__name__} must define NAME = {name!r} (its own module name)")
    if not isinstance(getattr(module, "TITLE", None), str) or not callable(getattr(module, "render", None)):
        raise TypeError(f"{module.__name__} must define TITLE (a string) and render(results, out_dir, stem, about); "
                        "see mora/tables/__init__.py")
    return module


#: every table module, in the index's order; a new table joins with one line here
_MODULES = (
    "pocket_base",
    "table1",
    "table2",
    "table3",
    "table4",
    "shootout",
    "table5",
)
TABLES: dict[str, TableModule] = {name: _load(name) for name in _MODULES}
