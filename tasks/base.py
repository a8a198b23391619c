"""What every paper task provides to the one trainer.

A task turns its data source (hub dataset, local files of the same schema, or a synthetic/bundled
pocket source) into tokenized training examples, and evaluates a model through lm-eval with the task
YAMLs kept beside its module.  The trainer knows nothing task-specific beyond this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100  # label value the LM loss skips


@dataclass
class TaskConfig:
    """Options every task has.  Subclasses add their own fields (and a default ``name``)."""

    name: str = "?"
    eval_batch_size: int = 32
    eval_limit: int | None = None  # evaluate on the first N examples only (None: all)


class Task(ABC):
    """One paper task.  ``workdir`` is the run directory: files the task writes (generated data, the
    JSONL its lm-eval YAML reads) go there, so runs never share mutable state."""

    config_class: ClassVar[type[TaskConfig]]
    #: the metric tables and "best LR" selection use (higher is better unless ``lower_is_better``)
    primary_metric: ClassVar[str]
    lower_is_better: ClassVar[bool] = False

    @classmethod
    def preflight(cls, cfg: TaskConfig) -> None:
        """Check, before anything is written, that the task's data can be had (local files exist, the
        hub is reachable when needed); raise ``mora.config.ConfigError`` with the fix otherwise."""

    def __init__(self, cfg: TaskConfig, tokenizer: Any, workdir: Path):
        self.cfg, self.tokenizer, self.workdir = cfg, tokenizer, Path(workdir)

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """Examples as dicts with ``input_ids`` and ``labels`` (lists of ints, IGNORE_INDEX = no loss)."""

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pad a batch; padded positions get no loss and no attention."""
        width = max(len(e["input_ids"]) for e in examples)
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for e in examples:
            n = len(e["input_ids"])
            batch["input_ids"].append(list(e["input_ids"]) + [pad] * (width - n))
            batch["labels"].append(list(e["labels"]) + [IGNORE_INDEX] * (width - n))
            batch["attention_mask"].append([1] * n + [0] * (width - n))
        return {k: torch.tensor(v) for k, v in batch.items()}

    def report(self) -> dict[str, Any]:
        """What ``result.json`` records about the task beyond its metrics (under ``"task"``): where its
        data came from (packages, versions, licences), samples of generations, ...  Empty by default."""
        return {}

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics of ``model`` (in eval mode, adapters active) through lm-eval; flat name → value."""
