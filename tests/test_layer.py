"""``MoraLinear`` unit tests: parameters, dropout, fold, compression switching, bias and input shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mora.adapters import COMPRESSIONS, MoraLinear, square_rank

DT = torch.float64
ALL = sorted(COMPRESSIONS)


def make_layer(k=64, d=80, r=2, compression="rope", bias=True, dropout=0.0, seed=0) -> MoraLinear:
    torch.manual_seed(seed)
    return MoraLinear(nn.Linear(k, d, bias=bias, dtype=DT), r=r, compression=compression, dropout=dropout)


def fill_M(layer: MoraLinear, seed: int = 0, scale: float = 0.1) -> MoraLinear:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.M.copy_(torch.randn(layer.M.shape, generator=g, dtype=DT).to(layer.M.dtype) * scale)
    return layer


def rand_x(*shape, seed=1) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


# ================================================================================ parameters
@pytest.mark.parametrize("compression", ALL)
def test_M_is_square_zero_and_the_only_trainable_parameter(compression):
    layer = make_layer(compression=compression)
    rank = square_rank(64, 80, 2, compression)
    assert layer.rank == rank
    assert layer.M.shape == (rank, rank)
    assert layer.M.dtype == DT
    assert torch.count_nonzero(layer.M) == 0
    assert [name for name, p in layer.named_parameters() if p.requires_grad] == ["M"]
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    assert set(layer.state_dict()) == {"M", "base_layer.weight", "base_layer.bias"}  # tables are not saved
    assert layer.compression_name == compression


def test_zero_M_gives_the_base_output_exactly():
    layer = make_layer()
    x = rand_x(5, 64)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_rejects_non_linear_base():
    with pytest.raises(TypeError, match="nn.Linear"):
        MoraLinear(nn.Conv1d(4, 4, 1), r=2)


def test_gradient_reaches_only_M():
    layer = make_layer(compression="sharing")
    x = rand_x(5, 64)
    layer(x).pow(2).sum().backward()
    assert layer.M.grad is not None and torch.count_nonzero(layer.M.grad) > 0
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None


def test_wrapping_an_eval_layer_keeps_eval_mode():
    base = nn.Linear(64, 80, dtype=DT).eval()
    layer = MoraLinear(base, r=2, dropout=0.5)
    assert not layer.training and not layer.dropout.training


# ================================================================================ dropout
def test_dropout_is_random_in_train_mode_and_off_in_eval_mode():
    layer = fill_M(make_layer(compression="rope", dropout=0.5))
    x = rand_x(4, 64)
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    c = layer(x)
    d = layer(x)
    assert torch.equal(c, d)
    expected = layer.base_layer(x) + x @ layer.delta_weight().T
    torch.testing.assert_close(c, expected, rtol=0, atol=1e-12)


def test_dropout_touches_only_the_adapter_path():
    layer = make_layer(dropout=0.9).train()  # M = 0: whatever the dropout does, the output is the base's
    x = rand_x(4, 64)
    assert torch.equal(layer(x), layer.base_layer(x))


# ================================================================================ merge / fold
@pytest.mark.parametrize("compression", ALL)
def test_fold_moves_the_update_into_the_weight(compression):
    layer = fill_M(make_layer(compression=compression))
    x = rand_x(6, 64)
    before = layer(x)
    M = layer.M
    weight_before = layer.base_layer.weight.detach().clone()
    delta = layer.delta_weight().detach()
    layer.fold()
    assert layer.M is M  # same Parameter: an optimizer holding it keeps working
    assert torch.count_nonzero(layer.M) == 0
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, weight_before + delta, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-12)


def test_merge_then_unmerge_on_the_layer():
    layer = fill_M(make_layer(compression="sharing"))
    x = rand_x(6, 64)
    expected = layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


# ================================================================================ set_compression
def test_set_compression_switches_variant_and_keeps_rank():
    layer = fill_M(make_layer(k=64, d=64, r=2, compression="sharing"))
    assert layer.rank == 16
    x = rand_x(5, 64)
    before = layer(x)
    M = layer.M
    for name in ("sharing_contiguous", "sharing_contiguous_in", "sharing_contiguous_out", "rope", "sharing"):
        layer.set_compression(name)
        assert layer.compression_name == name
        assert layer.rank == 16 and layer.compression.rank == 16
        assert layer.M is M
        torch.testing.assert_close(layer(x) - layer.base_layer(x), x @ layer.delta_weight().T, rtol=0, atol=1e-12)
    layer.set_compression("sharing_contiguous")
    assert not torch.allclose(layer(x), before)  # a different variant really is a different map


def test_set_compression_keeps_the_layer_dtype():
    layer = MoraLinear(nn.Linear(64, 64).to(torch.bfloat16), r=2, compression="sharing")
    layer.set_compression("rope")
    assert layer.compression.cos.dtype == torch.float32 == layer.M.dtype


def test_set_compression_refuses_when_merged():
    layer = fill_M(make_layer(k=64, d=64, r=2, compression="sharing"))
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_compression("sharing_contiguous")
    assert layer.compression_name == "sharing"
    layer.unmerge()
    layer.set_compression("sharing_contiguous")
    assert layer.compression_name == "sharing_contiguous"


def test_set_compression_to_rope_needs_an_even_rank():
    layer = make_layer(k=64, d=64, r=1, compression="sharing")
    assert layer.rank == 11
    with pytest.raises(ValueError, match="even"):
        layer.set_compression("rope")
    assert layer.compression_name == "sharing"


def test_set_compression_rejects_unknown_names():
    layer = make_layer()
    with pytest.raises(ValueError, match="unknown MoRA compression"):
        layer.set_compression("nope")


# ================================================================================ bias / shapes
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("compression", ["rope", "sharing", "truncation"])
def test_bias_and_no_bias_base_layers(bias, compression):
    layer = fill_M(make_layer(compression=compression, bias=bias))
    assert (layer.base_layer.bias is not None) == bias
    x = rand_x(5, 64)
    W = layer.base_layer.weight + layer.delta_weight()
    expected = x @ W.T + (layer.base_layer.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    assert (layer.base_layer.bias is not None) == bias  # merging never invents or changes a bias


@pytest.mark.parametrize("compression", ALL)
def test_3d_inputs(compression):
    layer = fill_M(make_layer(compression=compression))
    x = rand_x(2, 5, 64)
    out = layer(x)
    assert out.shape == (2, 5, 80)
    flat = layer(x.reshape(10, 64)).reshape(2, 5, 80)
    torch.testing.assert_close(out, flat, rtol=0, atol=1e-12)
    torch.testing.assert_close(out - layer.base_layer(x), x @ layer.delta_weight().T, rtol=0, atol=1e-12)


def test_1d_input():
    layer = fill_M(make_layer(compression="rope"))
    x = rand_x(64)
    torch.testing.assert_close(layer(x), layer(x[None])[0], rtol=0, atol=1e-12)


def test_float32_base_keeps_float32_M():
    layer = MoraLinear(nn.Linear(64, 80), r=2)
    assert layer.M.dtype == torch.float32


def test_extra_repr_reports_both_ranks():
    # sqrt((64 + 80) · 2) = 16.97 → 17; rope rounds down to even.
    assert "r=2, r̂=16, merged=False" in repr(make_layer(k=64, d=80, r=2, compression="rope"))
    assert "r=2, r̂=17, merged=False" in repr(make_layer(k=64, d=80, r=2, compression="sharing"))


# ================================================================================ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("compression", ["rope", "sharing"])
def test_cuda_forward_matches_delta_weight(compression):
    base = nn.Linear(4096, 11008, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = MoraLinear(base, r=8, compression=compression)
    assert layer.M.device.type == "cuda" and layer.M.dtype == torch.float32
    assert layer.compression.wrap_index.device.type == "cuda"
    with torch.no_grad():
        layer.M.normal_(std=layer.rank**-0.5)
    x = torch.randn(4, 4096, device="cuda", dtype=torch.float32)
    update = layer.compression.update(x, layer.M)
    dw = layer.delta_weight()
    assert dw.device.type == "cuda"
    rel = (update - x @ dw.T).abs().max() / update.abs().max()
    assert rel < 1e-3  # TF32 matmuls may be on
    out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (4, 11008)
