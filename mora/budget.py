"""Budget matching: size any adapter method to what LoRA of rank r trains on the same layers.

    mora-run method=peft method.peft_type=MISS method.budget_r=8
    # budget: peft_miss r=15 trains 19,920 adapter parameters = LoRA r=8's 19,520 +2.0% (±5% allowed)

LoRA of rank r trains r·(k + d) numbers on a k → d layer; the budget is that sum over the target layers.
Each method has one size knob (``r`` for the LoRA family and MoRA, :attr:`mora.methods.PeftMethod.knob`
for peft's types: MiSS's ``r``, C3A's ``block_size``, FourierFT's ``n_frequency``, ...):

* LoRA, LoRA+, ReLoRA, MoRA, ReMoRA and SHiRA match by construction — their knob *is* the LoRA rank
  (MoRA: r̂² ≈ r·(k + d), SHiRA: r·(k + d) entries) — so the knob is ``budget_r``;
* every other method is built for candidate knob values on a copy of the model on the meta device (no
  memory, no weights) and its trainable adapter parameters counted; the value whose count is nearest the
  budget is kept if within ±5% (:data:`TOLERANCE`), else a one-line ``ValueError`` says the method cannot
  reach the budget and how close it got (C3A's block sizes, for instance, must divide every layer side).

The search gallops then bisects over the knob's values (ordered by growing count, see
:attr:`~mora.methods.PeftMethod.values`), so it builds the adapter about 2·log₂(knob) times: seconds on the
pocket models and for most types on LLaMA-2-7B, minutes there for RandLoRA (peft draws its shared random
bases on the CPU even for a meta model).  ``mora-run`` matches once in its preflight and once in training.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import replace
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .adapters import find_modules
from .methods import PEFT_TYPES, MethodConfig, build

#: how far from LoRA's count a matched method may land
TOLERANCE = 0.05
#: methods whose knob is LoRA's rank by construction
_BY_CONSTRUCTION = ("lora", "lora_plus", "mora")


class Budget(NamedTuple):
    """The outcome of a match: the method's knob and value, its count, and LoRA-``r``'s count."""

    label: str
    knob: str
    value: int
    count: int
    lora_r: int
    lora_count: int

    @property
    def ratio(self) -> float:
        return self.count / self.lora_count - 1.0

    @property
    def within(self) -> bool:
        return within_budget(self.count, self.lora_count)

    def describe(self) -> str:
        return (f"budget: {self.label} {self.knob}={self.value} trains {self.count:,} adapter parameters = LoRA "
                f"r={self.lora_r}'s {self.lora_count:,} {self.ratio:+.1%} (±{TOLERANCE:.0%} allowed)")


def within_budget(count: int, lora_count: int) -> bool:
    """Is ``count`` within ±:data:`TOLERANCE` of ``lora_count`` (exactly 5% off counts as within)?"""
    return abs(count - lora_count) <= TOLERANCE * lora_count + 1e-9


def lora_count(model: nn.Module, target_modules: Sequence[str], r: int) -> int:
    """What LoRA of rank ``r`` trains on the ``target_modules`` of ``model``: Σ r·(in + out)."""
    layers = find_modules(model, list(target_modules), what="method.target_modules").values()
    return sum(r * (m.in_features + m.out_features) for m in layers)


def match_budget(model: nn.Module, cfg: MethodConfig) -> tuple[MethodConfig, Budget]:
    """``cfg`` with its size knob set so the method trains LoRA-``cfg.budget_r``'s count (±5%), and the
    :class:`Budget` found; ``model`` is not modified.  Raises a one-line ``ValueError`` when the method has
    no knob or none of its values lands within the tolerance."""
    r, target = cfg.budget_r, lora_count(model, cfg.target_modules, cfg.budget_r)
    spec = PEFT_TYPES.get(cfg.peft_type) if cfg.name == "peft" else None
    knob = spec.knob if spec else "r"
    sized = _knob_setter(cfg, knob)
    count = _meta_counter(model, sized)
    if cfg.name in _BY_CONSTRUCTION or (spec and spec.lora_rank):
        measured = target if spec else count(r)  # SHiRA's random mask cannot be drawn on the meta device
        return sized(r), Budget(cfg.label, knob, r, measured, r, target)
    if knob is None:
        raise ValueError(f"method.budget_r={r}: {cfg.label} has no size knob (it trains a fixed "
                         f"{count(None):,} parameters here, LoRA r={r} {target:,}); drop method.budget_r")
    layers = [(m.in_features, m.out_features)
              for m in find_modules(model, list(cfg.target_modules), what="method.target_modules").values()]
    values = spec.values(layers, cfg.peft_kwargs) if spec else range(1, max(k * d for k, d in layers) + 1)
    value, found = search(count, values, target)
    budget = Budget(cfg.label, knob, value, found, r, target)
    if not budget.within:
        where = f"method.peft_kwargs.{knob}" if spec else f"method.{knob}"
        raise ValueError(
            f"method.budget_r={r}: {cfg.label} cannot reach LoRA r={r}'s {target:,} trainable parameters within "
            f"±{TOLERANCE:.0%} on this model: its nearest, {knob}={value}, trains {found:,} ({budget.ratio:+.1%}); "
            f"set {where} yourself and drop method.budget_r"
        )
    return sized(value), budget


def search(count: Callable[[int], int | None], values: Sequence[int], target: int) -> tuple[int, int]:
    """The value of ``values`` whose ``count`` is nearest ``target``, and that count.

    ``values`` are ordered by growing count; ``count`` returns None for a value the method refuses, which
    (like a count at or above the target) ends the gallop (indices 0, 1, 3, 7, ...) and bounds the bisection.
    Raises ``ValueError`` when even the first value is refused.
    """
    counts: dict[int, int | None] = {}

    def at(i: int) -> int | None:
        if i not in counts:
            counts[i] = count(values[i])
        return counts[i]

    below, above, i = -1, len(values), 0  # invariant: at(below) < target ≤ at(above) (or refused)
    while i < len(values):
        if (c := at(i)) is None or c >= target:
            above = i
            break
        below, i = i, 2 * i + 1
    while above - below > 1:
        mid = (below + above) // 2
        if (c := at(mid)) is None or c >= target:
            above = mid
        else:
            below = mid
    valid = [(values[i], c) for i, c in counts.items() if c is not None]
    if not valid:
        raise ValueError(f"no value of the size knob is accepted (tried {values[0]})")
    return min(valid, key=lambda vc: (abs(vc[1] - target), vc[1]))


def _knob_setter(cfg: MethodConfig, knob: str | None) -> Callable[[int | None], MethodConfig]:
    """value → ``cfg`` with the knob at that value (``None``: unchanged), without the budget and (for the
    count) without ``modules_to_save``, which trains beside the adapter and is no part of the budget."""

    def sized(value: int | None, *, counting: bool = False) -> MethodConfig:
        changes: dict = {"budget_r": None}
        if counting:
            changes["modules_to_save"] = []
        if value is not None:
            if cfg.name == "peft":
                changes["peft_kwargs"] = {**cfg.peft_kwargs, knob: value}
            else:
                changes[knob] = value
        return replace(cfg, **changes)

    return sized


def _meta_counter(model: nn.Module, sized: Callable[..., MethodConfig]) -> Callable[[int | None], int | None]:
    """value → the trainable parameters of the method built at that value on a meta copy of ``model``
    (None when peft refuses the value)."""
    skeleton = meta_copy(model)

    def count(value: int | None) -> int | None:
        try:
            cfg = sized(value, counting=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peft warns about adjusted block sizes etc. for every candidate
                built = build(meta_copy(skeleton), cfg, lr=0.0).model
        except ValueError:
            return None
        return sum(p.numel() for p in built.parameters() if p.requires_grad)

    return count


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device: the same modules,
    names, shapes and config, with no memory and nothing copied (shared tensors stay shared)."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) not in memo:
            meta = tensor.detach().to("meta")
            memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)
