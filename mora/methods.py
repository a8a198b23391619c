"""Every method the suite trains, built by one factory: ``build(model, MethodConfig(...), lr)``.

=============  ===========================================================================================
``fft``        full fine-tuning: every weight trains (the paper's upper reference).
``lora``       LoRA (Hu et al., 2021) through **peft**: ΔW = (α/r)·B A, A kaiming-uniform, B zero.
``lora_plus``  LoRA+ (Hayou et al., 2024): the same adapter, B trained with λ times the LR of A; the
               groups are peft's own (``peft.optimizers.create_loraplus_optimizer``).
``dora``       DoRA (Liu et al., 2024): peft's LoRA with ``use_dora=True`` — a trained magnitude per output
               row times the direction of W + ΔW.
``asylora``    AsyLoRA (Zhu et al., 2024, "Asymmetry in low-rank adapters"): A frozen at a random
               orthonormal matrix, only B (zero-init) trains — half of LoRA's trained numbers.
``mora``       MoRA (Jiang et al., 2024): one square matrix M between parameter-free compress/decompress
               operators (:mod:`mora.adapters`).
``peft``       any other peft adapter of linear layers, named by ``peft_type`` (:data:`PEFT_TYPES`: MiSS,
               GraLoRA, HiRA, RandLoRA, C3A, SHiRA, VeRA, LoKr, ...) and configured by ``peft_kwargs``; it
               trains, saves, loads and merges through peft itself.
=============  ===========================================================================================

``budget_r`` sizes any adapter method to LoRA-r's trainable count (:mod:`mora.budget`).

ReLoRA / ReMoRA are ``lora`` / ``mora`` with ``restart_every > 0``: the trainer folds the adapter into
the weights every ``restart_every`` steps (:mod:`mora.restarts`).

Every method returns a :class:`Trainable`: the model to train and AdamW parameter groups that each carry
an explicit ``lr`` and ``weight_decay``, so one optimizer and one ``LambdaLR`` serve all methods (a
schedule multiplies each group's own initial LR, keeping LoRA+'s λ ratio).
"""

from __future__ import annotations

import copy
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, NamedTuple, Sequence

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.optimizers import create_loraplus_optimizer
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .adapters import COMPRESSIONS, LLAMA_TARGET_MODULES, MoraConfig, MoraLinear, MoraModel, find_modules, get_mora_model

METHODS = ("fft", "lora", "lora_plus", "dora", "asylora", "mora", "peft")
#: The methods that can merge-and-reset during training: ReLoRA and ReMoRA.
RESTARTABLE = ("lora", "mora")
#: Wrappers whose checkpoints are written in peft's own adapter format.
PEFT_MODEL_TYPES = (PeftModel,)


# ------------------------------------------------------------------------------------------ peft's other methods
Layers = Sequence[tuple[int, int]]  # (in_features, out_features) of every adapted layer


def _sizes(layers: Layers, kwargs: dict) -> range:
    """1, 2, 3, ...: knobs whose trainable count grows with the value (a rank, a number of coefficients)."""
    return range(1, max(k * d for k, d in layers) + 1)


def _multiples_of(field_name: str, default: int) -> Callable[[Layers, dict], range]:
    """k, 2k, 3k, ...: GraLoRA's rank must be a multiple of its number of sub-blocks per side."""
    return lambda layers, kwargs: range(kwargs.get(field_name, default), max(k * d for k, d in layers) + 1, kwargs.get(field_name, default))


def _fewer_bases(layers: Layers, kwargs: dict) -> range:
    """RandLoRA's rank r counts *down* its trained numbers: min(k, d)/r random bases, each with r + min(k, d)
    trained scales, so a smaller r trains more (down to r = 1).  Ordered by growing count."""
    return range(min(min(k, d) for k, d in layers), 0, -1)


def _block_sizes(layers: Layers, kwargs: dict) -> list[int]:
    """C3A's block size b divides every side of every layer and trains d·k/b numbers: the divisors of their
    gcd, largest (fewest numbers) first."""
    g = math.gcd(*(side for layer in layers for side in layer))
    return [b for b in range(g, 0, -1) if g % b == 0]


@dataclass(frozen=True)
class PeftMethod:
    """How the factory drives one of peft's adapter types.

    Args:
        title: the method's name as its paper writes it (tables, plots).
        knob: the field of its peft config that sets its size, which ``budget_r`` searches (None: a fixed size).
        values: the knob's values to search, ordered by growing trainable count, given the adapted layers'
            (in, out) shapes and the user's ``peft_kwargs``; values peft refuses end the search.
        dropout: its field for dropout on the adapter input, which ``method.dropout`` sets (None: it has none).
        alpha: its scale numerator (scale = alpha / knob); when the knob is set and ``peft_kwargs`` gives no
            alpha, alpha follows the knob at peft's default ratio, so a budget keeps peft's default scale.
        zero_init: peft's default initialisation leaves the model's outputs unchanged (ΔW = 0 or an identity).
        lora_rank: the knob is a LoRA rank by construction (it trains knob·(k + d) per layer): no search.
    """

    title: str
    knob: str | None
    values: Callable[[Layers, dict], Sequence[int]] = _sizes
    dropout: str | None = None
    alpha: str | None = None
    zero_init: bool = True
    lora_rank: bool = False


#: The peft types ``method=peft`` accepts: adapters of linear layers whose merge, save and load peft
#: implements.  Left out: prompt-learning types (no linear layers), LN_TUNING / TRAINABLE_TOKENS / BEFT (norm,
#: embedding, bias tuning), ADALORA (needs the trainer to call its rank allocator every step), XLORA / POLY
#: (mixtures of adapters), LILY (cannot merge) and LORA itself (``method=lora`` / ``dora`` / ...).
PEFT_TYPES: dict[str, PeftMethod] = {
    "MISS": PeftMethod("MiSS", "r", dropout="miss_dropout"),  # ΔW: one r × d block shared by the input groups (Bone)
    "GRALORA": PeftMethod("GraLoRA", "r", _multiples_of("gralora_k", 2), dropout="gralora_dropout", alpha="alpha"),
    "HIRA": PeftMethod("HiRA", "r", dropout="hira_dropout"),  # ΔW = W₀ ⊙ (B A)
    "RANDLORA": PeftMethod("RandLoRA", "r", _fewer_bases, dropout="randlora_dropout", alpha="randlora_alpha"),
    "C3A": PeftMethod("C3A", "block_size", _block_sizes, zero_init=False),  # block-circulant ΔW; xavier init
    "SHIRA": PeftMethod("SHiRA", "r", lora_rank=True),  # a sparse set of r·(k + d) entries of W
    "VERA": PeftMethod("VeRA", "r", dropout="vera_dropout"),  # shared frozen random A, B; trained scaling vectors
    "LOKR": PeftMethod("LoKr", "r", alpha="alpha"),  # Kronecker product of a small and a low-rank factor
    "LOHA": PeftMethod("LoHa", "r", alpha="alpha"),  # Hadamard product of two low-rank updates
    "DELORA": PeftMethod("DeLoRA", "r"),  # normalised LoRA with a bounded learnable scale
    "HRA": PeftMethod("HRA", "r"),  # r Householder reflections of W
    "OFT": PeftMethod("OFT", "oft_block_size"),  # block-diagonal orthogonal rotation of W
    "FOURIERFT": PeftMethod("FourierFT", "n_frequency", zero_init=False),  # n trained Fourier coefficients of ΔW
    "WAVEFT": PeftMethod("WaveFT", "n_frequency"),  # n trained wavelet coefficients of ΔW
    "IA3": PeftMethod("IA³", None),  # a learned scale per output
}
#: Fields of a peft config that the factory sets itself.
_FACTORY_FIELDS = {f.name for f in fields(PeftConfig)} | {"target_modules", "modules_to_save"}


def peft_config_class(peft_type: str) -> type[PeftConfig]:
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


def peft_kwargs_fields(peft_type: str) -> list[str]:
    """The fields of ``peft_type``'s config that ``method.peft_kwargs`` may set."""
    spec = PEFT_TYPES[peft_type]
    owned = _FACTORY_FIELDS | {spec.dropout}
    return sorted(f.name for f in fields(peft_config_class(peft_type)) if f.name not in owned)


def peft_config(cfg: "MethodConfig", modules_to_save: list[str] | None = None) -> PeftConfig:
    """``cfg``'s peft config: its ``peft_kwargs`` over peft's defaults, plus the suite's targets and dropout."""
    spec, cls = PEFT_TYPES[cfg.peft_type], peft_config_class(cfg.peft_type)
    kwargs = dict(cfg.peft_kwargs)
    if spec.dropout:
        kwargs[spec.dropout] = cfg.dropout
    if spec.alpha and spec.knob in kwargs and spec.alpha not in kwargs:
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        kwargs[spec.alpha] = defaults[spec.alpha] / defaults[spec.knob] * kwargs[spec.knob]
    return cls(task_type="CAUSAL_LM", target_modules=list(cfg.target_modules), modules_to_save=modules_to_save or None, **kwargs)


@dataclass
class MethodConfig:
    """Which method trains, and its knobs (also the Hydra schema of ``conf/method/*.yaml``).

    Args:
        name: one of :data:`METHODS`.
        r: LoRA rank; for MoRA the LoRA rank whose parameter budget M matches (r̂² ≈ r·(k+d)).
        alpha: LoRA-family scaling numerator (ΔW = alpha/r · B A).  The paper: 16 at r=8, 128 at r=256.
            MoRA has no scaling and ignores it.
        dropout: dropout on the adapter input (all adapter methods; official default 0.05).
        target_modules: the ``nn.Linear`` modules that get an adapter (names matched against the end of
            each module path); the paper adapts all seven LLaMA projections.
        compression: MoRA only — ``rope`` at small r, ``sharing`` at large r (see :mod:`mora.adapters`).
        loraplus_ratio: LoRA+ only — λ = lr_B / lr_A (the paper searched 2 and 4).
        modules_to_save: modules trained in full beside the adapters, e.g. ``["embed_tokens", "norm",
            "lm_head"]`` in the pretraining runs.
        restart_every: ReLoRA/ReMoRA merge-and-reset period in optimizer steps; 0 = never.
        restart_warmup: steps over which the LR is re-warmed after each restart (ReLoRA: 50).
        cycle_compression: ReMoRA — switch the compression after each restart
            (:data:`mora.restarts.REMORA_CYCLE`).
        peft_type: ``name=peft`` only — which peft adapter (a key of :data:`PEFT_TYPES`, any case).
        peft_kwargs: ``name=peft`` only — fields of that type's peft config (e.g. ``{r: 64}`` for MiSS,
            ``{block_size: 8}`` for C3A); unset fields keep peft's defaults.  ``method.r`` and
            ``method.alpha`` do not apply to peft types.
        budget_r: size the method to LoRA-``budget_r``'s trainable count (±5%): the method's size knob
            (``r`` for the LoRA family and MoRA, :attr:`PeftMethod.knob` for peft types) is chosen when the
            method is built (:mod:`mora.budget`), overriding ``r`` or the knob in ``peft_kwargs``.
    """

    name: str = "mora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGET_MODULES))
    compression: str = "rope"
    loraplus_ratio: float = 4.0
    modules_to_save: list[str] = field(default_factory=list)
    restart_every: int = 0
    restart_warmup: int = 50
    cycle_compression: bool = False
    peft_type: str | None = None
    peft_kwargs: dict[str, Any] = field(default_factory=dict)
    budget_r: int | None = None

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; set method.name to one of {list(METHODS)}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"method.r must be a positive integer (the adapter rank), got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"method.alpha must be > 0 (LoRA scales B A by alpha/r), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("method.target_modules is empty; name the nn.Linear modules to adapt, e.g. [q_proj, v_proj]")
        if self.name == "mora" and self.compression not in COMPRESSIONS:
            raise ValueError(f"unknown MoRA compression {self.compression!r}; set method.compression to one of {sorted(COMPRESSIONS)}")
        if not (math.isfinite(self.loraplus_ratio) and self.loraplus_ratio >= 1.0):
            raise ValueError(f"method.loraplus_ratio (λ = lr_B / lr_A) must be ≥ 1, got {self.loraplus_ratio}; the paper used 2 or 4")
        if self.restart_every < 0 or self.restart_warmup < 0:
            raise ValueError("method.restart_every and method.restart_warmup must be ≥ 0 (restart_every=0: no restarts)")
        if self.restart_every and self.name not in RESTARTABLE:
            raise ValueError(f"method {self.name!r} cannot restart; set method.restart_every=0 (ReLoRA is name=lora, ReMoRA name=mora)")
        if self.restart_every and self.restart_warmup >= self.restart_every:
            raise ValueError(f"method.restart_warmup={self.restart_warmup} must be < method.restart_every={self.restart_every}")
        if self.cycle_compression and not (self.name == "mora" and self.restart_every):
            raise ValueError("method.cycle_compression is ReMoRA's: it needs name=mora and restart_every > 0")
        if self.budget_r is not None and (isinstance(self.budget_r, bool) or self.budget_r <= 0):
            raise ValueError(f"method.budget_r must be a positive LoRA rank (or null), got {self.budget_r!r}")
        if self.budget_r and self.name == "fft":
            raise ValueError("method.budget_r does not apply to fft (every weight trains); drop it")
        if self.name == "peft":
            self._check_peft()
        elif self.peft_type or self.peft_kwargs:
            raise ValueError(f"method.peft_type and method.peft_kwargs are for method=peft, not {self.name!r}")

    def _check_peft(self) -> None:
        """The type must be one of :data:`PEFT_TYPES` and every kwarg a field its peft config accepts."""
        if not self.peft_type or str(self.peft_type).upper() not in PEFT_TYPES:
            raise ValueError(f"unknown method.peft_type {self.peft_type!r}; set it to one of {sorted(PEFT_TYPES)}")
        self.peft_type = self.peft_type.upper()
        valid = peft_kwargs_fields(self.peft_type)
        if unknown := sorted(set(self.peft_kwargs) - set(valid)):
            raise ValueError(f"method.peft_kwargs: {', '.join(unknown)} not accepted for peft_type={self.peft_type} "
                             f"(targets, modules_to_save and dropout come from method.*); valid: {', '.join(valid)}")
        try:
            peft_config(self)
        except (ValueError, TypeError) as e:
            raise ValueError(f"method.peft_kwargs={self.peft_kwargs} rejected by "
                             f"{peft_config_class(self.peft_type).__name__}: {' '.join(str(e).split())}") from None

    @property
    def label(self) -> str:
        """The short run-name fragment: ``mora_rope``, ``lora_plus``, ``relora``, ``remora``, ``peft_miss``, ``fft``, ..."""
        if self.restart_every:
            return "re" + self.name
        if self.name == "mora":
            return f"mora_{self.compression}"
        if self.name == "peft":
            return f"peft_{self.peft_type.lower()}"
        return self.name

    @property
    def size(self) -> str | None:
        """The run-name fragment of the method's size: ``b8`` with a budget, ``r8`` for the LoRA family and
        MoRA, None for ``fft`` and for peft types (whose ``peft_kwargs`` name themselves)."""
        if self.budget_r:
            return f"b{self.budget_r}"
        return None if self.name in ("fft", "peft") else f"r{self.r}"


class Trainable(NamedTuple):
    """What :func:`build` returns: the model to train and its AdamW parameter groups (each with lr, weight_decay)."""

    model: nn.Module
    param_groups: list[dict]


def build(model: nn.Module, cfg: MethodConfig, lr: float, weight_decay: float = 0.0) -> Trainable:
    """Attach ``cfg``'s method to ``model`` (in place) and group its trainable parameters for AdamW.

    peft methods return a ``PeftModelForCausalLM``, ``mora`` a :class:`~mora.adapters.MoraModel`, ``fft``
    the model itself.  A target that matches no module raises the same one-line ``ValueError`` for
    every method, listing the ``nn.Linear`` names that do exist.  With ``cfg.budget_r`` the size knob is
    chosen first (:func:`mora.budget.match_budget`, printed), or a one-line ``ValueError`` says the method
    cannot reach the budget.
    """
    if cfg.name == "fft":
        model.requires_grad_(True)
        return Trainable(model, _param_groups(model, lr, weight_decay))
    if cfg.budget_r:
        from .budget import match_budget  # it counts candidates by calling build: imported here, not at the top

        cfg, budget = match_budget(model, cfg)
        print(budget.describe(), flush=True)
    modules_to_save = check_targets(model, cfg)
    if cfg.name == "peft":
        model = get_peft_model(model, peft_config(cfg, modules_to_save))
        return Trainable(model, _param_groups(model, lr, weight_decay))
    if cfg.name == "mora":
        config = MoraConfig(
            r=cfg.r, compression=cfg.compression, target_modules=list(cfg.target_modules),
            dropout=cfg.dropout, modules_to_save=modules_to_save,
        )
        model = get_mora_model(model, config)
        return Trainable(model, _param_groups(model, lr, weight_decay))

    model = get_peft_model(model, LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        modules_to_save=modules_to_save or None, use_dora=cfg.name == "dora", task_type="CAUSAL_LM",
    ))
    if cfg.name == "asylora":
        _freeze_orthonormal_A(model)
    if cfg.name == "lora_plus":
        return Trainable(model, _loraplus_groups(model, lr, cfg.loraplus_ratio, weight_decay))
    return Trainable(model, _param_groups(model, lr, weight_decay))


def check_targets(model: nn.Module, cfg: MethodConfig) -> list[str]:
    """Check the patterns before any injection, with one message for all methods; return the full paths
    of ``modules_to_save``.

    Both lists follow one rule (:func:`mora.adapters.module_matches`: a name matches a path's end at a
    dot).  peft matches ``modules_to_save`` by bare suffix — "norm" would also take every
    "input_layernorm" — so it is handed the resolved full paths instead of the patterns.
    """
    targets = find_modules(model, list(cfg.target_modules), what="method.target_modules")
    if wrong := next((n for n, m in targets.items() if not isinstance(m, nn.Linear)), None):
        raise ValueError(
            f"method.target_modules={list(cfg.target_modules)!r} matched {wrong} ({type(targets[wrong]).__name__}); "
            "adapters wrap nn.Linear modules only — name projections such as q_proj, not their parent blocks"
        )
    if not cfg.modules_to_save:
        return []
    return list(find_modules(model, list(cfg.modules_to_save), what="method.modules_to_save"))


def _param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay, vectors (norm weights, biases, DoRA magnitudes) do not (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _loraplus_groups(model: PeftModel, lr: float, ratio: float, weight_decay: float) -> list[dict]:
    """LoRA+ groups exactly as peft builds them, captured by handing it an "optimizer" that keeps its groups.

    peft's rule (0.21): ``lora_B`` weights **and every 1-D trainable parameter** (DoRA magnitudes, norm
    weights of ``modules_to_save``) get lr·λ; everything else (``lora_A``, full matrices of
    ``modules_to_save``) gets lr.  Its weight decay comes from the ``loraplus_weight_decay`` keyword
    (biases and ``nn.LayerNorm`` weights get none).  Empty groups are dropped.
    """

    class Capture:
        def __init__(self, groups: list[dict], **defaults):
            self.param_groups = groups

    captured = create_loraplus_optimizer(
        model, Capture, lr=lr, loraplus_lr_ratio=ratio, loraplus_weight_decay=weight_decay
    )
    return [g for g in captured.param_groups if g["params"]]


@torch.no_grad()
def _freeze_orthonormal_A(model: PeftModel) -> None:
    """AsyLoRA's initialisation: every ``lora_A`` (r × k) becomes the first r right-singular vectors of a
    centred uniform matrix — orthonormal rows, A Aᵀ = I — and is frozen; B stays zero and trains.

    Drawn from torch's global RNG.  The official MoRA script sets A this way but leaves it trainable;
    AsyLoRA's point is that A needs no training, so here it is frozen (requires_grad False).
    """
    for layer in _lora_layers(model):
        for adapter in layer.lora_A:
            weight = layer.lora_A[adapter].weight
            r, k = weight.shape
            noise = (torch.rand(r, k) - 0.5).double()
            weight.copy_(torch.linalg.svd(noise, full_matrices=False).Vh[:r])
            weight.requires_grad_(False)


def _lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def parameter_report(model: nn.Module) -> dict:
    """What a result JSON records about the trained parameters.

    ``trainable`` and ``total`` numbers; for adapter models ``rank_summary``, the side of the trained
    matrices per layer shape ``"<in>x<out>"`` — r̂ for MoRA, r for the LoRA family — and for MoRA
    ``lora_equivalent``, what LoRA of the same r on the same layers would train; for other peft types
    ``peft``: the type and its size knob, e.g. ``{"type": "MISS", "r": 15}``.
    """
    if isinstance(model, MoraModel):
        return {**model.parameter_counts(), "rank_summary": model.rank_summary()}
    params = list(model.parameters())
    report = {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}
    if layers := _lora_layers(model):
        report["rank_summary"] = {f"{m.in_features}x{m.out_features}": m.r[a] for m in layers for a in m.r}
    elif isinstance(model, PeftModel) and (peft_type := model.active_peft_config.peft_type.value) in PEFT_TYPES:
        knob = PEFT_TYPES[peft_type].knob
        report["peft"] = {"type": peft_type, **({knob: getattr(model.active_peft_config, knob)} if knob else {})}
    return report


def checkpoint_parameters(model: nn.Module, cfg: MethodConfig) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold to resume ``model`` (keyed like ``model.state_dict()``).

    The trainable parameters, and — with restarts, which fold updates into the "frozen" weights — the
    base weights of every adapted layer, which then no longer equal those the model was built from.
    """
    adapted = {id(m.base_layer.weight) for m in model.modules() if isinstance(m, MoraLinear)}
    adapted |= {id(m.get_base_layer().weight) for m in _lora_layers(model)}
    keep_base = bool(cfg.restart_every)
    return {n: p for n, p in model.named_parameters() if p.requires_grad or (keep_base and id(p) in adapted)}


@torch.no_grad()
def peft_delta_weight(layer: BaseTunerLayer) -> torch.Tensor:
    """ΔW of any peft adapter layer (d × k, in the base weight's dtype): what peft's own merge adds to W,
    taken from a merged copy so ``layer`` stays unmerged.  Works for every type, additive (B A, W₀ ⊙ B A,
    circulant, sparse, Fourier) or multiplicative (OFT's and HRA's rotations, IA3's scales), which have no
    additive ``get_delta_weight`` of their own.  Copies the layer once: meant for analysis, not training."""
    if layer.merged:
        raise ValueError("the layer is merged; take ΔW of the unmerged model (it would count twice)")
    merged = copy.deepcopy(layer)
    merged.merge()
    return merged.get_base_layer().weight - layer.get_base_layer().weight


def merge_for_eval(model: nn.Module) -> nn.Module:
    """The plain Hugging Face model with the adapter merged into its weights (``fft``: the model itself).

    **In place**: the adapter wrapper is consumed (its base weights now hold W + ΔW and the adapter
    modules are gone), so call it once training is over.  Copying a 7B model to avoid that is not cheap.
    """
    if isinstance(model, (MoraModel, PeftModel)):
        return model.merge_and_unload()
    return model
