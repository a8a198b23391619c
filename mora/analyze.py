"""The rank of what a run learned: the singular values of every adapted layer's update ΔW.

The paper's thesis is that LoRA's update is low-rank (rank ≤ r) and MoRA's is not.  This measures it on
trained models, for every method, on the same layers (``method.target_modules``)::

    mora-analyze runs/<name>              # or: python -m mora.analyze runs/<name> [runs/<other> ...]
    # → a per-layer-type table on stdout, runs/<name>/analysis.json (every layer's spectrum) and an
    #   "analysis" summary in runs/<name>/result.json (per layer type and overall; no spectra)
    mora-analyze --spectrum model.layers.0.self_attn.q_proj runs/<a> runs/<b> ...
    # → also that layer's spectra in results/runs/delta_spectrum.json (committed) and their plot,
    #   results/delta_spectrum.png (plot_delta_spectrum re-draws it from the JSON alone)

The trainer runs the same analysis at its end (``train.analyze: true``, the default; rank 0).

**ΔW, the merged weight minus the base weight** (d × k, float32):

* MoRA: :meth:`MoraLinear.delta_weight` (vectorised; exactly what ``merge()`` adds).
* peft's LoRA family (LoRA, LoRA+, AsyLoRA, DoRA): peft's own merge of the layer, without mutating it —
  ``get_delta_weight`` for LoRA, the variant's ``merge_safe`` minus W for DoRA (whose merged weight
  rescales every row, so its ΔW is not B A).
* peft's other types (``method=peft``): a merged copy of the layer minus W
  (:func:`mora.methods.peft_delta_weight`; multiplicative ones like OFT have no additive ΔW of their own).
* Everything that moves W itself — full fine-tuning, and ReLoRA/ReMoRA, which fold their updates into W
  at every restart — the weight now (plus any live adapter update) minus the weight the run started from.
  That initial model is rebuilt from the run's frozen config exactly as :func:`mora.train.train` built it
  (``transformers.set_seed(train.seed)``, then :func:`mora.models.load_model`); the tests check that the
  rebuild equals the run's frozen weights bit for bit.

**Three ranks** of each ΔW, from its singular values σ₁ ≥ … ≥ σₘ (m = min(d, k)):

* ``numerical_rank``: #{σᵢ > max(d, k) · ε · σ₁} with ε the float32 machine epsilon — the rule of
  ``torch.linalg.matrix_rank`` and ``numpy.linalg.matrix_rank`` for a float32 matrix (ΔW is float32).
  What the matrix *can* express: LoRA's never exceeds r.
* ``relative_rank``: #{σᵢ > 10⁻² · σ₁}, the directions holding at least 1% of the largest one: robust to
  the float noise that makes a full fine-tuning update numerically full-rank.
* ``effective_rank`` (Roy & Vetterli, 2007): exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ / Σⱼ σⱼ — how many directions
  the update really spreads over (n for the identity of size n, 1 for a rank-1 matrix, between for the
  rest).  0 for ΔW = 0 (nothing learned), where it is otherwise undefined.

**Speed.** Layers of one shape are stacked and their singular values computed in one batch, as the square
roots of the eigenvalues of the float64 Gram matrix of the shorter side (``torch.linalg.eigvalsh``).  On
this 2-core CPU at one thread, a 4096 × 11008 float32 ΔW takes 12 s this way against 65 s for
``torch.linalg.svdvals`` in float32, and is more accurate: the eigenvalues are exact to ~1e-16 · σ₁², so σ
to ~1e-8 · σ₁, far below the float32 rank tolerance (≥ 2.4e-7 · σ₁ for any shape) — the same ranks, and
singular values at least as good as float32's own SVD.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from .adapters import MoraLinear, MoraModel, module_matches
from .methods import peft_delta_weight

SCHEMA_VERSION = 1
ANALYSIS_FILE = "analysis.json"
#: the relative threshold of ``relative_rank``: singular values above this fraction of the largest
RELATIVE_RTOL = 1e-2
#: ΔW is judged at float32 precision, whatever dtype it was computed in
EPS = torch.finfo(torch.float32).eps
#: at most this many bytes of float64 copies of ΔW per batched eigen-decomposition
BATCH_BYTES = 1 << 30
RULES = {
    "numerical_rank": "number of singular values > max(d, k) · eps(float32) · σ_max (torch/numpy matrix_rank's rule)",
    "relative_rank": f"number of singular values > {RELATIVE_RTOL:g} · σ_max",
    "effective_rank": "exp of the entropy of σ / Σσ (Roy & Vetterli 2007); 0 when ΔW = 0",
}


# ---------------------------------------------------------------------------------------------- spectra
def singular_values(matrices: Tensor) -> Tensor:
    """Singular values (float64, descending) of a stack of matrices (..., d, k): the square roots of the
    eigenvalues of the float64 Gram matrix of the shorter side (see the module docstring for why)."""
    a = matrices.to(torch.float64)
    gram = a @ a.mT if a.shape[-2] <= a.shape[-1] else a.mT @ a
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)


def numerical_rank(sigma: Tensor, shape: tuple[int, int]) -> Tensor:
    """#{σ > max(d, k)·ε·σ_max} along the last dimension (ε: float32's)."""
    return (sigma > max(shape) * EPS * sigma[..., :1]).sum(-1)


def relative_rank(sigma: Tensor, rtol: float = RELATIVE_RTOL) -> Tensor:
    """#{σ > rtol·σ_max} along the last dimension."""
    return (sigma > rtol * sigma[..., :1]).sum(-1)


def effective_rank(sigma: Tensor) -> Tensor:
    """exp(entropy of σ/Σσ) along the last dimension (Roy & Vetterli 2007); 0 where every σ is 0."""
    total = sigma.sum(-1, keepdim=True)
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


# ---------------------------------------------------------------------------------------------- ΔW
def _hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside an adapter wrapper, so layer names read alike for every method
    (``model.layers.0.self_attn.q_proj``)."""
    if isinstance(model, MoraModel):
        return model.base_model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _peft_delta(layer: LoraLayer, weight: Tensor) -> Tensor:
    """What peft's merge adds to ``weight`` for the layer's active adapters, without merging."""
    if layer.merged:
        raise ValueError("the LoRA layers are merged; analyse the unmerged model (ΔW would count twice)")
    delta = torch.zeros_like(weight, dtype=torch.float32)
    for adapter in layer.active_adapters:
        if adapter in layer.lora_variant:  # DoRA: merged = (magnitude / ‖W + ΔW‖) ⊙ (W + ΔW)
            merged = layer.lora_variant[adapter].merge_safe(layer, adapter, weight.detach().clone())
            delta += (merged - weight).float()
        else:
            delta += layer.get_delta_weight(adapter).float()
    return delta


@torch.no_grad()
def delta_weights(model: nn.Module, targets: list[str], initial: dict[str, Tensor] | None = None) -> Iterator[tuple[str, Tensor]]:
    """``(layer name, ΔW)`` for every adapted layer of ``model`` (float32, on the layer's device).

    Adapter layers (MoRA, peft LoRA family) give their adapter's update; with ``initial`` (layer name →
    the weight the run started from) the change of the base weight since then is added — the whole update
    of full fine-tuning (where the ``targets`` patterns pick the layers) and of ReLoRA/ReMoRA restarts.
    """
    for name, module in _hf_model(model).named_modules():
        if isinstance(module, MoraLinear):
            if module.merged:
                raise ValueError(f"{name} is merged; analyse the unmerged model (ΔW would count twice)")
            weight, delta = module.base_layer.weight, module.delta_weight().float()
        elif isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = _peft_delta(module, weight)
        elif isinstance(module, BaseTunerLayer):  # method=peft: MiSS, C3A, HiRA, OFT, ... (peft's own merge)
            weight = module.get_base_layer().weight
            delta = peft_delta_weight(module).float()
        elif isinstance(module, nn.Linear) and initial is not None and module_matches(name, targets):
            weight, delta = module.weight, torch.zeros(module.weight.shape, device=module.weight.device)
        else:
            continue
        if initial is not None:
            delta += weight.float() - initial[name].to(weight.device).float()
        yield name, delta


def needs_initial_weights(method: DictConfig) -> bool:
    """Whether ΔW needs the weights the run started from: full fine-tuning and restarts move W itself."""
    return method.name == "fft" or bool(method.restart_every)


def initial_weights(cfg: DictConfig) -> dict[str, Tensor]:
    """The targeted layers' weights as the run started, rebuilt (on the CPU) from its config exactly as
    :func:`mora.train.train` built the model: ``set_seed(train.seed)``, tokenizer, ``load_model``."""
    from transformers import set_seed

    from .models import load_model, load_tokenizer

    set_seed(cfg.train.seed)
    model = load_model(cfg.model, load_tokenizer(cfg.model))
    targets = list(cfg.method.target_modules)
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear) and module_matches(n, targets)}


# ---------------------------------------------------------------------------------------------- analysis
@torch.no_grad()
def analyze(deltas: Iterator[tuple[str, Tensor]]) -> dict:
    """Spectra and ranks of every ``(name, ΔW)``, batched by shape; returns the ``layers`` list (in the
    order given) and the ``by_type`` / ``overall`` summaries of :func:`summarize`."""
    started = time.perf_counter()
    by_shape: dict[tuple[int, int], list[tuple[str, Tensor]]] = defaultdict(list)
    order = []
    for name, delta in deltas:
        by_shape[tuple(delta.shape)].append((name, delta))
        order.append(name)
    if not order:
        raise ValueError("no adapted layer found: nothing to analyse")
    layers = {}
    for shape, items in by_shape.items():
        per_batch = max(1, BATCH_BYTES // (8 * shape[0] * shape[1]))
        for i in range(0, len(items), per_batch):
            chunk = items[i:i + per_batch]
            stack = torch.stack([delta for _, delta in chunk])
            sigma = singular_values(stack)
            ranks = numerical_rank(sigma, shape), relative_rank(sigma), effective_rank(sigma)
            norms = stack.double().square().sum((-2, -1)).sqrt()
            for j, (name, _) in enumerate(chunk):
                layers[name] = {
                    "name": name, "type": name.rsplit(".", 1)[-1], "shape": list(shape),
                    "numerical_rank": int(ranks[0][j]), "relative_rank": int(ranks[1][j]),
                    "effective_rank": float(ranks[2][j]), "fro_norm": float(norms[j]),
                    "singular_values": [float(f"{s:.6g}") for s in sigma[j].tolist()],
                }
    result = {"layers": [layers[name] for name in order], **summarize([layers[name] for name in order])}
    result["svd_s"] = time.perf_counter() - started
    return result


def summarize(layers: list[dict]) -> dict:
    """``{"by_type": {type: {shape, layers, max_rank, numerical_rank, relative_rank, effective_rank}},
    "overall": {...}}``: means over the layers of each type (``q_proj``, ``down_proj``, ...) and over all."""
    def means(group: list[dict]) -> dict:
        shapes = sorted({tuple(layer["shape"]) for layer in group})
        return {
            "shape": list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes],
            "layers": len(group),
            "max_rank": max(min(s) for s in shapes),
            **{key: sum(layer[key] for layer in group) / len(group) for key in ("numerical_rank", "relative_rank", "effective_rank")},
        }

    types: dict[str, list[dict]] = defaultdict(list)
    for layer in layers:
        types[layer["type"]].append(layer)
    return {"by_type": {t: means(group) for t, group in types.items()}, "overall": means(layers)}


def analyze_model(model: nn.Module, cfg: DictConfig, initial: dict[str, Tensor] | None = None) -> dict:
    """The analysis of a trained ``model`` built by run config ``cfg`` (``initial``: see
    :func:`delta_weights`; rebuilt from ``cfg`` when the method needs it and none is given)."""
    moves_w = needs_initial_weights(cfg.method)
    if initial is None and moves_w:
        initial = initial_weights(cfg)
    method = OmegaConf.to_object(cfg.method)
    return {
        "schema": SCHEMA_VERSION, "method": method.label, "r": None if method.name == "fft" else method.r,
        "delta": "weight now minus the rebuilt initial weight" if moves_w else "the adapter's merge update (merged minus base weight)",
        "rules": RULES,
        **analyze(delta_weights(model, list(method.target_modules), initial)),
    }


def record(run_dir: str | Path, analysis: dict) -> dict:
    """Write ``run_dir/analysis.json`` (named after the run) and add the summary (``by_type``, ``overall``;
    no spectra) to ``run_dir/result.json`` under ``"analysis"``, both atomically; return the updated result."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    result = json.loads(result_file.read_text())
    _write_json(run_dir / ANALYSIS_FILE, {"name": result["name"], **analysis})
    result["analysis"] = {key: analysis[key] for key in ("by_type", "overall")}
    _write_json(result_file, result)
    return result


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- finished runs
def load_trained(run_dir: str | Path) -> tuple[DictConfig, nn.Module, dict[str, Tensor] | None]:
    """Rebuild a finished run's trained model from ``run_dir``: ``(config, model, initial weights or None)``.

    The base model is rebuilt from the frozen config as the trainer built it; the trained state comes from
    ``final/`` (the adapter, or the FFT model), or — for ReLoRA/ReMoRA, whose ``final/`` adapter lacks the
    updates folded into W — from the last checkpoint, which must be the run's last step.
    """
    from transformers import AutoModelForCausalLM, set_seed

    from . import methods
    from .config import validate
    from .models import DTYPES, load_model, load_tokenizer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "result.json").is_file():
        raise ValueError(f"{run_dir} is not a finished run (needs config.yaml and result.json; train it with mora-run)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    method = OmegaConf.to_object(cfg.method)
    set_seed(cfg.train.seed)
    model = load_model(cfg.model, load_tokenizer(cfg.model))
    initial = None
    if needs_initial_weights(cfg.method):
        targets = list(method.target_modules)
        initial = {n: m.weight.detach().clone() for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and module_matches(n, targets)}
    final = run_dir / "final"
    if method.restart_every:
        model = methods.build(model, method, lr=cfg.optim.lr).model
        _load_restart_checkpoint(model, method, run_dir)
    elif method.name == "fft":
        model = AutoModelForCausalLM.from_pretrained(final, dtype=DTYPES[cfg.model.dtype])
    elif method.name == "mora":
        model = MoraModel.from_pretrained(model, final)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, final)
    return cfg, model.eval(), initial


def _load_restart_checkpoint(model: nn.Module, method, run_dir: Path) -> None:
    """Load the last (lean) checkpoint of a ReLoRA/ReMoRA run into ``model`` and put each ReMoRA layer on
    the compression it had reached (one step of the cycle per restart, as :class:`~mora.callbacks.AdapterRestarts`)."""
    from safetensors.torch import load_file

    from .methods import checkpoint_parameters
    from .restarts import next_compression
    from .train import last_checkpoint

    checkpoint = last_checkpoint(run_dir / "checkpoints")
    state = json.loads(Path(checkpoint, "trainer_state.json").read_text()) if checkpoint else {}
    if not state or state["global_step"] != state["max_steps"]:
        raise ValueError(f"{run_dir}: a restart run is analysed from its last checkpoint, which must be its final "
                         f"step; found {checkpoint or 'none'} (rerun the run to write it)")
    tensors = load_file(str(Path(checkpoint) / "model.safetensors"))
    missing = sorted(set(checkpoint_parameters(model, method)) - set(tensors))
    if missing:
        raise ValueError(f"{checkpoint} lacks {len(missing)} tensors of this model, e.g. {missing[:2]}")
    model.load_state_dict(tensors, strict=False)
    if method.cycle_compression:
        restarts = len(range(method.restart_every, state["max_steps"], method.restart_every))
        for layer in (m for m in model.modules() if isinstance(m, MoraLinear)):
            for _ in range(restarts):
                layer.set_compression(next_compression(layer.compression_name))


def analyze_run_dir(run_dir: str | Path) -> dict:
    """Analyse a finished run from disk, :func:`record` it, and return the analysis."""
    cfg, model, initial = load_trained(run_dir)
    analysis = analyze_model(model, cfg, initial)
    record(run_dir, analysis)
    return analysis


# ---------------------------------------------------------------------------------------------- one layer, several runs
#: the committed spectra behind ``results/delta_spectrum.png`` (``mora-analyze --spectrum LAYER RUN_DIR...``)
SPECTRUM_JSON = Path(__file__).resolve().parent.parent / "results" / "runs" / "delta_spectrum.json"


def export_spectra(run_dirs: list[str | Path], layer: str) -> dict:
    """The spectrum and ranks of ``layer`` in each analysed run (from its ``analysis.json``), with the run's
    method label and rank — the small, committable data of :func:`plot_delta_spectrum`."""
    from .tables.common import method_label

    runs = []
    for run_dir in map(Path, run_dirs):
        analysis = json.loads((run_dir / ANALYSIS_FILE).read_text())
        found = [entry for entry in analysis["layers"] if entry["name"] == layer]
        if not found:
            names = ", ".join(entry["name"] for entry in analysis["layers"][:3])
            raise ValueError(f"{run_dir} has no adapted layer {layer!r} (its layers: {names}, ...)")
        config = json.loads((run_dir / "result.json").read_text())["config"]
        runs.append({"run": analysis["name"], "experiment": config.get("experiment"), "label": method_label(config),
                     "method": analysis["method"], "r": analysis["r"], "lr": config["optim"]["lr"],
                     **{k: v for k, v in found[0].items() if k != "name"}})
    return {"layer": layer, "rules": RULES, "runs": runs}


def plot_delta_spectrum(spectra: dict | str | Path, out_png: str | Path) -> Path:
    """Plot one layer's normalised spectra (σᵢ / σ₁ against i, log scale) of several runs side by side, and
    the cumulative share of Σσ each keeps (where a line reaches 1 is the rank; how fast, the effective rank).
    ``spectra``: what :func:`export_spectra` returns, or the JSON file it was saved to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(spectra, dict):
        spectra = json.loads(Path(spectra).read_text())
    fig, (norm_ax, share_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(spectra["runs"]):
        sigma = torch.tensor(run["singular_values"], dtype=torch.float64)
        index = torch.arange(1, len(sigma) + 1)
        label = (run["label"] + (f" r={run['r']}" if run["r"] is not None else "")
                 + f": rank {run['numerical_rank']}, effective {run['effective_rank']:.1f}")
        norm_ax.plot(index, sigma / sigma[0], color=f"C{i}", label=label)  # log scale: exact zeros are left out
        share_ax.plot(index, sigma.cumsum(0) / sigma.sum(), color=f"C{i}", label=label)
    shape = spectra["runs"][0]["shape"]
    norm_ax.axhline(max(shape) * EPS, color="0.5", linestyle=":", linewidth=1, label="numerical-rank tolerance (below: float noise)")
    norm_ax.axhline(RELATIVE_RTOL, color="0.5", linestyle="--", linewidth=1, label=f"{RELATIVE_RTOL:g} · σ₁")
    norm_ax.set_yscale("log")
    norm_ax.set_xlabel("index i")
    norm_ax.set_ylabel("σᵢ / σ₁")
    share_ax.set_xlabel("index i")
    share_ax.set_ylabel("Σⱼ≤ᵢ σⱼ / Σ σ")
    for ax in (norm_ax, share_ax):
        ax.grid(alpha=0.3)
    norm_ax.legend(fontsize=8)
    fig.suptitle(f"Singular values of the learned update ΔW of {spectra['layer']} ({shape[0]}×{shape[1]})")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


# ---------------------------------------------------------------------------------------------- output
def summary_table(analysis: dict) -> str:
    """The per-layer-type summary as a fixed-width text table."""
    header = f"{'layer type':<12} {'d×k':>11} {'layers':>6} {'max rank':>8} {'numerical':>9} {'>1% σmax':>8} {'effective':>9}"
    lines = [header, "-" * len(header)]
    rows = [*analysis["by_type"].items(), ("all", analysis["overall"])]
    for name, s in rows:
        shape = "×".join(map(str, s["shape"])) if isinstance(s["shape"][0], int) else "mixed"
        lines.append(f"{name:<12} {shape:>11} {s['layers']:>6} {s['max_rank']:>8} {s['numerical_rank']:>9.1f} "
                     f"{s['relative_rank']:>8.1f} {s['effective_rank']:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mora-analyze",
        description="The singular values, numerical rank and effective rank of the update ΔW of every adapted "
                    "layer of finished runs; writes runs/<name>/analysis.json and a summary into result.json.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished run, e.g. runs/uuid-mora_rope-r8-lr3e-4-s42")
    parser.add_argument("--spectrum", metavar="LAYER", help="also save LAYER's spectrum in every run given (e.g. "
                        "model.layers.0.self_attn.q_proj) to --spectrum-json, and plot them side by side")
    parser.add_argument("--spectrum-json", type=Path, default=SPECTRUM_JSON, help="default: %(default)s")
    parser.add_argument("--spectrum-png", type=Path, default=SPECTRUM_JSON.parent.parent / "delta_spectrum.png",
                        help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.run_dirs:
            analysis = analyze_run_dir(run_dir)
            print(f"{Path(run_dir).name} ({analysis['method']}; ΔW = {analysis['delta']}; spectra in {analysis['svd_s']:.2f} s)")
            print(summary_table(analysis))
            print(f"wrote {Path(run_dir, ANALYSIS_FILE)} and the summary in {Path(run_dir, 'result.json')}\n")
        if args.spectrum:
            spectra = export_spectra(args.run_dirs, args.spectrum)
            args.spectrum_json.parent.mkdir(parents=True, exist_ok=True)
            _write_json(args.spectrum_json, spectra)
            print(f"wrote {args.spectrum_json} and {plot_delta_spectrum(spectra, args.spectrum_png)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"mora-analyze: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
