"""Where a task's rows come from — the paper's hub dataset, local files of its schema, or the pocket
source built offline — behind one config (``task.data``) and one loader.

    mora-run task=pretrain                                       # pocket: the corpus `make corpus` built
    mora-run task=pretrain task.data.path=/data/c4-sample.jsonl  # local files (setting a path selects them)
    mora-run task=pretrain task.data.source=hub                  # allenai/c4 en, pinned revision, streamed

* ``hub``: ``datasets.load_dataset(hub_id, hub_config, revision=revision, split=...)``, streamed when
  ``streaming`` is set (C4).  On an offline machine this stops before anything is written, with one line
  naming the dataset and the local override.
* ``local``: ``path`` is a JSONL/JSON file, a ``.txt`` file (one document), or a directory of them; rows must
  have the task's fields (``text`` for language modelling).  ``eval_path`` gives held-out rows; without it
  a fixed ``eval_fraction`` of rows is held out by a hash of each row (:func:`mora.data.corpus.split_of`).
* ``pocket``: JSONL files the task names (built by a make target into the cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mora.config import ConfigError
from mora.data.corpus import split_of
from mora.models import hub_offline

SOURCES = ("pocket", "hub", "local")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".txt")


@dataclass
class DataConfig:
    """``task.data``: which source, and where.  Setting ``path`` alone selects ``source=local``.

    Args:
        source: ``pocket`` | ``hub`` | ``local``.
        path, eval_path: local training / held-out rows (file or directory; JSONL, JSON or .txt).
        eval_fraction: share of local rows held out when ``eval_path`` is not given.
        hub_id, hub_config, revision: the paper's dataset on the Hugging Face hub, pinned.
        train_split, eval_split: the hub dataset's split names.
        streaming: read the hub dataset as a stream instead of downloading it (C4); works on local
            JSONL too (the same code path).
        num_proc: tokenization workers for map-style datasets (None: one).
    """

    source: str = "pocket"
    path: str | None = None
    eval_path: str | None = None
    eval_fraction: float = 0.02
    hub_id: str | None = None
    hub_config: str | None = None
    revision: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    streaming: bool = False
    num_proc: int | None = None

    def __post_init__(self) -> None:
        if self.path and self.source == "pocket":
            self.source = "local"
        if self.source not in SOURCES:
            raise ValueError(f"task.data.source={self.source!r} is not one of {list(SOURCES)}")
        if self.source == "local" and not self.path:
            raise ValueError("task.data.source=local needs task.data.path=<file or directory>")
        if self.source == "hub" and not self.hub_id:
            raise ValueError("task.data.source=hub needs task.data.hub_id")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"task.data.eval_fraction must be in (0, 1), got {self.eval_fraction}")


def local_files(path: str | Path) -> list[Path]:
    """The data files at ``path`` (a file, or a directory's JSONL/JSON/.txt files, sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_SUFFIXES and p.is_file())
    return []


def check(data: DataConfig, fields: tuple[str, ...], pocket_fix: str | None = None, pocket_files: list[Path] = ()) -> None:
    """Preflight: the rows can be had and have ``fields``; raises a one-line :class:`ConfigError` otherwise.

    ``pocket_files`` must exist for the pocket source (``pocket_fix`` is the command that builds them)."""
    if data.source == "hub":
        if hub_offline():
            raise ConfigError(
                f"task.data.source=hub reads the dataset {data.hub_id!r} (revision {data.revision or 'latest'}) from the "
                f"Hugging Face hub, and this machine is offline (HF_HUB_OFFLINE=1); download it on an online machine "
                f"and pass task.data.path=/local/copy (files with the fields {list(fields)})")
        return
    if data.source == "pocket":
        if missing := [p for p in pocket_files if not Path(p).is_file()]:
            raise ConfigError(f"the pocket data {missing[0]} is not built; build it with `{pocket_fix}`")
        return
    for what, where in (("task.data.path", data.path), ("task.data.eval_path", data.eval_path)):
        if where is None:
            continue
        files = local_files(where)
        if not files:
            raise ConfigError(f"{what}={where!r} is not a file or a directory holding .jsonl/.json/.txt files")
        first = files[0]
        if first.suffix == ".txt":
            if fields != ("text",):
                raise ConfigError(f"{what}: {first} is plain text, but this task needs rows with the fields {list(fields)} (JSONL)")
            continue
        row = _first_row(first)
        if missing := [f for f in fields if f not in row]:
            raise ConfigError(f"{what}: the rows of {first} lack the field(s) {missing}; this task reads {list(fields)}")


def _first_row(path: Path) -> dict:
    text = path.read_text(encoding="utf-8") if path.suffix == ".json" else path.open(encoding="utf-8").readline()
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not valid JSON/JSONL") from None
    row = row[0] if isinstance(row, list) and row else row
    if not isinstance(row, dict):
        raise ConfigError(f"{path}: expected JSON objects (one row each), found {type(row).__name__}")
    return row


def load_split(data: DataConfig, split: str, pocket_files: dict[str, Path] | None = None):
    """The rows of ``split`` (``"train"`` or ``"eval"``): a ``datasets.Dataset``, or a
    ``datasets.IterableDataset`` when ``data.streaming``."""
    import datasets

    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if data.source == "hub":
        return datasets.load_dataset(
            data.hub_id, data.hub_config, revision=data.revision, streaming=data.streaming,
            split=data.train_split if split == "train" else data.eval_split,
        )
    if data.source == "pocket":
        return _load_files([Path(pocket_files[split])], data.streaming)
    if split == "eval" and data.eval_path:
        return _load_files(local_files(data.eval_path), data.streaming)
    rows = _load_files(local_files(data.path), data.streaming)
    if data.eval_path:
        return rows
    held_out = split == "eval"
    return rows.filter(lambda row: (split_of(json.dumps(row, sort_keys=True, default=str), data.eval_fraction) == "validation") == held_out)


def _load_files(files: list[Path], streaming: bool):
    import datasets

    if files and all(f.suffix == ".txt" for f in files):  # one document per file
        rows = [{"text": f.read_text(encoding="utf-8", errors="replace")} for f in files]
        ds = datasets.Dataset.from_list(rows)
        return ds.to_iterable_dataset() if streaming else ds
    if any(f.suffix == ".txt" for f in files):
        raise ConfigError(f"mixing .txt and JSON files in one data path is not supported: {[str(f) for f in files[:3]]}")
    return datasets.load_dataset("json", data_files=[str(f) for f in files], split="train", streaming=streaming)
