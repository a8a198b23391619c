"""Metrics and dataset loading of the UUID memorisation task, referenced by ``uuid.yaml``.

lm-eval imports this file on its own (``!function metrics.<name>`` is resolved next to the YAML, not
as ``tasks.uuid.metrics``), so it depends on nothing but the standard library and ``datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path


def char_accuracy(prediction: str, target: str) -> float:
    """The paper's "character-level accuracy" of one generated value (arXiv v1 §5.1).

    The prediction is stripped of surrounding whitespace, truncated to ``len(target)`` and compared
    with the target position by position; missing positions (a short prediction) count as wrong.
    The score is the fraction of the target's characters (36 for a UUID) predicted correctly at the
    same position::

        char_accuracy(p, t) = |{i < len(t) : i < len(p') and p'[i] == t[i]}| / len(t),
        p' = p.strip()[: len(t)]

    So an exact answer scores 1, one wrong character 35/36, an empty answer 0, and characters generated
    beyond the target's length are ignored.  An empty target scores 1 if the prediction is empty too.
    """
    pred = prediction.strip()[: len(target)]
    if not target:
        return float(pred == "")
    return sum(p == t for p, t in zip(pred, target)) / len(target)


def exact_match(prediction: str, target: str) -> float:
    """1 if the stripped prediction equals the target, else 0."""
    return float(prediction.strip() == target)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: ``results[0]`` is the generation for the prompt ``"{key}:"``."""
    prediction, target = results[0], doc["value"]
    return {"exact_match": exact_match(prediction, target), "char_acc": char_accuracy(prediction, target)}


def load_pairs(data_file: str | None = None, **_ignored):
    """lm-eval ``custom_dataset``: the run's evaluation JSONL (one ``{"key", "value"}`` per line) as the
    ``test`` split.  ``data_file`` arrives through lm-eval's metadata (``TaskManager(metadata=...)`` or
    ``lm_eval --metadata '{"data_file": "..."}'``); other metadata keys are ignored."""
    import datasets

    if not data_file:
        raise ValueError(
            "uuid_memorisation needs the path of its pairs file: pass metadata={'data_file': <jsonl>} "
            "(mora.evaluate.run_lm_eval) or --metadata '{\"data_file\": \"<jsonl>\"}' (lm_eval CLI)"
        )
    path = Path(data_file)
    if not path.is_file():
        raise FileNotFoundError(f"uuid_memorisation: pairs file {path} does not exist")
    with path.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
