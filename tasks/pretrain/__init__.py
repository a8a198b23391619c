"""Pretraining from scratch (arXiv v1 §5.3, Table 3) and the pocket base: ``mora-run task=pretrain``.

- ``corpus.py``  the pocket English corpus and its 4k BPE tokenizer, built offline by ``make corpus``
- ``task.py``    ``PretrainTaskConfig`` and ``PretrainTask`` (packed LM data; held-out perplexity)
"""

from .task import C4_REVISION, PretrainTask, PretrainTaskConfig

__all__ = ["C4_REVISION", "PretrainTask", "PretrainTaskConfig"]
