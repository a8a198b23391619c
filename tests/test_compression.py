"""Per-variant math of the MoRA compress/decompress operators.

The strongest check here is :func:`reference_forward`: an independent re-statement of the official
kongds/MoRA ``_apply_mora`` (peft-mora, ``LoraLayer._apply_mora``), written from its semantics, not from
``mora.adapters.compression``.  Each of our variants must match it wherever the official code runs.

Official ``mora_type`` → our name: 1 = sharing, 2 = sharing_contiguous, 3 = sharing_contiguous_in,
4 = sharing_contiguous_out, 6 = rope.  ``decouple`` (rope without the rotation) and ``truncation`` have no
official type; their references follow MORA_SPEC.md.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mora.adapters import COMPRESSIONS, MoraLinear, build_compression, square_rank

DT = torch.float64
ALL = sorted(COMPRESSIONS)
SHARED = ["sharing", "sharing_contiguous", "sharing_contiguous_in", "sharing_contiguous_out"]
OFFICIAL_TYPE = {
    "sharing": 1,
    "sharing_contiguous": 2,
    "sharing_contiguous_in": 3,
    "sharing_contiguous_out": 4,
    "rope": 6,
}
#: Variants whose input is wrap-padded with ``concat(x, x[:pad])`` (the official code crashes if pad > k).
WRAP_PADDED = {"sharing", "sharing_contiguous_out", "rope", "decouple"}

#: name → (k = in_features, d = out_features, r = the LoRA rank whose budget r̂ matches)
SHAPES = {
    "square": (64, 64, 3),  # r̂ = 20: 4 blocks, pad 16
    "wide": (32, 80, 2),  # k < d: r̂ = 15 (rope 14), blockwise outputs tiled up to d
    "tall": (80, 32, 2),  # k > d: rope uses only ceil(32/14) = 3 of its 6 blocks
    "non_divisible": (50, 37, 2),  # r̂ = 13 (rope 12), nothing divides
    "single_block": (20, 24, 16),  # k ≤ r̂ = 27 (rope 26): one block, output truncated
    "single_block_tiled": (12, 40, 8),  # k ≤ r̂ = 20, d > r̂: one block, output tiled
    "pad_gt_k": (5, 7, 16),  # r̂ = 14 > 2k: the pad (9) is longer than the input (5)
}

CASES = [pytest.param(name, shape, id=f"{name}-{shape}") for name in ALL for shape in SHAPES]


def test_suite_covers_every_registered_variant():
    assert set(ALL) == {
        "sharing",
        "sharing_contiguous",
        "sharing_contiguous_in",
        "sharing_contiguous_out",
        "truncation",
        "decouple",
        "rope",
    }


def test_shapes_exercise_the_edge_cases_they_are_named_for():
    for name in ALL:
        ranks = {shape: square_rank(k, d, r, name) for shape, (k, d, r) in SHAPES.items()}
        k, d, _ = SHAPES["single_block"]
        assert k <= ranks["single_block"]
        k, d, _ = SHAPES["single_block_tiled"]
        assert k <= ranks["single_block_tiled"] < d
        k, _, _ = SHAPES["pad_gt_k"]
        assert ranks["pad_gt_k"] > 2 * k
        k, d, _ = SHAPES["non_divisible"]
        assert k % ranks["non_divisible"] and d % ranks["non_divisible"]


# ================================================================================ the reference
def _tile(y: torch.Tensor, d: int) -> torch.Tensor:
    """Official 1/3 (and 6 when short): ``cat([y] * ceil(d / len), -1)[..., :d]``."""
    reps = math.ceil(d / y.shape[-1])
    return torch.cat([y] * reps, dim=-1)[..., :d]


def _contiguous_group_sums(x: torch.Tensor, r: int) -> torch.Tensor:
    """Official types 2/3: nr = k // r, m = k − r·nr; the first m groups hold nr+1 inputs, the rest nr."""
    k = x.shape[-1]
    nr = k // r
    m = k - r * nr
    n = r - m
    lead = x.shape[:-1]
    if m > 0:
        x_m = x[..., : m * (nr + 1)].reshape(*lead, m, nr + 1).sum(-1)
        x_n = x[..., m * (nr + 1) :].reshape(*lead, n, nr).sum(-1)
        return torch.cat([x_m, x_n], dim=-1)
    return x.reshape(*lead, n, nr).sum(-1)


def _repeat_runs(y: torch.Tensor, d: int) -> torch.Tensor:
    """Official types 2/4 decompression: output i repeated nr+1 times for i < m, nr times after."""
    r = y.shape[-1]
    nr = d // r
    m = d - r * nr
    if m > 0:
        return torch.cat(
            [torch.repeat_interleave(y[..., :m], nr + 1, dim=-1), torch.repeat_interleave(y[..., m:], nr, dim=-1)],
            dim=-1,
        )
    return torch.repeat_interleave(y, nr, dim=-1)


def _wrap_blocks(x: torch.Tensor, r: int, wrap_repeatedly: bool) -> torch.Tensor:
    """Official wrap-padding ``concat(x, x[..., :pad])`` viewed as (n, r) blocks.

    With ``wrap_repeatedly=False`` this is exactly the official code, which raises when pad > k (``x[:pad]``
    only has k features, so the view to n·r fails).  ``True`` is the documented extension of our library:
    keep wrapping around until n·r features exist.
    """
    k = x.shape[-1]
    n = math.ceil(k / r)
    pad = n * r - k
    if wrap_repeatedly:
        x = torch.cat([x] * math.ceil(n * r / k), dim=-1)[..., : n * r]
    else:
        x = torch.cat([x, x[..., :pad]], dim=-1)
    return x.view(*x.shape[:-1], n, r)


def reference_forward(name: str, x: torch.Tensor, M: torch.Tensor, d: int, wrap_repeatedly: bool = False):
    """The MoRA update ``f_decomp(M f_comp(x))`` as the official ``_apply_mora`` computes it.

    ``M`` plays the official ``lora_A`` (an ``nn.Linear(r̂, r̂)``), so it is applied as ``z @ M.T``.
    """
    r = M.shape[0]
    k = x.shape[-1]
    lead = x.shape[:-1]

    def A(z):
        return z @ M.T

    if name == "truncation":  # spec: keep the first r̂ inputs, zero-pad the outputs to d
        z = x.new_zeros(*lead, r)
        z[..., : min(k, r)] = x[..., : min(k, r)]
        y = A(z)
        out = x.new_zeros(*lead, d)
        out[..., : min(d, r)] = y[..., : min(d, r)]
        return out

    if name in ("rope", "decouple"):  # official type 6; decouple = the same without the rotation
        blocks = _wrap_blocks(x, r, wrap_repeatedly)  # (..., n, r)
        if name == "rope":
            n = blocks.shape[-2]
            inv_freq = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=DT) / r))
            freqs = torch.outer(torch.arange(n, dtype=DT), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, r)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            rotated_half = torch.cat((-blocks[..., r // 2 :], blocks[..., : r // 2]), dim=-1)
            blocks = blocks * cos + rotated_half * sin
        out = A(blocks).reshape(*lead, -1)[..., :d]  # every block through M, concatenated, truncated
        if out.shape[-1] < d:
            out = _tile(out, d)
        return out

    t = OFFICIAL_TYPE[name]
    if t in (1, 4):
        in_x = _wrap_blocks(x, r, wrap_repeatedly).sum(dim=-2)
    else:  # 2, 3
        in_x = _contiguous_group_sums(x, r)
    y = A(in_x)
    if t in (1, 3):
        return _tile(y, d)
    return _repeat_runs(y, d)  # 2, 4


def official_code_crashes(name: str, k: int, rank: int) -> bool:
    pad = math.ceil(k / rank) * rank - k
    return name in WRAP_PADDED and pad > k


# ================================================================================ helpers
def _layer(name: str, k: int, d: int, r: int, seed: int = 0, bias: bool = True) -> MoraLinear:
    torch.manual_seed(seed)
    layer = MoraLinear(nn.Linear(k, d, bias=bias, dtype=DT), r=r, compression=name)
    with torch.no_grad():
        layer.M.copy_(torch.randn(layer.rank, layer.rank, dtype=DT))
    return layer


def _x(k: int, seed: int = 1, batch: int = 7) -> torch.Tensor:
    return torch.randn(batch, k, dtype=DT, generator=torch.Generator().manual_seed(seed))


# ================================================================================ forward == ΔW
@pytest.mark.parametrize("name, shape", CASES)
def test_forward_equals_delta_weight(name, shape):
    k, d, r = SHAPES[shape]
    layer = _layer(name, k, d, r)
    assert layer.rank == square_rank(k, d, r, name)
    x = _x(k)
    dw = layer.delta_weight()
    assert dw.shape == (d, k) and dw.dtype == DT
    assert dw.abs().sum() > 0
    update = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(update, x @ dw.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.compression.update(x, layer.M), x @ dw.T, rtol=0, atol=1e-12)


# ================================================================================ gradients
@pytest.mark.parametrize("name, shape", CASES)
def test_gradients_match_the_delta_weight_form(name, shape):
    """Backward through the training path (whatever fused ops it uses) equals backward through
    ``x @ ΔW(M).T``: dL/dx = g ΔW and dL/dM via ΔW's (differentiable) index ops."""
    k, d, r = SHAPES[shape]
    layer = _layer(name, k, d, r)
    x = _x(k, seed=4).requires_grad_(True)
    g = torch.randn(7, d, dtype=DT, generator=torch.Generator().manual_seed(5))
    (layer(x) * g).sum().backward()
    grad_x, grad_M = x.grad.clone(), layer.M.grad.clone()
    x.grad = None
    layer.M.grad = None
    ((layer.base_layer(x) + x @ layer.delta_weight().T) * g).sum().backward()
    torch.testing.assert_close(grad_x, x.grad, rtol=0, atol=1e-11)
    torch.testing.assert_close(grad_M, layer.M.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", ["non_divisible", "wide", "pad_gt_k"])
def test_gradcheck(name, shape):
    k, d, r = SHAPES[shape]
    comp = build_compression(name, k, d, square_rank(k, d, r, name)).to(DT)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, k, dtype=DT, generator=g, requires_grad=True)
    M = torch.randn(comp.rank, comp.rank, dtype=DT, generator=g, requires_grad=True)
    result = torch.randn(2, d, dtype=DT, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(comp.update, (x, M), fast_mode=True)
    if hasattr(comp, "add_to"):  # the fused "result + update" path MoraLinear uses
        assert torch.autograd.gradcheck(comp.add_to, (result, x, M), fast_mode=True)


# ================================================================================ official reference
@pytest.mark.parametrize("name, shape", CASES)
def test_matches_official_reference(name, shape):
    """Our forward and ΔW equal the official ``_apply_mora`` semantics (or its wrap-around extension)."""
    k, d, r = SHAPES[shape]
    layer = _layer(name, k, d, r)
    M = layer.M.detach()
    x = _x(k, seed=2)
    ours = layer.compression.update(x, M)

    if official_code_crashes(name, k, layer.rank):
        # The official forward cannot handle pad > k; document that, then compare with the cyclic extension.
        with pytest.raises(RuntimeError):
            reference_forward(name, x, M, d)
        expected = reference_forward(name, x, M, d, wrap_repeatedly=True)
        expected_dw = reference_forward(name, torch.eye(k, dtype=DT), M, d, wrap_repeatedly=True).T
    else:
        expected = reference_forward(name, x, M, d)
        expected_dw = reference_forward(name, torch.eye(k, dtype=DT), M, d).T  # identity → ΔW (tests only)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x) - layer.base_layer(x), expected, rtol=0, atol=1e-12)  # the layer's path
    torch.testing.assert_close(layer.delta_weight(), expected_dw, rtol=0, atol=1e-12)


def test_reference_really_is_the_official_semantics_on_hand_worked_examples():
    """Guard the reference itself: two tiny cases worked out by hand (k=5, d=3, r̂=2)."""
    M = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=DT)
    eye = torch.eye(5, dtype=DT)
    # sharing: padded input (x0..x4, x0); slot0 = x0+x2+x4, slot1 = x1+x3+x0; outputs tiled (y0, y1, y0).
    row0 = [1 + 2, 2, 1, 2, 1]
    row1 = [3 + 4, 4, 3, 4, 3]
    expected = torch.tensor([row0, row1, row0], dtype=DT)
    torch.testing.assert_close(reference_forward("sharing", eye, M, 3).T, expected)
    torch.testing.assert_close(build_compression("sharing", 5, 3, 2).to(DT).delta_weight(M), expected)
    # sharing_contiguous: groups (x0,x1,x2), (x3,x4); outputs (y0, y0, y1) (first run of d=3 has 2).
    row0 = [1, 1, 1, 2, 2]
    row1 = [3, 3, 3, 4, 4]
    expected = torch.tensor([row0, row0, row1], dtype=DT)
    torch.testing.assert_close(reference_forward("sharing_contiguous", eye, M, 3).T, expected)
    torch.testing.assert_close(build_compression("sharing_contiguous", 5, 3, 2).to(DT).delta_weight(M), expected)


@pytest.mark.parametrize("name", ["rope", "decouple"])
def test_blockwise_first_block_is_M_itself(name):
    """Block 0 sits at RoPE position 0 (cos 1, sin 0), so ΔW's top-left r̂×r̂ block is exactly M."""
    layer = _layer(name, 64, 64, 3)
    r = layer.rank
    torch.testing.assert_close(layer.delta_weight()[:r, :r], layer.M.detach(), rtol=0, atol=1e-15)


def test_rope_later_blocks_are_rotated_versions_of_M():
    """Block b of rope's ΔW is M·R_b with R_b the RoPE rotation at position b (orthogonal), unlike decouple."""
    layer = _layer("rope", 64, 64, 3)
    r = layer.rank
    M = layer.M.detach()
    dw = layer.delta_weight()
    for b in range(1, 3):
        block = dw[b * r : (b + 1) * r, b * r : (b + 1) * r]
        rotation = torch.linalg.solve(M, block)  # R_b = M⁻¹ · (M R_b)
        torch.testing.assert_close(rotation @ rotation.T, torch.eye(r, dtype=DT), rtol=0, atol=1e-9)
        assert not torch.allclose(rotation, torch.eye(r, dtype=DT))


def test_delta_weight_is_linear_in_M():
    for name in ALL:
        comp = build_compression(name, 50, 37, square_rank(50, 37, 2, name)).to(DT)
        g = torch.Generator().manual_seed(3)
        M1, M2 = (torch.randn(comp.rank, comp.rank, dtype=DT, generator=g) for _ in range(2))
        torch.testing.assert_close(
            comp.delta_weight(2.0 * M1 - 3.0 * M2),
            2.0 * comp.delta_weight(M1) - 3.0 * comp.delta_weight(M2),
            rtol=0,
            atol=1e-12,
        )


def test_compressions_hold_no_parameters_and_no_persistent_state():
    for name in ALL:
        comp = build_compression(name, 50, 37, square_rank(50, 37, 2, name))
        assert list(comp.parameters()) == []
        assert comp.state_dict() == {}  # index / cos-sin tables are non-persistent buffers


def test_build_compression_rejects_unknown_names_and_odd_rope_rank():
    with pytest.raises(ValueError, match="sharing"):
        build_compression("nope", 64, 64, 16)
    with pytest.raises(ValueError, match="even"):
        build_compression("rope", 64, 64, 11)


# ================================================================================ rank facts
@pytest.mark.parametrize("name", SHARED + ["truncation"])
def test_shared_variants_have_rank_at_most_rank_hat(name):
    k, d, r = 64, 80, 1
    layer = _layer(name, k, d, r)
    rank_hat = layer.rank
    assert rank_hat == 12 < min(k, d)
    # A random M is invertible and the grouping/expansion maps have full rank r̂ here, so equality holds.
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == rank_hat


@pytest.mark.parametrize("name", ["rope", "decouple"])
def test_blockwise_variants_are_high_rank(name):
    """The point of MoRA: with r̂ ≈ 22 the block-diagonal ΔW of a 256×256 layer has rank far above r̂."""
    layer = _layer(name, 256, 256, 1)
    assert layer.rank == {"rope": 22, "decouple": 23}[name]  # rope rounds r̂ down to even
    rank = torch.linalg.matrix_rank(layer.delta_weight()).item()
    assert rank > layer.rank
    assert rank >= 200  # ~11 full diagonal blocks plus the wrapped last one …
    assert rank == 256  # … and, for a generic M, full rank min(k, d)


def test_lora_rank_is_at_most_r_while_mora_sharing_reaches_rank_hat():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(64, 80, dtype=DT)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so ΔW = s·B A is a generic rank-r matrix.
    peft_model = get_peft_model(Tiny(), LoraConfig(r=4, target_modules=["proj"], init_lora_weights=False))
    lora_layer = peft_model.base_model.model.proj
    dw_lora = lora_layer.get_delta_weight("default")
    assert dw_lora.shape == (80, 64)
    assert torch.linalg.matrix_rank(dw_lora).item() == 4
    # Directly: B @ A with random factors.
    B, A = torch.randn(80, 4, dtype=DT), torch.randn(4, 64, dtype=DT)
    assert torch.linalg.matrix_rank(B @ A).item() <= 4
    # MoRA at the same budget (r=4): r̂ = 24, and sharing reaches it.
    mora = _layer("sharing", 64, 80, 4)
    assert mora.M.numel() == 24**2 <= 4 * (64 + 80)
    assert torch.linalg.matrix_rank(mora.delta_weight()).item() == 24


# ================================================================================ rope for k > d
def test_rope_tall_layer_only_sees_first_blocks():
    """Faithful behaviour (official code too): for k > d, rope's output is built from the first
    ceil(d / r̂) blocks only, so inputs at positions ≥ ceil(d / r̂)·r̂ get no update (zero ΔW columns)."""
    k, d, r = SHAPES["tall"]
    layer = _layer("rope", k, d, r)
    r_hat = layer.rank
    seen = math.ceil(d / r_hat) * r_hat
    assert (r_hat, seen) == (14, 42) and seen < k
    dw = layer.delta_weight()
    assert torch.count_nonzero(dw[:, seen:]) == 0
    assert torch.count_nonzero(dw[:, :seen].abs().sum(0)) == seen  # every seen input column is used
    # Perturbing the unseen inputs leaves the adapter's contribution unchanged.
    x = _x(k)
    x2 = x.clone()
    x2[:, seen:] += 100.0
    a = layer(x) - layer.base_layer(x)
    b = layer(x2) - layer.base_layer(x2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ================================================================================ large layer smoke test
@pytest.mark.parametrize("name", ["rope", "sharing"])
def test_delta_weight_is_vectorised_on_a_llama_mlp_layer(name):
    """ΔW of a 4096→11008 layer at r=8 (r̂ = 348) is built with tensor ops (a Python loop over k would
    take minutes) and agrees with the forward path in float32.  No timing assertion on purpose."""
    k, d = 4096, 11008
    rank = square_rank(k, d, 8, name)
    assert rank == 348
    comp = build_compression(name, k, d, rank)
    g = torch.Generator().manual_seed(0)
    M = torch.randn(rank, rank, generator=g) / math.sqrt(rank)
    dw = comp.delta_weight(M)
    assert dw.shape == (d, k) and dw.dtype == torch.float32
    x = torch.randn(4, k, generator=g)
    via_forward = comp.update(x, M)
    via_weight = x @ dw.T
    rel = (via_forward - via_weight).abs().max() / via_weight.abs().max()
    assert rel < 1e-5
