"""The method factory (:mod:`mora.methods`): what each method trains, how its optimizer groups look, and the
properties every adapter owes — zero-init (the model is unchanged before training), only trainable
parameters move, merging for evaluation is exact, bad configs fail with one line.

All on the tiny random LLaMA of ``conftest.py`` (2 layers × 7 projections = 14 adapted layers)."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from peft.tuners.lora import LoraLayer

from conftest import randomize_adapters
from mora.adapters import MoraLinear
from mora.methods import (
    METHODS,
    MethodConfig,
    build,
    checkpoint_parameters,
    merge_for_eval,
    parameter_report,
)

LR = 1e-2
#: the methods tested here; every type of method=peft has the same properties tested in test_peft_methods.py
BUILT_IN = tuple(m for m in METHODS if m != "peft")
ADAPTED = 14  # 2 layers × 7 projections
#: What each method trains: a regex every trainable parameter name matches, and how many there are.
TRAINS = {
    "lora": (r"\.lora_[AB]\.default\.weight$", 2 * ADAPTED),
    "lora_plus": (r"\.lora_[AB]\.default\.weight$", 2 * ADAPTED),
    "dora": (r"\.(lora_[AB]|lora_magnitude_vector)\.default\.weight$", 3 * ADAPTED),
    "asylora": (r"\.lora_B\.default\.weight$", ADAPTED),
    "mora": (r"\.M$", ADAPTED),
}


def built(make_llama, name: str, dtype=torch.float64, **options):
    return build(make_llama(dtype=dtype), MethodConfig(name=name, **options), lr=LR)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


# ------------------------------------------------------------------------------------------ what trains
@pytest.mark.parametrize("name", BUILT_IN)
def test_each_method_trains_the_right_parameters(make_llama, name):
    model, groups = built(make_llama, name)
    trainable = trainable_names(model)
    if name == "fft":
        assert trainable == {n for n, _ in model.named_parameters()}
    else:
        pattern, count = TRAINS[name]
        assert len(trainable) == count and all(re.search(pattern, n) for n in trainable), sorted(trainable)[:4]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)  # each trainable param in one group
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all({"lr", "weight_decay"} <= set(g) for g in groups)


@pytest.mark.parametrize("name", ["lora", "mora"])
def test_modules_to_save_train_in_full(make_llama, name):
    model, groups = built(make_llama, name, modules_to_save=["embed_tokens", "norm", "lm_head"])
    extra = {n for n in trainable_names(model) if not re.search(TRAINS[name][0], n)}
    # The same three modules for both (not the layers' *_layernorm, which peft's own matching of "norm" takes);
    # peft trains a copy (…embed_tokens.modules_to_save.default.weight), MoRA the module itself.
    assert len(extra) == 3 and all(re.search(r"\.(embed_tokens|norm|lm_head)\.", n) for n in extra), extra
    assert sum(len(g["params"]) for g in groups) == len(trainable_names(model))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_starts_at_the_base_model(make_llama, input_ids, name):
    """Zero-init: B = 0 (LoRA family, DoRA's magnitude = ‖W‖ row-wise), M = 0 (MoRA)."""
    base = logits(make_llama(), input_ids)
    model, _ = built(make_llama, name)
    torch.testing.assert_close(logits(model, input_ids), base, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", BUILT_IN)
def test_one_adamw_step_moves_only_trainable_parameters(make_llama, input_ids, name):
    model, groups = built(make_llama, name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW(groups).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable_names(model)
    if name == "fft":
        assert changed == trainable_names(model)
    else:  # LoRA's A gets no gradient while B = 0, so the first step moves B (and DoRA's magnitude) only
        moved = r"\.M$" if name == "mora" else r"\.lora_B\.default\.weight$"
        assert {n for n in trainable_names(model) if re.search(moved, n)} <= changed
        assert changed


def test_asylora_keeps_a_frozen_and_orthonormal(make_llama, input_ids):
    model, groups = built(make_llama, "asylora", dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    A = [m.lora_A["default"].weight for m in layers]
    A0 = [a.detach().clone() for a in A]
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW(groups).step()
    for a, a0 in zip(A, A0):
        assert not a.requires_grad and torch.equal(a, a0)
        torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), rtol=0, atol=1e-5)
    assert len({a.data_ptr() for a in A}) == len(A) and not torch.equal(A0[0], A0[1])  # each layer its own draw


@pytest.mark.parametrize("ratio", [2.0, 4.0])
def test_lora_plus_trains_b_lambda_times_faster(make_llama, ratio):
    model, groups = built(make_llama, "lora_plus", loraplus_ratio=ratio)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(LR * ratio if "lora_B" in name else LR), name


def test_lora_update_has_rank_at_most_r(make_llama):
    model, _ = built(make_llama, "lora", r=4)
    randomize_adapters(model, scale=0.1)
    for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
        assert torch.linalg.matrix_rank(layer.get_delta_weight("default")) == 4


# ------------------------------------------------------------------------------------------ reporting, merging
def test_parameter_report(make_llama):
    fft = parameter_report(built(make_llama, "fft").model)
    assert fft["trainable"] == fft["total"] and "rank_summary" not in fft
    lora = parameter_report(built(make_llama, "lora").model)
    assert lora["rank_summary"] == {"64x64": 8, "64x172": 8, "172x64": 8}
    assert lora["trainable"] == 2 * 8 * (4 * (64 + 64) + 3 * (64 + 172))
    asylora = parameter_report(built(make_llama, "asylora").model)
    assert asylora["trainable"] == 2 * 8 * (4 * 64 + 2 * 172 + 64)  # B only: d × r per adapted layer
    mora = parameter_report(built(make_llama, "mora").model)
    assert mora["lora_equivalent"] == lora["trainable"] and set(mora["rank_summary"]) == set(lora["rank_summary"])


@pytest.mark.parametrize("name", ["lora", "dora", "asylora", "mora"])
def test_merge_for_eval_gives_a_plain_model_with_the_same_outputs(make_llama, input_ids, name):
    model, _ = built(make_llama, name)
    randomize_adapters(model, scale=0.1)
    model.eval()
    expected = logits(model, input_ids)
    merged = merge_for_eval(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any(isinstance(m, (LoraLayer, MoraLinear)) for m in merged.modules())
    torch.testing.assert_close(logits(merged, input_ids), expected, rtol=0, atol=1e-10)


def test_merge_for_eval_of_fft_is_the_model(make_llama):
    model, _ = built(make_llama, "fft")
    assert merge_for_eval(model) is model


@pytest.mark.parametrize("name", ["lora", "mora"])
def test_checkpoints_keep_folded_base_weights_only_with_restarts(make_llama, name):
    plain = checkpoint_parameters(built(make_llama, name).model, MethodConfig(name=name))
    assert set(plain) == trainable_names(built(make_llama, name).model)
    cfg = MethodConfig(name=name, restart_every=100)
    model, _ = build(make_llama(), cfg, lr=LR)
    restarting = checkpoint_parameters(model, cfg)
    base = set(restarting) - set(plain)
    assert len(base) == ADAPTED and all(n.endswith("base_layer.weight") for n in base)
    assert set(restarting) <= set(model.state_dict())


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("options", "label"),
    [
        ({"name": "fft"}, "fft"),
        ({"name": "lora"}, "lora"),
        ({"name": "lora_plus"}, "lora_plus"),
        ({"name": "dora"}, "dora"),
        ({"name": "asylora"}, "asylora"),
        ({"name": "mora"}, "mora_rope"),
        ({"name": "mora", "compression": "sharing"}, "mora_sharing"),
        ({"name": "lora", "restart_every": 100}, "relora"),
        ({"name": "mora", "compression": "sharing", "restart_every": 100, "cycle_compression": True}, "remora"),
    ],
)
def test_label(options, label):
    assert MethodConfig(**options).label == label


def test_method_config_is_a_hydra_structured_config():
    cfg = OmegaConf.merge(OmegaConf.structured(MethodConfig), {"name": "lora", "r": 16, "restart_every": 200})
    method = OmegaConf.to_object(cfg)
    assert isinstance(method, MethodConfig) and method.label == "relora" and method.target_modules[0] == "q_proj"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "qlora"}, r"unknown method 'qlora'; set method.name to one of \['fft', 'lora'"),
        ({"r": 0}, r"method.r must be a positive integer"),
        ({"name": "mora", "compression": "spiral"}, r"unknown MoRA compression 'spiral'"),
        ({"name": "lora_plus", "loraplus_ratio": 0.5}, r"loraplus_ratio .* must be ≥ 1"),
        ({"name": "fft", "restart_every": 100}, r"method 'fft' cannot restart; set method.restart_every=0"),
        ({"name": "dora", "restart_every": 100}, r"method 'dora' cannot restart"),
        ({"name": "lora", "restart_every": 100, "cycle_compression": True}, r"cycle_compression is ReMoRA's"),
        ({"name": "lora", "restart_every": 40, "restart_warmup": 50}, r"restart_warmup=50 must be < "),
    ],
)
def test_bad_configs_fail_with_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        MethodConfig(**options)
    assert "\n" not in str(error.value)


def test_unmatched_target_fails_identically_for_every_method(make_llama):
    messages = set()
    for name in ("lora", "dora", "asylora", "lora_plus", "mora"):
        with pytest.raises(ValueError, match=r"method.target_modules=\['qproj'\] matched no module") as error:
            built(make_llama, name, target_modules=["qproj"])
        messages.add(str(error.value))
    (message,) = messages
    assert "\n" not in message and "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message


@pytest.mark.parametrize("name", ["lora", "mora"])
def test_non_linear_target_fails_with_one_line(make_llama, name):
    with pytest.raises(ValueError, match=r"matched model.layers.0.mlp \(LlamaMLP\); adapters wrap nn.Linear"):
        built(make_llama, name, target_modules=["mlp"])
