"""Continual pretraining on biomedicine and finance (arXiv v1 §5.2.3, Tables 1, 6, 7): ``mora-run task=cpt``.

- ``domains.py``     the two domains: pocket text sources, benchmarks (AdaptLLM's tasks and BioMMLU), hub revisions
- ``corpus.py``      the pocket domain corpora and offline benchmarks, built by ``make domain-corpora``
- ``benchmarks.py``  benchmark rows from pocket | hub | local, option token counts, chance levels
- ``task.py``        ``CPTTaskConfig`` and ``CPTTask`` (packed domain text; domain and general perplexity; lm-eval)
- ``lm_eval_tasks/`` one lm-eval YAML per benchmark and AdaptLLM's scoring (``metrics.py``)
"""

from .domains import DOMAINS
from .task import CPTTask, CPTTaskConfig

__all__ = ["DOMAINS", "CPTTask", "CPTTaskConfig"]
