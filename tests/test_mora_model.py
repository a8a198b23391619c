"""Model-level behaviour of ``MoraModel`` on a tiny random LLaMA (peft-style test names)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from mora.adapters import COMPRESSIONS, MoraConfig, MoraLinear, MoraModel, get_mora_model
from mora.adapters.config import CONFIG_NAME
from mora.adapters.model import WEIGHTS_NAME

ALL = sorted(COMPRESSIONS)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def mora_layers(model: nn.Module) -> list[MoraLinear]:
    return [m for m in model.modules() if isinstance(m, MoraLinear)]


def base_weights(model: MoraModel) -> dict[str, torch.Tensor]:
    return {name: layer.base_layer.weight.detach().clone() for name, layer in model.mora_layers().items()}


# ================================================================================ injection
def test_injects_every_llama_projection(tiny_llama):
    model = get_mora_model(tiny_llama, MoraConfig(r=8))
    layers = model.mora_layers()
    assert len(layers) == 2 * len(PROJECTIONS)
    assert {name.rsplit(".", 1)[-1] for name in layers} == set(PROJECTIONS)
    assert model.base_model is tiny_llama  # modified in place
    assert isinstance(tiny_llama.model.layers[0].self_attn.q_proj, MoraLinear)
    assert isinstance(tiny_llama.lm_head, nn.Linear) and not isinstance(tiny_llama.lm_head, MoraLinear)


@pytest.mark.parametrize("compression", ["rope", "sharing"])
def test_zero_init_is_noop(make_llama, input_ids, compression):
    expected = logits(make_llama(), input_ids)
    model = get_mora_model(make_llama(), MoraConfig(r=8, compression=compression))
    assert all(torch.count_nonzero(layer.M) == 0 for layer in mora_layers(model))
    assert torch.equal(logits(model, input_ids), expected)


def test_wrapping_an_eval_model_keeps_it_in_eval_mode(tiny_llama, input_ids, randomize):
    """Regression: new adapter modules used to start in training mode, so dropout (default 0.05) was
    active on a model the user had put in eval mode — evaluation became random."""
    assert not tiny_llama.training
    model = get_mora_model(tiny_llama, MoraConfig(r=8, dropout=0.5))
    assert not model.training
    assert not any(m.training for m in model.modules())
    randomize(model)
    assert torch.equal(logits(model, input_ids), logits(model, input_ids))
    model.train()
    assert all(layer.dropout.training for layer in mora_layers(model))
    with torch.no_grad():
        assert not torch.equal(model(input_ids=input_ids).logits, model(input_ids=input_ids).logits)


def test_wrapping_a_train_mode_model_keeps_it_in_train_mode(make_llama):
    model = get_mora_model(make_llama().train(), MoraConfig(r=8))
    assert model.training and all(layer.training for layer in mora_layers(model))


# ================================================================================ freezing / training
def test_only_mora_parameters_are_trainable(tiny_llama):
    model = get_mora_model(tiny_llama, MoraConfig(r=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(".M") for name in trainable)
    assert len(trainable) == 2 * len(PROJECTIONS)


def test_get_mora_model_freezes_base_one_adamw_step_changes_only_M(tiny_llama, input_ids):
    model = get_mora_model(tiny_llama, MoraConfig(r=8, compression="rope"))
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # All parameters go to the optimizer: freezing, not the optimizer's parameter list, must protect the base.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss = model(input_ids=input_ids, labels=input_ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if not name.endswith(".M"):
            assert p.grad is None, name
    optimizer.step()
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed_M = 0
    for key, value in before.items():
        if key.endswith(".M"):
            assert not torch.equal(value, after[key]), f"{key} did not train"
            changed_M += 1
        else:
            assert torch.equal(value, after[key]), f"frozen {key} changed"
    assert changed_M == 2 * len(PROJECTIONS)


# ================================================================================ merging
@pytest.mark.parametrize("compression", ALL)
def test_merge_matches_unmerged_forward(tiny_llama, input_ids, randomize, compression):
    model = randomize(get_mora_model(tiny_llama, MoraConfig(r=8, compression=compression)))
    unmerged = logits(model, input_ids)
    model.merge()
    assert all(layer.merged for layer in mora_layers(model))
    torch.testing.assert_close(logits(model, input_ids), unmerged, rtol=0, atol=1e-10)


def test_merge_is_idempotent(tiny_llama, input_ids, randomize):
    model = randomize(get_mora_model(tiny_llama, MoraConfig(r=8, compression="rope")))
    model.merge()
    once = base_weights(model)
    model.merge()
    twice = base_weights(model)
    assert all(torch.equal(once[name], twice[name]) for name in once)
    model.unmerge()
    model.unmerge()  # unmerging twice is a no-op too
    model.merge()
    torch.testing.assert_close(base_weights(model), once, rtol=0, atol=1e-12)


@pytest.mark.parametrize("compression", ["rope", "sharing", "sharing_contiguous"])
def test_unmerge_restores_base_weights(tiny_llama, input_ids, randomize, compression):
    model = randomize(get_mora_model(tiny_llama, MoraConfig(r=8, compression=compression)))
    original = base_weights(model)
    unmerged_logits = logits(model, input_ids)
    model.merge()
    merged = base_weights(model)
    assert all((merged[n] - original[n]).abs().max() > 1e-3 for n in original)  # the merge did something
    model.unmerge()
    assert not any(layer.merged for layer in mora_layers(model))
    for name, weight in base_weights(model).items():
        torch.testing.assert_close(weight, original[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(logits(model, input_ids), unmerged_logits, rtol=0, atol=1e-10)


def test_merge_and_unload_returns_plain_model(tiny_llama, input_ids, randomize):
    model = randomize(get_mora_model(tiny_llama, MoraConfig(r=8, compression="rope")))
    expected = logits(model, input_ids)
    plain = model.merge_and_unload()
    assert type(plain) is LlamaForCausalLM
    assert not mora_layers(plain)
    q_proj = plain.model.layers[0].self_attn.q_proj
    assert type(q_proj) is nn.Linear
    assert not any(name.endswith(".M") or "base_layer" in name for name, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain, input_ids), expected, rtol=0, atol=1e-10)


def test_merged_adapter_cannot_be_saved(tiny_llama, tmp_path):
    model = get_mora_model(tiny_llama, MoraConfig(r=8))
    model.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.save_pretrained(tmp_path)


# ================================================================================ disabling
def test_disable_adapters_unmerged(make_llama, input_ids, randomize):
    base = logits(make_llama(), input_ids)
    model = randomize(get_mora_model(make_llama(), MoraConfig(r=8)))
    adapted = logits(model, input_ids)
    assert (adapted - base).abs().max() > 1e-3
    with model.disable_adapters():
        assert torch.equal(logits(model, input_ids), base)
    assert not any(layer.disabled or layer.merged for layer in mora_layers(model))
    assert torch.equal(logits(model, input_ids), adapted)


def test_disable_adapters_merged(make_llama, input_ids, randomize):
    base = logits(make_llama(), input_ids)
    model = randomize(get_mora_model(make_llama(), MoraConfig(r=8)))
    model.merge()
    merged = logits(model, input_ids)
    with model.disable_adapters():
        assert not any(layer.merged for layer in mora_layers(model))
        # W + ΔW − ΔW: the base weights come back to float64 rounding, not bit for bit.
        torch.testing.assert_close(logits(model, input_ids), base, rtol=0, atol=1e-12)
    assert all(layer.merged and not layer.disabled for layer in mora_layers(model))
    torch.testing.assert_close(logits(model, input_ids), merged, rtol=0, atol=1e-12)


def test_disable_adapters_restores_state_after_an_exception(tiny_llama, randomize):
    model = randomize(get_mora_model(tiny_llama, MoraConfig(r=8)))
    with pytest.raises(KeyError), model.disable_adapters():
        raise KeyError("boom")
    assert not any(layer.disabled for layer in mora_layers(model))


# ================================================================================ save / load
@pytest.mark.parametrize("modules_to_save", [[], ["lm_head"], ["norm"]], ids=["none", "lm_head", "norm"])
def test_save_and_load_round_trip(make_llama, input_ids, randomize, tmp_path, modules_to_save):
    config = MoraConfig(r=8, compression="rope", modules_to_save=modules_to_save)
    trained = randomize(get_mora_model(make_llama(seed=0), config))
    full_names = [name for name, p in trained.named_parameters() if p.requires_grad and not name.endswith(".M")]
    if modules_to_save:
        assert full_names  # modules_to_save are trainable …
        with torch.no_grad():  # … and "trained" here, so the round trip must carry them
            for name, p in trained.named_parameters():
                if name in full_names:
                    p.add_(torch.randn_like(p) * 0.1)
    else:
        assert not full_names
    expected = logits(trained, input_ids)

    trained.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["compression"] == "rope" and saved["r"] == 8
    assert saved["modules_to_save"] == modules_to_save

    loaded = MoraModel.from_pretrained(make_llama(seed=0), tmp_path)
    assert loaded.mora_config == config
    assert torch.equal(logits(loaded, input_ids), expected)
    loaded_full = [name for name, p in loaded.named_parameters() if p.requires_grad and not name.endswith(".M")]
    assert loaded_full == full_names
    for (name, a), (_, b) in zip(trained.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name


def test_saved_file_holds_only_adapter_tensors(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    model = get_mora_model(tiny_llama, MoraConfig(r=8, modules_to_save=["lm_head"]))
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    m_keys = [k for k in tensors if k.endswith(".M")]
    assert len(m_keys) == 2 * len(PROJECTIONS)
    assert set(tensors) - set(m_keys) == {"lm_head.weight"}
    assert tensors["model.layers.0.self_attn.q_proj.M"].shape == (32, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=32, intermediate_size=86), "saved shape"),  # same layout, other r̂
        (dict(num_hidden_layers=1), "no place for"),  # saved layers the model lacks
        (dict(num_hidden_layers=3), "lacks"),  # model layers the file lacks
    ],
    ids=["other-width", "fewer-layers", "more-layers"],
)
def test_load_onto_mismatched_base_raises(make_llama, tmp_path, overrides, message):
    get_mora_model(make_llama(), MoraConfig(r=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        MoraModel.from_pretrained(make_llama(**overrides), tmp_path)


def test_load_from_a_directory_without_adapter_raises(tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        MoraModel.from_pretrained(tiny_llama, tmp_path)


# ================================================================================ bf16
def test_bf16_base_keeps_M_in_float32(make_llama, input_ids, randomize):
    base_bf16 = make_llama(dtype=torch.bfloat16)
    base_logits = logits(base_bf16, input_ids).double()
    model = get_mora_model(base_bf16, MoraConfig(r=8, compression="rope"))
    layers = mora_layers(model)
    assert all(layer.M.dtype == torch.float32 for layer in layers)
    assert all(layer.base_layer.weight.dtype == torch.bfloat16 for layer in layers)
    assert layers[0].compression.cos.dtype == torch.float32

    out = model(input_ids=input_ids, labels=input_ids)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    for layer in layers:
        assert layer.M.grad is not None and layer.M.grad.dtype == torch.float32
        assert torch.count_nonzero(layer.M.grad) > 0
        assert layer.base_layer.weight.grad is None
    model.zero_grad(set_to_none=True)

    randomize(model, scale=0.01)
    unmerged = logits(model, input_ids).double()
    effect = (unmerged - base_logits).norm()
    assert effect > 1.0  # the adapter visibly changes the logits …
    model.merge()
    merged = logits(model, input_ids).double()
    assert merged.dtype == torch.float64 and all(layer.base_layer.weight.dtype == torch.bfloat16 for layer in layers)
    # … and the merged bf16 model reproduces that change up to bf16 rounding.
    assert (merged - unmerged).norm() < 0.05 * effect
    assert (merged - unmerged).abs().max() < 3e-2


# ================================================================================ bad configs
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), "positive integer"),
        (dict(r=-1), "positive integer"),
        (dict(compression="nope"), "rope"),
        (dict(compression=6), "'rope'"),
    ],
)
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoraConfig(**kwargs)


def test_unmatched_target_modules_raises_and_lists_the_linear_modules(tiny_llama):
    with pytest.raises(ValueError) as info:
        get_mora_model(tiny_llama, MoraConfig(target_modules=["foo"]))
    message = str(info.value)
    assert "'foo'" in message
    for name in PROJECTIONS + ("lm_head",):
        assert name in message


def test_non_linear_target_raises_type_error(tiny_llama):
    with pytest.raises(TypeError, match=r"mlp .*LlamaMLP.*nn\.Linear"):
        get_mora_model(tiny_llama, MoraConfig(target_modules=["mlp"]))


def test_unmatched_modules_to_save_raises(tiny_llama):
    with pytest.raises(ValueError, match="modules_to_save"):
        get_mora_model(tiny_llama, MoraConfig(modules_to_save=["head_that_does_not_exist"]))


@pytest.mark.parametrize(
    "config",
    [
        MoraConfig(target_modules=["q_proj", "mlp"]),  # q_proj matches first, then the bad match
        MoraConfig(target_modules=["q_proj"], modules_to_save=["nothing_here"]),
    ],
    ids=["non-linear", "bad-modules-to-save"],
)
def test_failed_injection_leaves_the_model_untouched(make_llama, input_ids, config):
    """Regression: a bad config used to raise after some layers were already wrapped and the whole
    model frozen; retrying with a fixed config then failed on the half-wrapped model."""
    model = make_llama()
    with pytest.raises((TypeError, ValueError)):
        get_mora_model(model, config)
    assert not mora_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    fixed = get_mora_model(model, MoraConfig(target_modules=["q_proj"]))
    assert len(fixed.mora_layers()) == 2


def test_regex_target_modules(tiny_llama, input_ids):
    model = get_mora_model(tiny_llama, MoraConfig(r=8, target_modules=r".*\.(q_proj|v_proj)"))
    names = sorted(model.mora_layers())
    assert names == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert type(tiny_llama.model.layers[0].self_attn.k_proj) is nn.Linear
    assert logits(model, input_ids).shape == (*input_ids.shape, 100)


def test_regex_must_match_the_whole_path(tiny_llama):
    with pytest.raises(ValueError, match="matched no module"):
        get_mora_model(tiny_llama, MoraConfig(target_modules=r"q_proj"))  # fullmatch, not search


# ================================================================================ forwarding
def test_attribute_lookups_reach_the_base_model(make_llama, input_ids):
    model = get_mora_model(make_llama(), MoraConfig(r=8))
    assert model.config is model.base_model.config
    assert model.config.vocab_size == 100
    assert model.get_input_embeddings() is model.base_model.model.embed_tokens
    with pytest.raises(AttributeError):
        model.definitely_not_an_attribute  # noqa: B018

    prompt = input_ids[:, :4]
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        generated = model.generate(prompt, **kwargs)
        expected = make_llama().generate(prompt, **kwargs)  # zero-init adapter: same tokens as the base
    assert generated.shape == (2, 6)
    assert torch.equal(generated[:, :4], prompt)
    assert torch.equal(generated, expected)
