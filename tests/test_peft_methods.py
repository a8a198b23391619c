"""``method=peft``: every type of :data:`mora.methods.PEFT_TYPES` through the one factory, with the properties
every adapter owes — it builds, starts at the base model where peft promises it, one step moves only its
own parameters, save/load round-trips, merging gives the same outputs — plus its config errors and budget
matching (:mod:`mora.budget`) on real builds.

All on the tiny float64 LLaMA of ``conftest.py`` (hidden 64, intermediate 172, 2 layers × 7 projections)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

from mora.budget import TOLERANCE, lora_count
from mora.methods import PEFT_TYPES, MethodConfig, build, merge_for_eval, parameter_report, peft_delta_weight

TYPES = sorted(PEFT_TYPES)
#: C3A's default block (256) must divide every side of every layer; 4 divides 64 and 172.
FITS_TINY = {"C3A": {"block_size": 4}}
#: merge error allowed in float64: C3A computes its circulant products in float32 whatever the base dtype.
MERGE_ATOL = {"C3A": 1e-5}


def built(make_llama, peft_type: str, **options):
    cfg = MethodConfig(name="peft", peft_type=peft_type, peft_kwargs=FITS_TINY.get(peft_type, {}), dropout=0.0, **options)
    base = make_llama()
    base_ids = {id(p) for p in base.parameters()}
    model, groups = build(base, cfg, lr=1e-2)
    return model, groups, base_ids


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def perturb_trainable(model, seed: int = 0, scale: float = 0.05) -> None:
    """Make the adapter non-trivial: add seeded noise to every trainable parameter (most start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_((torch.randn(p.shape, generator=generator, dtype=torch.float64) * scale).to(p.dtype))


# ------------------------------------------------------------------------------------------ the adapter's properties
@pytest.mark.parametrize("peft_type", TYPES)
def test_every_type_builds_and_trains_only_its_own_parameters(make_llama, peft_type):
    model, groups, base_ids = built(make_llama, peft_type)
    assert isinstance(model, PeftModel) and model.active_peft_config.peft_type.value == peft_type
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not {id(p) for p in trainable} & base_ids  # the base model stays frozen
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)
    report = parameter_report(model)
    assert report["trainable"] == sum(p.numel() for p in trainable) and report["peft"]["type"] == peft_type
    if knob := PEFT_TYPES[peft_type].knob:
        assert report["peft"][knob] == getattr(model.active_peft_config, knob)


@pytest.mark.parametrize("peft_type", TYPES)
def test_zero_init_where_peft_promises_it(make_llama, input_ids, peft_type):
    """ΔW = 0 (or an identity rotation/scale) at init for every type flagged ``zero_init``; the others
    (C3A's xavier kernel, FourierFT's Gaussian spectrum) really do start elsewhere, so the flag is honest."""
    base = logits(make_llama(), input_ids)
    model, _, _ = built(make_llama, peft_type)
    if PEFT_TYPES[peft_type].zero_init:
        torch.testing.assert_close(logits(model, input_ids), base, rtol=0, atol=1e-12)
    else:
        assert (logits(model, input_ids) - base).abs().max() > 1e-6


@pytest.mark.parametrize("peft_type", TYPES)
def test_one_adamw_step_moves_only_the_adapter(make_llama, input_ids, peft_type):
    model, groups, _ = built(make_llama, peft_type)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    torch.optim.AdamW(groups).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("peft_type", TYPES)
def test_save_load_round_trip(make_llama, input_ids, tmp_path, peft_type):
    model, _, _ = built(make_llama, peft_type)
    perturb_trainable(model)
    model.eval()
    expected = logits(model, input_ids)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_llama(), tmp_path).eval()
    torch.testing.assert_close(logits(loaded, input_ids), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("peft_type", TYPES)
def test_merge_for_eval_gives_a_plain_model_with_the_same_outputs(make_llama, input_ids, peft_type):
    model, _, _ = built(make_llama, peft_type)
    perturb_trainable(model)
    model.eval()
    expected = logits(model, input_ids)
    merged = merge_for_eval(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(merged, input_ids), expected, rtol=0, atol=MERGE_ATOL.get(peft_type, 1e-10))


@pytest.mark.parametrize("peft_type", TYPES)
def test_delta_weight_is_what_the_layer_adds(make_llama, peft_type):
    """``peft_delta_weight``: x (W + ΔW)ᵀ equals the unmerged layer's output, and the layer stays unmerged."""
    model, _, _ = built(make_llama, peft_type)
    perturb_trainable(model)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    x = torch.randn(3, 172, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for layer in (layers[0], layers[-1]):  # q_proj (64 → 64) and down_proj (172 → 64)
        base = layer.get_base_layer()
        inputs = x[:, : base.in_features]
        delta = peft_delta_weight(layer)
        assert delta.shape == base.weight.shape and delta.abs().max() > 0 and not layer.merged
        with torch.no_grad():
            torch.testing.assert_close(inputs @ (base.weight + delta).T, layer(inputs), rtol=0, atol=MERGE_ATOL.get(peft_type, 1e-12))


def test_analyze_measures_every_type_s_update(make_llama):
    """mora-analyze's ΔW of every adapted layer (through peft_delta_weight): MiSS's single r × d block
    repeated over the inputs is rank ≤ r; HiRA's W₀ ⊙ B A reaches far beyond its r; IA3's row scaling of W
    has W's rank."""
    from mora.analyze import analyze, delta_weights

    ranks = {}
    for peft_type, kwargs in (("MISS", {"r": 4}), ("HIRA", {"r": 4}), ("IA3", {})):
        model = build(make_llama(), MethodConfig(name="peft", peft_type=peft_type, peft_kwargs=kwargs), lr=1e-2).model
        perturb_trainable(model)
        layers = analyze(delta_weights(model, list(MethodConfig().target_modules)))["layers"]
        assert len(layers) == 14
        ranks[peft_type] = max(layer["numerical_rank"] for layer in layers)
    assert ranks["MISS"] <= 4 and ranks["HIRA"] > 4 * 4 and ranks["IA3"] == 64


# ------------------------------------------------------------------------------------------ what the factory sets
def test_method_dropout_and_targets_reach_the_peft_config(make_llama):
    model, _, _ = built(make_llama, "MISS", target_modules=["q_proj", "v_proj"])
    config = model.active_peft_config
    assert config.miss_dropout == 0.0 and set(config.target_modules) == {"q_proj", "v_proj"}
    cfg = MethodConfig(name="peft", peft_type="MISS", dropout=0.1)
    assert build(make_llama(), cfg, lr=1e-2).model.active_peft_config.miss_dropout == 0.1


@pytest.mark.parametrize(("peft_type", "kwargs", "alpha"), [
    ("GRALORA", {"r": 8}, ("alpha", 16.0)),  # peft's default 64 at r=32: scale 2 kept
    ("RANDLORA", {"r": 16}, ("randlora_alpha", 320.0)),  # 640 at r=32: scale 20 kept
    ("GRALORA", {"r": 8, "alpha": 8}, ("alpha", 8)),  # given: kept as given
])
def test_alpha_follows_the_knob_at_peft_default_scale(peft_type, kwargs, alpha):
    from mora.methods import peft_config

    config = peft_config(MethodConfig(name="peft", peft_type=peft_type, peft_kwargs=kwargs))
    assert getattr(config, alpha[0]) == alpha[1]


def test_modules_to_save_train_in_full_beside_the_adapter(make_llama):
    model, groups, _ = built(make_llama, "HIRA", modules_to_save=["lm_head"])
    extra = {n for n, p in model.named_parameters() if p.requires_grad and "hira_" not in n}
    assert extra == {"base_model.model.lm_head.modules_to_save.default.weight"}


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("options", "label", "size"), [
    ({"peft_type": "MISS"}, "peft_miss", None),
    ({"peft_type": "c3a", "peft_kwargs": {"block_size": 8}}, "peft_c3a", None),  # any case
    ({"peft_type": "VERA", "budget_r": 8}, "peft_vera", "b8"),
])
def test_label_and_size(options, label, size):
    cfg = MethodConfig(name="peft", **options)
    assert (cfg.label, cfg.size) == (label, size)


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "peft", "peft_type": "BONE"}, r"unknown method.peft_type 'BONE'; set it to one of \['C3A', 'DELORA'.*'MISS'.*\]"),
    ({"name": "peft"}, r"unknown method.peft_type None"),
    ({"name": "peft", "peft_type": "MISS", "peft_kwargs": {"rank": 8}},
     r"method.peft_kwargs: rank not accepted for peft_type=MISS .*; valid: bias, exclude_modules, init_weights, .*mini_r, r$"),
    ({"name": "peft", "peft_type": "MISS", "peft_kwargs": {"target_modules": ["q_proj"]}},
     r"target_modules not accepted .*targets, modules_to_save and dropout come from method"),
    ({"name": "peft", "peft_type": "MISS", "peft_kwargs": {"miss_dropout": 0.1}}, r"miss_dropout not accepted"),
    ({"name": "peft", "peft_type": "OFT", "peft_kwargs": {"r": 4, "oft_block_size": 8}},
     r"method.peft_kwargs=.* rejected by OFTConfig: You can only specify either r"),
    ({"name": "lora", "peft_type": "MISS"}, r"method.peft_type and method.peft_kwargs are for method=peft, not 'lora'"),
    ({"name": "fft", "budget_r": 8}, r"method.budget_r does not apply to fft"),
    ({"name": "lora", "budget_r": 0}, r"method.budget_r must be a positive LoRA rank"),
])
def test_bad_peft_configs_fail_with_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        MethodConfig(**options)
    assert "\n" not in str(error.value)


def test_peft_kwargs_compose_with_hydra():
    """``+method.peft_kwargs.<field>=...`` adds a field (Hydra's ``+``: the dict starts empty)."""
    from mora.config import validate
    from mora.reproduce import compose_run
    from mora.run import run_name

    overrides = ["method=peft", "method.peft_type=C3A", "+method.peft_kwargs.block_size=8"]
    cfg = validate(compose_run(overrides))
    method = OmegaConf.to_object(cfg.method)
    assert method.peft_kwargs == {"block_size": 8} and run_name(cfg, overrides) == "uuid-peft_c3a-lr3e-4-s42-block_size=8"
    overrides = ["method=peft", "method.peft_type=VERA", "method.budget_r=8"]
    assert run_name(validate(compose_run(overrides)), overrides) == "uuid-peft_vera-b8-lr3e-4-s42"


# ------------------------------------------------------------------------------------------ budget matching, built for real
#: a LoRA rank each type can match on the tiny model (its knob's steps are coarse at hidden 64: C3A's block
#: sizes divide 4 = gcd(64, 172); RandLoRA r=3 is +5.7% of LoRA-8; LoKr's default factors top out near LoRA-2)
REACHABLE = {"C3A": 10, "RANDLORA": 4, "LOKR": 2}


@pytest.mark.parametrize("peft_type", [t for t in TYPES if PEFT_TYPES[t].knob])
def test_budget_matching_lands_within_five_percent(make_llama, capsys, peft_type):
    budget_r = REACHABLE.get(peft_type, 8)
    cfg = MethodConfig(name="peft", peft_type=peft_type, budget_r=budget_r, dropout=0.0)
    model, _ = build(make_llama(), cfg, lr=1e-2)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    target = lora_count(make_llama(), cfg.target_modules, budget_r)
    assert abs(trained / target - 1) <= TOLERANCE, (trained, target)
    knob = PEFT_TYPES[peft_type].knob
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"budget: peft_{peft_type.lower()} {knob}={getattr(model.active_peft_config, knob)} ")
    assert f"trains {trained:,} adapter parameters = LoRA r={budget_r}'s {target:,}" in line
