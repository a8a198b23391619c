"""MoRA as an adapter library: config, compression operators, the wrapped layer and the model wrapper."""

from .compression import COMPRESSIONS, Compression, build_compression
from .config import LLAMA_TARGET_MODULES, MoraConfig, square_rank
from .layer import MoraLinear
from .model import MoraModel, find_modules, get_mora_model, module_matches

__all__ = [
    "COMPRESSIONS",
    "LLAMA_TARGET_MODULES",
    "Compression",
    "MoraConfig",
    "MoraLinear",
    "MoraModel",
    "build_compression",
    "find_modules",
    "get_mora_model",
    "module_matches",
    "square_rank",
]
