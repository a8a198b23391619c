"""The UUID pairs: seeded, reproducible, and written where the run's lm-eval YAML reads them.

The paper's motivating task (arXiv v1 §3): memorise N = 10,000 random ``uuid4:uuid4`` pairs — pure
new knowledge with no structure to exploit, so what the adapter can store is what it learns.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

from torch.utils.data import Dataset

from ..base import IGNORE_INDEX

LOSS_ON = ("all", "value")


def generate_pairs(num_pairs: int, seed: int) -> list[tuple[str, str]]:
    """``num_pairs`` (key, value) pairs of version-4 UUID strings with unique keys, the same for the
    same seed on every machine: 128 bits from ``random.Random(seed)``, formatted by ``uuid.UUID(int=...,
    version=4)`` (which sets the version nibble to 4 and the variant bits to RFC 4122)."""
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    rng = random.Random(seed)

    def draw() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    pairs, keys = [], set()
    while len(pairs) < num_pairs:
        key, value = draw(), draw()
        if key in keys:  # 2^-122 per pair; kept for the guarantee, not the odds
            continue
        keys.add(key)
        pairs.append((key, value))
    return pairs


def prompt_of(key: str) -> str:
    """What the model sees before the value, in training and in evaluation (``uuid.yaml`` doc_to_text)."""
    return f"{key}:"


def encode_pair(tokenizer, key: str, value: str, loss_on: str = "all") -> dict[str, list[int]]:
    """Tokens of ``"{key}:{value}" + eos`` and their labels.

    The prompt is tokenized on its own, with the tokenizer's special tokens (bos), exactly as lm-eval
    tokenizes the generation context, and the value is appended without special tokens: the training
    prefix is then token-for-token the evaluation prompt whatever the tokenizer (with a character
    tokenizer this equals tokenizing the whole line).  ``loss_on="all"`` (official code) trains every
    token; ``"value"`` masks the prompt (bos, key and ':') with ``IGNORE_INDEX``.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the UUID task needs a tokenizer with an eos token (it ends every pair)")
    prompt_ids = tokenizer(prompt_of(key))["input_ids"]
    value_ids = tokenizer(value, add_special_tokens=False)["input_ids"]
    input_ids = list(prompt_ids) + list(value_ids) + [tokenizer.eos_token_id]
    if loss_on == "all":
        labels = list(input_ids)
    else:
        labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return {"input_ids": input_ids, "labels": labels}


class PairsDataset(Dataset):
    """Tokenized pairs (all encoded up front: 10k pairs take well under a second)."""

    def __init__(self, tokenizer, pairs: list[tuple[str, str]], loss_on: str = "all"):
        self.examples = [encode_pair(tokenizer, k, v, loss_on) for k, v in pairs]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


def write_jsonl(pairs: list[tuple[str, str]], path: Path) -> Path:
    """One ``{"key": ..., "value": ...}`` per line (what ``uuid.yaml`` reads), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for key, value in pairs:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
    tmp.replace(path)
    return path
