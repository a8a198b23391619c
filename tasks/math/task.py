"""``MathTask`` — fine-tune on MetaMathQA, evaluate GSM8K and MATH (arXiv v1 Table 1, the paper's Table 2).

The paper (and the official code, ``kongds/MoRA`` ``train.py`` + ``training_utils.py``) trains LLaMA-2-7B on
the 395k MetaMathQA problems for 3 epochs: Alpaca prompt (:func:`tasks.math.metrics.alpaca_prompt`), loss
on the response and its eos only, examples cut at 512 tokens.  Evaluation here: GSM8K (greedy, the answer
by three rules; the table uses MetaMath's ``The answer is: N``) and MATH (boxed answer, ``math-verify``),
zero-shot in the training prompt, through lm-eval (``gsm8k_alpaca.yaml``, ``math_alpaca.yaml``); and the
held-out response perplexity every SFT task reports (:mod:`tasks.sft`).

Data (``task.data``): ``hub`` is ``meta-math/MetaMathQA`` at a pinned revision (one ``train`` split, of which
a hash-chosen 0.5% is held out for perplexity); ``local`` reads rows with ``query`` and ``response``;
``pocket`` is GSM-Symbolic problems with worked solutions (:mod:`tasks.math.data`), never the paper's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mora.evaluate import run_lm_eval

from ..sft import BenchmarkConfig, Segment, SFTTask, SFTTaskConfig, check_benchmark
from ..sources import DataConfig
from .data import BUILD_COMMAND, gsm8k_test_file, pocket_dir
from .metrics import GSM8K_HUB, GSM8K_RULES, MATH_HUB, alpaca_prompt

TASK_DIR = Path(__file__).resolve().parent
#: meta-math/MetaMathQA at a fixed commit (395,000 rows, one train split)
METAMATHQA_REVISION = "aa4f34d3d2d3231299b5b03d9b3e5a20da45aa18"
#: per benchmark: its lm-eval task, the metadata key of its local files, its hub dataset (id, ..., revision) and
#: its offline copy (a function: the path depends on the cache; None: no copy ships offline)
BENCHMARKS = {
    "gsm8k": ("gsm8k_alpaca", "gsm8k_path", GSM8K_HUB, gsm8k_test_file),
    "math": ("math_alpaca", "math_path", MATH_HUB, None),
}


def alpaca_segments(row: dict, eos: str) -> list[Segment]:
    """The official code's example: the Alpaca prompt (no loss), then the response and eos (loss)."""
    return [(alpaca_prompt(row["query"]), False), (row["response"] + eos, True)]


def metamathqa_data() -> DataConfig:
    return DataConfig(source="hub", hub_id="meta-math/MetaMathQA", revision=METAMATHQA_REVISION, eval_split="train",
                      eval_fraction=0.005)


@dataclass
class MathTaskConfig(SFTTaskConfig):
    """Options of the math task (defaults: the paper's; ``conf/task/math.yaml`` sets the pocket ones).

    Args:
        data: the training rows (``query``, ``response``): MetaMathQA, local files, or the pocket source.
        max_length: tokens per example (paper: 512).
        gsm8k, math: where each benchmark's test problems come from (:class:`tasks.sft.BenchmarkConfig`);
            GSM8K's ``local`` default is the real test set that ships offline; MATH has no offline copy.
        max_gen_toks: generation budget per problem (MetaMath's evaluation: 512).
    """

    name: str = "math"
    data: DataConfig = field(default_factory=metamathqa_data)
    max_length: int = 512
    gsm8k: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    math: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    max_gen_toks: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_gen_toks <= 0:
            raise ValueError(f"math task: max_gen_toks must be positive, got {self.max_gen_toks}")


class MathTask(SFTTask):
    config_class: ClassVar[type[SFTTaskConfig]] = MathTaskConfig
    fields: ClassVar[tuple[str, ...]] = ("query", "response")
    segments_of = staticmethod(alpaca_segments)
    pocket_dir = staticmethod(pocket_dir)
    build_command: ClassVar[str] = BUILD_COMMAND
    metrics: ClassVar[tuple[str, ...]] = ("response_perplexity", *(f"gsm8k_{rule}" for rule in GSM8K_RULES), "math_verify")

    cfg: MathTaskConfig

    @classmethod
    def template_row(cls) -> dict:
        return {"query": "", "response": ""}

    @classmethod
    def preflight(cls, cfg: MathTaskConfig) -> None:
        super().preflight(cfg)
        for key, (_, _, hub, offline_copy) in BENCHMARKS.items():
            check_benchmark(key, getattr(cfg, key), hub[0], offline_copy() if offline_copy else None)

    def benchmarks(self, model: torch.nn.Module) -> dict[str, float]:
        """GSM8K (three answer rules) and MATH through lm-eval; a benchmark with ``source=none`` is recorded
        as not evaluated (``last_eval_info``), never as a number."""
        scores: dict[str, float] = {}
        for key, (task_name, path_key, hub, offline_copy) in BENCHMARKS.items():
            bench: BenchmarkConfig = getattr(self.cfg, key)
            if bench.source == "none":
                self.last_eval_info[key] = {"evaluated": False, "why": f"task.{key}.source=none"
                                            + (": no MATH test ships offline" if key == "math" else "")}
                continue
            path = str(Path(bench.path or offline_copy()).expanduser().resolve()) if bench.source == "local" else None
            out = run_lm_eval(model, self.tokenizer, [task_name], include_path=TASK_DIR, batch_size=self.cfg.eval_batch_size,
                              limit=bench.limit, gen_kwargs={"max_gen_toks": self.cfg.max_gen_toks},
                              metadata={path_key: path} if path else None)
            scores.update(out["metrics"][task_name])
            self.last_eval_info[key] = {"evaluated": True, "source": bench.source, **({"path": path} if path else
                                        {"hub_id": hub[0], "revision": hub[-1]}),
                                        **{k: v for k, v in out.items() if k != "metrics"}}
        return scores

    def report(self) -> dict[str, Any]:
        report = super().report()
        if self.cfg.data.source == "pocket":
            report["contamination"] = ("the pocket problems come from GSM-Symbolic templates written from GSM8K test "
                                       "questions: GSM8K accuracy is contaminated for the ~100 test questions behind them")
        return report
