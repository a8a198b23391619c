"""``MoraLinear`` — a frozen ``nn.Linear`` plus a MoRA update ``f_decomp(M f_comp(dropout(x)))``.

Precision: ``M`` is kept in **float32 when the base weight is bfloat16 or float16**, otherwise in the
base weight's dtype.  A zero-initialised matrix updated by small steps loses them when stored in bf16;
the official code and peft's LoRA (the baselines here) keep their adapters in fp32 for the same reason,
so the comparison stays fair.  The adapter path reads the half-precision input as it is (no float32
copy) and adds its update into the base output in place; how each variant keeps float32 accuracy
(float32 slot sums, float32 accumulation of M's gradient) is described in ``compression.py``.  Merging
adds ΔW rounded to the base dtype, so merge → unmerge is exact to ~1e-12 in float64 but only to bf16
resolution on a bf16 base.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .compression import build_compression
from .config import square_rank

_HALF = (torch.float16, torch.bfloat16)


class MoraLinear(nn.Module):
    """Wrap ``base_layer`` (frozen) with a trainable square matrix ``M`` of side ``square_rank(k, d, r)``.

    ``M`` is zero-initialised, so the wrapped layer computes exactly what the base layer did until the
    first update.  ``M`` is applied as ``z @ M.T`` (like an ``nn.Linear`` weight).

    Example::

        layer = MoraLinear(nn.Linear(4096, 11008), r=8, compression="sharing")
        layer.M.shape              # (348, 348): 121,104 numbers, LoRA-8 trains 121,152
        layer.delta_weight()       # (11008, 4096), the update that merge() adds to the weight

    Args:
        base_layer: the ``nn.Linear`` to adapt; its parameters are frozen.
        r: the LoRA rank whose parameter budget to match.
        compression: a name from :data:`mora.adapters.compression.COMPRESSIONS`.
        dropout: dropout probability on the adapter input (the base path never sees it).
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, compression: str = "rope", dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features, self.r = base_layer.in_features, base_layer.out_features, r
        self.rank = square_rank(self.in_features, self.out_features, r, compression)
        weight = base_layer.weight
        dtype = torch.float32 if weight.dtype in _HALF else weight.dtype
        self.M = nn.Parameter(torch.zeros(self.rank, self.rank, dtype=dtype, device=weight.device))
        self.compression = build_compression(compression, self.in_features, self.out_features, self.rank)
        self.compression.to(device=weight.device, dtype=dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        self.train(base_layer.training)  # inherit train/eval mode: wrapping an eval layer must not enable dropout

    @property
    def compression_name(self) -> str:
        return self.compression.name

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        return self.compression.add_to(result, self.dropout(x), self.M)

    def delta_weight(self) -> Tensor:
        """ΔW (d × k) in M's dtype, such that the adapter path equals ``x @ ΔW.T`` (dropout aside)."""
        return self.compression.delta_weight(self.M)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW to the base weight; the adapter path is then skipped.  Merging twice is a no-op."""
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from the base weight again.  A no-op when not merged."""
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    @torch.no_grad()
    def fold(self) -> None:
        """Move the update into the base weight and restart the adapter from zero (ReMoRA's merge step).

        Outputs are unchanged; ``M`` keeps its identity (optimizers still hold it) but is zeroed.
        """
        self.merge()
        self.M.zero_()
        self.merged = False

    def set_compression(self, name: str) -> None:
        """Switch to another compression of the same r̂ (ReMoRA cycles these after each fold)."""
        if self.merged:
            raise RuntimeError("unmerge (or fold) before switching the compression of a merged layer")
        compression = build_compression(name, self.in_features, self.out_features, self.rank)
        self.compression = compression.to(device=self.M.device, dtype=self.M.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, r̂={self.rank}, merged={self.merged}"
