"""Checks that compare a packed model with the PyTorch model it came from, and the random batch
norms that make such a comparison informative on an untrained model."""

import numpy as np
import torch
from torch import nn

from onebit.nn import LearnableBias, RPReLU


def randomize_batchnorm(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Running statistics measured on ``images`` (so every layer stays informative), then
    perturbed, and random affine parameters with zero and negative gammas (an untrained
    model's identity batch norms would hide folding mistakes)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0  # running statistics = the statistics of the next batch
    model.train()
    with torch.no_grad():
        model(images)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in norms:
            c = m.num_features
            m.running_mean.add_(torch.randn(c, generator=g) * m.running_var.sqrt() * 0.3)
            m.weight.copy_(torch.randn(c, generator=g))  # about half negative
            m.weight[: max(1, c // 8)] = 0.0  # constant channels
            m.bias.copy_(torch.randn(c, generator=g) * 0.5)
            m.bias[: max(1, c // 16)] = 0.0  # zero gamma and beta: BN output 0, sign +1
        for m in model.modules():  # learned thresholds and RPReLU shifts and slopes, not their initial values
            if isinstance(m, (LearnableBias, RPReLU)):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def assert_same_signs(got: np.ndarray, expected: np.ndarray) -> None:
    """±1 embeddings agree exactly, row by row, except for rare threshold ties.

    The first block sees real pixels: torch and the packed runtime sum the float convolution
    in different orders, and a pre-activation within float32 rounding of its batch-norm
    threshold can take the other sign (and propagate). Later blocks are exact integer
    arithmetic. So at least 99.9% of the rows must be identical.
    """
    assert set(np.unique(got)) <= {-1.0, 1.0}
    same = (got == expected).all(axis=1)
    assert same.mean() >= 0.999, np.flatnonzero(~same)
    assert len(np.unique(expected, axis=0)) > len(expected) // 2  # informative, not constant


def assert_close_logits(got: np.ndarray, expected: np.ndarray, exact: bool = False, atol: float = 1e-4) -> None:
    """Same prediction for every row, and not a constant one; logits bit-identical (``exact``:
    integer layers and float epilogues evaluated in the same order) or equal to float32 rounding
    (relative 1e-4, absolute ``atol`` times the largest logit) except in at most 0.1% of the rows,
    where a real-valued pre-activation within rounding of its threshold may take the other sign
    (see :func:`assert_same_signs`; torch, numpy and C sum floats in different orders)."""
    assert got.shape == expected.shape
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    if exact:
        assert np.array_equal(got, expected)
    else:
        close = np.isclose(got, expected, rtol=1e-4, atol=atol * np.abs(expected).max()).all(axis=1)
        assert close.mean() >= 0.999, np.flatnonzero(~close)
    assert len(np.unique(expected.argmax(1))) > 1  # not a constant prediction
