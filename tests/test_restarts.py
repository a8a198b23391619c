"""ReLoRA / ReMoRA primitives (:mod:`mora.restarts`): a restart moves the update into the weights without
changing the model's outputs, restarts the adapter in place, cycles ReMoRA's compressions, and drops the
optimizer state of exactly the adapter parameters; the LR multiplier re-warms after each restart."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from conftest import randomize_adapters
from mora.adapters import MoraLinear
from mora.methods import MethodConfig, build
from mora.restarts import REMORA_CYCLE, reset_optimizer_state, restart_adapters, restart_lr_multiplier

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-10}


def built(make_llama, dtype=torch.float64, **options):
    return build(make_llama(dtype=dtype), MethodConfig(**options), lr=1e-2)


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def lora_layers(model) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


# ------------------------------------------------------------------------------------------ ReMoRA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_remora_restart_keeps_outputs_and_zeroes_m(make_llama, input_ids, dtype):
    model, _ = built(make_llama, dtype, name="mora", compression="sharing", restart_every=100, cycle_compression=True)
    model.eval()
    layers = list(model.mora_layers().values())
    for restart in range(len(REMORA_CYCLE) + 1):  # once round the cycle and back to the start
        randomize_adapters(model, seed=restart, scale=0.02)
        expected = logits(model, input_ids)
        params = restart_adapters(model, cycle_compression=True)
        torch.testing.assert_close(logits(model, input_ids), expected, rtol=0, atol=TOLERANCE[dtype])
        assert [id(p) for p in params] == [id(m.M) for m in layers]
        assert all(not m.M.any() for m in layers)
        next_name = REMORA_CYCLE[(restart + 1) % len(REMORA_CYCLE)]
        assert {m.compression_name for m in layers} == {next_name}


def test_remora_cycle_order_and_entry_from_rope():
    layer = MoraLinear(nn.Linear(64, 172), r=8, compression="rope")
    seen = []
    for _ in range(5):
        restart_adapters(layer, cycle_compression=True)
        seen.append(layer.compression_name)
    assert seen == ["sharing", "sharing_contiguous", "sharing_contiguous_in", "sharing_contiguous_out", "sharing"]


def test_mora_restart_without_cycling_keeps_the_compression(make_llama):
    model, _ = built(make_llama, name="mora", restart_every=100)
    restart_adapters(model, cycle_compression=False)
    assert {m.compression_name for m in model.mora_layers().values()} == {"rope"}


# ------------------------------------------------------------------------------------------ ReLoRA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relora_restart_keeps_outputs_and_restarts_the_adapter(make_llama, input_ids, dtype):
    model, _ = built(make_llama, dtype, name="lora", restart_every=100, modules_to_save=["lm_head"])
    model.eval()
    randomize_adapters(model, scale=0.02)
    layers = lora_layers(model)
    A = [m.lora_A["default"].weight for m in layers]
    B = [m.lora_B["default"].weight for m in layers]
    A_before = [a.detach().clone() for a in A]
    expected = logits(model, input_ids)

    params = restart_adapters(model, cycle_compression=False)

    torch.testing.assert_close(logits(model, input_ids), expected, rtol=0, atol=TOLERANCE[dtype])
    assert {id(p) for p in params} == {id(p) for p in A + B} and len(params) == len(A + B)  # not lm_head
    assert [id(m.lora_A["default"].weight) for m in layers] == [id(a) for a in A]  # same Parameter objects
    assert all(not b.any() for b in B)
    for a, a0 in zip(A, A_before):
        assert not torch.equal(a, a0)
        assert a.abs().max() <= a.shape[1] ** -0.5  # kaiming-uniform(a=√5) bound: 1/sqrt(fan_in)


def test_relora_redraw_follows_the_generator(make_llama):
    """Ranks of a data-parallel run stay identical when they pass the same seeded generator."""
    drawn = []
    for _ in range(2):
        model, _ = built(make_llama, name="lora", restart_every=100)
        torch.manual_seed(len(drawn))  # a different global RNG state on each "rank"
        restart_adapters(model, cycle_compression=False, generator=torch.Generator().manual_seed(7))
        drawn.append(torch.cat([m.lora_A["default"].weight.flatten() for m in lora_layers(model)]))
    torch.testing.assert_close(drawn[0], drawn[1], rtol=0, atol=0)


def test_restart_needs_adapters(make_llama):
    with pytest.raises(ValueError, match="found no MoRA or LoRA layer"):
        restart_adapters(make_llama(), cycle_compression=False)


def test_restart_refuses_dora(make_llama):
    model, _ = built(make_llama, name="dora")
    with pytest.raises(ValueError, match="not DoRA"):
        restart_adapters(model, cycle_compression=False)


# ------------------------------------------------------------------------------------------ optimizer, LR
@pytest.mark.parametrize("name", ["lora", "mora"])
def test_reset_optimizer_state_drops_only_the_adapter_state(make_llama, input_ids, name):
    model, groups = built(make_llama, name=name, restart_every=100, modules_to_save=["lm_head"])
    optimizer = torch.optim.AdamW(groups)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    kept = {p: dict(optimizer.state[p]) for g in groups for p in g["params"]}
    assert len(kept) == len([p for p in model.parameters() if p.requires_grad])

    params = restart_adapters(model, cycle_compression=False)
    reset_optimizer_state(optimizer, params)

    dropped = {id(p) for p in params}
    assert all(p not in optimizer.state for p in params)
    others = [p for p in kept if id(p) not in dropped]
    assert others and all(optimizer.state[p] == kept[p] for p in others)  # lm_head: the same tensors
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()  # the adapter restarts as a fresh parameter
    assert all(optimizer.state[p]["step"] == 1 for p in params)
    assert all(optimizer.state[p]["step"] == 2 for p in others)


def test_restart_lr_multiplier_rewarms_after_each_restart():
    restarts, warmup = [100, 200], 50
    values = {step: restart_lr_multiplier(step, restarts, warmup) for step in (0, 99, 100, 101, 124, 149, 150, 199, 200, 260)}
    assert values == {
        0: 1.0, 99: 1.0,  # before the first restart: the base schedule alone
        100: 1 / 50, 101: 2 / 50, 124: 25 / 50, 149: 1.0, 150: 1.0, 199: 1.0,
        200: 1 / 50, 260: 1.0,
    }
    assert restart_lr_multiplier(150, [], warmup) == 1.0
    assert restart_lr_multiplier(100, restarts, 0) == 1.0
