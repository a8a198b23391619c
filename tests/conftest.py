"""Shared fixtures of the MoRA test suite.

Everything here is CPU-sized: a tiny random-init LLaMA (vocab 100, hidden 64, intermediate 172 — so the
MLP shapes are not multiples of r̂ —, 2 layers, 4 heads) built from a ``LlamaConfig`` with a fixed
seed, in float64 so that merge arithmetic can be checked to ~1e-12.  Nothing touches the Hugging Face
hub: models are built from configs, never downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from peft.tuners.lora import LoraLayer  # noqa: E402

from mora.adapters import MoraLinear  # noqa: E402

# One thread: every tensor here is tiny, and on a shared 2-core machine a second (spinning) thread makes
# small float64 matmuls ~10-100x slower.
torch.set_num_threads(1)

#: The tiny LLaMA every model-level test uses.  intermediate 172 makes gate/up (64→172) and down
#: (172→64) non-divisible by their r̂, so wrap-padding and output tiling are exercised.
TINY_LLAMA = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


# ---------------------------------------------------------------------------------------------- hooks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests marked ``gpu`` when no CUDA device is present (reported as deselected, not skipped)."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


# ---------------------------------------------------------------------------------------------- helpers
def build_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> LlamaForCausalLM:
    """A random-init tiny ``LlamaForCausalLM`` in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    return LlamaForCausalLM(config).to(dtype).eval()


def randomize_adapters(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Fill every MoRA ``M`` and every peft LoRA ``B`` under ``module`` (or ``module`` itself) with seeded
    Gaussian values.

    Adapters are zero-initialised, so any test of merge/unmerge arithmetic must first make ΔW non-zero.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = [m.M if isinstance(m, MoraLinear) else m.lora_B["default"].weight
               for m in module.modules() if isinstance(m, (MoraLinear, LoraLayer))]
    assert targets, "randomize_adapters found no MoraLinear or LoRA layer"
    with torch.no_grad():
        for target in targets:
            target.copy_((torch.randn(target.shape, generator=generator, dtype=torch.float64) * scale).to(target.dtype))
    return module


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def make_llama():
    """Factory: ``make_llama(seed=0, dtype=torch.float64, **config_overrides)``."""
    return build_tiny_llama


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return build_tiny_llama()


@pytest.fixture
def input_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12), generator=generator)


@pytest.fixture
def randomize():
    """The :func:`randomize_adapters` helper, as a fixture: ``randomize(model_or_layer, seed=0, scale=0.05)``."""
    return randomize_adapters
