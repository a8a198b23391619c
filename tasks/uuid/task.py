"""``UUIDTask`` — memorise random ``uuid4:uuid4`` pairs; scored by character accuracy (arXiv v1 §3, §5.1).

The paper trains on 10,000 pairs (1,000 per batch, 1,000 steps = 100 epochs) and reports the character
accuracy of greedy generations after 300/500/700/900 steps (v1 Table 2).  Evaluation generates the value
from the key through lm-eval (``uuid.yaml`` beside this file) on the same pairs the model trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from mora.evaluate import run_lm_eval

from ..base import Task, TaskConfig
from .data import LOSS_ON, PairsDataset, generate_pairs, prompt_of, write_jsonl

TASK_DIR = Path(__file__).resolve().parent
LM_EVAL_TASK = "uuid_memorisation"  # the ``task:`` of uuid.yaml
EVAL_FILE = "uuid_eval.jsonl"  # written into the run directory


@dataclass
class UUIDTaskConfig(TaskConfig):
    """Options of the UUID memorisation task.

    Args:
        num_pairs: how many ``key:value`` pairs to memorise (paper: 10,000).
        data_seed: seed of the pair generator; the same seed gives the same pairs on every machine.
        loss_on: ``"all"`` trains on every token of ``key:value</s>`` (the official code);
            ``"value"`` only on the value and eos (the key is context).
        max_gen_toks: generation budget at evaluation; a UUID is 36 characters (+ eos), so 40 suffices
            with a character tokenizer and any subword tokenizer.
        eval_batch_size, eval_limit: see :class:`tasks.base.TaskConfig` (``eval_limit`` evaluates the
            first N pairs only — a cheaper curve during training).
    """

    name: str = "uuid"
    num_pairs: int = 10000
    data_seed: int = 42
    loss_on: str = "all"
    max_gen_toks: int = 40

    def __post_init__(self) -> None:
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"uuid task: loss_on must be one of {', '.join(LOSS_ON)} (got {self.loss_on!r})")
        if self.num_pairs <= 0:
            raise ValueError(f"uuid task: num_pairs must be positive (got {self.num_pairs})")
        if self.max_gen_toks <= 0:
            raise ValueError(f"uuid task: max_gen_toks must be positive (got {self.max_gen_toks})")


class UUIDTask(Task):
    config_class: ClassVar[type[TaskConfig]] = UUIDTaskConfig
    primary_metric: ClassVar[str] = "char_acc"
    metrics: ClassVar[tuple[str, ...]] = ("char_acc", "exact_match")  # fractions in [0, 1]

    cfg: UUIDTaskConfig

    def __init__(self, cfg: UUIDTaskConfig, tokenizer: Any, workdir: Path):
        super().__init__(cfg, tokenizer, workdir)
        self._pairs: list[tuple[str, str]] | None = None
        self._eval_file: Path | None = None
        #: what the last ``evaluate`` ran with: lm-eval version, few-shot count, batch size, limit
        self.last_eval_info: dict[str, Any] = {}

    @property
    def pairs(self) -> list[tuple[str, str]]:
        if self._pairs is None:
            self._pairs = generate_pairs(self.cfg.num_pairs, self.cfg.data_seed)
        return self._pairs

    def train_dataset(self) -> PairsDataset:
        return PairsDataset(self.tokenizer, self.pairs, self.cfg.loss_on)

    def eval_file(self) -> Path:
        """The run's ``uuid_eval.jsonl`` (written on first use by this task object)."""
        if self._eval_file is None:
            self._eval_file = write_jsonl(self.pairs, self.workdir / EVAL_FILE)
        return self._eval_file

    def _check_context(self, model: torch.nn.Module) -> None:
        """lm-eval left-truncates prompts longer than max_position_embeddings - max_gen_toks, silently
        dropping the start of the key: refuse instead."""
        max_pos = getattr(model.config, "max_position_embeddings", None)
        prompt_len = len(self.tokenizer(prompt_of(self.pairs[0][0]))["input_ids"])
        if max_pos is not None and prompt_len + self.cfg.max_gen_toks > max_pos:
            raise ValueError(
                f"uuid task: prompt ({prompt_len} tokens) + max_gen_toks ({self.cfg.max_gen_toks}) exceeds the "
                f"model's max_position_embeddings ({max_pos}); lm-eval would cut the start of the key. "
                "Give the model a longer context or lower task.max_gen_toks."
            )

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Greedy generation of each value from ``"{key}:"`` through lm-eval; ``char_acc`` and
        ``exact_match`` as fractions in [0, 1] (tables print percentages)."""
        self._check_context(model)
        out = run_lm_eval(
            model,
            self.tokenizer,
            [LM_EVAL_TASK],
            include_path=TASK_DIR,
            batch_size=self.cfg.eval_batch_size,
            limit=self.cfg.eval_limit,
            gen_kwargs={"max_gen_toks": self.cfg.max_gen_toks},
            metadata={"data_file": str(self.eval_file().resolve())},
        )
        scores = out["metrics"][LM_EVAL_TASK]
        self.last_eval_info = {k: v for k, v in out.items() if k != "metrics"}
        return {"char_acc": scores["char_acc"], "exact_match": scores["exact_match"]}
