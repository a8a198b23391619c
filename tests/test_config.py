"""``square_rank`` and ``MoraConfig``: the size of M, validation, persistence and the parameter budget."""

from __future__ import annotations

import json
import math

import pytest

from mora.adapters import LLAMA_TARGET_MODULES, MoraConfig, get_mora_model, square_rank
from mora.adapters.config import CONFIG_NAME


# ================================================================================ square_rank
@pytest.mark.parametrize(
    "k, d, r, compression, expected",
    [
        (4096, 4096, 8, "rope", 256),  # LLaMA-2-7B q/k/v/o at r=8
        (4096, 4096, 8, "sharing", 256),
        (4096, 11008, 8, "sharing", 348),  # gate/up at r=8
        (4096, 11008, 8, "rope", 348),
        (11008, 4096, 8, "rope", 348),  # down at r=8
        (4096, 4096, 256, "sharing", 1448),  # r=256: sqrt(2,097,152) = 1448.15
        (4096, 11008, 256, "sharing", 1966),  # sqrt(3,866,624) = 1966.37
    ],
)
def test_square_rank_llama_values(k, d, r, compression, expected):
    assert square_rank(k, d, r, compression) == expected


def test_square_rank_rounds_half_up_not_floor():
    # (32 + 80) · 2 = 224 → sqrt = 14.967: the code's int(x + 0.5) gives 15 where the paper's floor gives 14.
    assert math.floor(math.sqrt(224)) == 14
    assert square_rank(32, 80, 2, "sharing") == 15


def test_rope_rounds_down_to_even():
    # (64 + 64) · 1 = 128 → sqrt = 11.31 → 11, odd: sharing keeps 11, rope takes 10.
    odd = square_rank(64, 64, 1, "sharing")
    assert odd == 11 and odd % 2 == 1
    assert square_rank(64, 64, 1, "rope") == odd - 1
    # decouple (the blockwise ablation without rotation) has no pairs and keeps the odd value.
    assert square_rank(64, 64, 1, "decouple") == odd
    # an already even value is untouched
    assert square_rank(4096, 11008, 8, "rope") == square_rank(4096, 11008, 8, "sharing") == 348


@pytest.mark.parametrize("bad_r", [0, -1, -8, 2.5, 8.0, "8", None, True, False])
def test_bad_rank_raises_value_error(bad_r):
    with pytest.raises(ValueError, match="positive integer"):
        square_rank(64, 64, bad_r, "rope")
    with pytest.raises(ValueError, match="positive integer"):
        MoraConfig(r=bad_r)


def test_unknown_compression_raises_and_lists_the_choices():
    for where in (lambda: square_rank(64, 64, 8, "nope"), lambda: MoraConfig(compression="nope")):
        with pytest.raises(ValueError) as info:
            where()
        message = str(info.value)
        assert "'nope'" in message
        for name in ("rope", "sharing", "decouple", "truncation"):
            assert name in message


@pytest.mark.parametrize("code_type, word", [(1, "sharing"), (6, "rope")])
def test_integer_compression_raises_and_names_the_word(code_type, word):
    """The official code's integers are refused; the message says which name to use instead."""
    with pytest.raises(ValueError) as info:
        MoraConfig(compression=code_type)
    assert f"{code_type}→'{word}'" in str(info.value)
    with pytest.raises(ValueError, match=word):
        square_rank(64, 64, 8, code_type)


def test_tiny_rank_that_rounds_to_zero_for_rope_raises():
    # (1 + 1) · 1 = 2 → r̂ = 1, and rope rounds 1 down to 0: refused with the fix ("raise r").
    assert square_rank(1, 1, 1, "sharing") == 1
    with pytest.raises(ValueError, match="raise r"):
        square_rank(1, 1, 1, "rope")


# ================================================================================ MoraConfig
def test_config_defaults_follow_the_official_code():
    config = MoraConfig()
    assert config.r == 8
    assert config.compression == "rope"
    assert config.target_modules == list(LLAMA_TARGET_MODULES)
    assert len(LLAMA_TARGET_MODULES) == 7
    assert config.dropout == 0.05
    assert config.modules_to_save == []


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout_raises(dropout):
    with pytest.raises(ValueError, match="dropout"):
        MoraConfig(dropout=dropout)


@pytest.mark.parametrize("targets", [[], ""])
def test_empty_target_modules_raises(targets):
    with pytest.raises(ValueError, match="target_modules"):
        MoraConfig(target_modules=targets)


def test_tuple_target_modules_become_a_list():
    assert MoraConfig(target_modules=("q_proj", "v_proj")).target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "config",
    [
        MoraConfig(),
        MoraConfig(r=256, compression="sharing", target_modules=["q_proj", "v_proj"], dropout=0.0),
        MoraConfig(r=4, compression="sharing_contiguous_out", target_modules=r".*\.(q|v)_proj", modules_to_save=["lm_head"]),
    ],
    ids=["default", "sharing256", "regex"],
)
def test_config_json_round_trip(tmp_path, config):
    config.save(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["adapter_type"] == "mora"
    assert data["compression"] == config.compression and isinstance(data["compression"], str)
    assert MoraConfig.load(tmp_path) == config


def test_config_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        MoraConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(ValueError, match="not describe a MoRA adapter"):
        MoraConfig.load(tmp_path)


# ================================================================================ parameter budget
#: LLaMA-2-7B's adapted projections as (in, out); 32 decoder layers.  Shapes only — nothing is allocated.
LLAMA2_7B_PROJECTIONS = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (4096, 11008),
    "up_proj": (4096, 11008),
    "down_proj": (11008, 4096),
}
LLAMA2_7B_LAYERS = 32


def _budget(r: int, compression: str) -> tuple[int, int]:
    mora = lora = 0
    for _ in range(LLAMA2_7B_LAYERS):
        for k, d in LLAMA2_7B_PROJECTIONS.values():
            mora += square_rank(k, d, r, compression) ** 2
            lora += r * (k + d)
    return mora, lora


@pytest.mark.parametrize("compression", ["rope", "sharing"])
@pytest.mark.parametrize("r", [8, 256])
def test_llama2_7b_budget_matches_lora_within_one_percent(r, compression):
    mora, lora = _budget(r, compression)
    assert abs(mora / lora - 1) < 0.01


def test_llama2_7b_budget_exact_counts():
    # r=8: LoRA 8·(4·8192 + 3·15104)·32; MoRA 32·(4·256² + 3·348²)
    assert _budget(8, "rope") == _budget(8, "sharing") == (20_014_592, 19_988_480)
    # r=256: MoRA 32·(4·1448² + 3·1966²) (both even, so rope = sharing)
    assert _budget(256, "rope") == _budget(256, "sharing") == (639_433_088, 639_631_360)


def _tiny_layer_shapes():
    """(in, out) of every adapted projection of the tiny LLaMA (hidden 64, intermediate 172, 2 layers)."""
    per_layer = [(64, 64)] * 4 + [(64, 172), (64, 172), (172, 64)]
    return per_layer * 2


@pytest.mark.parametrize("compression", ["rope", "sharing"])
def test_tiny_model_parameter_counts(tiny_llama, compression):
    base_total = sum(p.numel() for p in tiny_llama.parameters())
    model = get_mora_model(tiny_llama, MoraConfig(r=8, compression=compression))
    counts = model.parameter_counts()
    shapes = _tiny_layer_shapes()
    expected_mora = sum(square_rank(k, d, 8, compression) ** 2 for k, d in shapes)
    expected_lora = sum(8 * (k + d) for k, d in shapes)
    assert counts["trainable"] == expected_mora
    assert counts["lora_equivalent"] == expected_lora == 19_520
    assert counts["total"] == base_total + expected_mora
    # 64↔172 layers: r̂ = 43 for sharing, 42 for rope (even); 64×64: r̂ = 32 for both.
    assert expected_mora == {"sharing": 2 * (4 * 32**2 + 3 * 43**2), "rope": 2 * (4 * 32**2 + 3 * 42**2)}[compression]
    assert model.rank_summary() == {"64x64": 32, "64x172": 43 - (compression == "rope"), "172x64": 43 - (compression == "rope")}


def test_tiny_model_parameter_counts_with_modules_to_save(tiny_llama, capsys):
    model = get_mora_model(tiny_llama, MoraConfig(r=8, compression="sharing", modules_to_save=["lm_head"]))
    counts = model.parameter_counts()
    lm_head = 100 * 64
    mora = sum(square_rank(k, d, 8, "sharing") ** 2 for k, d in _tiny_layer_shapes())
    assert counts["trainable"] == mora + lm_head
    assert counts["lora_equivalent"] == 19_520 + lm_head
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert f"trainable params: {mora + lm_head:,}" in printed
    assert f"{19_520 + lm_head:,}" in printed
