"""Firing rates of the binary units of any model."""

import torch

from onebit import models
from onebit.inspect import binary_activations, firing_rates


def test_firing_rates_have_one_activations_shape_per_binary_module():
    torch.manual_seed(0)
    model = models.build("mlp", recipe="bnn", hidden=(16, 8))
    images = torch.randn(30, 1, 28, 28)
    rates = firing_rates(model, images)
    assert list(rates) == list(binary_activations(model))
    assert [tuple(r.shape) for r in rates.values()] == [(16,), (8,)]  # the inputs of the hidden and output layers
    assert all(r.dtype == torch.float32 and 0 <= r.min() and r.max() <= 1 for r in rates.values())
    name, first = next(iter(binary_activations(model).items()))
    fired = []
    handle = first.register_forward_hook(lambda module, inputs, output: fired.append((output > 0).float()))
    with torch.no_grad():
        model(images)
    handle.remove()
    assert torch.allclose(rates[name], fired[0].mean(0))


def test_a_float_model_has_no_binary_activations():
    model = models.build("mlp", recipe="float", hidden=(16,))
    assert binary_activations(model) == {}
    assert firing_rates(model, torch.randn(4, 1, 28, 28)) == {}
