"""Supervised fine-tuning on prompt/response text — what the instruction-tuning and math tasks share.

A task row (a Tulu v2 conversation, a MetaMathQA problem) becomes a list of **segments**, pieces of text
each marked trained or not; :func:`encode` joins them, tokenizes the whole text once (so the tokens are
exactly those of the formatted example, as open-instruct and the official MoRA code tokenize it) and
labels a token when it *starts* inside a trained segment — the loss covers exactly the response tokens::

    [("<|user|>\\nHi\\n<|assistant|>\\n", False), ("Hello!</s>", True)]
    → input_ids  <s> <|user|> ... <|assistant|> \\n Hello ! </s>
      labels     -100  ...                  -100 Hello ! </s>

Examples longer than ``max_length`` are cut at the end and counted as **truncated**; an example left with
no trained token (its prompt alone fills ``max_length``) is **dropped** and counted, never trained
silently with zero loss.  Both counts are printed when the data is built and recorded in ``result.json``.

:class:`SFTTask` tokenizes the rows with ``datasets.map`` (``task.data.num_proc`` workers, cached by
fingerprint: a rerun does not re-tokenize) and scores **held-out response perplexity** — exp of the mean
NLL of the response tokens of ``task.eval_examples`` held-out examples (:mod:`mora.perplexity`), the
metric that separates methods at pocket scale where benchmarks sit at chance.

Pocket sources are built once by :func:`build_rows` from registry packages (:mod:`mora.data.packages`),
like the pocket corpus: ``train.jsonl``, ``validation.jsonl`` and a ``manifest.json`` naming every
source's package, version and licences.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import torch

from mora.config import ConfigError
from mora.data.corpus import MANIFEST, SplitWriter, split_of, write_manifest
from mora.data.packages import Package, fetch
from mora.models import hub_offline
from mora.perplexity import perplexity

from .base import IGNORE_INDEX, Task, TaskConfig
from .sources import DataConfig, check, load_split

#: one piece of a formatted example: its text, and whether its tokens are trained
Segment = tuple[str, bool]
BENCHMARK_SOURCES = ("hub", "local", "none")


def encode(tokenizer, segments: list[Segment], max_length: int) -> dict[str, Any]:
    """Tokens and labels of ``segments`` joined, cut to ``max_length``.

    The text is tokenized once with the tokenizer's special tokens (bos where it adds one, as lm-eval
    tokenizes evaluation prompts); a token is trained when its first character lies in a trained segment
    (added tokens such as bos have no characters and are never trained).  Returns ``input_ids``,
    ``labels``, ``truncated`` (the example was longer than ``max_length``) and ``loss_tokens`` (trained
    tokens left after the cut; 0 means the example must be dropped)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("supervised fine-tuning needs a fast tokenizer (character offsets mark the response tokens)")
    text, trained, start = "", [], 0
    for piece, is_trained in segments:
        if is_trained and piece:
            trained.append((start, start + len(piece)))
        text += piece
        start += len(piece)
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if end > begin and any(lo <= begin < hi for lo, hi in trained) else IGNORE_INDEX
        for token, (begin, end) in zip(ids, encoded["offset_mapping"])
    ]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "truncated": truncated,
            "loss_tokens": sum(label != IGNORE_INDEX for label in labels)}


def _encode_batch(batch: dict, tokenizer, segments_of: Callable[[dict, str], list[Segment]], max_length: int) -> dict:
    """``datasets.map`` worker: rows (columns of a batch) → encoded examples."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    encoded = [encode(tokenizer, segments_of(row, tokenizer.eos_token), max_length) for row in rows]
    return {key: [e[key] for e in encoded] for key in ("input_ids", "labels", "truncated", "loss_tokens")}


@dataclass
class EncodingStats:
    """What happened to one split's rows on the way to training examples."""

    rows: int
    truncated: int  # longer than max_length: cut at the end (kept if a trained token is left)
    dropped: int  # no trained token left after the cut: not used
    examples: int  # used
    loss_tokens: int  # trained tokens over the examples used
    max_length: int

    def line(self, split: str) -> str:
        share = self.truncated / self.rows if self.rows else 0.0
        return (f"{split}: {self.examples:,} of {self.rows:,} examples used; {self.truncated:,} truncated to "
                f"{self.max_length} tokens ({share:.1%}); {self.dropped:,} dropped with no response token left; "
                f"{self.loss_tokens:,} response tokens")


def tokenize_rows(rows, tokenizer, segments_of: Callable[[dict, str], list[Segment]], max_length: int,
                  num_proc: int | None = None):
    """``(examples, stats)``: every row of the ``datasets.Dataset`` ``rows`` encoded (:func:`encode`),
    those without a trained token dropped.  ``map`` caches by fingerprint: the same rows, tokenizer and
    length are tokenized once."""
    encoded = rows.map(
        _encode_batch, batched=True, num_proc=num_proc, remove_columns=rows.column_names, desc="tokenizing",
        fn_kwargs={"tokenizer": tokenizer, "segments_of": segments_of, "max_length": max_length},
    )
    kept = encoded.filter(lambda n: n > 0, input_columns="loss_tokens", num_proc=num_proc)
    stats = EncodingStats(rows=len(encoded), truncated=int(sum(encoded["truncated"])), dropped=len(encoded) - len(kept),
                          examples=len(kept), loss_tokens=int(sum(kept["loss_tokens"])), max_length=max_length)
    return kept, stats


@dataclass
class BenchmarkConfig:
    """Where one evaluation benchmark's documents come from (``task.mmlu``, ``task.gsm8k``, ``task.math``).

    Args:
        source: ``hub`` (the dataset its lm-eval task reads from the Hugging Face hub, pinned where the task
            pins it) | ``local`` (files of the same schema at ``path``, or, with no ``path``, the offline copy
            ``make finetune-data`` builds) | ``none`` (not evaluated; the table says so).
        path: local files; setting it selects ``local``.
        limit: evaluate the first ``limit`` documents only (MMLU: per subject); None: all of them.
    """

    source: str = "hub"
    path: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.path and self.source != "local":
            self.source = "local"
        if self.source not in BENCHMARK_SOURCES:
            raise ValueError(f"benchmark source {self.source!r} is not one of {list(BENCHMARK_SOURCES)}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"a benchmark limit must be positive (or null for all documents), got {self.limit}")


def check_benchmark(key: str, bench: BenchmarkConfig, hub_id: str, offline_copy: Path | None) -> None:
    """Preflight of ``task.<key>``: a hub source needs the hub; a local one needs its files (one-line errors)."""
    if bench.source == "hub" and hub_offline():
        raise ConfigError(
            f"task.{key}.source=hub evaluates {hub_id!r} from the Hugging Face hub, and this machine is offline "
            f"(HF_HUB_OFFLINE=1); pass task.{key}.path=/local/copy"
            + (f" or task.{key}.source=local (the offline copy `make finetune-data` builds)" if offline_copy else
               f" (no copy ships offline) or task.{key}.source=none"))
    if bench.source != "local":
        return
    if bench.path is None and offline_copy is None:
        raise ConfigError(f"task.{key}.source=local needs task.{key}.path=<files>: no {key} copy ships offline")
    where = Path(bench.path or offline_copy).expanduser()
    if not where.exists():
        raise ConfigError(f"task.{key}.path={bench.path!r} does not exist" if bench.path else
                          f"the offline {key} data {where} is not built; build it with `make finetune-data`")


@dataclass
class SFTTaskConfig(TaskConfig):
    """Options every supervised fine-tuning task has.

    Args:
        data: where the rows come from (:class:`tasks.sources.DataConfig`).  The paper's datasets have only a
            ``train`` split: with ``eval_split`` equal to ``train_split`` a fixed ``eval_fraction`` of it is held
            out by a hash of each row, as for local files, and never trained on.
        max_length: tokens per example; longer ones are cut at the end (counted), and those left with no
            response token dropped (counted).
        eval_examples: held-out examples whose response tokens are scored for ``response_perplexity``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    max_length: int = 512
    eval_examples: int = 256

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"{self.name} task: max_length must be at least 2, got {self.max_length}")
        if self.eval_examples <= 0 or self.eval_batch_size <= 0:
            raise ValueError(f"{self.name} task: eval_examples and eval_batch_size must be positive")


class SFTTask(Task):
    """A task trained on formatted prompt/response rows.  Subclasses name their row ``fields``, turn a row
    into segments (``segments_of(row, eos)``, a plain function: ``datasets.map`` pickles it), say where their pocket
    rows are built, and evaluate through lm-eval in :meth:`benchmarks`."""

    fields: ClassVar[tuple[str, ...]]
    segments_of: ClassVar[Callable[[dict, str], list[Segment]]]
    pocket_dir: ClassVar[Callable[[], Path]]
    build_command: ClassVar[str]
    primary_metric: ClassVar[str] = "response_perplexity"
    lower_is_better: ClassVar[bool] = True

    cfg: SFTTaskConfig

    @classmethod
    def pocket_files(cls) -> dict[str, Path]:
        return {"train": cls.pocket_dir() / "train.jsonl", "eval": cls.pocket_dir() / "validation.jsonl"}

    @classmethod
    def preflight(cls, cfg: SFTTaskConfig) -> None:
        check(cfg.data, cls.fields, cls.build_command, list(cls.pocket_files().values()))

    @classmethod
    def preflight_tokens(cls, cfg: SFTTaskConfig, tokenizer) -> None:
        """Refuse a ``max_length`` that cannot hold the prompt template itself: every example would be dropped."""
        segments = cls.segments_of(cls.template_row(), tokenizer.eos_token)
        prompt = encode(tokenizer, [(text, False) for text, trained in segments if not trained], 10**9)["input_ids"]
        if len(prompt) >= cfg.max_length:
            raise ConfigError(f"task.max_length={cfg.max_length} is shorter than the {cfg.name} prompt template alone "
                              f"({len(prompt)} tokens with an empty question): no response token would be trained; raise it")

    @classmethod
    @abstractmethod
    def template_row(cls) -> dict:
        """A row with empty contents: what the prompt costs before any question is in it."""

    def __init__(self, cfg: SFTTaskConfig, tokenizer: Any, workdir: Path):
        super().__init__(cfg, tokenizer, workdir)
        if tokenizer.eos_token is None:
            raise ValueError(f"the {cfg.name} task needs a tokenizer with an eos token (it ends every response)")
        self.stats: dict[str, EncodingStats] = {}
        self._eval: list[dict] | None = None
        #: what the last ``evaluate`` ran with, per benchmark: lm-eval version, few-shot counts, limits, sources
        self.last_eval_info: dict[str, Any] = {}

    def rows(self, split: str):
        """The raw rows of ``split`` (``train`` or ``eval``); a single-split hub dataset is split by row hash."""
        data = self.cfg.data
        if data.source != "hub" or data.eval_split != data.train_split:
            return load_split(data, split, self.pocket_files())
        rows = load_split(data, "train")
        held_out = split == "eval"
        return rows.filter(
            lambda row: (split_of(json.dumps(row, sort_keys=True, default=str), data.eval_fraction) == "validation") == held_out,
            num_proc=data.num_proc)

    def encoded(self, split: str):
        examples, stats = tokenize_rows(self.rows(split), self.tokenizer, type(self).segments_of, self.cfg.max_length,
                                        self.cfg.data.num_proc)
        self.stats[split] = stats
        print(f"{self.cfg.name} {stats.line(split)}", flush=True)
        return examples

    def train_dataset(self):
        return self.encoded("train").select_columns(["input_ids", "labels"])

    def eval_examples(self) -> list[dict]:
        """The first ``eval_examples`` held-out examples, encoded: the same ones at every evaluation."""
        if self._eval is None:
            held_out = self.encoded("eval")
            if len(held_out) == 0:
                raise ValueError(f"{self.cfg.name} task: no held-out example to score (task.data.eval_path / eval_fraction)")
            self._eval = held_out.select(range(min(self.cfg.eval_examples, len(held_out)))).select_columns(
                ["input_ids", "labels"]).to_list()
        return self._eval

    def response_perplexity(self, model: torch.nn.Module) -> dict[str, float]:
        scores = perplexity(model, self.eval_examples(), self.collate, self.cfg.eval_batch_size)
        return {"response_perplexity": scores["perplexity"], "response_nll": scores["nll"]}

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return {**self.response_perplexity(model), **self.benchmarks(model)}

    @abstractmethod
    def benchmarks(self, model: torch.nn.Module) -> dict[str, float]:
        """The task's lm-eval benchmarks, as fractions in [0, 1] (tables print percentages)."""

    def report(self) -> dict[str, Any]:
        """The data source (pocket: every package, version and licence from its manifest), what encoding did
        to each split, and how the benchmarks were run."""
        data = self.cfg.data
        if data.source == "pocket":
            manifest = json.loads((self.pocket_dir() / MANIFEST).read_text())
            source = {key: manifest[key] for key in ("name", "description", "sources", "totals", "sha256") if key in manifest}
        elif data.source == "hub":
            source = {"hub_id": data.hub_id, "config": data.hub_config, "revision": data.revision}
        else:
            source = {"path": data.path, "eval_path": data.eval_path}
        return {"data": {"source": data.source, **source},
                "encoding": {split: vars(stats) for split, stats in self.stats.items()},
                "benchmarks": self.last_eval_info}


# ---------------------------------------------------------------------------------------------------
# Pocket sources: task rows read from registry packages
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSource:
    """Task rows read (or generated) from one registry package.

    Args:
        name: what the rows are, e.g. ``xsum-summaries`` (shown in manifests and result notes).
        package: the registry package holding the data.
        read: the unpacked package's root → task rows (the task's schema, e.g. ``{"messages": [...]}``).
        split_key: the text whose hash decides a row's split; rows sharing it (questions about one passage,
            problems of one template) land on the same side.
        data_licence: the licence of the data itself.
        what: one line on where the rows come from inside the package.
    """

    name: str
    package: Package
    read: Callable[[Path], Iterator[dict]]
    split_key: Callable[[dict], str]
    data_licence: str
    what: str


def build_rows(out_dir: str | Path, sources: list[RowSource], eval_fraction: float, description: str) -> dict:
    """Fetch the sources' packages and write ``train.jsonl`` / ``validation.jsonl`` (one row a line, with its
    ``source``; exact duplicates kept once) and the manifest into ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    counts = {s.name: {"train": 0, "validation": 0} for s in sources}
    with SplitWriter(out_dir, eval_fraction) as writer:
        for source in sources:
            for row in source.read(fetch(source.package)):
                line = json.dumps({**row, "source": source.name}, ensure_ascii=False, sort_keys=True)
                if split := writer.write(line, split_key=source.split_key(row)):
                    counts[source.name][split] += 1
    manifest = {
        "name": out_dir.name,
        "description": description,
        "validation_fraction": eval_fraction,
        "split_rule": "a row is held out when sha1(split key) / 2**160 < validation_fraction (key: see each source)",
        "sources": [{"name": s.name, **s.package.describe(), "what": s.what, "data_licence": s.data_licence,
                     **{f"{split}_rows": n for split, n in counts[s.name].items()}} for s in sources],
        "totals": {split: sum(c[split] for c in counts.values()) for split in ("train", "validation")},
        "sha256": writer.checksums(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(out_dir, manifest)
    return manifest


def summary(manifest: dict) -> str:
    """A few lines on a built pocket source: its rows per source and split."""
    lines = [f"{manifest['name']}: {manifest['description']}"]
    for s in manifest["sources"]:
        lines.append(f"  {s['name']:<24} {s['package']} {s['version']:<12} train {s['train_rows']:>6,}  "
                     f"validation {s['validation_rows']:>5,}   ({s['data_licence']})")
    lines.append(f"  total: train {manifest['totals']['train']:,}, validation {manifest['totals']['validation']:,}")
    return "\n".join(lines)
