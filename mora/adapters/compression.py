"""The parameter-free compress / decompress operators of MoRA.

MoRA trains one square matrix ``M`` (r̂ × r̂) and routes a layer input ``x`` (k features) through it:

    Δh = f_decomp(M · f_comp(x))        f_comp: k → r̂ (or n blocks of r̂),   f_decomp: r̂ → d

Every operator here is *linear* in ``x`` and in ``M``, so the update is a fixed linear function of ``M``:
a weight matrix ΔW (d × k) that can be merged into the frozen base weight.  Each variant implements the
same map three ways, which the tests hold equal (float64: to ~1e-12):

* ``update(x, M)`` — the **eager reference**: the paper's operators written out (wrap-pad, rotate, sum,
  tile …) with plain tensor ops, in the dtype it is given.  Readable, not fast.
* ``add_to(result, x, M)`` — the **training path** ``MoraLinear`` runs: ``result + update(x, M)``, fused
  (see "The fused training path" below).
* ``delta_weight(M)`` — the map as a d × k matrix, built with index/scatter ops (never a Python loop over
  features, never by pushing an identity matrix through ``update``), for merging.

The path is not called ``apply``: that would shadow ``nn.Module.apply(fn)``, which DeepSpeed and HF call.

Two families exist:

* **Shared** variants apply ``M`` once.  The input is summed into r̂ *slots* (each input feature goes
  to one slot; wrap-padding may send a feature to two) and the r̂ outputs are *expanded* to d rows.
  ``sharing`` (the paper's Eq. 6, the official ``mora_type=1``) and the three variants ReMoRA cycles
  through are all (input grouping × output expansion) pairs:

  =========================  ==============================  ==============================  =========
  name                        input grouping (k → r̂)          output expansion (r̂ → d)       code type
  =========================  ==============================  ==============================  =========
  ``sharing``                 cyclic: feature j → slot j % r̂  tile the r̂ outputs              1
  ``sharing_contiguous``      contiguous runs of features      repeat each output in a run     2
  ``sharing_contiguous_in``   contiguous runs of features      tile                            3
  ``sharing_contiguous_out``  cyclic                           repeat each output in a run     4
  =========================  ==============================  ==============================  =========

* **Blockwise** variants cut the (wrap-padded) input into n = ceil(k / r̂) blocks of r̂ and apply ``M``
  to *every* block, so ΔW is block-diagonal and its rank can reach min(k, d) — the point of the method.
  ``rope`` (the paper's Eq. 9, ``mora_type=6``) first rotates block b RoPE-style at position b so that
  the blocks are distinguishable; ``decouple`` (ablation) does not.  The block outputs are concatenated,
  truncated to d, or tiled when shorter than d.  For k > d (e.g. down_proj) only the first
  ceil(d / r̂) blocks reach the output: the official code computes and discards the rest; we skip
  them (same numbers, less work) and keep this *faithful* behaviour — inputs beyond those blocks get no
  update.  The ``truncation`` ablation (keep the first r̂ inputs, zero-pad the outputs) is the one-block
  special case.

Padding wraps around (``concat(x, x[:pad])``, as the official code does), repeated cyclically when the
pad is longer than k — the case where the official forward crashes.

The fused training path
-----------------------
On a GPU the adapter is memory-bound: every elementwise pass over an activation-sized tensor (a cast, the
wrap-pad gather, the rotation, the tile-add, and their backward twins) costs more than the matmul with
``M``.  ``add_to`` therefore makes none; it touches the activations only inside matmuls and reductions:

* **Blockwise** (and truncation): the rotation of block b is a fixed orthogonal map R_b, so
  ``M · rotate_b(x_b) = (M R_b) · x_b``.  ``rotated_M`` (n·r̂² numbers, built from ``M`` in every forward,
  so the gradient flows to ``M``) is applied to the *raw* blocks, each an (unpadded, uncopied) strided view
  of ``x``, and the products are accumulated straight into ``result`` by batched matmuls with β = 1.  A
  block that wraps around the end of ``x`` is split into two matmuls over its two contiguous pieces.  When
  the block outputs are tiled (d > n·r̂, e.g. gate/up) they are computed once into a buffer and added onto
  each tile.  The schedule of these matmuls (:class:`_MatmulPlan`) is built once per layer.  Backward: the
  same matmuls transposed, writing the input gradient in place.  Nothing activation-sized is saved beyond
  ``x`` itself, which the frozen base layer keeps anyway.  With fewer tokens than r̂ (generation, tiny
  batches) rotating the activations moves fewer numbers than rotating M, and ``rope`` does that instead
  (:meth:`BlockwiseCompression.rotates_weights`).
* **Shared**: the slot sums are reductions over views of ``x`` (the wrapped features are a few slice
  sums, no gather), accumulated in ``M``'s dtype; the r̂ outputs are added onto every tile (or run) of
  ``result`` in place by broadcasting.  Only the (tokens × r̂) slot sums are saved.

Precision.  On a bfloat16/float16 base ``M`` is float32 (see ``layer.py``).  The shared path computes in
float32 from the half-precision activations, as the reference does (no copy: reductions read half and
accumulate in float32).  The blockwise path multiplies the half-precision activations by ``M R_b`` rounded
to the activations' dtype, with float32 accumulation inside the matmul — what autocast does for any
linear layer; untiled, the update is rounded once into ``result`` (the reference rounds it twice); ``M``'s
gradient is each matmul's product rounded to that dtype, accumulated over blocks and tiles in float32.  Outputs and gradients agree with the float32
reference to within bf16 rounding; in float32 and float64 nothing is rounded differently except the order
of sums.  ``add_to`` writes into ``result`` (the layer's fresh base output); a view or a leaf that needs a
gradient is copied first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ROPE_BASE = 10000.0


# ============================================================================ helpers of the reference
def _runs(total: int, parts: int) -> list[int]:
    """Run lengths that split ``total`` items into ``parts`` contiguous runs, longer runs first.

    The official code's split: with q = total // parts and m = total - parts·q, the first m runs hold
    q + 1 items and the rest q (q may be 0 when total < parts, leaving empty runs).
    """
    q, m = divmod(total, parts)
    return [q + 1] * m + [q] * (parts - m)


def _fold(t: Tensor, k: int) -> Tensor:
    """(..., n) → (..., k): column p of ``t`` added onto column p mod k, in increasing p.

    What a scatter-add of ``t`` into zeros at the cyclic index p mod k computes, as one copy plus one
    slice add per wrap.  With n ≤ k the columns are kept and zero columns appended.
    """
    n = t.shape[-1]
    if n <= k:
        return F.pad(t, (0, k - n)) if n < k else t
    out = t[..., :k].clone(memory_format=torch.contiguous_format)
    for start in range(k, n, k):  # one slice add per wrap, not per feature
        stop = min(start + k, n)
        out[..., : stop - start] += t[..., start:stop]
    return out


def _tile(y: Tensor, width: int) -> Tensor:
    """``y`` repeated along the last dimension and cut to ``width`` features."""
    reps = math.ceil(width / y.shape[-1])
    return y.repeat(*([1] * (y.dim() - 1)), reps)[..., :width] if reps > 1 else y[..., :width]


class _WrapPad(torch.autograd.Function):
    """``x.index_select(-1, index)`` for the cyclic index 0, 1, …, k−1, 0, 1, … (length > k).

    The backward folds the gradient's wrapped-around columns back onto the first ones (:func:`_fold`) —
    the sums index_select's own backward forms, without its zero fill and element-wise scatter.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.k = x.shape[-1]
        return x.index_select(-1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _fold(grad, ctx.k), None


# ============================================================================ the fused path: schedules
def _chunks(length: int, period: int, block: int) -> list[tuple[int, int, int]]:
    """Positions 0 … length−1 of a wrap-padded axis cut into runs ``(position, source, size)``.

    Position p reads source p mod ``period`` and lies in block p // ``block``; a run ends at a block
    boundary or where the source wraps around, so within a run both advance together (one contiguous
    slice of the source feeds one contiguous slice of a block).
    """
    runs, p = [], 0
    while p < length:
        source = p % period
        size = min(length, (p // block + 1) * block, p + period - source) - p
        runs.append((p, source, size))
        p += size
    return runs


def _strided(t: Tensor, start: int, count: int, width: int, step: int) -> Tensor:
    """(count, rows, width) view of the columns ``start + i·step + [0, width)`` of a 2-D ``t`` (no copy)."""
    return t.narrow(1, start, (count - 1) * step + width).unfold(1, width, step).transpose(0, 1)


def _first_touches(touches: list[list[tuple[int, int]]], size: int) -> tuple[list[bool], tuple[tuple[int, int], ...]]:
    """For items that touch the given column ranges of an axis of ``size``, in order: whether each is the
    first to touch its columns, and the ranges no item touches.

    A kernel uses this to write into uninitialised memory: the first item writes (matmul β = 0, or a copy),
    later ones accumulate, and only the untouched ranges are zeroed.  Every schedule here touches a range
    either all for the first time or all again; a partial overlap would break that, so it is refused.
    """
    covered = torch.zeros(size, dtype=torch.bool)
    first = []
    for ranges in touches:
        parts = [covered[lo:hi] for lo, hi in ranges]
        hit, total = sum(int(part.sum()) for part in parts), sum(part.numel() for part in parts)
        if 0 < hit < total:
            raise AssertionError(f"ranges {ranges} partly overlap earlier ones")
        for part in parts:
            part.fill_(True)
        first.append(hit == 0)
    edges = torch.cat([torch.ones(1), covered.float(), torch.ones(1)]).diff()
    starts, stops = (edges == -1).nonzero().flatten().tolist(), (edges == 1).nonzero().flatten().tolist()
    return first, tuple(zip(starts, stops))


@dataclass(frozen=True)
class _Span:
    """``count`` consecutive blocks of W (block + i, i < count), each used as ``W[b, :rows, col:col+width]``:
    block i reads input features ``x_start + i·step + [0, width)`` and adds onto output columns
    ``out_start + i·step + [0, rows)``.  One batched matmul.  ``fresh_in`` / ``fresh_out``: the first span
    to touch those input features / output columns (see :func:`_first_touches`)."""

    block: int
    x_start: int
    out_start: int
    rows: int
    col: int
    width: int
    step: int
    count: int = 1
    fresh_in: bool = True
    fresh_out: bool = True

    def in_ranges(self) -> list[tuple[int, int]]:
        return [(s, s + self.width) for s in range(self.x_start, self.x_start + self.count * self.step, self.step)]

    def out_ranges(self) -> list[tuple[int, int]]:
        return [(s, s + self.rows) for s in range(self.out_start, self.out_start + self.count * self.step, self.step)]

    def x(self, x2: Tensor) -> Tensor:
        return _strided(x2, self.x_start, self.count, self.width, self.step)

    def out(self, out2: Tensor) -> Tensor:
        return _strided(out2, self.out_start, self.count, self.rows, self.step)

    def w(self, W: Tensor) -> Tensor:
        return W[self.block : self.block + self.count, : self.rows, self.col : self.col + self.width]

    def follows(self, prev: _Span) -> bool:
        """Whether this span continues ``prev`` by one block (so the two merge into one matmul)."""
        return ((self.rows, self.col, self.width, self.step) == (prev.rows, prev.col, prev.width, prev.step)
                and self.block == prev.block + prev.count
                and self.x_start == prev.x_start + prev.count * prev.step
                and self.out_start == prev.out_start + prev.count * prev.step)


@dataclass(frozen=True)
class _Segment:
    """Columns ``start + [0, count·size)`` of a wide axis (input features or outputs) viewed as
    (count, size) and tied to slots: with ``runs`` row i is one run of ``size`` columns for slot
    ``slot + i``; otherwise every row covers the slots ``slot + [0, size)`` (cyclic grouping, tiling).
    ``fresh`` / ``fresh_slots``: the first segment of its list to touch these columns / these slots."""

    start: int
    count: int
    size: int
    slot: int
    runs: bool
    fresh: bool = True
    fresh_slots: bool = True

    def ranges(self) -> list[tuple[int, int]]:
        return [(self.start, self.start + self.count * self.size)]

    def slot_ranges(self) -> list[tuple[int, int]]:
        return [(self.slot, self.slot + (self.count if self.runs else self.size))]

    def view(self, t2: Tensor) -> Tensor:
        return t2.narrow(1, self.start, self.count * self.size).unflatten(1, (self.count, self.size))

    def reduce_into(self, acc: Tensor, t2: Tensor) -> None:
        """Sum these columns of ``t2`` onto their slots of ``acc`` (in ``acc``'s dtype; written, not added,
        by the first segment to touch them)."""
        (lo, hi), dim = self.slot_ranges()[0], 2 if self.runs else 1
        if self.fresh_slots:
            torch.sum(self.view(t2), dim, dtype=acc.dtype, out=acc[:, lo:hi])
        else:
            acc[:, lo:hi] += self.view(t2).sum(dim, dtype=acc.dtype)

    def spread(self, t2: Tensor, slots: Tensor, accumulate: bool) -> None:
        """Write (or add) each slot of ``slots`` onto its columns of ``t2``, in place."""
        if self.runs:
            src = slots[:, self.slot : self.slot + self.count, None]
        else:
            src = slots[:, None, self.slot : self.slot + self.size]
        view = self.view(t2)
        view.add_(src) if accumulate else view.copy_(src)


def _empty_slots(like: Tensor, rows: int, width: int, untouched: tuple, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised (rows, width) buffer whose ``untouched`` column ranges are zero (the rest is written)."""
    buffer = like.new_empty(rows, width, dtype=dtype or like.dtype)
    for lo, hi in untouched:
        buffer[:, lo:hi].zero_()
    return buffer


def _cyclic_segments(length: int, period: int, rank: int) -> list[_Segment]:
    """Positions 0 … length−1 → slot p % r̂, reading column p % period; whole blocks merged into one view."""
    merged: list[_Segment] = []
    for p, source, size in _chunks(length, period, rank):
        last = merged[-1] if merged else None
        if last and (last.size, last.slot) == (size, p % rank) and source == last.start + last.count * size:
            merged[-1] = replace(last, count=last.count + 1)
        else:
            merged.append(_Segment(source, 1, size, p % rank, runs=False))
    return merged


def _run_segments(total: int, rank: int) -> list[_Segment]:
    """The official contiguous split (:func:`_runs`) as at most two views: m runs of q+1, then runs of q."""
    q, m = divmod(total, rank)
    segments = [_Segment(0, m, q + 1, 0, runs=True), _Segment(m * (q + 1), rank - m, q, m, runs=True)]
    return [s for s in segments if s.count and s.size]


@dataclass(frozen=True)
class _Segments:
    """Segments in order, marked ``fresh`` (wide side) and ``fresh_slots``, with what none of them touches."""

    items: tuple[_Segment, ...]
    untouched: tuple[tuple[int, int], ...]  # wide columns
    untouched_slots: tuple[tuple[int, int], ...]

    @classmethod
    def schedule(cls, segments: list[_Segment], wide: int, slots: int) -> _Segments:
        fresh, untouched = _first_touches([s.ranges() for s in segments], wide)
        fresh_slots, untouched_slots = _first_touches([s.slot_ranges() for s in segments], slots)
        items = tuple(replace(s, fresh=f, fresh_slots=g) for s, f, g in zip(segments, fresh, fresh_slots))
        return cls(items, untouched, untouched_slots)


@dataclass(frozen=True)
class _MatmulPlan:
    """The batched matmuls ``y[:, span] += x[:, span] @ W[span].T`` that make up a blockwise update.

    ``y`` is ``result`` itself when the spans cover the d outputs once; when the block outputs are tiled
    (d > n·r̂) the spans write one tile of ``width`` columns into a buffer and ``tiles`` add it onto each
    tile of ``result`` — one set of matmuls however many tiles.
    """

    spans: tuple[_Span, ...]
    untouched: tuple[tuple[int, int], ...]  # input features no span reads: their gradient is zero
    width: int
    tiles: _Segments | None

    @classmethod
    def build(cls, pieces: list[_Span], k: int, tile_to: int | None = None) -> _MatmulPlan:
        """Merge ``pieces`` (in order) into spans for an input of ``k`` features; with ``tile_to``, their
        output columns are one tile repeated (and cut) up to ``tile_to`` outputs."""
        merged: list[_Span] = []
        for piece in pieces:
            if merged and piece.follows(merged[-1]):
                merged[-1] = replace(merged[-1], count=merged[-1].count + 1)
            else:
                merged.append(piece)
        width = max(hi for span in merged for _, hi in span.out_ranges())
        fresh_in, untouched = _first_touches([span.in_ranges() for span in merged], k)
        fresh_out, _ = _first_touches([span.out_ranges() for span in merged], width)
        spans = tuple(replace(span, fresh_in=i, fresh_out=o) for span, i, o in zip(merged, fresh_in, fresh_out))
        tiled = tile_to and width < tile_to
        tiles = _Segments.schedule(_cyclic_segments(tile_to, tile_to, width), tile_to, width) if tiled else None
        return cls(spans, untouched, width, tiles)


# ============================================================================ the fused path: kernels
def _rows(t: Tensor) -> Tensor:
    """``t`` as a contiguous 2-D (tokens, features) tensor — a view whenever ``t`` is contiguous."""
    return t.contiguous().view(-1, t.shape[-1])


def _writable(result: Tensor) -> Tensor:
    """``result`` itself when ``add_to`` may overwrite it, else a copy (a view, or a leaf needing a gradient)."""
    if result._is_view() or (result.is_leaf and result.requires_grad) or not result.is_contiguous():
        return result.clone(memory_format=torch.contiguous_format)
    return result


class _AddBlockMatmuls(torch.autograd.Function):
    """``result += x @ ΔW.T`` for a blockwise ΔW given as per-block matrices ``W`` and a :class:`_MatmulPlan`.

    ``result`` is modified in place.  The matmuls run in ``result``'s dtype (``x`` and ``W`` cast if they
    differ); ``W``'s gradient is returned in ``W``'s own dtype.
    """

    @staticmethod
    def forward(ctx, result: Tensor, x: Tensor, W: Tensor, plan: _MatmulPlan) -> Tensor:
        dtype = result.dtype
        out, x2, Wc = result.view(-1, result.shape[-1]), _rows(x).to(dtype), W.to(dtype)
        y = out.new_empty(out.shape[0], plan.width) if plan.tiles else out
        for span in plan.spans:
            beta = 0 if plan.tiles and span.fresh_out else 1
            span.out(y).baddbmm_(span.x(x2), span.w(Wc).transpose(1, 2), beta=beta)
        for tile in plan.tiles.items if plan.tiles else ():
            tile.spread(out, y, accumulate=True)
        ctx.mark_dirty(result)
        ctx.save_for_backward(x2, Wc)
        ctx.plan, ctx.x_shape, ctx.x_dtype, ctx.W_dtype = plan, x.shape, x.dtype, W.dtype
        return result

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, Wc = ctx.saved_tensors
        plan, need_x, need_W = ctx.plan, ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        g2 = _rows(grad).to(x2.dtype)
        if plan.tiles:  # the gradient of the one tile the spans wrote: the sum over result's tiles
            tiled, g2 = g2, _empty_slots(g2, g2.shape[0], plan.width, plan.tiles.untouched_slots)
            for tile in plan.tiles.items:
                tile.reduce_into(g2, tiled)
        grad_x = torch.empty_like(x2) if need_x else None
        grad_W = torch.zeros(Wc.shape, dtype=ctx.W_dtype, device=Wc.device) if need_W else None
        for lo, hi in plan.untouched if need_x else ():
            grad_x[:, lo:hi].zero_()
        for span in plan.spans:
            g = span.out(g2)
            if need_x:
                span.x(grad_x).baddbmm_(g, span.w(Wc), beta=0 if span.fresh_in else 1)
            if need_W:
                span.w(grad_W).add_(g.transpose(1, 2) @ span.x(x2))
        if need_x:
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad, grad_x, grad_W, None


class _AddSharedSlots(torch.autograd.Function):
    """``result += expand(compress(x) @ M.T)`` for a shared variant given as input and output segments.

    The slot sums and the r̂ outputs live in ``M``'s dtype; the outputs are rounded to ``result``'s dtype
    once (as the reference casts its update) and added into ``result`` in place.
    """

    @staticmethod
    def forward(ctx, result: Tensor, x: Tensor, M: Tensor, inputs: _Segments, outputs: _Segments) -> Tensor:
        x2, out = _rows(x), result.view(-1, result.shape[-1])
        slots = _empty_slots(x2, x2.shape[0], M.shape[0], inputs.untouched_slots, M.dtype)
        for seg in inputs.items:
            seg.reduce_into(slots, x2)
        y = (slots @ M.T).to(out.dtype)
        for seg in outputs.items:
            seg.spread(out, y, accumulate=True)
        ctx.mark_dirty(result)
        ctx.save_for_backward(slots, M)
        ctx.segments, ctx.x_shape, ctx.x_dtype = (inputs, outputs), x.shape, x.dtype
        return result

    @staticmethod
    def backward(ctx, grad: Tensor):
        slots, M = ctx.saved_tensors
        inputs, outputs = ctx.segments
        g2 = _rows(grad)
        grad_y = _empty_slots(g2, g2.shape[0], M.shape[0], outputs.untouched_slots, M.dtype)
        for seg in outputs.items:
            seg.reduce_into(grad_y, g2)
        grad_M = grad_y.T @ slots if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_slots = grad_y @ M
            grad_x = _empty_slots(g2, g2.shape[0], ctx.x_shape[-1], inputs.untouched, ctx.x_dtype)
            for seg in inputs.items:
                seg.spread(grad_x, grad_slots, accumulate=not seg.fresh)
            grad_x = grad_x.view(ctx.x_shape)
        return grad, grad_x, grad_M, None, None


class _AddTiled(torch.autograd.Function):
    """``result += tile(y)`` in place, the columns of ``y`` repeated (and cut) over ``result``'s as ``tiles``
    say; the backward sums ``result``'s gradient over the tiles for ``y``."""

    @staticmethod
    def forward(ctx, result: Tensor, y: Tensor, tiles: _Segments) -> Tensor:
        out, y2 = result.view(-1, result.shape[-1]), _rows(y).to(result.dtype)
        for tile in tiles.items:
            tile.spread(out, y2, accumulate=True)
        ctx.mark_dirty(result)
        ctx.tiles, ctx.y_shape, ctx.y_dtype = tiles, y.shape, y.dtype
        return result

    @staticmethod
    def backward(ctx, grad: Tensor):
        g2 = _rows(grad)
        grad_y = _empty_slots(g2, g2.shape[0], ctx.y_shape[-1], ctx.tiles.untouched_slots, ctx.y_dtype)
        for tile in ctx.tiles.items:
            tile.reduce_into(grad_y, g2)
        return grad, grad_y.view(ctx.y_shape), None


class _Rotate(torch.autograd.Function):
    """``v ⊙ cos + rotate_half(v) ⊙ sin`` along the last axis, ``rotate_half(v) = cat(−v[h:], v[:h])``.

    The tables broadcast against ``v`` (the output may be larger than ``v``: one rotated copy of ``M``
    per block) and come as ``cos`` and ``sin_signed`` = sin with its first half negated, so that the
    rotation is one product and two half-width fused multiply-adds, without the copies ``roll``/``cat``
    make.  The backward is the transposed rotation (the same with ``sin_signed`` moved across the
    halves), summed over the broadcast axes.
    """

    @staticmethod
    def forward(ctx, v: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin_signed)
        ctx.v_shape = v.shape
        return _rotate_halves(v, cos, sin_signed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin_signed = ctx.saved_tensors
        h = grad.shape[-1] // 2
        swapped = torch.cat([sin_signed[..., h:], sin_signed[..., :h]], dim=-1)  # a table: tiny
        return _rotate_halves(grad, cos, swapped).sum_to_size(ctx.v_shape), None, None


def _rotate_halves(v: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """``v ⊙ cos``, then the first half += v[h:] ⊙ sin_signed[:h] and the second += v[:h] ⊙ sin_signed[h:]."""
    h = v.shape[-1] // 2
    out = v * cos
    out[..., :h].addcmul_(v[..., h:], sin_signed[..., :h])
    out[..., h:].addcmul_(v[..., :h], sin_signed[..., h:])
    return out


# ============================================================================ the variants
class Compression(nn.Module, ABC):
    """One compress/decompress pair for a layer with ``in_features`` k, ``out_features`` d and M of size r̂.

    Subclasses register under ``name`` in :data:`COMPRESSIONS`.  They may hold non-persistent index and
    table buffers (built once here, moved by ``.to()``) and fixed matmul schedules, never trainable
    parameters.
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
        """The eager reference f_decomp(M f_comp(x)) for ``x`` of shape (..., k); returns (..., d)."""

    @abstractmethod
    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        """``result + update(x, M)`` in ``result``'s dtype, fused — the layer output ``MoraLinear`` returns.

        Overwrites ``result`` unless it is a view or a leaf that needs a gradient (then a copy is made).
        """

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

    A subclass declares its grouping by two class flags; everything else — the reference, the fused
    path's segments and the index tensors ``delta_weight`` scatters with — is derived here.

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
            slot = torch.repeat_interleave(torch.arange(r), torch.tensor(_runs(k, r)))
        self.register_buffer("in_slot", slot, persistent=False)
        if self.tile_output:
            out_slot = torch.arange(d) % r
        else:
            out_slot = torch.repeat_interleave(torch.arange(r), torch.tensor(_runs(d, r)))
        self.register_buffer("out_slot", out_slot, persistent=False)
        self.register_buffer("out_runs", torch.tensor(_runs(d, r)), persistent=False)
        inputs = _cyclic_segments(padded, k, r) if self.cyclic_input else _run_segments(k, r)
        outputs = _cyclic_segments(d, d, r) if self.tile_output else _run_segments(d, r)
        self._segments = (_Segments.schedule(inputs, k, r), _Segments.schedule(outputs, d, r))

    def compress(self, x: Tensor) -> Tensor:
        """(..., k) → (..., r̂): the slot sums."""
        if self.cyclic_input:
            padded = self._wrap_pad(x, self.blocks * self.rank)
            return padded.unflatten(-1, (self.blocks, self.rank)).sum(-2)
        slots = x.new_zeros(*x.shape[:-1], self.rank)
        return slots.index_add(-1, self.in_slot, x)

    def decompress(self, y: Tensor) -> Tensor:
        """(..., r̂) → (..., d)."""
        if self.tile_output:
            return _tile(y, self.out_features)
        return y.repeat_interleave(self.out_runs, dim=-1, output_size=self.out_features)

    def update(self, x: Tensor, M: Tensor) -> Tensor:
        return self.decompress(self.compress(x) @ M.T)

    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        return _AddSharedSlots.apply(_writable(result), x, M, *self._segments)

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

    When k < r̂ the missing inputs read as zero; when d < r̂ the extra outputs are dropped.  The fused
    path is one matmul of M's top-left corner into the first outputs.
    """

    name = "truncation"

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features, rank)
        k, d, r = in_features, out_features, rank
        corner = _Span(block=0, x_start=0, out_start=0, rows=min(d, r), col=0, width=min(k, r), step=r)
        self.plan = _MatmulPlan.build([corner], k)

    def update(self, x: Tensor, M: Tensor) -> Tensor:
        r, k, d = self.rank, self.in_features, self.out_features
        z = F.pad(x[..., :r], (0, max(r - k, 0)))
        y = z @ M.T
        return F.pad(y, (0, d - r)) if d > r else y[..., :d]

    def add_to(self, result: Tensor, x: Tensor, M: Tensor) -> Tensor:
        return _AddBlockMatmuls.apply(_writable(result), x, M[None], self.plan)

    def delta_weight(self, M: Tensor) -> Tensor:
        r, k, d = self.rank, self.in_features, self.out_features
        dw = M.new_zeros(d, k)
        dw[: min(d, r), : min(k, r)] = M[: min(d, r), : min(k, r)]
        return dw


class BlockwiseCompression(Compression):
    """Base of the variants that apply ``M`` to every r̂-block of the wrap-padded input.

    Subclasses may rotate each block by a fixed, block-dependent orthogonal map (``rotate``, used by the
    reference) and must express that map's effect on ``M`` (``rotated_M``: the n matrices M · R_b, used
    by the fused path and ``delta_weight``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features, rank)
        # Blocks whose outputs survive the truncation to d; the rest are never computed.
        self.used_blocks = min(self.blocks, math.ceil(out_features / rank))
        width = self.used_blocks * rank  # the used padded inputs, and the concatenated block outputs
        self.plan = self._plan()  # M · R_b on the raw blocks of x (many tokens)
        # M on the rotated, wrap-padded blocks (few tokens): their outputs repeated over d's tiles
        self.tiles = _Segments.schedule(_cyclic_segments(out_features, out_features, width), out_features, width)

    def _plan(self) -> _MatmulPlan:
        """The matmuls that add M · R_b's block outputs (tiled up to d) for the raw input."""
        k, d, r, width = self.in_features, self.out_features, self.rank, self.used_blocks * self.rank
        pieces = [_Span(block=p // r, x_start=feature, out_start=p - p % r, rows=min(r, d - (p - p % r)),
                        col=p % r, width=size, step=r)
                  for p, feature, size in _chunks(width, k, r)]  # one tile of outputs, repeated up to d
        return _MatmulPlan.build(pieces, k, tile_to=d)

    def rotates_weights(self, tokens: int) -> bool:
        """Whether ``add_to`` applies M · R_b to the raw blocks (True) or M to rotated activations: whichever
        rotates fewer numbers — n·r̂² weights or tokens·n·r̂ activations.  No rotation: always the weights."""
        return True

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
        if self.rotates_weights(x.numel() // max(x.shape[-1], 1)):
            return _AddBlockMatmuls.apply(_writable(result), x, self.rotated_M(M), self.plan)
        used, r = self.used_blocks, self.rank  # few tokens: pad and rotate them (in M's dtype), one matmul
        blocks = self._wrap_pad(x.to(M.dtype), used * r).unflatten(-1, (used, r))
        return _AddTiled.apply(_writable(result), (self.rotate(blocks) @ M.T).flatten(-2), self.tiles)

    def delta_weight(self, M: Tensor) -> Tensor:
        r, k, d, used = self.rank, self.in_features, self.out_features, self.used_blocks
        width = used * r
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
        # rotate_half(z) ⊙ sin = (−z[h:], z[:h]) ⊙ sin: kept as sin with its first half negated (exact).
        half = rank // 2
        sin = angles.sin()
        self.register_buffer("sin_signed", torch.cat([-sin[:, :half], sin[:, half:]], dim=-1), persistent=False)

    def rotate(self, blocks: Tensor) -> Tensor:
        return _Rotate.apply(blocks, self.cos.to(blocks.dtype), self.sin_signed.to(blocks.dtype))

    def rotated_M(self, M: Tensor) -> Tensor:
        # Row i of M R_b is R_bᵀ applied to row i of M, and R_bᵀ is the rotation by −θ_b: the same tables
        # with the sine negated (exactly), applied along M's rows, once per block.
        cos, sin_signed = self.cos.to(M.dtype)[:, None, :], self.sin_signed.to(M.dtype)[:, None, :]
        return _Rotate.apply(M, cos, -sin_signed)

    def rotates_weights(self, tokens: int) -> bool:
        return tokens >= self.rank


def build_compression(name: str, in_features: int, out_features: int, rank: int) -> Compression:
    """The compression called ``name`` for one layer; a clear error for unknown names."""
    if name not in COMPRESSIONS:
        raise ValueError(f"unknown MoRA compression {name!r}; choose one of {sorted(COMPRESSIONS)}")
    return COMPRESSIONS[name](in_features, out_features, rank)
