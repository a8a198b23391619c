"""mora — MoRA (high-rank updating for parameter-efficient fine-tuning) and a reproduction suite.

The adapter library is importable on its own::

    from mora import MoraConfig, get_mora_model
    model = get_mora_model(hf_causal_lm, MoraConfig(r=8, compression="rope"))
"""

from .adapters import LLAMA_TARGET_MODULES, MoraConfig, MoraLinear, MoraModel, get_mora_model, square_rank

__all__ = ["LLAMA_TARGET_MODULES", "MoraConfig", "MoraLinear", "MoraModel", "get_mora_model", "square_rank"]
__version__ = "0.1.0"
