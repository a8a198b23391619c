"""Budget matching (:mod:`mora.budget`): the search, the meta-device copy it counts on, the methods matched
by construction, and the one-line refusals.  Every peft type's match is checked on a real build in
``test_peft_methods.py``."""

from __future__ import annotations

import pytest

from mora.adapters import MoraModel
from mora.budget import lora_count, match_budget, meta_copy, search, within_budget
from mora.methods import MethodConfig, build

LORA8 = 2 * 8 * (4 * (64 + 64) + 3 * (64 + 172))  # LoRA r=8 on the tiny LLaMA's 2 layers × 7 projections


# ------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize(("target", "expected"), [(70, (7, 70)), (73, (7, 70)), (76, (8, 80)), (5, (1, 10)), (10**6, (1000, 10000))])
def test_search_finds_the_nearest_count(target, expected):
    calls = []

    def count(v):
        calls.append(v)
        return 10 * v

    assert search(count, range(1, 1001), target) == expected
    assert len(calls) <= 2 * 10 + 2  # gallop + bisection: logarithmic, not a scan


def test_search_stops_at_values_the_method_refuses():
    """Refused values (None) bound the search like counts above the target: the best accepted one wins."""
    assert search(lambda v: 10 * v if v <= 5 else None, range(1, 100), 1000) == (5, 50)
    with pytest.raises(ValueError, match="no value of the size knob is accepted"):
        search(lambda v: None, range(1, 10), 5)


def test_search_follows_the_given_order_for_knobs_that_shrink_the_count():
    """C3A-like: count = 1000 / b over block sizes listed largest first (growing count)."""
    assert search(lambda b: 1000 // b, [8, 4, 2, 1], 300) == (4, 250)


# ------------------------------------------------------------------------------------------ counting on meta
def test_meta_copy_has_the_same_modules_and_no_memory(tiny_llama):
    copy = meta_copy(tiny_llama)
    assert [n for n, _ in copy.named_parameters()] == [n for n, _ in tiny_llama.named_parameters()]
    assert all(p.device.type == "meta" for p in copy.parameters()) and all(b.device.type == "meta" for b in copy.buffers())
    assert all(p.device.type == "cpu" for p in tiny_llama.parameters())  # the original is untouched


def test_within_budget_includes_exactly_five_percent():
    assert within_budget(37_088, 39_040) and within_budget(40_992, 39_040)  # −5.0% and +5.0% exactly
    assert not within_budget(37_087, 39_040) and not within_budget(40_993, 39_040)


def test_lora_count_is_r_times_in_plus_out(tiny_llama):
    assert lora_count(tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 8) == LORA8
    assert lora_count(tiny_llama, ["q_proj"], 4) == 2 * 4 * 128


# ------------------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("name", ["lora", "lora_plus", "mora"])
def test_lora_and_mora_match_by_construction(tiny_llama, name):
    cfg, budget = match_budget(tiny_llama, MethodConfig(name=name, r=64, budget_r=8))
    assert cfg.r == 8 and cfg.budget_r is None and budget.value == 8 and budget.lora_count == LORA8
    model, _ = build(tiny_llama, MethodConfig(name=name, budget_r=8), lr=1e-3)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == budget.count and budget.within  # MoRA: r̂² ≈ r·(k + d), −3.8% here
    if name == "mora":
        assert isinstance(model, MoraModel) and model.parameter_counts()["lora_equivalent"] == LORA8


def test_asylora_trains_twice_the_rank(tiny_llama):
    """AsyLoRA trains B only (d × r): the budget of LoRA-8 needs r ≈ 16."""
    cfg, budget = match_budget(tiny_llama, MethodConfig(name="asylora", budget_r=8))
    assert cfg.r == 15 and budget.count == 15 * 2 * (4 * 64 + 2 * 172 + 64)


def test_match_budget_keeps_modules_to_save_out_of_the_count(tiny_llama):
    cfg, budget = match_budget(tiny_llama, MethodConfig(name="peft", peft_type="MISS", budget_r=8, modules_to_save=["lm_head"]))
    assert cfg.modules_to_save == ["lm_head"] and cfg.peft_kwargs == {"r": 15} and budget.count == 15 * 2 * 664


def test_budget_overrides_the_knob_given_in_peft_kwargs(tiny_llama):
    cfg, _ = match_budget(tiny_llama, MethodConfig(name="peft", peft_type="MISS", peft_kwargs={"r": 64, "mini_r": 1}, budget_r=8))
    assert cfg.peft_kwargs == {"r": 15, "mini_r": 1}


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(("options", "message"), [
    ({"name": "peft", "peft_type": "C3A"},
     r"^method.budget_r=8: peft_c3a cannot reach LoRA r=8's 19,520 trainable parameters within ±5% on this model: "
     r"its nearest, block_size=4, trains 24,704 \(\+26.6%\); set method.peft_kwargs.block_size yourself and drop method.budget_r$"),
    ({"name": "dora"}, r"dora cannot reach .* its nearest, r=7, trains 18,408 \(-5.7%\); set method.r yourself"),
    ({"name": "peft", "peft_type": "IA3"}, r"^method.budget_r=8: peft_ia3 has no size knob \(it trains a fixed 1,544 parameters"),
])
def test_unreachable_budgets_fail_with_one_line(tiny_llama, options, message):
    with pytest.raises(ValueError, match=message) as error:
        build(tiny_llama, MethodConfig(budget_r=8, **options), lr=1e-3)
    assert "\n" not in str(error.value)
    assert not any(p.device.type == "meta" for p in tiny_llama.parameters())


def test_build_prints_the_knob_and_the_count(tiny_llama, capsys):
    build(tiny_llama, MethodConfig(name="peft", peft_type="MISS", budget_r=8), lr=1e-3)
    assert capsys.readouterr().out == (
        "budget: peft_miss r=15 trains 19,920 adapter parameters = LoRA r=8's 19,520 +2.0% (±5% allowed)\n"
    )


def test_the_driver_refuses_an_unreachable_budget_before_training():
    """``mora-run`` checks the budget in its preflight, on a meta skeleton of the configured model: one
    ConfigError line (exit 2) before a run directory is touched."""
    from mora.config import ConfigError, validate
    from mora.preflight import check_method
    from mora.reproduce import compose_run

    check_method(validate(compose_run(["method=peft", "method.peft_type=MISS", "method.budget_r=8"])))
    with pytest.raises(ConfigError, match=r"^method.budget_r=8: peft_c3a cannot reach LoRA r=8's 39,040 "):
        check_method(validate(compose_run(["method=peft", "method.peft_type=C3A", "method.budget_r=8"])))
