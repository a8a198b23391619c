"""Run results: the ``result.json`` schema and its readers and writer.

Every run leaves ``runs/<name>/result.json`` (written by the trainer through :func:`write_result`)::

    {"schema": 1, "name": "uuid-mora_rope-r8-lr3e-4-s42",
     "config":  {...the resolved run config...},
     "params":  {"trainable": 0, "total": 0, "rank_summary": ..., "lora_equivalent": ...},
     "metrics": {"char_acc": 1.0, "exact_match": 0.98, "final_loss": 0.01},    # final values
     "curves":  {"loss": [[10, 2.3], ...], "lr": [[10, 3e-4], ...], "grad_norm": [...],
                 "tokens_per_s": [...], "eval": [[300, {"char_acc": 0.5, "exact_match": 0.1}], ...]},
     "timing":  {"wall_s": 0.0, "tokens_per_s": 0.0, "peak_mem_mb": 0.0, ...},
     "env":     {...mora.envinfo.capture()...},
     "task":    {...Task.report(): data sources with package, version and licence; greedy samples...},
     "finished_at": "2026-11-23T19:00:00+00:00"}

``mora.reproduce`` copies each table's finished results to ``results/runs/<table>[-variant]/<name>.json``;
:func:`load_results` reads either layout.  The tables are computed from these files by
:mod:`mora.tables` (``python -m mora.tables render all``), never typed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"


def write_result(
    run_dir: str | Path, *, config: dict, name: str, params: dict, metrics: dict, curves: dict, timing: dict,
    env: dict, task: dict | None = None,
) -> dict:
    """Write ``run_dir/result.json`` (atomically: a reader never sees half a file) and return it as a
    reader will load it.  Tensors and numpy scalars become numbers, anything else unknown a string.
    ``task``: what the task reports beyond metrics (its data sources, greedy samples, ...)."""
    result = {
        "schema": SCHEMA_VERSION, "name": name, "config": config, "params": params, "metrics": metrics,
        "curves": curves, "timing": timing, "env": env, "task": task or {},
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
