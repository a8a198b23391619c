"""lm-eval hooks of the instruction-tuning task's local MMLU (``mmlu_local.yaml``).

lm-eval imports this file on its own (``!function metrics.<name>`` resolves next to the YAML), so it depends
only on the standard library, ``datasets`` and lm-eval itself.

``mmlu_local`` is lm-eval's standard ``mmlu`` task definition (``lm_eval/tasks/mmlu/default``: the same
prompt, choices, target, per-subject description and ``first_n`` few-shot examples from the subject's dev
split) as **one** task over local files in ``cais/mmlu``'s schema instead of 57 tasks over the hub.  Its
accuracy is the mean over all questions, which is what the standard group reports (``weight_by_size``).

How one task gets per-subject shots: lm-eval hands the sampler the evaluated question only when few-shot
examples come from the test split, so :func:`load_mmlu` puts dev and test questions in one ``test`` split
(each row marked by ``split``), the task keeps the test questions (:func:`test_questions`), the few-shot
pool the dev ones (:func:`dev_questions`), and :class:`SubjectFirstN` takes the first ``n`` of the question's
subject.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval.api.samplers import ContextSampler


def _read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_mmlu(mmlu_path: str | None = None, mmlu_per_subject: int | None = None, **_ignored):
    """lm-eval ``custom_dataset``: the rows of ``<mmlu_path>/{dev,test}.jsonl`` (``question``, ``subject``,
    ``choices``, ``answer``) as one ``test`` split, each marked with its ``split``; with ``mmlu_per_subject``
    only the first N test questions of each subject (the standard group's ``limit`` applies per subject too)."""
    import datasets

    if not mmlu_path:
        raise ValueError("mmlu_local needs its data directory: metadata={'mmlu_path': <dir with dev.jsonl and test.jsonl>}")
    folder = Path(mmlu_path)
    missing = [name for name in ("dev.jsonl", "test.jsonl") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"mmlu_local: {folder} lacks {missing}")
    rows, taken = [{**row, "split": "dev"} for row in _read(folder / "dev.jsonl")], {}
    for row in _read(folder / "test.jsonl"):
        taken[row["subject"]] = taken.get(row["subject"], 0) + 1
        if mmlu_per_subject is None or taken[row["subject"]] <= mmlu_per_subject:
            rows.append({**row, "split": "test"})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def test_questions(docs):
    """The evaluated questions (``process_docs``)."""
    return docs.filter(lambda doc: doc["split"] == "test")


def dev_questions(docs):
    """The few-shot pool (``fewshot_config.process_docs``): MMLU's dev questions."""
    return docs.filter(lambda doc: doc["split"] == "dev")


class SubjectFirstN(ContextSampler):
    """lm-eval's ``first_n`` sampler restricted to the evaluated question's subject: the first ``n`` dev
    questions of that subject, in file order — what the standard per-subject tasks draw."""

    def sample(self, n: int, eval_doc=None, df=None, **kwargs):
        if eval_doc is None:
            raise ValueError("mmlu_local: the sampler needs the evaluated question (fewshot_split must be the test split)")
        pool = [doc for doc in self.fewshot_docs() if doc["subject"] == eval_doc["subject"]]
        if n > len(pool):
            raise ValueError(f"mmlu_local: {n} few-shot examples requested, the dev split has {len(pool)} for {eval_doc['subject']}")
        return pool[:n]
