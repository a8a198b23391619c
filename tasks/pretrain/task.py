"""``PretrainTask`` — language-model pretraining on packed text; scored by held-out perplexity.

The paper's pretraining comparison (arXiv v1 §5.3, Table 3): LLaMA-style 250M and 1.3B models trained
from scratch on C4 en (T5 tokenizer, sequences of 512) with LoRA / MoRA / ReLoRA / ReMoRA, embeddings,
norms and LM head trained in full; reported as C4 validation perplexity.  Here the same task also
makes the suite's **pocket base** (``make pocket-base``): full pretraining of a small LLaMA on the
pocket English corpus, which the fine-tuning tasks then adapt.

Data (``task.data``, :mod:`tasks.sources`): ``hub`` is ``allenai/c4`` ``en`` at a pinned revision,
always **streamed** (C4 en is hundreds of GB); ``local`` reads JSONL with a ``text`` field or plain-text
files (``task.data.streaming=true`` streams them through exactly the C4 code path); ``pocket`` is the
corpus ``make corpus`` builds.  Documents are packed by :mod:`mora.data.packing` (eos between documents,
blocks of ``task.seq_len``, nothing dropped).

Metric: ``perplexity`` = exp(mean next-token NLL) over the first ``task.eval_tokens`` tokens of the
held-out split, packed the same way (:mod:`mora.perplexity`; ReLoRA scores ≈10M C4 validation tokens).
Lower is better.  With ``task.samples`` the final evaluation also writes greedy continuations of those
prompts (``samples.json`` in the run directory; the trainer copies them into ``result.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mora.perplexity import perplexity
from mora.data.packing import PackedStream, pack, packed_dataset, tokenize_texts

from ..base import Task, TaskConfig
from ..sources import DataConfig, check, load_split
from .corpus import BUILD_COMMAND, corpus_dir

#: allenai/c4 at a fixed commit (the one public pretraining code pins), so "C4 en" means the same bytes everywhere
C4_REVISION = "1588ec454efa1a09f29cd18ddd04fe05fc8653a2"


def c4_data() -> DataConfig:
    return DataConfig(hub_id="allenai/c4", hub_config="en", revision=C4_REVISION)


@dataclass
class PretrainTaskConfig(TaskConfig):
    """Options of the pretraining task.

    Args:
        data: the text source (:class:`tasks.sources.DataConfig`; ``text`` rows).
        seq_len: tokens per packed block (paper: 512).
        eval_tokens: held-out tokens scored for perplexity (rounded up to whole blocks).
        samples: prompts whose greedy continuations the evaluation records (empty: none).
        sample_tokens: how many tokens each continuation has.
    """

    name: str = "pretrain"
    data: DataConfig = field(default_factory=c4_data)
    seq_len: int = 256
    eval_tokens: int = 65536
    samples: list[str] = field(default_factory=list)
    sample_tokens: int = 40

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"pretrain task: seq_len must be at least 2, got {self.seq_len}")
        if self.eval_tokens < self.seq_len:
            raise ValueError(f"pretrain task: eval_tokens ({self.eval_tokens}) must cover at least one block of seq_len={self.seq_len}")
        if self.eval_batch_size <= 0 or self.sample_tokens <= 0:
            raise ValueError("pretrain task: eval_batch_size and sample_tokens must be positive")


class PretrainTask(Task):
    config_class: ClassVar[type[TaskConfig]] = PretrainTaskConfig
    primary_metric: ClassVar[str] = "perplexity"
    lower_is_better: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = ("perplexity", "eval_nll")
    samples_file: ClassVar[str] = "samples.json"

    cfg: PretrainTaskConfig

    @classmethod
    def pocket_files(cls) -> dict[str, Path]:
        return {"train": corpus_dir() / "train.jsonl", "eval": corpus_dir() / "validation.jsonl"}

    @classmethod
    def preflight(cls, cfg: PretrainTaskConfig) -> None:
        check(cfg.data, ("text",), BUILD_COMMAND, list(cls.pocket_files().values()))

    def __init__(self, cfg: PretrainTaskConfig, tokenizer: Any, workdir: Path):
        super().__init__(cfg, tokenizer, workdir)
        if tokenizer.eos_token_id is None:
            raise ValueError("the pretraining task needs a tokenizer with an eos token (it separates packed documents)")
        self._eval_blocks: list[dict] | None = None

    @property
    def streamed(self) -> bool:
        """C4 from the hub is always streamed; local files when ``task.data.streaming`` says so."""
        return self.cfg.data.source == "hub" or self.cfg.data.streaming

    def _tokenized(self, split: str):
        rows = load_split(self.cfg.data, split, self.pocket_files())
        return tokenize_texts(rows.select_columns(["text"]) if not self.streamed else rows, self.tokenizer, self.cfg.data.num_proc)

    def train_dataset(self):
        """Packed blocks: a cached ``datasets.Dataset`` (shuffled by the trainer), or a stream (hub C4)."""
        tokenized = self._tokenized("train")
        if self.streamed:
            return PackedStream(tokenized, self.cfg.seq_len, self.tokenizer.eos_token_id)
        return packed_dataset(tokenized, self.cfg.seq_len, self.tokenizer.eos_token_id)

    def eval_blocks(self) -> list[dict]:
        """The first ``eval_tokens`` held-out tokens, packed: the same blocks at every evaluation."""
        if self._eval_blocks is None:
            budget = -(-self.cfg.eval_tokens // self.cfg.seq_len)
            documents = (row["input_ids"] for row in self._tokenized("eval"))
            blocks = []
            for block in pack(documents, self.cfg.seq_len, self.tokenizer.eos_token_id):
                blocks.append({"input_ids": block, "labels": block})
                if len(blocks) == budget:
                    break
            self._eval_blocks = blocks
        return self._eval_blocks

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Language modelling: every token of a block is a label (padding of a short last block is not)."""
        return super().collate([{"input_ids": e["input_ids"], "labels": e.get("labels", e["input_ids"])} for e in examples])

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        scores = perplexity(model, self.eval_blocks(), self.collate, self.cfg.eval_batch_size)
        if self.cfg.samples:
            self.write_samples(model)
        return {"perplexity": scores["perplexity"], "eval_nll": scores["nll"]}

    def write_samples(self, model: torch.nn.Module) -> list[dict]:
        """Greedy continuations of ``task.samples`` → ``samples.json`` in the run directory."""
        from mora.evaluate import preserved_state

        device = next(model.parameters()).device
        samples = []
        with preserved_state(model), torch.no_grad():
            model.eval()
            for prompt in self.cfg.samples:
                ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.cfg.sample_tokens,
                                     do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                samples.append({"prompt": prompt, "continuation": self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)})
        path = self.workdir / self.samples_file
        path.write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n")
        return samples

    def report(self) -> dict[str, Any]:
        """The data source (for the pocket corpus: every package, version and licence, from its manifest)
        and the greedy samples of the last evaluation."""
        data = self.cfg.data
        if data.source == "pocket":
            manifest = json.loads((corpus_dir() / "manifest.json").read_text())
            source = {key: manifest[key] for key in ("name", "description", "sources", "totals", "tokens", "sha256") if key in manifest}
        elif data.source == "hub":
            source = {"hub_id": data.hub_id, "config": data.hub_config, "revision": data.revision}
        else:
            source = {"path": data.path, "eval_path": data.eval_path}
        report: dict[str, Any] = {"data": {"source": data.source, **source}}
        samples = self.workdir / self.samples_file
        if samples.is_file():
            report["samples"] = json.loads(samples.read_text())
        return report
