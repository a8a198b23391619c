"""The fused training path ``Compression.add_to`` against the eager reference ``result + update(x, M)``.

``add_to`` rotates M instead of the activations (rope, when there are at least r̂ tokens), reads wrapped
blocks as two strided matmuls instead of a padded copy, writes into ``result`` in place and keeps the
half-precision input as it is.  None of that may change what is computed: float64 agrees with the
reference to ~1e-12 (outputs and every gradient) for every compression and edge-case shape, with few
and many tokens (both rope branches); bf16 agrees to within bf16 rounding.  The schedules for the
LLaMA-2-7B shapes are pinned too, since their size is what makes the path fast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mora.adapters import COMPRESSIONS, MoraLinear, build_compression, square_rank
from mora.adapters.compression import _first_touches
from test_compression import SHAPES

DT = torch.float64
ALL = sorted(COMPRESSIONS)
TOKENS = [3, 64]  # below every r̂ of SHAPES (rope rotates the activations) and above (rope rotates M)
CASES = [pytest.param(name, shape, tokens, id=f"{name}-{shape}-t{tokens}")
         for name in ALL for shape in SHAPES for tokens in TOKENS]


def _setup(name: str, shape: str, tokens: int, dtype=DT, seed: int = 0):
    k, d, r = SHAPES[shape]
    comp = build_compression(name, k, d, square_rank(k, d, r, name)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(comp.rank, comp.rank, dtype=dtype, generator=g)
    x = torch.randn(tokens, k, dtype=dtype, generator=g)
    result = torch.randn(tokens, d, dtype=dtype, generator=g)
    grad = torch.randn(tokens, d, dtype=dtype, generator=g)
    return comp, M, x, result, grad


def _grads(fn, result, x, M, grad):
    """Output and the gradients of (result, x, M) of ``fn(result, x, M)`` driven by ``grad``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (result, x, M)]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), *(leaf.grad for leaf in leaves)


@pytest.mark.parametrize("name, shape, tokens", CASES)
def test_fused_path_equals_the_reference_in_float64(name, shape, tokens):
    comp, M, x, result, grad = _setup(name, shape, tokens)
    if name == "rope":
        assert comp.rotates_weights(tokens) == (tokens >= comp.rank)
    fused = _grads(comp.add_to, result, x, M, grad)
    reference = _grads(lambda res, x_, M_: res + comp.update(x_, M_), result, x, M, grad)
    for got, expected, what in zip(fused, reference, ["output", "grad result", "grad x", "grad M"]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-11, msg=what)


@pytest.mark.parametrize("name", ALL)
def test_fused_path_on_3d_inputs_and_without_grad(name):
    comp, M, x, result, _ = _setup(name, "non_divisible", 64)
    x3, result3 = x.view(4, 16, -1), result.view(4, 16, -1)
    expected = result3 + comp.update(x3, M)
    torch.testing.assert_close(comp.add_to(result3.clone(), x3, M), expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(comp.add_to(result3.clone(), x3, M), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["rope", "sharing", "truncation"])
def test_gradcheck_with_many_tokens(name):
    """``test_compression.test_gradcheck`` uses 2 tokens; this covers rope's rotate-M branch as well."""
    comp, M, x, result, _ = _setup(name, "wide", 20)
    assert name != "rope" or comp.rotates_weights(20)
    inputs = [t.requires_grad_(True) for t in (result, x, M)]
    assert torch.autograd.gradcheck(comp.add_to, inputs, fast_mode=True)


# ================================================================================ in place, memory
def test_add_to_writes_into_a_fresh_result_and_copies_views_and_leaves():
    comp, M, x, result, _ = _setup("rope", "square", 64)
    fresh = result.clone()
    assert comp.add_to(fresh, x, M) is fresh  # the layer's base output is reused, not copied
    view = result.clone()[:, :]
    before = view.clone()
    assert comp.add_to(view, x, M) is not view and torch.equal(view, before)
    leaf = result.clone().requires_grad_(True)
    assert comp.add_to(leaf, x, M) is not leaf and torch.equal(leaf.detach(), result)


@pytest.mark.parametrize("compression", ["rope", "sharing"])
def test_bf16_layer_saves_no_activation_sized_tensor_besides_its_input(compression):
    """The old path saved a float32 copy of x (and the rotated blocks); now the adapter keeps only x
    (shared with the base layer), M-sized tensors and, for sharing, the (tokens × r̂) slot sums."""
    torch.manual_seed(0)
    layer = MoraLinear(nn.Linear(256, 512, bias=False).to(torch.bfloat16), r=8, compression=compression)
    x = torch.randn(128, 256, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    shared = {t.untyped_storage().data_ptr() for t in (x, layer.base_layer.weight)}  # the base layer saves these
    foreign = [t for t in saved if t.untyped_storage().data_ptr() not in shared]
    largest = max(t.numel() * t.element_size() for t in foreign)
    assert largest <= max(layer.M.numel() * 4 * layer.compression.blocks, 128 * layer.rank * 4)
    assert largest < x.numel() * x.element_size() * 2  # no float32 copy of x


# ================================================================================ bf16 and autocast
@pytest.mark.parametrize("compression", ALL)
@pytest.mark.parametrize("tokens", TOKENS)
def test_bf16_layer_agrees_with_the_float64_reference_within_bf16_rounding(compression, tokens):
    k, d, r = SHAPES["non_divisible"]
    torch.manual_seed(0)
    layer = MoraLinear(nn.Linear(k, d, dtype=torch.bfloat16), r=r, compression=compression)
    assert layer.M.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.M.copy_(torch.randn(layer.M.shape, generator=g) * 0.3)
    x = torch.randn(tokens, k, generator=g).to(torch.bfloat16).requires_grad_(True)
    grad = torch.randn(tokens, d, generator=g).to(torch.bfloat16)
    out = layer(x)
    out.backward(grad)
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and layer.M.grad.dtype == torch.float32

    # The same numbers in float64: the bf16 values of W, b, x and the gradient, the float32 M.
    base = layer.base_layer
    W, b = base.weight.double(), base.bias.double()
    x64, M64 = x.detach().double().requires_grad_(True), layer.M.detach().double().requires_grad_(True)
    comp64 = build_compression(compression, k, d, layer.rank).to(DT)
    ref = x64 @ W.T + b + comp64.update(x64, M64)
    ref.backward(grad.double())
    eps = 2.0**-8  # bf16 keeps 8 significant bits: one rounding is at most this much relative
    assert (out.double() - ref).abs().max() <= 2 * eps * ref.abs().max()
    assert (x.grad.double() - x64.grad).abs().max() <= 2 * eps * x64.grad.abs().max()
    assert (layer.M.grad.double() - M64.grad).abs().max() <= 2 * eps * M64.grad.abs().max()


def test_autocast_runs_the_adapter_in_bf16_like_the_base():
    torch.manual_seed(0)
    layer = MoraLinear(nn.Linear(64, 80), r=2, compression="rope")
    with torch.no_grad():
        layer.M.normal_(0, 0.3)
    x = torch.randn(32, 64)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().max() <= 2**-6 * expected.abs().max()


# ================================================================================ schedules
def _spans(name: str, k: int, d: int, r: int = 8):
    plan = build_compression(name, k, d, square_rank(k, d, r, name)).plan
    return [(s.block, s.count, s.x_start, s.width, s.rows) for s in plan.spans], plan


def test_llama_q_proj_rope_is_one_batched_matmul():
    spans, plan = _spans("rope", 4096, 4096)
    assert spans == [(0, 16, 0, 256, 256)] and plan.tiles is None and plan.untouched == ()


def test_llama_gate_proj_rope_wraps_one_block_and_tiles_one_buffer():
    """r̂ = 348: 12 blocks = 4176 padded inputs; block 11 reads features 3828…4095 then 0…79; the 4176
    block outputs are computed once and added onto 11008 outputs as 2 whole tiles and a tail."""
    spans, plan = _spans("rope", 4096, 11008)
    assert spans == [(0, 11, 0, 348, 348), (11, 1, 3828, 268, 348), (11, 1, 0, 80, 348)]
    assert [s.fresh_in for s in plan.spans] == [True, True, False]  # the wrapped features accumulate
    assert [s.fresh_out for s in plan.spans] == [True, True, False]
    assert plan.width == 4176 and [(t.start, t.count, t.size, t.fresh_slots) for t in plan.tiles.items] == [
        (0, 2, 4176, True), (8352, 1, 2656, False)]


def test_llama_down_proj_rope_reads_the_first_blocks_and_truncates_the_last():
    spans, plan = _spans("rope", 11008, 4096)
    assert spans == [(0, 11, 0, 348, 348), (11, 1, 3828, 348, 268)]
    assert plan.tiles is None and plan.untouched == ((4176, 11008),)


def test_llama_gate_proj_sharing_sums_whole_blocks_in_one_view():
    comp = build_compression("sharing", 4096, 11008, 348)
    inputs, outputs = comp._segments
    assert [(s.start, s.count, s.size, s.slot, s.fresh, s.fresh_slots) for s in inputs.items] == [
        (0, 11, 348, 0, True, True), (3828, 1, 268, 0, True, False), (0, 1, 80, 268, False, False)]
    assert [(s.start, s.count, s.size) for s in outputs.items] == [(0, 31, 348), (10788, 1, 220)]
    assert inputs.untouched == inputs.untouched_slots == outputs.untouched_slots == ()


def test_first_touches_refuses_partial_overlaps():
    assert _first_touches([[(0, 4)], [(4, 6)], [(0, 2)]], 8) == ([True, True, False], ((6, 8),))
    with pytest.raises(AssertionError, match="partly overlap"):
        _first_touches([[(0, 4)], [(2, 6)]], 8)


# ================================================================================ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", ["llama_gate", "llama_down", *SHAPES])
def test_cuda_fused_path_equals_the_reference(name, shape, monkeypatch):
    """On CUDA (TF32 off) the fused path matches the eager reference to float32 rounding, both rope branches."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    k, d, r = {"llama_gate": (4096, 11008, 8), "llama_down": (11008, 4096, 8)}.get(shape) or SHAPES[shape]
    comp = build_compression(name, k, d, square_rank(k, d, r, name)).to("cuda")
    for tokens in (3, 512):
        g = torch.Generator(device="cuda").manual_seed(tokens)
        M = torch.randn(comp.rank, comp.rank, device="cuda", generator=g) / comp.rank**0.5
        x, result = torch.randn(tokens, k, device="cuda", generator=g), torch.randn(tokens, d, device="cuda", generator=g)
        grad = torch.randn(tokens, d, device="cuda", generator=g)
        fused = _grads(comp.add_to, result, x, M, grad)
        reference = _grads(lambda res, x_, M_: res + comp.update(x_, M_), result, x, M, grad)
        for got, expected in zip(fused, reference):
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("compression", ["rope", "sharing"])
def test_cuda_bf16_layer_is_within_bf16_rounding_of_float32(compression):
    torch.manual_seed(0)
    base = nn.Linear(4096, 11008, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = MoraLinear(base, r=8, compression=compression)
    with torch.no_grad():
        layer.M.normal_(std=layer.rank**-0.5)
    x = torch.randn(2048, 4096, device="cuda").to(torch.bfloat16).requires_grad_(True)
    grad = torch.randn(2048, 11008, device="cuda").to(torch.bfloat16)
    out = layer(x)
    out.backward(grad)
    x32, M32 = x.detach().float().requires_grad_(True), layer.M.detach().clone().requires_grad_(True)
    comp32 = build_compression(compression, 4096, 11008, layer.rank).to("cuda")
    ref = x32 @ base.weight.float().T + comp32.update(x32, M32)
    ref.backward(grad.float())
    eps = 2.0**-8
    for got, expected in [(out, ref), (x.grad, x32.grad), (layer.M.grad, M32.grad)]:
        assert (got.float() - expected).abs().max() <= 2 * eps * expected.abs().max()
