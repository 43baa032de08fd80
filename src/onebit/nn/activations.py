"""Float activations used beside binary ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizers import hard_sigmoid

__all__ = ["HardSigmoid", "LearnableBias", "RPReLU"]


class HardSigmoid(nn.Module):
    r"""Hard sigmoid :math:`\mathrm{clamp}((a x + 1)/2, 0, 1)`, the float counterpart of
    :class:`onebit.quantizers.BinaryNeuron` (study B's float activation).

    Note that :class:`torch.nn.Hardsigmoid` is a different function (``relu6(x + 3) / 6``).

    Args:
        slope: :math:`a`.

    Shape: input ``(*)``, output ``(*)``.
    """

    def __init__(self, slope: float = 1.0) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        return hard_sigmoid(self.slope * x)

    def extra_repr(self) -> str:
        return f"slope={self.slope:g}"


def _per_channel(x: Tensor, v: Tensor) -> Tensor:
    """``v`` (C,) shaped to broadcast along the channel axis 1 of ``x``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class LearnableBias(nn.Module):
    r"""A learnable per-channel shift :math:`y_c = x_c + b_c`. Before a sign it is ReActNet's
    RSign, :math:`\mathrm{sign}(x_c + b_c)`: a learned threshold per channel (Liu et al. 2020,
    "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions").
    In a packed model it folds into the integer thresholds where it follows a binary layer
    (and its batch norm); elsewhere (after a real-valued sum, as in Bi-Real blocks) it is a
    float shift before the signs are packed.

    Args:
        num_features: channels :math:`C`.

    Shape: input ``(N, C, *)``, output the same.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x + _per_channel(x, self.bias)

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}"


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU, a PReLU with learnable shifts before and after (Liu et al. 2020):

    .. math::
        y_c = \begin{cases} x_c - \gamma_c + \zeta_c & x_c - \gamma_c \ge 0 \\
              \beta_c\,(x_c - \gamma_c) + \zeta_c & \text{otherwise} \end{cases}

    with per-channel slope :math:`\beta` (initialized to 0.25, as PReLU) and shifts
    :math:`\gamma, \zeta` (initialized to 0). A packed model computes it as a float op, in this
    order of operations.

    Args:
        num_features: channels :math:`C`.

    Shape: input ``(N, C, *)``, output the same.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(num_features))
        self.slope = nn.Parameter(torch.full((num_features,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x - _per_channel(x, self.shift_in), self.slope) + _per_channel(x, self.shift_out)

    def extra_repr(self) -> str:
        return f"{self.slope.numel()}"
