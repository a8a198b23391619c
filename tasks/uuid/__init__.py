"""UUID memorisation (arXiv v1 §3, §5.1): ``mora-run task=uuid``.

- ``data.py``     seeded uuid4 pair generator, tokenization (loss on all tokens or on the value), JSONL
- ``task.py``     ``UUIDTaskConfig`` and ``UUIDTask`` (training data; evaluation through lm-eval)
- ``uuid.yaml``   the lm-eval task (``uuid_memorisation``): greedy generation from ``"{key}:"``
- ``metrics.py``  ``char_accuracy`` (the paper's character-level accuracy), ``exact_match``, the YAML hooks
"""

from .data import encode_pair, generate_pairs, write_jsonl
from .metrics import char_accuracy, exact_match
from .task import LM_EVAL_TASK, TASK_DIR, UUIDTask, UUIDTaskConfig

__all__ = [
    "LM_EVAL_TASK",
    "TASK_DIR",
    "UUIDTask",
    "UUIDTaskConfig",
    "char_accuracy",
    "encode_pair",
    "exact_match",
    "generate_pairs",
    "write_jsonl",
]
