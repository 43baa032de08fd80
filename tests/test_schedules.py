"""Per-epoch schedules against their closed forms."""

import math

import pytest
import torch

from onebit.quantizers import BinaryNeuron
from onebit.schedules import lr_factor, set_lr, set_slope, slope_at


def test_lr_factors_follow_their_formulas():
    epochs = 5
    assert [lr_factor("constant", e, epochs) for e in range(epochs)] == [1.0] * epochs
    cosine = [lr_factor("cosine", e, epochs) for e in range(epochs)]
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)])
    assert cosine[0] == 1.0 and all(a > b > 0 for a, b in zip(cosine, cosine[1:]))  # never reaches 0
    exponential = [lr_factor("exponential", e, epochs, final_ratio=0.01) for e in range(epochs)]
    assert exponential[0] == 1.0 and exponential[-1] == pytest.approx(0.01)  # from 1 to the final ratio
    ratios = [b / a for a, b in zip(exponential, exponential[1:])]
    assert ratios == pytest.approx([0.01 ** (1 / 4)] * 4)  # geometric
    assert lr_factor("exponential", 0, 1) == 1.0  # a one-epoch run does not divide by zero


def test_slopes_follow_their_formulas():
    assert [slope_at("constant", e) for e in (0, 50)] == [1.0, 1.0]
    assert [slope_at("exponential", e) for e in (0, 1, 10)] == pytest.approx([1.0, 1.005, 1.005**10])
    assert [slope_at("linear", e) for e in (0, 1, 99, 100, 500)] == pytest.approx([1.0, 1.04, 4.96, 5.0, 5.0])


def test_unknown_schedules_name_the_choices():
    with pytest.raises(ValueError, match="constant, exponential, cosine"):
        lr_factor("step", 0, 10)
    with pytest.raises(ValueError, match="constant, exponential, linear"):
        slope_at("cosine", 0)


def test_set_lr_scales_each_group_and_set_slope_reaches_every_binary_neuron():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0)
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.05])
    model = torch.nn.Sequential(BinaryNeuron(), torch.nn.Linear(2, 2), torch.nn.Sequential(BinaryNeuron()))
    set_slope(model, 3.0)
    assert [m.slope for m in model.modules() if isinstance(m, BinaryNeuron)] == [3.0, 3.0]
