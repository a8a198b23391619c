"""Math (arXiv v1 Table 1, the paper's Table 2 GSM8K/MATH columns): ``mora-run task=math``.

- ``task.py``          ``MathTaskConfig`` and ``MathTask`` (MetaMathQA, Alpaca prompt, loss on the response)
- ``metrics.py``       the prompt, GSM8K answer rules, MATH boxed answers with math-verify, lm-eval loaders
- ``data.py``          the offline data: GSM-Symbolic problems (pocket training), the GSM8K test (``make finetune-data``)
- ``gsm8k_alpaca.yaml``, ``math_alpaca.yaml``   the lm-eval tasks (greedy, zero-shot, training prompt)
"""

from .metrics import alpaca_prompt, boxed_equal, extract_answer, last_boxed, parse_number
from .task import METAMATHQA_REVISION, TASK_DIR, MathTask, MathTaskConfig, alpaca_segments

__all__ = ["METAMATHQA_REVISION", "TASK_DIR", "MathTask", "MathTaskConfig", "alpaca_prompt", "alpaca_segments",
           "boxed_equal", "extract_answer", "last_boxed", "parse_number"]
