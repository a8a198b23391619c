"""The math task's prompt, answer extraction and scoring, and its lm-eval dataset loaders.

lm-eval imports this file on its own (``!function metrics.<name>`` in ``gsm8k_alpaca.yaml`` and
``math_alpaca.yaml`` resolves next to the YAML), so it depends only on the standard library, ``datasets``
and ``math-verify``; the task code imports the same functions as ``tasks.math.metrics``.

**The prompt** is the Alpaca prompt exactly as the official MoRA code (``training_utils.py``, taken from
MetaMath's ``train_math.py``) builds it from a MetaMathQA ``query``: the query's first line is the
instruction and the lines after it, if any, the input; the response follows ``### Response:`` with nothing
in between.  Evaluation prompts are built the same way (zero-shot, in the training format).

**GSM8K answers** are read from a generation by three rules, each reported (``gsm8k_<rule>``):

* ``answer_is`` — the first number after the last ``The answer is:`` (MetaMath's own rule, what MetaMathQA
  responses end with); **the table's GSM8K column uses this rule**;
* ``hash`` — the first number after the last ``####`` (GSM8K's reference format);
* ``last_number`` — the last number anywhere in the generation (the most lenient).

A number may carry thousands separators (``1,234``), a sign, decimals or a fraction bar; ``$`` and ``%``
around it are ignored, and values are compared exactly (``2.50`` = ``2.5``; ``1,234`` = ``1234``).

**MATH answers** are the last ``\\boxed{...}`` (balanced braces) of the generation and of the reference
solution, normalised and compared with ``math-verify`` (``parse`` then ``verify``); a generation without a
boxed answer scores 0.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)

#: openai/gsm8k (config ``main``, split ``test``, 1,319 problems) at a fixed commit
GSM8K_HUB = ("openai/gsm8k", "main", "740312add88f781978c0658806c59bc2815b9866")
#: EleutherAI/hendrycks_math (the 5,000 MATH test problems, one config per subject) at a fixed commit
MATH_HUB = ("EleutherAI/hendrycks_math", "21a5633873b6a120296cce3e2df9d5550074f4a3")
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
GSM8K_RULES = ("answer_is", "hash", "last_number")


def alpaca_prompt(query: str) -> str:
    """The official code's prompt for a MetaMathQA ``query``: first line → instruction, the rest → input."""
    instruction, _, rest = query.partition("\n")
    if rest:
        return PROMPT_INPUT.format(instruction=instruction, input=rest)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def gsm8k_prompt(doc: dict) -> str:
    return alpaca_prompt(doc["question"])


def math_prompt(doc: dict) -> str:
    return alpaca_prompt(doc["problem"])


# ---------------------------------------------------------------------------------------------------
# Numbers (GSM8K)
# ---------------------------------------------------------------------------------------------------

# thousands-separated integers first (so "1,234" is one number), then plain integers/decimals, optional fraction
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


def parse_number(text: str) -> Fraction | None:
    """``"1,234"`` → 1234, ``"-2.50"`` → -5/2, ``"3/4"`` → 3/4; None when ``text`` is not one number."""
    text = text.strip().replace("−", "-").replace(",", "").strip("$%")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[str]:
    """Every number in ``text``, in order (the unicode minus sign counts as ``-``)."""
    return _NUMBER.findall(text.replace("−", "-"))


def extract_answer(text: str, rule: str) -> Fraction | None:
    """The answer of a generation by ``rule`` (one of :data:`GSM8K_RULES`), or None when the rule finds none."""
    if rule == "last_number":
        found = numbers_in(text)
        return parse_number(found[-1]) if found else None
    marker = {"answer_is": "The answer is:", "hash": "####"}.get(rule)
    if marker is None:
        raise ValueError(f"unknown GSM8K answer rule {rule!r}; choose one of {GSM8K_RULES}")
    if marker not in text:
        return None
    found = numbers_in(text.rsplit(marker, 1)[1])
    return parse_number(found[0]) if found else None


def gsm8k_target(answer: str) -> Fraction:
    """The reference number of a GSM8K solution (after its ``####``)."""
    value = extract_answer(answer, "hash")
    if value is None:
        raise ValueError(f"GSM8K reference without a '#### N' answer: {answer[-80:]!r}")
    return value


def gsm8k_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: one score per rule for the greedy generation ``results[0]``."""
    target = gsm8k_target(doc["answer"])
    return {f"gsm8k_{rule}": float(extract_answer(results[0], rule) == target) for rule in GSM8K_RULES}


# ---------------------------------------------------------------------------------------------------
# Boxed answers (MATH)
# ---------------------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return None


def boxed_equal(prediction: str, solution: str) -> bool:
    """Whether the last boxed answer of ``prediction`` equals that of the reference ``solution``, as
    ``math-verify`` judges them after normalising both (``\\frac{1}{2}`` = ``0.5`` = ``\\dfrac12``)."""
    from math_verify import parse, verify

    predicted, target = last_boxed(prediction), last_boxed(solution)
    if predicted is None or target is None:
        return False
    return bool(verify(parse(f"\\boxed{{{target}}}"), parse(f"\\boxed{{{predicted}}}")))


def math_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: 1 when the generation's boxed answer matches the solution's."""
    return {"math_verify": float(boxed_equal(results[0], doc["solution"]))}


# ---------------------------------------------------------------------------------------------------
# lm-eval custom_dataset loaders (paths and sources arrive through lm-eval's metadata)
# ---------------------------------------------------------------------------------------------------


def _rows(path: str | Path) -> list[dict]:
    path = Path(path)
    files = sorted(path.rglob("*.json*")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no JSON/JSONL file at {path}")
    rows = []
    for file in files:
        text = file.read_text(encoding="utf-8")
        rows += json.loads(text) if file.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def load_gsm8k(gsm8k_path: str | None = None, **_ignored):
    """The GSM8K test split: from ``gsm8k_path`` (JSONL with ``question``/``answer``), or the hub at
    :data:`GSM8K_HUB` when no path is given."""
    import datasets

    if gsm8k_path:
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows(gsm8k_path))})
    hub_id, config, revision = GSM8K_HUB
    return datasets.DatasetDict({"test": datasets.load_dataset(hub_id, config, revision=revision, split="test")})


def load_math(math_path: str | None = None, **_ignored):
    """The MATH test split: from ``math_path`` (JSON/JSONL with ``problem``/``solution``), or all seven
    subjects of :data:`MATH_HUB` when no path is given."""
    import datasets

    if math_path:
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows(math_path))})
    hub_id, revision = MATH_HUB
    parts = [datasets.load_dataset(hub_id, subject, revision=revision, split="test") for subject in MATH_SUBJECTS]
    return datasets.DatasetDict({"test": datasets.concatenate_datasets(parts)})
