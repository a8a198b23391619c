"""Held-out perplexity (mora.perplexity) against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mora.perplexity import IGNORE_INDEX, perplexity, token_nll


class FixedLogits(nn.Module):
    """A "language model" whose next-token distribution is the same table at every position."""

    def __init__(self, probabilities: list[float]):
        super().__init__()
        self.log_probs = nn.Parameter(torch.tensor(probabilities, dtype=torch.float64).log())

    def forward(self, input_ids, attention_mask=None):
        batch, length = input_ids.shape
        return type("Out", (), {"logits": self.log_probs.expand(batch, length, -1)})()


def collate(examples):
    width = max(len(e["input_ids"]) for e in examples)
    pad = lambda xs, v: list(xs) + [v] * (width - len(xs))  # noqa: E731
    return {"input_ids": torch.tensor([pad(e["input_ids"], 0) for e in examples]),
            "labels": torch.tensor([pad(e["labels"], IGNORE_INDEX) for e in examples])}


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = FixedLogits([0.25] * 4)
    examples = [{"input_ids": [0, 1, 2, 3], "labels": [0, 1, 2, 3]}]
    scores = perplexity(model, examples, collate, batch_size=1)
    assert scores["tokens"] == 3  # L-1 next-token predictions
    assert scores["perplexity"] == pytest.approx(4.0) and scores["nll"] == pytest.approx(math.log(4))


def test_perplexity_hand_computed_with_masks_and_uneven_lengths():
    p = [0.5, 0.25, 0.125, 0.125]
    model = FixedLogits(p)
    examples = [
        {"input_ids": [0, 1, 2], "labels": [0, 1, 2]},                 # predicts 1, 2
        {"input_ids": [3, 0, 3, 3], "labels": [3, IGNORE_INDEX, 3, 0]},  # predicts 3, 0 (the masked 0 is skipped)
    ]
    expected = -(math.log(p[1]) + math.log(p[2]) + math.log(p[3]) + math.log(p[0])) / 4
    for batch_size in (1, 2):  # padding of the shorter row must not count
        scores = perplexity(model, examples, collate, batch_size)
        assert scores["tokens"] == 4
        assert scores["nll"] == pytest.approx(expected)
        assert scores["perplexity"] == pytest.approx(math.exp(expected))
    total, count = token_nll(model, [collate(examples)])
    assert count == 4 and total == pytest.approx(4 * expected)


def test_perplexity_restores_the_training_mode_and_refuses_nothing_to_score():
    model = FixedLogits([0.5, 0.5]).train()
    perplexity(model, [{"input_ids": [0, 1], "labels": [0, 1]}], collate, 1)
    assert model.training
    with pytest.raises(ValueError, match="no token has a label"):
        perplexity(model, [{"input_ids": [0, 1], "labels": [0, IGNORE_INDEX]}], collate, 1)
