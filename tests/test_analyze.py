"""``mora.analyze``: singular values, ranks and effective ranks of ΔW — on matrices whose spectrum is known,
on adapter models (LoRA's rank never exceeds r; MoRA rope's exceeds r̂), and on tiny finished runs (the
trainer's own analysis, ``mora-analyze`` from disk, and the bit-exact rebuild of the initial model)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from mora import analyze
from mora.adapters import MoraConfig, get_mora_model, square_rank
from mora.analyze import effective_rank, numerical_rank, relative_rank, singular_values


def orthonormal(n: int, m: int, seed: int) -> torch.Tensor:
    """An n × m matrix with orthonormal columns (m ≤ n)."""
    q, _ = torch.linalg.qr(torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def with_spectrum(sigma: list[float], d: int, k: int, seed: int = 0) -> torch.Tensor:
    """A d × k matrix U diag(σ) Vᵀ with random orthonormal U, V: its singular values are exactly ``sigma``."""
    s = torch.tensor(sigma, dtype=torch.float64)
    return orthonormal(d, len(sigma), seed) @ torch.diag(s) @ orthonormal(k, len(sigma), seed + 1).T


# ================================================================================ known spectra
@pytest.mark.parametrize("d, k", [(40, 70), (70, 40), (32, 32)])
def test_singular_values_recover_a_known_spectrum_batched(d, k):
    spectra = [[5.0, 4.0, 1.0, 0.5, 1e-3], [9.0, 3.0, 3.0, 2.0, 1.0]]
    stack = torch.stack([with_spectrum(s, d, k, seed=i) for i, s in enumerate(spectra)]).float()
    sigma = singular_values(stack)
    assert sigma.shape == (2, min(d, k)) and sigma.dtype == torch.float64
    for row, expected in zip(sigma, spectra):
        assert torch.allclose(row[:5], torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
        assert row[5:].abs().max() < 1e-5  # the rest is zero up to float32 noise
    # the same as an SVD in float64, for an arbitrary matrix
    a = torch.randn(d, k, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(singular_values(a), torch.linalg.svdvals(a.double()), rtol=1e-6, atol=1e-9)


def test_effective_rank_of_known_spectra():
    n = 16
    assert effective_rank(singular_values(torch.eye(n))).item() == pytest.approx(n)
    assert effective_rank(singular_values(3.0 * torch.eye(n))).item() == pytest.approx(n)  # scale-free
    rank_one = torch.outer(torch.arange(1.0, 11.0), torch.ones(7))
    assert effective_rank(singular_values(rank_one)).item() == pytest.approx(1.0, abs=1e-6)
    # two equal directions and nothing else: 2; a spectrum (2, 1, 1): exp(1.5·log 2) = 2^1.5
    assert effective_rank(singular_values(with_spectrum([1.0, 1.0], 9, 12))).item() == pytest.approx(2.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(2 ** 1.5)
    # nothing learned: 0, not NaN
    assert effective_rank(singular_values(torch.zeros(5, 8))).item() == 0.0
    # batched along the last dimension
    assert effective_rank(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist() == pytest.approx([3.0, 1.0])


def test_numerical_and_relative_rank_follow_their_rules():
    generator = torch.Generator().manual_seed(0)
    for r in (1, 3, 17):  # float32 products of rank r: their float noise sits far below max(d,k)·eps·σ_max
        a = torch.randn(48, r, generator=generator) @ torch.randn(r, 80, generator=generator)
        assert numerical_rank(singular_values(a), (48, 80)).item() == r
    assert numerical_rank(singular_values(torch.eye(20)), (20, 20)).item() == 20
    assert numerical_rank(singular_values(torch.zeros(4, 6)), (4, 6)).item() == 0
    # relative rank: σ at 2% of σ_max counts, at 0.5% it does not (though both are numerically there)
    sigma = singular_values(with_spectrum([1.0, 0.3, 0.02, 0.005], 30, 30).float())
    assert relative_rank(sigma).item() == 3
    assert numerical_rank(sigma, (30, 30)).item() == 4


# ================================================================================ ΔW of adapter models
def deltas(model, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), initial=None):
    return dict(analyze.delta_weights(model, list(targets), initial))


def merged_minus_base(model) -> dict[str, torch.Tensor]:
    """What merging really adds, layer by layer, from a merged copy of ``model``."""
    merged = copy.deepcopy(model).merge_and_unload()
    base = {n: m.weight for n, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}
    out = {}
    for name, module in analyze._hf_model(model).named_modules():
        layer = getattr(module, "base_layer", None)
        if isinstance(layer, torch.nn.Linear) and name in base:
            out[name] = (base[name] - layer.weight).float()
    return out


@pytest.mark.parametrize("kind", ["lora", "dora", "mora_rope", "mora_sharing"])
def test_delta_weight_is_the_merged_weight_minus_the_base(make_llama, randomize, kind):
    model = make_llama(dtype=torch.float32)
    if kind.startswith("mora"):
        model = get_mora_model(model, MoraConfig(r=4, compression=kind.split("_")[1], dropout=0.0))
    else:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_dora=kind == "dora"))
    randomize(model, scale=0.2)
    got, expected = deltas(model), merged_minus_base(model)
    assert set(got) == set(expected) and got
    for name in got:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name


def test_lora_delta_rank_never_exceeds_r(make_llama, randomize):
    r = 4
    model = get_peft_model(make_llama(dtype=torch.float32), LoraConfig(
        r=r, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    randomize(model, scale=0.5)
    analysis = analyze.analyze(analyze.delta_weights(model, []))
    assert len(analysis["layers"]) == 14
    assert [layer["numerical_rank"] for layer in analysis["layers"]] == [r] * 14  # random A, B: exactly r
    assert all(layer["effective_rank"] <= r + 1e-9 for layer in analysis["layers"])
    assert analysis["overall"]["numerical_rank"] == r


def test_mora_rope_delta_rank_exceeds_its_square_rank_and_sharing_does_not(make_llama, randomize):
    r = 1  # hidden 64: r̂ = 10 for q_proj (rope: even), so up to 7 rotated blocks of M on its diagonal
    ranks = {}
    for compression in ("rope", "sharing"):
        model = randomize(get_mora_model(make_llama(dtype=torch.float32), MoraConfig(r=r, compression=compression, dropout=0.0)))
        layers = analyze.analyze(analyze.delta_weights(model, []))["layers"]
        ranks[compression] = {layer["name"]: (layer["numerical_rank"], square_rank(layer["shape"][1], layer["shape"][0], r, compression))
                              for layer in layers}
    q = "model.layers.0.self_attn.q_proj"
    assert ranks["rope"][q] == (64, 10)  # full rank: 64 ≫ r̂ = 10
    assert all(rank <= r_hat for rank, r_hat in ranks["sharing"].values())
    assert sum(rank > r_hat for rank, r_hat in ranks["rope"].values()) == 14  # every rope layer beats r̂


def test_full_fine_tuning_delta_is_the_weight_change(make_llama):
    model = make_llama(dtype=torch.float32)
    initial = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    step = torch.outer(torch.ones(64), torch.arange(172.0)) * 1e-3  # a rank-1 change of down_proj (64 × 172)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight += step
    got = deltas(model, ["q_proj", "down_proj"], initial)
    assert sorted(got) == sorted(initial)
    assert torch.allclose(got["model.layers.1.mlp.down_proj"], step, atol=1e-7)  # (W + step) − W, rounded
    assert not got["model.layers.0.self_attn.q_proj"].any()
    summary = analyze.analyze(iter(got.items()))
    by_name = {layer["name"]: layer for layer in summary["layers"]}
    assert by_name["model.layers.1.mlp.down_proj"]["numerical_rank"] == 1
    assert by_name["model.layers.0.self_attn.q_proj"]["effective_rank"] == 0.0
    assert summary["by_type"]["down_proj"] == {"shape": [64, 172], "layers": 2, "max_rank": 64, "numerical_rank": 0.5,
                                               "relative_rank": 0.5, "effective_rank": pytest.approx(0.5, abs=1e-4)}


def test_no_adapted_layer_is_an_error(make_llama):
    with pytest.raises(ValueError, match="no adapted layer"):
        analyze.analyze(analyze.delta_weights(make_llama(), ["q_proj"]))


# ================================================================================ finished runs
TINY_RUN = [
    "task.num_pairs=8", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=0", "train.eval_at=[]",
    "train.log_every=1", "train.max_steps=4", "train.save_every=2", "method.dropout=0", "launcher.cpu_threads=1",
    "optim.lr=1e-2",
]


def train_tiny(tmp_path, monkeypatch, *overrides: str):
    """Train a tiny run in this process, as ``mora-run`` would (frozen config.yaml, then the trainer); returns
    (run dir, config, every parameter of the model as the trainer built it, before training)."""
    from omegaconf import OmegaConf

    from mora import train as trainer
    from mora.config import validate
    from mora.reproduce import compose_run

    built, load_model = {}, trainer.load_model

    def load_model_and_keep_its_weights(cfg, tokenizer):
        model = load_model(cfg, tokenizer)
        built.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return model

    monkeypatch.setattr(trainer, "load_model", load_model_and_keep_its_weights)
    cfg = validate(compose_run([*TINY_RUN, *overrides]))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    OmegaConf.save(cfg, run_dir / "config.yaml")
    trainer.train(cfg, run_dir)
    return run_dir, cfg, built


@pytest.mark.slow
def test_full_fine_tuning_run_rebuilds_its_initial_model_bit_for_bit(tmp_path, monkeypatch):
    run_dir, cfg, built = train_tiny(tmp_path, monkeypatch, "method=fft")
    rebuilt = analyze.initial_weights(cfg)
    assert len(rebuilt) == 14
    assert all(torch.equal(rebuilt[name], built[f"{name}.weight"]) for name in rebuilt)
    # the trainer analysed the run at its end: spectra in analysis.json, only the summary in result.json
    analysis = json.loads((run_dir / "analysis.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["analysis"] == {"by_type": analysis["by_type"], "overall": analysis["overall"]}
    assert set(result["analysis"]["by_type"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert result["analysis"]["by_type"]["gate_proj"]["shape"] == [344, 128]
    assert analysis["method"] == "fft" and analysis["r"] is None and len(analysis["layers"]) == 14
    assert all(len(layer["singular_values"]) == min(layer["shape"]) for layer in analysis["layers"])
    assert 1 < result["analysis"]["overall"]["effective_rank"] <= 128
    assert_reanalysis_from_disk_matches(run_dir, analysis)
    # one layer's spectrum, exported to a small JSON, and its plot drawn from that JSON alone
    layer = "model.layers.1.mlp.down_proj"
    out = tmp_path / "spectrum.json"
    assert analyze.main(["--spectrum", layer, "--spectrum-json", str(out), "--spectrum-png", str(tmp_path / "s.png"), str(run_dir)]) == 0
    spectra = json.loads(out.read_text())
    expected = next(entry for entry in analysis["layers"] if entry["name"] == layer)
    assert spectra["layer"] == layer and [(run["label"], run["method"]) for run in spectra["runs"]] == [("FFT", "fft")]
    assert spectra["runs"][0]["shape"] == [128, 344] and spectra["runs"][0]["numerical_rank"] == expected["numerical_rank"]
    assert analyze.plot_delta_spectrum(out, tmp_path / "again.png").stat().st_size > 10_000
    assert analyze.main(["--spectrum", "model.nothing", "--spectrum-json", str(out), str(run_dir)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("method=mora", "method.compression=rope"),
    ("method=lora",),
    ("method=remora", "method.restart_every=2", "method.restart_warmup=1"),  # folds into W, cycles the compression
], ids=["mora", "lora", "remora"])
def test_mora_analyze_of_a_finished_run_matches_the_trainers_analysis(tmp_path, monkeypatch, overrides):
    run_dir, _, _ = train_tiny(tmp_path, monkeypatch, *overrides)
    analysis = json.loads((run_dir / "analysis.json").read_text())
    ranks = [layer["numerical_rank"] for layer in analysis["layers"]]
    if overrides[0] == "method=lora":
        assert max(ranks) <= 8  # the LoRA update of rank r = 8 (conf/method/lora.yaml)
    if overrides[-1] == "method.compression=rope":
        assert analysis["by_type"]["q_proj"]["numerical_rank"] > square_rank(128, 128, 8, "rope")
    assert_reanalysis_from_disk_matches(run_dir, analysis)


def assert_reanalysis_from_disk_matches(run_dir, analysis: dict) -> None:
    """``mora-analyze run_dir`` (the model rebuilt from config.yaml and final/ or the last checkpoint)
    gives the spectra the trainer computed on the live model."""
    assert analyze.main([str(run_dir)]) == 0
    again = json.loads((run_dir / "analysis.json").read_text())
    assert [layer["name"] for layer in again["layers"]] == [layer["name"] for layer in analysis["layers"]]
    for ours, theirs in zip(again["layers"], analysis["layers"]):
        assert ours["numerical_rank"] == theirs["numerical_rank"], ours["name"]
        assert torch.allclose(torch.tensor(ours["singular_values"]), torch.tensor(theirs["singular_values"]),
                              rtol=1e-4, atol=1e-6 * max(theirs["singular_values"][0], 1e-12)), ours["name"]


def test_mora_analyze_refuses_a_directory_that_is_no_finished_run(tmp_path, capsys):
    assert analyze.main([str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err
