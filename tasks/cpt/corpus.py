"""The pocket domain corpora and the offline benchmarks, built by ``make domain-corpora``.

    python -m tasks.cpt.corpus                   # both domains: fetch the packages, build, summarise
    python -m tasks.cpt.corpus --domain biomed   # one domain
    python -m tasks.cpt.corpus --check           # print what is built (no download)

For each domain of :mod:`tasks.cpt.domains` this writes ``<cache>/corpora/cpt-<domain>/``:

* ``train.jsonl`` / ``validation.jsonl`` — the domain text, split by document (10% held out, by a hash of
  each document: :func:`mora.data.corpus.build_corpus`), each document tagged with its source's name;
* ``benchmarks/<config>.jsonl`` — the benchmarks that can be built offline, in AdaptLLM's schema
  (``input``, ``options``, ``gold_index``);
* ``manifest.json`` — every source and benchmark with its package, version and licences, the document
  counts, and how many training documents were dropped because they are evaluation items.

No evaluation item is training text: the benchmark sources are never text sources, and a text document
whose first line (a title or an exam question) equals an evaluation question, up to case and spacing, is
dropped before the split (:func:`held_out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from mora.data.corpus import build_corpus, load_manifest, write_manifest, summary as corpus_summary
from mora.data.packages import MissingData, fetch, run_build
from mora.paths import cache_path

from .domains import DOMAINS, Domain, normalise

BUILD_COMMAND = "make domain-corpora"
VALIDATION_FRACTION = 0.1
BENCHMARKS_DIR = "benchmarks"


def corpus_dir(domain: str) -> Path:
    return cache_path(f"corpora/{DOMAINS[domain].corpus}")


def pocket_benchmarks_dir(domain: str) -> Path:
    return corpus_dir(domain) / BENCHMARKS_DIR


def held_out(reader, questions: set[str], dropped: list[int]):
    """``reader`` without the documents whose first line is one of ``questions`` (normalised); each drop
    is counted in ``dropped[0]``."""

    def read(path: Path):
        for text in reader(path):
            if normalise(text.split("\n", 1)[0]) in questions:
                dropped[0] += 1
                continue
            yield text

    read.__qualname__ = f"held_out({getattr(reader, '__qualname__', reader)})"
    return read


def build(domain: Domain) -> dict:
    """Write the domain's pocket benchmarks, then its corpus without them; return the manifest."""
    out = corpus_dir(domain.name)
    bench_dir = out / BENCHMARKS_DIR
    bench_dir.mkdir(parents=True, exist_ok=True)
    questions: set[str] = set()
    benchmarks = []
    for bench in domain.benchmarks:
        if bench.pocket is None:
            continue
        rows = bench.pocket.build(fetch(bench.pocket.package))
        questions |= {normalise(row["question"]) for row in rows}
        path = bench_dir / f"{bench.config}.jsonl"
        path.write_text("".join(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n" for i, row in enumerate(rows)))
        benchmarks.append({"key": bench.key, "title": bench.title, "file": f"{BENCHMARKS_DIR}/{path.name}", "rows": len(rows),
                           "description": bench.pocket.description, **bench.pocket.package.describe(),
                           "files": list(bench.pocket.files), "data_licence": bench.pocket.data_licence})
    dropped = [0]
    sources = [replace(s, reader=held_out(s.reader, questions, dropped)) for s in domain.text_sources]
    manifest = build_corpus(out, sources, VALIDATION_FRACTION,
                            f"pocket {domain.title} text for continual pretraining (tasks/cpt/corpus.py); the paper's: "
                            f"{domain.paper_corpus}")
    manifest["benchmarks"] = benchmarks
    manifest["held_out_evaluation_items"] = {
        "rule": "a text document whose first line equals an evaluation question (case and spacing ignored) is dropped",
        "questions": len(questions), "documents_dropped": dropped[0]}
    manifest["tokens"] = _token_counts(out)
    write_manifest(out, manifest)
    return manifest


def _token_counts(out: Path) -> dict | None:
    """Tokens of each split with the pocket BPE, when ``make corpus`` has trained it (else None)."""
    from tasks.pretrain.corpus import TOKENIZER, tokenizer_dir

    if not (tokenizer_dir() / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    counts = {"tokenizer": TOKENIZER}
    for split in ("train", "validation"):
        with (out / f"{split}.jsonl").open(encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        counts[split] = sum(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    return counts


def check_built(domain: str) -> dict:
    """The manifest of a built domain corpus, or :class:`MissingData` naming ``make domain-corpora``."""
    manifest = load_manifest(corpus_dir(domain), BUILD_COMMAND)
    for bench in manifest.get("benchmarks", []):
        if not (corpus_dir(domain) / bench["file"]).is_file():
            raise MissingData(f"the pocket benchmark {corpus_dir(domain) / bench['file']} is not built; build it with `{BUILD_COMMAND}`")
    return manifest


def summary(manifest: dict) -> str:
    """The corpus summary (:func:`mora.data.corpus.summary`) with the domain's pocket benchmarks and held-out items."""
    held = manifest["held_out_evaluation_items"]
    return corpus_summary(manifest, [
        *(f"  benchmark {b['title']:<10} {b['rows']:>5,} rows  {b['package']} {b['version']}: {b['description']}"
          for b in manifest.get("benchmarks", [])),
        f"  {held['questions']:,} evaluation questions kept out of the text; {held['documents_dropped']} text documents dropped",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=sorted(DOMAINS), action="append", help="build only this domain (repeatable)")
    parser.add_argument("--check", action="store_true", help="print the built corpora's summaries; build nothing")
    args = parser.parse_args(argv)

    def built() -> Iterator[str]:
        for name in args.domain or sorted(DOMAINS):
            yield summary(check_built(name) if args.check else build(DOMAINS[name]))
            yield f"  corpus: {corpus_dir(name)}"
    return run_build(built)


if __name__ == "__main__":
    sys.exit(main())
