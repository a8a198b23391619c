"""ReLoRA / ReMoRA: grow a low-rank adapter's total update by merging it into the weights and restarting it.

ReLoRA (Lialin et al., 2023, arXiv 2307.05695) trains LoRA, and every T steps folds (α/r)·B A into the
frozen W, re-draws A (kaiming-uniform) and zeroes B, drops the adapter's optimizer state and re-warms the
learning rate: the sum of several rank-r updates can reach a high rank.  ReMoRA (MoRA paper, §4.3) does the
same with MoRA — fold ΔW(M) into W, zero M — and also switches the compression after each restart so that
successive updates live in different subspaces: sharing → sharing_contiguous → sharing_contiguous_in →
sharing_contiguous_out → sharing (the official code's types 1 → 2 → 3 → 4 → 1).

The three primitives here are what the trainer's restart callback calls, in this order at a restart step::

    params = restart_adapters(model, cycle_compression)
    reset_optimizer_state(optimizer, params)
    # and the LR schedule multiplies in restart_lr_multiplier(step, restart_steps, warmup)
"""

from __future__ import annotations

import bisect
import math

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from .adapters import MoraLinear

#: ReMoRA's compression cycle (official types 1 → 2 → 3 → 4 → 1).
REMORA_CYCLE = ("sharing", "sharing_contiguous", "sharing_contiguous_in", "sharing_contiguous_out")


def next_compression(name: str) -> str:
    """The compression after ``name`` in :data:`REMORA_CYCLE`; one outside the cycle (e.g. rope) enters it at sharing."""
    if name not in REMORA_CYCLE:
        return REMORA_CYCLE[0]
    return REMORA_CYCLE[(REMORA_CYCLE.index(name) + 1) % len(REMORA_CYCLE)]


@torch.no_grad()
def restart_adapters(
    model: nn.Module, cycle_compression: bool, generator: torch.Generator | None = None
) -> list[nn.Parameter]:
    """Fold every adapter's update into its base weight and restart the adapter; the outputs do not change.

    * MoRA layers: ``W += ΔW(M)``, ``M ← 0`` (:meth:`MoraLinear.fold`); with ``cycle_compression`` each
      layer then moves to :func:`next_compression`.
    * peft LoRA layers: ``W += (α/r)·B A``, then A re-drawn kaiming-uniform(a=√5) — peft's own LoRA init —
      and B ← 0, in place, so the optimizer keeps the same ``Parameter`` objects.  A is drawn on the CPU
      from ``generator`` (torch's global RNG when None); under data parallelism pass a generator seeded
      identically on every rank (e.g. seed + step) so that the replicas stay equal.

    Returns the adapter parameters (M, or lora_A/lora_B weights) whose optimizer state must be dropped;
    ``modules_to_save`` and other fully trained parameters are not among them and keep their state.
    """
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, MoraLinear):
            module.fold()
            if cycle_compression:
                module.set_compression(next_compression(module.compression_name))
            params.append(module.M)
        elif isinstance(module, LoraLayer):
            params += _restart_lora(module, generator)
    if not params:
        raise ValueError(f"restart_adapters found no MoRA or LoRA layer in {type(model).__name__}")
    return params


def _restart_lora(layer: LoraLayer, generator: torch.Generator | None) -> list[nn.Parameter]:
    if layer.merged:
        raise RuntimeError("unmerge the LoRA adapters before a restart: their update is already in the weights")
    if any(layer.use_dora.values()):
        raise ValueError("restarts are defined for plain LoRA (ReLoRA), not DoRA")
    weight = layer.get_base_layer().weight
    params = []
    for adapter in layer.lora_A:
        A, B = layer.lora_A[adapter], layer.lora_B[adapter]
        weight += layer.get_delta_weight(adapter).to(weight.dtype)
        fresh = nn.init.kaiming_uniform_(torch.empty(A.weight.shape), a=math.sqrt(5), generator=generator)
        A.weight.copy_(fresh)
        for p in B.parameters():  # the weight, and the bias when lora_bias=True
            p.zero_()
        params += [*A.parameters(), *B.parameters()]
    return params


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Forget the optimizer state (AdamW: exp_avg, exp_avg_sq, step) of exactly ``params``.

    AdamW re-creates a dropped state lazily at the next step, as for a new parameter (bias correction
    included), which is what a restarted adapter is.  Other parameters' state is untouched.
    (ReLoRA itself resets only partially, pruning most of the state by magnitude; the MoRA spec says "reset".)
    """
    for p in params:
        optimizer.state.pop(p, None)


def restart_lr_multiplier(step: int, restart_steps: list[int], warmup: int) -> float:
    """The re-warm factor at scheduler ``step``: (step − s + 1) / warmup for the ``warmup`` steps after the
    latest restart s ≤ step, else 1.  Multiplied with the base schedule it gives ReLoRA's jagged LR:
    near 0 right after each merge, back on the base curve ``warmup`` steps later.

    ReLoRA's code ramps from exactly 0 (one step at LR 0) to the base value at the end of the re-warm; the
    product here differs from that only by the base schedule's drift within those few steps.
    """
    restarts = sorted(restart_steps)
    index = bisect.bisect_right(restarts, step)
    if warmup <= 0 or index == 0:
        return 1.0
    return min(1.0, (step - restarts[index - 1] + 1) / warmup)


def reset_zero_state(zero_optimizer, params: list[torch.nn.Parameter]) -> None:
    """:func:`~mora.restarts.reset_optimizer_state` for DeepSpeed ZeRO-1/2, which keeps an fp32 master copy of
    the trainable parameters and AdamW state per flattened parameter group: copy the restarted values into the
    master (or the next step writes the old adapter back) and drop the state of the groups they make up.  A
    group is all restarted or not at all (the adapters' groups), so AdamW restarts it as a new parameter."""
    from deepspeed.utils import safe_set_full_fp32_param

    restarted = {id(p) for p in params}
    for p in params:
        safe_set_full_fp32_param(p, p.detach())
    for group, master in zip(zero_optimizer.bit16_groups, zero_optimizer.single_partition_of_fp32_groups):
        hit = [id(p) in restarted for p in group]
        if all(hit):
            zero_optimizer.optimizer.state.pop(master, None)
        elif any(hit):
            raise NotImplementedError("a ZeRO parameter group mixes restarted adapters with other trainable parameters")
