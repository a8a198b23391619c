"""Held-out perplexity: ``exp(mean token NLL)`` of a model over a fixed set of token sequences.

The pretraining metric (ReLoRA and MoRA report C4 validation perplexity) and the pocket-scale metric of
every fine-tuning task (perplexity of held-out text, or of held-out responses only).  Computed here with
one plain forward per batch rather than through lm-eval's rolling-window ``loglikelihood_rolling``:
the sequences are already the model's length, and lm-eval reports word/byte perplexity, not the token
perplexity the papers give.

Every position whose *next* token has a label (not ``-100``) counts once: for a block of L tokens with
labels = inputs, the L-1 next-token predictions.  The mean is over all counted tokens of all sequences
(a long sequence weighs more than a short one), not a mean of per-sequence perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@torch.no_grad()
def token_nll(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """``(sum of next-token NLL in nats, number of tokens counted)`` over ``batches`` of ``input_ids``,
    ``labels`` (``-100``: not counted) and optionally ``attention_mask``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        input_ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        logits = model(input_ids=input_ids, attention_mask=None if mask is None else mask.to(device)).logits
        targets = batch["labels"].to(device)[:, 1:]
        counted = targets != IGNORE_INDEX
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
        total += float(nll[counted].sum())
        count += int(counted.sum())
    return total, count


def perplexity(
    model: torch.nn.Module, examples: Sequence[dict], collate: Callable[[list[dict]], dict], batch_size: int
) -> dict[str, float]:
    """``{"perplexity", "nll", "tokens"}`` of ``model`` (put in eval mode; its mode is restored) over
    ``examples`` (``input_ids``/``labels`` lists), batched by ``collate``."""
    from .evaluate import preserved_state

    batches = (collate(list(examples[i:i + batch_size])) for i in range(0, len(examples), batch_size))
    with preserved_state(model):
        model.eval()
        total, count = token_nll(model, batches)
    if count == 0:
        raise ValueError("perplexity: no token has a label; nothing to score")
    mean = total / count
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": count}
