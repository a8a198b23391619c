"""AdaptLLM's scoring of its domain tasks, as lm-eval hooks (referenced by the YAMLs beside this file).

lm-eval imports this file on its own (``!function metrics.<name>`` is resolved next to the YAML, not as
``tasks.cpt.lm_eval_tasks.metrics``), so it depends on nothing but the standard library and ``datasets``.

The protocol (AdaptLLM, microsoft/LMOps ``adaptllm/``: ``inference.py``, ``src/utils/metric.py``):

* Every row is a filled-in prompt ``input`` (its few-shot demonstrations, if any, already inside it) —
  evaluated with no further shots and no chat template.
* **Choice tasks** (``options``, ``gold_index``): each option is scored as the continuation ``" " +
  option`` of ``input``; the prediction is the option with the lowest *mean* token NLL (the summed
  log-likelihood lm-eval returns, divided by the option's token count ``option_tokens``, which
  :mod:`tasks.cpt.benchmarks` counts with the run's tokenizer exactly as lm-eval splits the pair).
* **Generation tasks** (``label``): greedy decoding from ``input`` until a newline (≤ 100 tokens).
* Metrics: accuracy; micro-F1 (RCT, ChemProt: equal to accuracy for single-label classes); F1 weighted
  by class support (FPB, FiQA-SA); Headline's weighted F1 per question (``class_id``) averaged over its
  9 questions; NER's entity-level F1 of ``name (type)`` lists; ConvFinQA's numeric match (the first
  number of the answer, matched by any generated number within 0.01).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path


# ---------------------------------------------------------------------------------------------- data
def load_rows(data_dir: str | None = None, file: str | None = None, **_ignored):
    """lm-eval ``custom_dataset``: ``<data_dir>/<file>`` (JSONL, AdaptLLM's schema) as the ``test`` split.
    ``data_dir`` comes through lm-eval's metadata, ``file`` from the YAML's ``dataset_kwargs``."""
    import datasets

    if not data_dir or not file:
        raise ValueError("the cpt_* tasks read <data_dir>/<file>: pass metadata={'data_dir': ...} "
                         "(mora.evaluate.run_lm_eval) or --metadata '{\"data_dir\": \"...\"}' (lm_eval CLI)")
    path = Path(data_dir) / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (CPTTask writes it before evaluating)")
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# ------------------------------------------------------------------------------------------- choices
def predicted_option(loglikelihoods: list[float], option_tokens: list[int]) -> int:
    """AdaptLLM's choice: the option with the highest mean log-likelihood per token (lowest mean NLL);
    ties go to the first."""
    means = [ll / max(n, 1) for ll, n in zip(loglikelihoods, option_tokens)]
    return max(range(len(means)), key=lambda i: (means[i], -i))


def choice_results(doc: dict, results: list) -> dict:
    """lm-eval hook of the choice tasks: ``score`` carries ``(gold, prediction, class_id)`` to the
    task's aggregation (:func:`accuracy`, :func:`weighted_f1`, :func:`headline_f1`)."""
    lls = [r[0] if isinstance(r, (tuple, list)) else r for r in results]
    pred = predicted_option(lls, doc["option_tokens"])
    return {"score": (int(doc["gold_index"]), pred, doc.get("class_id", 0))}


def accuracy(items: list) -> float:
    return sum(gold == pred for gold, pred, _ in items) / len(items)


def weighted_f1_of(golds: list, preds: list) -> float:
    """scikit-learn's ``f1_score(average="weighted")``: per-class F1 weighted by the class's support
    in ``golds`` (a class never predicted has F1 0)."""
    support = Counter(golds)
    total = 0.0
    for label, count in support.items():
        tp = sum(g == label and p == label for g, p in zip(golds, preds))
        predicted = sum(p == label for p in preds)
        precision = tp / predicted if predicted else 0.0
        recall = tp / count
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * count
    return total / len(golds)


def weighted_f1(items: list) -> float:
    return weighted_f1_of([g for g, _, _ in items], [p for _, p, _ in items])


def headline_f1(items: list) -> float:
    """Headline: weighted F1 within each of the questions asked about the headlines (``class_id``),
    averaged over the questions (AdaptLLM's ``compute_headline``)."""
    groups: dict = defaultdict(list)
    for gold, pred, class_id in items:
        groups[class_id].append((gold, pred))
    return sum(weighted_f1_of([g for g, _ in pairs], [p for _, p in pairs]) for pairs in groups.values()) / len(groups)


# ---------------------------------------------------------------------------------------- generation
def _label(doc: dict) -> str:
    label = doc["label"]
    return label[0] if isinstance(label, list) else label


_ENTITY = re.compile(r"([^\s]+[\s]+)(\([^\s]+\))", re.IGNORECASE)


def entities(text: str) -> list[tuple[str, str]]:
    """AdaptLLM's ``parse_ner``: ``"Silicon (organization) Bank (organization)"`` → ``[(name, type), ...]``,
    duplicates kept once."""
    found = []
    for name, kind in _ENTITY.findall(text):
        entity = (name[:-1] if len(name) > 1 else "", kind[1:-1] if len(kind) > 2 else "")
        if entity not in found:
            found.append(entity)
    return found


def entity_f1(gold: str, prediction: str) -> float:
    """F1 of the predicted ``(name, type)`` entities against the gold ones.  (AdaptLLM scores with the
    ``nereval`` package, which credits a right name and a right type separately; this counts exact
    pairs, so it is never above nereval's figure.)"""
    truth, guess = entities(gold), entities(prediction)
    if not truth and not guess:
        return 1.0
    correct = len(set(truth) & set(guess))
    if not correct:
        return 0.0
    precision, recall = correct / len(guess), correct / len(truth)
    return 2 * precision * recall / (precision + recall)


def ner_results(doc: dict, results: list) -> dict:
    return {"score": entity_f1(_label(doc), results[0])}


_NUMBER = re.compile(r"[-+]?[.]?[\d]+(?:,\d\d\d)*[\.]?\d*(?:[eE][-+]?\d+)?[%]*")


def numbers(text: str) -> list[float]:
    """The numbers in the first line of ``text`` (``12%`` is 0.12, ``1,000`` is 1000), as AdaptLLM's
    ``normalized_num`` reads them (without its ``eval``)."""
    values = []
    for token in _NUMBER.findall(text.split("\n")[0].strip()):
        percent = token.count("%")
        try:
            value = float(token.rstrip("%").replace(",", ""))
        except ValueError:
            continue
        values.append(value / 100 ** percent)
    return values


def convfinqa_results(doc: dict, results: list) -> dict:
    """1 if any generated number is within 0.01 of the answer's first number."""
    truth, guess = numbers(_label(doc)), numbers(results[0])
    hit = bool(truth) and any(math.isclose(g, truth[0], abs_tol=1e-2) for g in guess)
    return {"score": float(hit)}
