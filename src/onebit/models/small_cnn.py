"""Study B's two-convolution MNIST network with binary activations where asked."""

from __future__ import annotations

from torch import Tensor, nn

from ..nn import HardSigmoid
from ..quantizers import BinaryNeuron

POSITIONS = ("none", "first", "last", "both")


class SmallCNN(nn.Module):
    r"""Conv5x5(1->16, pad 2)-BN-MaxPool2-act-Conv5x5(16->32, pad 2)-BN-MaxPool2-act-Linear(1568->10).

    29,034 parameters. ``act`` is a float hard sigmoid, or a
    :class:`~onebit.quantizers.BinaryNeuron` (outputs in {0, 1}) at the position(s) given by
    ``binary``.

    Args:
        binary: ``"none"``, ``"first"``, ``"last"`` or ``"both"``: which activations are binary.
        mode: ``BinaryNeuron`` mode, ``"deterministic"`` or ``"stochastic"``.
        estimator: ``"st"`` or ``"reinforce"``.
        slope: initial hard-sigmoid slope (annealed by the trainer's slope schedule).
        in_channels, num_classes, image_size: input and output sizes (28x28 MNIST by default).

    Shape:
        - Input: ``(N, in_channels, image_size, image_size)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(
        self,
        binary: str = "none",
        mode: str = "deterministic",
        estimator: str = "st",
        slope: float = 1.0,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if binary not in POSITIONS:
            raise ValueError(f"unknown binary position {binary!r}; choose one of {', '.join(POSITIONS)}")

        def act(position: str) -> nn.Module:
            if binary in (position, "both"):
                return BinaryNeuron(mode, estimator, slope)
            return HardSigmoid(slope)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2),
            nn.BatchNorm2d(16),
            nn.MaxPool2d(2),
            act("first"),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.BatchNorm2d(32),
            nn.MaxPool2d(2),
            act("last"),
        )
        self.classifier = nn.Linear(32 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
