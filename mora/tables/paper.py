"""Every figure of the paper, in one place, each with its citation — copied, never computed.

The only full copy of the paper found is arXiv 2405.12130v1; its table numbers differ from the ICLR 2025
version's, which this suite's table numbering follows (Table 1 = UUID memorisation, 2 = fine-tuning,
3 = C4 pretraining, 4 = ablation, 5 = cost).  So each figure names the v1 table it comes from, and a
table module prints it beside its own numbers as ``paper.TABLEn.markdown()`` under the heading
``f"The paper ({paper.TABLEn.cited()})"``, or looks one figure up with ``paper.TABLEn.value(...)``.
Source of every number here: /work/shared/MORA_SPEC.md ("The paper's numbers").

Rows are ``(method, r, values)``: the paper's method name (``"MoRA"``, not this suite's ``"MoRA rope"``),
its rank (``None`` for full fine-tuning), and one value per column (``None`` where the paper has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import DASH, markdown_table


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: where it comes from, what it measured, and its figures."""

    source: str  # "arXiv v1 Table 2"
    model: str  # the model every figure was measured on
    setup: str  # what was trained, in the paper's words and numbers
    unit: str  # what the values are, as a caption under the table's heading
    columns: tuple  # column keys: training steps, benchmark names, model sizes...
    rows: tuple[tuple[str, int | None, tuple[float | None, ...]], ...]
    digits: int = 1  # decimals the paper prints

    def __post_init__(self):
        for method, r, values in self.rows:
            if len(values) != len(self.columns):
                raise ValueError(f"{self.source}: row {method} r={r} has {len(values)} values, "
                                 f"not one per column {self.columns}")

    def cited(self) -> str:
        """``arXiv v1 Table 2, LLaMA-2-7B``."""
        return f"{self.source}, {self.model}"

    def value(self, method: str, r: int | None, column) -> float | None:
        """The paper's figure for ``method`` at rank ``r`` in ``column``; a row or column it lacks is an error."""
        if column not in self.columns:
            raise KeyError(f"{self.source} has no column {column!r}; columns: {self.columns}")
        for row_method, row_r, values in self.rows:
            if (row_method, row_r) == (method, r):
                return values[self.columns.index(column)]
        raise KeyError(f"{self.source} has no row {method} r={r}")

    def markdown(self) -> str:
        """The table as the paper prints it: method, r, then one column per key."""
        rows = [[method, DASH if r is None else r, *(DASH if v is None else f"{v:.{self.digits}f}" for v in values)]
                for method, r, values in self.rows]
        return markdown_table(["method", "r", *map(str, self.columns)], rows)


LLAMA2_7B = "LLaMA-2-7B"

#: Table 1 — UUID memorisation: character accuracy (%) after 300/500/700/900 of 1,000 steps.
TABLE1_UUID = PaperTable(
    source="arXiv v1 Table 2",
    model=LLAMA2_7B,
    setup="LLaMA-2-7B, 10,000 UUID pairs, 1,000 steps of 1,000 pairs (arXiv v1 §3, §5.1)",
    unit="Character accuracy (%) after the given number of training steps",
    columns=(300, 500, 700, 900),
    rows=(
        ("FFT", None, (42.5, 100.0, 100.0, 100.0)),
        ("LoRA", 8, (9.9, 10.0, 10.7, 54.2)),
        ("MoRA", 8, (10.1, 15.7, 87.4, 100.0)),
        ("LoRA", 256, (9.9, 70.6, 100.0, 100.0)),
        ("MoRA", 256, (41.6, 100.0, 100.0, 100.0)),
    ),
)

#: Table 2 — fine-tuning: instruction tuning (MMLU), math (GSM8K, MATH), continual pretraining (domain
#: averages; per task in :data:`TABLE2_BIOMED` and :data:`TABLE2_FINANCE`).  ReLoRA r=256 has no MMLU.
TABLE2_FINETUNING = PaperTable(
    source="arXiv v1 Table 1",
    model=LLAMA2_7B,
    setup="LLaMA-2-7B; instruction tuning on Tulu v2, math on MetaMathQA, continual pretraining on AdaptLLM's "
          "biomedicine and finance corpora (hyperparameters: arXiv v1 Table 5)",
    unit="Accuracy (%); BioMed and Finance are averages over each domain's tasks",
    columns=("MMLU 0-shot", "MMLU 5-shot", "GSM8K", "MATH", "BioMed", "Finance"),
    rows=(
        ("FFT", None, (50.6, 51.3, 66.6, 20.1, 56.4, 69.6)),
        ("LoRA", 8, (50.2, 51.5, 64.6, 15.1, 52.3, 64.0)),
        ("LoRA+", 8, (49.2, 51.1, 64.1, 15.8, 52.2, 64.9)),
        ("ReLoRA", 8, (49.3, 50.2, 61.5, 14.5, 46.3, 61.0)),
        ("AsyLoRA", 8, (50.3, 52.2, 64.5, 15.0, 52.5, 63.5)),
        ("DoRA", 8, (50.2, 51.5, 64.5, 14.6, 52.5, 63.9)),
        ("MoRA", 8, (49.7, 51.5, 64.2, 15.4, 53.3, 67.1)),
        ("LoRA", 256, (49.7, 50.8, 67.9, 19.9, 54.1, 67.3)),
        ("LoRA+", 256, (49.2, 51.3, 68.2, 17.1, 54.2, 66.7)),
        ("ReLoRA", 256, (None, None, 64.0, 18.1, 52.9, 57.9)),
        ("AsyLoRA", 256, (50.1, 52.0, 66.9, 19.3, 54.1, 66.9)),
        ("DoRA", 256, (49.6, 51.1, 67.4, 19.5, 54.2, 66.0)),
        ("MoRA", 256, (49.9, 51.4, 67.9, 19.2, 55.4, 68.7)),
    ),
)

#: Table 2's BioMed average, per task.  The paper's own LoRA r=8 average is 51.9 in its Table 6 but 52.3 in
#: its Table 1 (:data:`TABLE2_FINETUNING`); the mean of the row below is 52.05.
TABLE2_BIOMED = PaperTable(
    source="arXiv v1 Table 6",
    model=LLAMA2_7B,
    setup="continual pretraining on AdaptLLM's biomedicine corpus",
    unit="Accuracy (%); BioMMLU = MMLU's biomedical subjects",
    columns=("PubMedQA", "USMLE", "BioMMLU", "RCT"),
    rows=(
        ("FFT", None, (74.1, 41.2, 47.5, 62.7)),
        ("LoRA", 8, (73.1, 34.9, 45.3, 54.9)),
        ("MoRA", 8, (73.3, 34.7, 45.3, 59.9)),
        ("LoRA", 256, (73.8, 39.7, 46.0, 56.9)),
        ("MoRA", 256, (74.4, 40.4, 46.1, 60.6)),
    ),
)

#: Table 2's Finance average, per task.
TABLE2_FINANCE = PaperTable(
    source="arXiv v1 Table 7",
    model=LLAMA2_7B,
    setup="continual pretraining on AdaptLLM's finance corpus",
    unit="Score (%) of each task",
    columns=("ConvFinQA", "FiQA-SA", "Headline", "NER", "FPB"),
    rows=(
        ("FFT", None, (44.4, 78.8, 82.3, 68.1, 74.3)),
        ("LoRA", 8, (44.5, 76.2, 72.4, 61.6, 65.1)),
        ("MoRA", 8, (45.8, 76.6, 76.3, 68.9, 68.2)),
        ("LoRA", 256, (41.4, 78.3, 83.0, 66.8, 66.7)),
        ("MoRA", 256, (47.7, 76.3, 83.4, 68.0, 68.1)),
    ),
)

#: Table 3 — C4 pretraining from scratch: perplexity (lower is better) of two model sizes.  The rank is the
#: official code's pretraining setting (r=128), which the table itself does not print.
TABLE3_C4 = PaperTable(
    source="arXiv v1 Table 3",
    model="LLaMA-style 250M and 1.3B, random init",
    setup="C4 (en), T5 tokenizer, seq 512, 10k steps of batch 1024, merge every 2,000 steps (official code)",
    unit="C4 perplexity (lower is better)",
    columns=("250M", "1.3B"),
    rows=(
        ("LoRA", 128, (33.40, 28.56)),
        ("MoRA", 128, (28.54, 25.25)),
        ("ReLoRA", 128, (32.19, 27.80)),
        ("ReMoRA", 128, (26.74, 23.34)),
    ),
    digits=2,
)

#: Table 4 — ablation of MoRA's compression on GSM8K.  Method names are the paper's words; "rotation" is
#: this suite's ``rope`` compression.
TABLE4_ABLATION = PaperTable(
    source="arXiv v1 Table 4",
    model=LLAMA2_7B,
    setup="MoRA fine-tuned for math (MetaMathQA), one row per compression/decompression variant",
    unit="GSM8K accuracy (%)",
    columns=("GSM8K",),
    rows=(
        ("truncation", 8, (59.5,)),
        ("sharing", 8, (62.5,)),
        ("decouple", 8, (63.6,)),
        ("rotation", 8, (64.2,)),
        ("truncation", 256, (66.6,)),
        ("sharing", 256, (67.9,)),
        ("decouple", 256, (67.8,)),
        ("rotation", 256, (67.9,)),
    ),
)


@dataclass(frozen=True)
class CostClaim:
    """How much slower than LoRA the paper says MoRA trains, at equal trainable parameters."""

    slowdown: float  # MoRA's training time over LoRA's
    source: str
    setting: str  # where it was measured, and the claim's own words


#: Table 5 — cost.  v1 measured one setting; the ICLR version's Table 5 (latency and memory) is known only
#: from its reviews, which quote the larger figure.
COST_CLAIMS = (
    CostClaim(1.03, "arXiv v1 §4",
              "r=8 (r̂=256 on a 4096×4096 layer), the reshape-based variant: \"only 1.03 times slower\""),
    CostClaim(1.15, "ICLR 2025 reviews",
              "\"1.15× slower during training in certain settings\" (the ICLR version's Table 5, latency and memory)"),
)
