"""Float activations used beside binary ones."""

from __future__ import annotations

from torch import Tensor, nn

from ..quantizers import hard_sigmoid

__all__ = ["HardSigmoid"]


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
