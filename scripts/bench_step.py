"""Table 5 (training cost): a whole-model training step per method, each in a fresh process (:mod:`mora.bench`).

    .venv/bin/python scripts/bench_step.py                    # CPU: tiny_llama + a LLaMA-2-7B-width slice
    python scripts/bench_step.py --device cuda                # GPU: 4-layer LLaMA-2-7B-width, bf16, 4 × 2048
    python scripts/bench_step.py --models tiny_llama --methods lora-r8 mora_rope-r8    # a few rows

Writes results/runs/table5/<name>.json (one run result per row); ``python -m mora.tables render table5``
turns them into results/table5.md (``make reproduce-table5`` does both).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mora.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["table5", *sys.argv[1:]]))
