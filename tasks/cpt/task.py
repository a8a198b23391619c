"""``CPTTask`` — continual pretraining on domain text (arXiv v1 §5.2.3, Tables 1, 6, 7): ``mora-run task=cpt``.

The paper continues pretraining LLaMA-2-7B on AdaptLLM's biomedicine and finance corpora (≈1.3B tokens in
5,000 steps of 128 sequences) and scores AdaptLLM's domain tasks; claim 3 is that MoRA beats LoRA there
and full fine-tuning stays best.  This task is the pretraining task on domain text — the same sources
(``task.data``: pocket | local | hub), the same packer and the same held-out perplexity
(:class:`tasks.pretrain.PretrainTask`) — plus two more measurements:

* ``general_perplexity``: perplexity on the base model's own held-out general text (forgetting): the
  pocket English corpus's validation split, which the pocket base never trained on (``task.general``).
* the domain benchmarks through lm-eval (``task.benchmarks``: pocket | hub | local | none;
  :mod:`tasks.cpt.benchmarks`), each as ``<key>`` (AdaptLLM's metric, a fraction), ``<key>_chance``
  (what an input-blind guesser scores on the same rows: uniform or majority answer) and ``<key>_n``
  (rows scored); ``domain_average`` is the mean over the benchmarks of the paper's domain average that
  were scored (``domain_average_n`` of them; the report names any missing).

Metrics: ``perplexity`` (held-out domain text, the primary metric at pocket scale: lower is better),
``eval_nll``, ``general_perplexity``, and the benchmark keys of the domain (:mod:`tasks.cpt.domains`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mora.config import ConfigError
from mora.evaluate import run_lm_eval
from mora.perplexity import perplexity

from ..base import TaskConfig
from ..pretrain import PretrainTask, PretrainTaskConfig
from ..pretrain import corpus as pocket_en
from ..sources import DataConfig, check, local_files
from . import benchmarks as bench_io
from .corpus import BUILD_COMMAND, corpus_dir
from .domains import DOMAINS, Domain

LM_EVAL_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
RUN_BENCHMARKS = "benchmarks"  # the folder of the run directory holding the rows lm-eval reads
ADAPTLLM_CORPUS_HINT = ("AdaptLLM's corpora are not on the hub: build them with AdaptLLM's raw2read.py "
                        "(microsoft/LMOps, adaptllm/: one .txt file per document) and point task.data.path at that folder")


def general_data() -> DataConfig:
    """The pocket English corpus (``make corpus``): the pocket base's own held-out general text."""
    return DataConfig(source="pocket")


@dataclass
class CPTTaskConfig(PretrainTaskConfig):
    """Options of continual pretraining (besides :class:`tasks.pretrain.PretrainTaskConfig`'s ``seq_len``,
    ``eval_tokens`` — of held-out domain text —, ``samples``).

    Args:
        domain: ``biomed`` or ``finance``.
        data: the domain text (``pocket``: the corpus ``make domain-corpora`` builds; ``local``: AdaptLLM's
            corpus built with its scripts, a folder of .txt files or JSONL with ``text``; ``hub``: a raw-text
            dataset you name with ``hub_id`` and ``revision``).
        general: the general text that measures forgetting (pocket: the pocket English corpus).
        general_eval_tokens: its held-out tokens scored; 0 skips the measurement.
        benchmarks: where the domain benchmarks come from: ``pocket`` | ``hub`` | ``local`` | ``none``.
        benchmarks_path: with ``local``, the folder of ``<config>.jsonl`` files.
        max_gen_toks: generation budget of NER and ConvFinQA (AdaptLLM: 100).
        eval_limit: score the first N rows of each benchmark only (None: all).
    """

    name: str = "cpt"
    domain: str = "biomed"
    data: DataConfig = field(default_factory=DataConfig)
    general: DataConfig = field(default_factory=general_data)
    general_eval_tokens: int = 65536
    benchmarks: str = "pocket"
    benchmarks_path: str | None = None
    max_gen_toks: int = 100

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"cpt task: task.domain={self.domain!r} is not one of {sorted(DOMAINS)}")
        if self.benchmarks not in bench_io.BENCHMARK_SOURCES:
            raise ValueError(f"cpt task: task.benchmarks={self.benchmarks!r} is not one of {list(bench_io.BENCHMARK_SOURCES)}")
        if self.general_eval_tokens < 0 or self.max_gen_toks <= 0:
            raise ValueError("cpt task: general_eval_tokens must be >= 0 and max_gen_toks positive")
        super().__post_init__()


class CPTTask(PretrainTask):
    config_class: ClassVar[type[TaskConfig]] = CPTTaskConfig
    metrics: ClassVar[tuple[str, ...]] = ("perplexity", "eval_nll", "general_perplexity")

    cfg: CPTTaskConfig

    @staticmethod
    def domain_files(domain: str) -> dict[str, Path]:
        return {"train": corpus_dir(domain) / "train.jsonl", "eval": corpus_dir(domain) / "validation.jsonl"}

    def pocket_files(self) -> dict[str, Path]:  # PretrainTask reads the pocket source through this
        return self.domain_files(self.cfg.domain)

    @classmethod
    def preflight(cls, cfg: CPTTaskConfig) -> None:
        if cfg.data.source == "local" and not local_files(cfg.data.path):
            raise ConfigError(f"task.data.path={cfg.data.path!r} is not a file or a directory holding .jsonl/.json/.txt files; "
                              f"{ADAPTLLM_CORPUS_HINT}")
        built = [*cls.domain_files(cfg.domain).values(), corpus_dir(cfg.domain) / "manifest.json"]
        check(cfg.data, ("text",), BUILD_COMMAND, built)
        if cfg.general_eval_tokens:
            check(cfg.general, ("text",), pocket_en.BUILD_COMMAND, [pocket_en.corpus_dir() / f for f in ("validation.jsonl", "manifest.json")])
        bench_io.check_source(DOMAINS[cfg.domain], cfg.benchmarks, cfg.benchmarks_path)

    def __init__(self, cfg: CPTTaskConfig, tokenizer: Any, workdir: Path):
        super().__init__(cfg, tokenizer, workdir)
        self._general: PretrainTask | None = None
        #: what the last benchmark evaluation ran with: lm-eval version, batch size, limit, rows per task
        self.last_eval_info: dict[str, Any] = {}

    @property
    def domain(self) -> Domain:
        return DOMAINS[self.cfg.domain]

    def general_task(self) -> PretrainTask:
        """The pretraining task on the general text: its held-out blocks, packed like the domain's."""
        if self._general is None:
            general = PretrainTaskConfig(data=self.cfg.general, seq_len=self.cfg.seq_len, eval_tokens=self.cfg.general_eval_tokens)
            self._general = PretrainTask(general, self.tokenizer, self.workdir)
        return self._general

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        metrics = super().evaluate(model)  # held-out domain perplexity (and samples)
        if self.cfg.general_eval_tokens:
            general = self.general_task()
            metrics["general_perplexity"] = perplexity(model, general.eval_blocks(), self.collate, self.cfg.eval_batch_size)["perplexity"]
        return {**metrics, **self.benchmark_scores(model)}

    def scored_benchmarks(self) -> list:
        """The domain's benchmarks that this configuration can score."""
        c = self.cfg
        return [b for b in self.domain.benchmarks if bench_io.unavailable(self.domain, b, c.benchmarks, c.benchmarks_path, c.data.source) is None]

    def benchmark_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Each scorable benchmark through lm-eval: ``<key>``, ``<key>_chance`` (choice tasks), ``<key>_n``."""
        scored = self.scored_benchmarks()
        if not scored:
            return {}
        c, data_dir = self.cfg, self.workdir / RUN_BENCHMARKS
        chances = {}
        for bench in scored:
            rows = bench_io.load(self.domain, bench, c.benchmarks, c.benchmarks_path, c.eval_limit)
            bench_io.write_run_file(bench, rows, self.tokenizer, data_dir)
            chances[bench.key] = bench_io.chance(bench, rows)
        out = run_lm_eval(model, self.tokenizer, [b.lm_eval_task for b in scored], include_path=LM_EVAL_DIR,
                          batch_size=c.eval_batch_size, limit=c.eval_limit, gen_kwargs={"max_gen_toks": c.max_gen_toks},
                          metadata={"data_dir": str(data_dir.resolve())})
        scores: dict[str, float] = {}
        for bench in scored:
            scores[bench.key] = out["metrics"][bench.lm_eval_task]["score"]
            scores[f"{bench.key}_n"] = float(out["n_samples"][bench.lm_eval_task])
            if chances[bench.key] is not None:
                scores[f"{bench.key}_chance"] = chances[bench.key]
        averaged = [b.key for b in scored if b.in_average]
        if averaged:  # the paper's domain average (its Tables 6/7), over the benchmarks this run could score
            scores["domain_average"] = sum(scores[k] for k in averaged) / len(averaged)
            scores["domain_average_n"] = float(len(averaged))
        self.last_eval_info = {k: v for k, v in out.items() if k != "metrics"}
        return scores

    def report(self) -> dict[str, Any]:
        """The pretraining report (the domain text's sources with packages, versions and licences), the
        general text's, and every benchmark of the domain: where its rows came from, or why it was not scored."""
        if self.cfg.data.source == "pocket":  # PretrainTask would describe the pocket English corpus
            manifest = json.loads((corpus_dir(self.cfg.domain) / "manifest.json").read_text())
            keep = ("name", "description", "sources", "totals", "tokens", "sha256", "held_out_evaluation_items")
            report: dict[str, Any] = {"data": {"source": "pocket", **{k: manifest[k] for k in keep if k in manifest}}}
            if (samples := self.workdir / self.samples_file).is_file():
                report["samples"] = json.loads(samples.read_text())
        else:
            report = super().report()
            report["data"]["note"] = ADAPTLLM_CORPUS_HINT if self.cfg.data.source == "local" else "a raw-text hub dataset named by the user"
        if self.cfg.general_eval_tokens:
            report["general"] = {"tokens": self.cfg.general_eval_tokens, **self.general_task().report()["data"]}
        report["domain"] = self.cfg.domain
        report["benchmarks"] = {b.key: self._describe(b) for b in self.domain.benchmarks}
        averaged = [b for b in self.domain.benchmarks if b.in_average]
        missing = [b.title for b in averaged if b not in self.scored_benchmarks()]
        report["benchmarks"]["domain_average"] = {
            "title": f"{self.domain.title} average", "of": [b.title for b in averaged],
            **({"why": f"{len(averaged) - len(missing)} of {len(averaged)} benchmarks scored (not: {', '.join(missing)})"} if missing else {})}
        if self.last_eval_info:
            report["lm_eval"] = self.last_eval_info
        return report

    def _describe(self, bench) -> dict[str, Any]:
        """``why`` it was not scored, or where its rows came from and how many lm-eval scored."""
        c = self.cfg
        entry = {"title": bench.title, "metric": bench.metric, "in_average": bench.in_average}
        if reason := bench_io.unavailable(self.domain, bench, c.benchmarks, c.benchmarks_path, c.data.source):
            return {**entry, "why": reason}
        if c.benchmarks == "pocket":
            built = json.loads((corpus_dir(c.domain) / "manifest.json").read_text()).get("benchmarks", [])
            source = next((b for b in built if b["key"] == bench.key), {})
        elif c.benchmarks == "hub":
            source = {"hub_id": bench.hub[0], "revision": bench.hub[1], "config": list(bench.hub_subsets) or bench.config}
        else:
            source = {"path": str(bench_io.local_file(c.benchmarks_path, bench))}
        scored = (self.last_eval_info.get("n_samples") or {}).get(bench.lm_eval_task)
        return {**entry, "source": {"from": c.benchmarks, **source}, "n_samples": {bench.lm_eval_task: scored} if scored else {}}
