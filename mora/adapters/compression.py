"""The parameter-free compress / decompress operators of MoRA.

MoRA trains one square matrix ``M`` (r̂ × r̂) and routes a layer input ``x`` (k features) through it:

    Δh = f_decomp(M · f_comp(x))        f_comp: k → r̂ (or n blocks of r̂),   f_decomp: r̂ → d

Every operator here is *linear* in ``x`` and in ``M``, so the update is a fixed linear function of ``M``:
a weight matrix ΔW (d × k) that can be merged into the frozen base weight.  Each variant therefore
implements two things that must agree exactly: ``update(x, M)`` (the training-time path, fast tensor
ops) and ``delta_weight(M)`` (the same map as a d × k matrix, built with index/scatter ops — never a
Python loop over features, never by pushing an identity matrix through ``update``).  The path is not
called ``apply``: that would shadow ``nn.Module.apply(fn)``, which DeepSpeed and HF call on a model.

Two families exist:

* **Shared** variants apply ``M`` once.  The input is summed into r̂ *slots* (each input feature goes
  to one slot; wrap-padding may send a feature to two) and the r̂ outputs are *expanded* to d rows.
  ``sharing`` (the paper's Eq. 6, the official ``mora_type=1``) and the three variants ReMoRA cycles
  through, plus the ``truncation`` ablation, are all (input grouping × output expansion) pairs:

  =========================  ==============================  ==============================  =========
  name                        input grouping (k → r̂)          output expansion (r̂ → d)       code type
  =========================  ==============================  ==============================  =========
  ``sharing``                 cyclic: feature j → slot j % r̂  tile the r̂ outputs              1
  ``sharing_contiguous``      contiguous runs of features      repeat each output in a run     2
  ``sharing_contiguous_in``   contiguous runs of features      tile                            3
  ``sharing_contiguous_out``  cyclic                           repeat each output in a run     4
  ``truncation``              keep the first r̂ features       zero-pad to d                   (ablation)
  =========================  ==============================  ==============================  =========

* **Blockwise** variants cut the (wrap-padded) input into n = ceil(k / r̂) blocks of r̂ and apply ``M``
  to *every* block, so ΔW is block-diagonal and its rank can reach min(k, d) — the point of the method.
  ``rope`` (the paper's Eq. 9, ``mora_type=6``) first rotates block b RoPE-style at position b so that
  the blocks are distinguishable; ``decouple`` (ablation) does not.  The block outputs are concatenated,
  truncated to d, or tiled when shorter than d.  For k > d (e.g. down_proj) only the first
  ceil(d / r̂) blocks reach the output: the official code computes and discards the rest; we skip
  them (same numbers, less work) and keep this *faithful* behaviour — inputs beyond those blocks get no
  update.

Padding wraps around (``concat(x, x[:pad])``, as the official code does), repeated cyclically when the
pad is longer than k — the case where the official forward crashes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ROPE_BASE = 10000.0


def _runs(total: int, parts: int) -> Tensor:
    """Run lengths that split ``total`` items into ``parts`` contiguous runs, longer runs first.

    The official code's split: with q = total // parts and m = total - parts·q, the first m runs hold
    q + 1 items and the rest q (q may be 0 when total < parts, leaving empty runs).
    """
    q, m = divmod(total, parts)
    return torch.tensor([q + 1] * m + [q] * (parts - m), dtype=torch.long)


def _fold(t: Tensor, k: int) -> Tensor:
    """(..., n) → (..., k): column p of ``t`` added onto column p mod k, in increasing p.

    This is what a scatter-add of ``t`` into zeros at the cyclic index p mod k computes (same sums in the
    same order, so bit-identical), as one copy plus one slice add per wrap instead of an element-wise
    scatter.  With n ≤ k the columns are kept and zero columns appended.
    """
    n = t.shape[-1]
    if n <= k:
        return F.pad(t, (0, k - n)) if n < k else t
    out = t[..., :k].clone(memory_format=torch.contiguous_format)
    for start in range(k, n, k):  # one slice add per wrap, not per feature
        stop = min(start + k, n)
        out[..., : stop - start] += t[..., start:stop]
    return out


class _WrapPad(torch.autograd.Function):
    """``x.index_select(-1, index)`` for the cyclic index 0, 1, …, k−1, 0, 1, … (length > k).

    The forward is that gather.  The backward folds the gradient's wrapped-around columns back onto the
    first ones (:func:`_fold`) — the sums index_select's own backward forms (a scatter-add into zeros, in
    index order), so the result is bit-identical, without the zero fill and the element-wise scatter.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.k = x.shape[-1]
        return x.index_select(-1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _fold(grad, ctx.k), None


def _tile(y: Tensor, width: int) -> Tensor:
    """``y`` repeated along the last dimension and cut to ``width`` features."""
    reps = math.ceil(width / y.shape[-1])
    return y.repeat(*([1] * (y.dim() - 1)), reps)[..., :width] if reps > 1 else y[..., :width]


class _AddTiled(torch.autograd.Function):
    """``result + tile(y).to(result.dtype)`` for ``y`` narrower than ``result``, never materialising the tiles.

    The forward is one broadcast add over the whole tiles (``result`` viewed as (…, tiles, width)) and
    one for the cut last tile, into a fresh output.  The backward passes the gradient to ``result``
    unchanged and gives ``y`` the sum of its tiles, formed exactly as autograd differentiates ``repeat`` +
    slice + cast (cast back, zero-pad to whole tiles, sum over the tile axis), so gradients are
    bit-identical to the unfused expression.
    """

    @staticmethod
    def forward(ctx, result: Tensor, y: Tensor) -> Tensor:
        ctx.y_dtype, width, d = y.dtype, y.shape[-1], result.shape[-1]
        ctx.width = width
        y = y.to(result.dtype)
        out = torch.empty(result.shape, dtype=result.dtype, device=result.device)
        whole = d // width * width
        tiles = (d // width, width)
        torch.add(result[..., :whole].unflatten(-1, tiles), y.unsqueeze(-2), out=out[..., :whole].unflatten(-1, tiles))
        if whole < d:
            torch.add(result[..., whole:], y[..., : d - whole], out=out[..., whole:])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        width, d = ctx.width, grad.shape[-1]
        tiles = math.ceil(d / width)
        padded = grad.to(ctx.y_dtype).contiguous()
        if tiles * width > d:
            padded = F.pad(padded, (0, tiles * width - d))
        return grad, padded.unflatten(-1, (tiles, width)).sum(-2)


def _add_tiled(result: Tensor, y: Tensor) -> Tensor:
    """``result + _tile(y, d).to(result.dtype)`` with d = result's width; fused when ``y`` must be tiled."""
    d = result.shape[-1]
    if y.shape[-1] >= d:
        return result + y[..., :d].to(result.dtype)
    return _AddTiled.apply(result, y)


class Compression(nn.Module, ABC):
    """One compress/decompress pair for a layer with ``in_features`` k, ``out_features`` d and M of size r̂.

    Subclasses register under ``name`` in :data:`COMPRESSIONS`.  They may hold non-persistent index and
    table buffers (built once here, moved by ``.to()``), never trainable parameters.
    """

    name: ClassVar[str]
    needs_even_rank: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.blocks = math.ceil(in_features / rank)
        self.register_buffer("wrap_index", self._wrap_index(self.blocks * rank), persistent=False)

    def _wrap_index(self, length: int) -> Tensor:
        """Source feature of each of ``length`` padded input positions: 0..k-1, then around again."""
        return torch.arange(length) % self.in_features

    def _wrap_pad(self, x: Tensor, length: int) -> Tensor:
        """``x`` padded cyclically (or cut) to ``length`` features along the last dimension."""
        if length == self.in_features:
            return x
        if length < self.in_features:
            return x[..., :length]
        return _WrapPad.apply(x, self.wrap_index[:length])

    @abstractmethod
    def update(self, x: Tensor, M: Tensor) -> Tensor:
        """The adapter path f_decomp(M f_comp(x)) for ``x`` of shape (..., k); returns (..., d)."""

    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        """``result + update(x, M)`` in ``result``'s dtype — the layer output ``MoraLinear`` returns.

        Variants whose f_decomp tiles a narrower output override this to add ``M``'s output into each
        tile of ``result`` directly (same numbers, no tiled intermediate).
        """
        return result + self.update(x, M).to(result.dtype)

    @abstractmethod
    def delta_weight(self, M: Tensor) -> Tensor:
        """The same linear map as a (d, k) matrix, so that ``update(x, M) == x @ delta_weight(M).T``."""

    def extra_repr(self) -> str:
        return f"{self.name}: k={self.in_features} → r̂={self.rank} → d={self.out_features}"


COMPRESSIONS: dict[str, type[Compression]] = {}


def _register(cls: type[Compression]) -> type[Compression]:
    COMPRESSIONS[cls.name] = cls
    return cls


class SharedCompression(Compression):
    """Base of the variants that apply ``M`` once: sum inputs into r̂ slots, expand r̂ outputs to d.

    A subclass declares its grouping by two class flags; everything else — forward fast paths and the
    index tensors ``delta_weight`` scatters with — is derived here.

    * ``cyclic_input``: feature j of the wrap-padded input (length n·r̂) goes to slot j % r̂;
      otherwise the k features form r̂ contiguous runs (``_runs(k, r̂)``) and run i goes to slot i.
    * ``tile_output``: output i reads slot i % r̂; otherwise the d outputs form r̂ contiguous runs and
      run i reads slot i (``repeat_interleave``).
    """

    cyclic_input: ClassVar[bool]
    tile_output: ClassVar[bool]

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features, rank)
        k, d, r = in_features, out_features, rank
        padded = self.blocks * r
        # Slot of each input position: the wrap-padded positions 0..n·r̂−1 (position p reads feature p mod k)
        # when cyclic, else the k features themselves.
        if self.cyclic_input:
            slot = torch.arange(padded) % r
        else:
            slot = torch.repeat_interleave(torch.arange(r), _runs(k, r))
        self.register_buffer("in_slot", slot, persistent=False)
        if self.tile_output:
            out_slot = torch.arange(d) % r
        else:
            out_slot = torch.repeat_interleave(torch.arange(r), _runs(d, r))
        self.register_buffer("out_slot", out_slot, persistent=False)
        self.register_buffer("out_runs", _runs(d, r), persistent=False)

    def compress(self, x: Tensor) -> Tensor:
        """(..., k) → (..., r̂): the slot sums."""
        if self.cyclic_input:
            padded = self._wrap_pad(x, self.blocks * self.rank)
            return padded.unflatten(-1, (self.blocks, self.rank)).sum(-2)
        slots = x.new_zeros(*x.shape[:-1], self.rank)
        return slots.index_add(-1, self.in_slot, x)

    def decompress(self, y: Tensor) -> Tensor:
        """(..., r̂) → (..., d)."""
        d = self.out_features
        if self.tile_output:
            return _tile(y, d)
        return y.repeat_interleave(self.out_runs, dim=-1, output_size=d)

    def update(self, x: Tensor, M: Tensor) -> Tensor:
        return self.decompress(self.compress(x) @ M.T)

    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        if self.tile_output:
            return _add_tiled(result, self.compress(x) @ M.T)
        return super().add_to(result, x, M)

    def delta_weight(self, M: Tensor) -> Tensor:
        # M @ C, where C (r̂ × k) has a 1 at (slot, feature) for every input position: M's column for
        # each position, wrapped positions folded onto their features; then one row of M @ C per output.
        mc = _fold(M[:, self.in_slot], self.in_features)
        return mc[self.out_slot]


@_register
class Sharing(SharedCompression):
    """``sharing`` (paper Eq. 6, code type 1): cyclic input groups, tiled outputs.  rank(ΔW) ≤ r̂."""

    name = "sharing"
    cyclic_input, tile_output = True, True


@_register
class SharingContiguous(SharedCompression):
    """``sharing_contiguous`` (code type 2): contiguous runs in, each output repeated over a run out."""

    name = "sharing_contiguous"
    cyclic_input, tile_output = False, False


@_register
class SharingContiguousIn(SharedCompression):
    """``sharing_contiguous_in`` (code type 3): contiguous input runs, tiled outputs."""

    name = "sharing_contiguous_in"
    cyclic_input, tile_output = False, True


@_register
class SharingContiguousOut(SharedCompression):
    """``sharing_contiguous_out`` (code type 4): cyclic input groups, outputs repeated over runs."""

    name = "sharing_contiguous_out"
    cyclic_input, tile_output = True, False


@_register
class Truncation(Compression):
    """``truncation`` (ablation): keep the first r̂ input features, zero-pad the r̂ outputs to d.

    When k < r̂ the missing inputs read as zero; when d < r̂ the extra outputs are dropped.
    """

    name = "truncation"

    def update(self, x: Tensor, M: Tensor) -> Tensor:
        r, k, d = self.rank, self.in_features, self.out_features
        z = F.pad(x[..., :r], (0, max(r - k, 0)))
        y = z @ M.T
        return F.pad(y, (0, d - r)) if d > r else y[..., :d]

    def delta_weight(self, M: Tensor) -> Tensor:
        r, k, d = self.rank, self.in_features, self.out_features
        dw = M.new_zeros(d, k)
        dw[: min(d, r), : min(k, r)] = M[: min(d, r), : min(k, r)]
        return dw


class BlockwiseCompression(Compression):
    """Base of the variants that apply ``M`` to every r̂-block of the wrap-padded input.

    Subclasses may rotate each block by a fixed, block-dependent orthogonal map (``rotate``) and must
    express that map's effect on ``M`` (``rotated_M``: the n matrices M · R_b) for ``delta_weight``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features, rank)
        # Blocks whose outputs survive the truncation to d; the rest are never computed.
        self.used_blocks = min(self.blocks, math.ceil(out_features / rank))

    def rotate(self, blocks: Tensor) -> Tensor:
        """Rotate blocks of shape (..., used_blocks, r̂); identity unless overridden."""
        return blocks

    def rotated_M(self, M: Tensor) -> Tensor:
        """(used_blocks, r̂, r̂): the matrix applied to each raw block, M · R_b."""
        return M.expand(self.used_blocks, -1, -1)

    def block_outputs(self, x: Tensor, M: Tensor) -> Tensor:
        """(..., used_blocks·r̂): ``M`` applied to every used (rotated) block, concatenated."""
        r = self.rank
        used = self._wrap_pad(x, self.used_blocks * r).unflatten(-1, (self.used_blocks, r))
        return (self.rotate(used) @ M.T).flatten(-2)

    def update(self, x: Tensor, M: Tensor) -> Tensor:
        return _tile(self.block_outputs(x, M), self.out_features)

    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        return _add_tiled(result, self.block_outputs(x, M))

    def delta_weight(self, M: Tensor) -> Tensor:
        r, k, d, used = self.rank, self.in_features, self.out_features, self.used_blocks
        width = used * r  # the used padded inputs, and the concatenated block outputs
        # One period of ΔW's rows over the padded inputs: block-diagonal, block b = M · R_b.
        period = M.new_zeros(width, width)
        period.view(used, r, used, r).diagonal(dim1=0, dim2=2).copy_(self.rotated_M(M).permute(1, 2, 0))
        # Rows past d are truncated away; padded columns fold onto the features they wrap to (zero
        # columns for the inputs beyond the used blocks, k > width); rows repeat when d > width.
        period = _fold(period[: min(d, width)], k)
        reps = math.ceil(d / width)
        return period.repeat(reps, 1)[:d] if reps > 1 else period


@_register
class Decouple(BlockwiseCompression):
    """``decouple`` (ablation): block-diagonal M without rotation — blocks are indistinguishable."""

    name = "decouple"


@_register
class Rope(BlockwiseCompression):
    """``rope`` (paper Eq. 9, code type 6): block b is rotated RoPE-style at position b before M.

    ``z_b = x_b ⊙ cos θ_b + rotate_half(x_b) ⊙ sin θ_b`` with θ_b = b · 10000^(−2i/r̂) (i < r̂/2,
    duplicated), ``rotate_half(z) = cat(−z[r̂/2:], z[:r̂/2])``.  Needs an even r̂.  The cos/sin tables
    are non-persistent buffers computed once in float64; ``MoraLinear`` casts them to M's dtype.
    """

    name = "rope"
    needs_even_rank = True

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        if rank % 2:
            raise ValueError(f"rope compression needs an even r̂, got {rank} (square_rank rounds it down)")
        super().__init__(in_features, out_features, rank)
        inv_freq = _ROPE_BASE ** (-torch.arange(0, rank, 2, dtype=torch.float64) / rank)
        angles = torch.outer(torch.arange(self.used_blocks, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (used_blocks, r̂)
        self.register_buffer("cos", angles.cos(), persistent=False)
        # rotate_half(z) = cat(−z[h:], z[:h]) = roll(z, h) ⊙ (−1…−1, 1…1), so rotate_half(z) ⊙ sin equals
        # roll(z, h) ⊙ sin_signed exactly (negation is exact): one roll instead of slices, neg and cat.
        half = rank // 2
        sin = angles.sin()
        self.register_buffer("sin_signed", torch.cat([-sin[:, :half], sin[:, half:]], dim=-1), persistent=False)

    def rotate(self, blocks: Tensor) -> Tensor:
        cos, sin_signed = self.cos.to(blocks.dtype), self.sin_signed.to(blocks.dtype)
        return blocks * cos + blocks.roll(self.rank // 2, dims=-1) * sin_signed

    def rotated_M(self, M: Tensor) -> Tensor:
        # M R_b = M diag(cos_b) + M diag(sin_b) P, where right-multiplying by rotate_half's matrix P
        # maps columns Y ↦ cat(Y[:, h:], −Y[:, :h]) = roll(Y ⊙ (−1…−1, 1…1), h): with sin_signed that
        # is roll(M ⊙ sin_signed, h), exactly.
        cos, sin_signed = self.cos.to(M.dtype)[:, None, :], self.sin_signed.to(M.dtype)[:, None, :]
        return M * cos + (M * sin_signed).roll(self.rank // 2, dims=-1)


def build_compression(name: str, in_features: int, out_features: int, rank: int) -> Compression:
    """The compression called ``name`` for one layer; a clear error for unknown names."""
    if name not in COMPRESSIONS:
        raise ValueError(f"unknown MoRA compression {name!r}; choose one of {sorted(COMPRESSIONS)}")
    return COMPRESSIONS[name](in_features, out_features, rank)
