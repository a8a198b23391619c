"""The domain benchmarks' rows — from the hub, from local files, or built offline — in AdaptLLM's schema.

``task.benchmarks`` chooses where they come from:

* ``pocket``: the files ``make domain-corpora`` built (:mod:`tasks.cpt.corpus`); only the benchmarks a
  registry package ships (PubMedQA, USMLE, BioMMLU).  The others are reported as "hub/local only".
* ``hub``: AdaptLLM's evaluation sets at pinned revisions (``AdaptLLM/medicine-tasks``,
  ``AdaptLLM/finance-tasks``) and MMLU's biomedical subjects (``cais/mmlu``), via ``datasets``.
* ``local``: ``task.benchmarks_path`` is a folder holding ``<config>.jsonl`` (or ``.json``) per
  benchmark, named by AdaptLLM's config (``PubMedQA.jsonl``, ``FiQA_SA.jsonl``, ...), rows in AdaptLLM's
  schema: ``input`` + ``options`` + ``gold_index`` (choice tasks; Headline also ``class_id``) or
  ``input`` + ``label`` (NER, ConvFinQA).  A missing file leaves that benchmark unscored.
* ``none``: perplexity only.

Before lm-eval runs, :func:`write_run_file` copies a benchmark's rows into the run directory with the
token count of every option (``option_tokens``, counted with the run's tokenizer as lm-eval splits a
context/continuation pair), which AdaptLLM's mean-token-NLL choice needs (:mod:`.lm_eval_tasks.metrics`).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

from mora.config import ConfigError
from mora.models import hub_offline

from .corpus import BUILD_COMMAND, pocket_benchmarks_dir
from .domains import CHOICE, SHARED_SOURCES, Benchmark, Domain

BENCHMARK_SOURCES = ("pocket", "hub", "local", "none")
LOCAL_SUFFIXES = (".jsonl", ".json")


def local_file(folder: str | Path, bench: Benchmark) -> Path | None:
    """``<folder>/<config>.jsonl`` (or ``.json``) if it exists."""
    return next((p for p in (Path(folder).expanduser() / f"{bench.config}{s}" for s in LOCAL_SUFFIXES) if p.is_file()), None)


def unavailable(domain: Domain, bench: Benchmark, source: str, path: str | None, text_source: str) -> str | None:
    """Why ``bench`` cannot be scored in this configuration, or None when it can."""
    if (domain.name, bench.key) in SHARED_SOURCES and text_source == "pocket":
        return f"not scored: the pocket text {SHARED_SOURCES[domain.name, bench.key]!r} shares its source documents"
    if source == "none":
        return "not evaluated (task.benchmarks=none)"
    if source == "pocket" and bench.pocket is None:
        return "hub/local only: no registry package ships it"
    if source == "local" and local_file(path, bench) is None:
        return f"no {bench.config}.jsonl in task.benchmarks_path"
    return None


def check_source(domain: Domain, source: str, path: str | None) -> None:
    """Preflight of ``task.benchmarks``: one-line :class:`ConfigError` with the fix when the rows cannot be had."""
    if source == "pocket":
        missing = [b.config for b in domain.benchmarks if b.pocket and not (pocket_benchmarks_dir(domain.name) / f"{b.config}.jsonl").is_file()]
        if missing:
            raise ConfigError(f"the pocket benchmarks of {domain.name} ({', '.join(missing)}) are not built; build them with `{BUILD_COMMAND}`")
    elif source == "hub" and hub_offline():
        ids = sorted({f"{b.hub[0]} (revision {b.hub[1][:12]})" for b in domain.benchmarks})
        raise ConfigError(f"task.benchmarks=hub reads {', '.join(ids)} from the Hugging Face hub, and this machine is offline "
                          f"(HF_HUB_OFFLINE=1); download them on an online machine and pass task.benchmarks=local "
                          f"task.benchmarks_path=DIR (one <config>.jsonl per benchmark in AdaptLLM's schema), or task.benchmarks=pocket")
    elif source == "local":
        if not path or not Path(path).expanduser().is_dir():
            raise ConfigError(f"task.benchmarks=local needs task.benchmarks_path=<folder of <config>.jsonl files>, got {path!r}")
        found = [(b, f) for b in domain.benchmarks if (f := local_file(path, b))]
        if not found:
            raise ConfigError(f"task.benchmarks_path={path!r} holds none of "
                              f"{[b.config + '.jsonl' for b in domain.benchmarks]} (the {domain.name} benchmarks)")
        for bench, file in found:
            check_fields(bench, read_rows(file, limit=1), file)


def check_fields(bench: Benchmark, rows: list[dict], where: Path | str) -> None:
    if not rows:
        raise ConfigError(f"{where}: no rows")
    if missing := [f for f in bench.fields if f not in rows[0]]:
        raise ConfigError(f"{where}: the rows lack the field(s) {missing}; {bench.title} rows have {list(bench.fields)} (AdaptLLM's schema)")


def read_rows(path: Path, limit: int | None = None) -> list[dict]:
    """Rows of a JSONL file or a JSON list, the first ``limit`` only when given."""
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        return rows[:limit] if limit else rows
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ConfigError(f"{path} is not valid JSONL") from None
                if limit and len(rows) == limit:
                    break
    return rows


def load(domain: Domain, bench: Benchmark, source: str, path: str | None, limit: int | None) -> list[dict]:
    """The first ``limit`` rows of ``bench`` (all when None) from ``source``."""
    if source == "hub":
        rows = _hub_rows(bench)
        rows = rows[:limit] if limit else rows
    else:
        file = pocket_benchmarks_dir(domain.name) / f"{bench.config}.jsonl" if source == "pocket" else local_file(path, bench)
        rows = read_rows(file, limit)
    check_fields(bench, rows, f"{bench.title} ({source})")
    return rows


def _hub_rows(bench: Benchmark) -> list[dict]:
    import datasets

    hub_id, revision = bench.hub
    if not bench.hub_subsets:  # AdaptLLM's evaluation sets are already in its schema
        return datasets.load_dataset(hub_id, bench.config, revision=revision, split="test").to_list()
    rows = []  # MMLU subjects: question / choices / answer (an index)
    for subject in bench.hub_subsets:
        for row in datasets.load_dataset(hub_id, subject, revision=revision, split="test"):
            rows.append({"input": row["question"].strip(), "options": list(row["choices"]), "gold_index": int(row["answer"]),
                         "subject": subject})
    return rows


def option_tokens(tokenizer, prompt: str, options: list[str]) -> list[int]:
    """Tokens of each continuation ``" " + option`` after ``prompt``, split as lm-eval splits the pair:
    ``len(tokens(prompt + " " + option)) - len(tokens(prompt))`` (no special tokens)."""
    context = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return [max(1, len(tokenizer(f"{prompt} {option}", add_special_tokens=False)["input_ids"]) - context) for option in options]


def write_run_file(bench: Benchmark, rows: list[dict], tokenizer, out_dir: Path) -> Path:
    """``<out_dir>/<config>.jsonl``: the rows the lm-eval task reads (choice rows with ``option_tokens``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{bench.config}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            if bench.kind == CHOICE:
                row = {**row, "options": list(row["options"]), "option_tokens": option_tokens(tokenizer, row["input"], row["options"])}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def chance(bench: Benchmark, rows: list[dict]) -> float | None:
    """What an input-blind guesser scores on ``rows`` (None for generation tasks): the better of uniform random
    guessing and always giving the most frequent answer (PubMedQA's "yes" is 55% of its questions).

    Accuracy: 1/options, or the majority answer's share.  Weighted F1 with k options, a class of share p:
    random guessing gives it precision p and recall 1/k, F1 2p/(1 + pk); always answering the majority class m
    gives F1 2p_m/(1 + p_m) to it and 0 to the others.  Headline: per question (``class_id``), averaged."""
    if bench.kind != CHOICE:
        return None
    groups: dict = defaultdict(list)
    for row in rows:
        groups[row.get("class_id", 0) if bench.metric == "headline_f1" else 0].append(row)
    scores = []
    for members in groups.values():
        n, shares = len(members), [c / len(members) for c in Counter(r["gold_index"] for r in members).values()]
        if bench.metric in ("acc", "micro_f1"):
            scores.append(max(sum(1 / len(r["options"]) for r in members) / n, max(shares)))
        else:
            k, top = len(members[0]["options"]), max(shares)
            scores.append(max(sum(p * 2 * p / (1 + p * k) for p in shares), top * 2 * top / (1 + top)))
    return sum(scores) / len(scores)


def at_chance(score: float, chance_level: float, n: int) -> bool:
    """Is ``score`` within two binomial standard errors of ``chance_level`` on ``n`` items?"""
    return abs(score - chance_level) <= 2 * math.sqrt(max(chance_level * (1 - chance_level), 1e-12) / max(n, 1))
