"""mora — MoRA (high-rank updating for parameter-efficient fine-tuning) and a reproduction suite.

The adapter library needs only torch and safetensors (``pip install mora-adapter``; the distribution name
differs from the import name because "mora" on PyPI is another project)::

    from mora import MoraConfig, get_mora_model
    model = get_mora_model(hf_causal_lm, MoraConfig(r=8, compression="rope"))

Importing ``mora`` loads nothing else: the suite's modules (``mora.run``, ``mora.train``, ``mora.methods``,
...) import transformers, peft, Hydra and the rest when they are imported themselves, and need
``pip install "mora-adapter[suite]"``.
"""

from .adapters import LLAMA_TARGET_MODULES, MoraConfig, MoraLinear, MoraModel, get_mora_model, square_rank

__all__ = ["LLAMA_TARGET_MODULES", "MoraConfig", "MoraLinear", "MoraModel", "get_mora_model", "square_rank"]
__version__ = "0.1.0"
