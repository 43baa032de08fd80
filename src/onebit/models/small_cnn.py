"""Study B's two-convolution MNIST network with binary activations where asked."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .. import recipes
from .._shape import image_shape
from ..nn import HardSigmoid
from ..quantizers import BinaryNeuron
from ._layers import conv2d, linear

POSITIONS = ("none", "first", "last", "both")


class SmallCNN(nn.Module):
    r"""Conv5x5(1->16, pad 2)-BN-MaxPool2-act-Conv5x5(16->32, pad 2)-BN-MaxPool2-act-Linear(1568->10).

    29,034 parameters. ``act`` is a float hard sigmoid, or a
    :class:`~onebit.quantizers.BinaryNeuron` (outputs in {0, 1}) at the position(s) given by
    ``binary``.

    Study B's network has real weights (``recipe="float"``). A recipe with binary weights
    (:mod:`onebit.recipes`) makes both convolutions and the classifier binary layers, the
    classifier followed by a ``BatchNorm1d`` over the logits (a sum of +-1 weights has no scale
    of its own); a recipe with binary activations (``bnn``, ``xnor``) also replaces each ``act``
    by the sign the next layer takes of its input, so it goes with ``binary="none"``.

    Args:
        binary: ``"none"``, ``"first"``, ``"last"`` or ``"both"``: which activations are binary
            neurons.
        mode: ``BinaryNeuron`` mode, ``"deterministic"`` or ``"stochastic"``.
        estimator: ``"st"`` or ``"reinforce"``.
        slope: initial hard-sigmoid slope (annealed by the trainer's slope schedule).
        recipe: a name from :func:`onebit.recipes.names`.
        in_channels, num_classes, image_size: input and output sizes (28x28 MNIST by default;
            ``image_size`` is an int for square images or ``(height, width)``).

    Shape:
        - Input: ``(N, in_channels, height, width)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(
        self,
        binary: str = "none",
        mode: str = "deterministic",
        estimator: str = "st",
        slope: float = 1.0,
        *,
        recipe: str = "float",
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int | Sequence[int] = 28,
    ) -> None:
        super().__init__()
        if binary not in POSITIONS:
            raise ValueError(f"unknown binary position {binary!r}; choose one of {', '.join(POSITIONS)}")
        recipe_ = recipes.get(recipe)
        if recipe_.binary_activations and binary != "none":
            raise ValueError(f"recipe {recipe_.name!r} binarizes every activation with the sign: it goes with "
                             f"binary='none', got binary={binary!r}")
        height, width = image_shape(image_size)
        if height < 4 or width < 4:
            raise ValueError(f"image_size must be at least 4x4 (two 2x2 poolings), got {image_size!r}")

        def act(position: str) -> list[nn.Module]:
            if recipe_.binary_activations:
                return []  # the next layer's input quantizer takes the sign
            if binary in (position, "both"):
                return [BinaryNeuron(mode, estimator, slope)]
            return [HardSigmoid(slope)]

        # study B's float network has biases and bare logits; a binary one (binary weights or
        # activations, the layers of bnn and xnor) has no biases and a batch norm over the logits
        binary_layers = recipe_.binary_weights or recipe_.binary_activations

        def conv(fan_in: int, fan_out: int, binary_input: bool) -> nn.Module:
            return conv2d(recipe_, fan_in, fan_out, 5, padding=2, bias=not binary_layers, binary_input=binary_input)

        self.recipe = recipe_.name
        self.features = nn.Sequential(
            conv(in_channels, 16, binary_input=False),
            nn.BatchNorm2d(16),
            nn.MaxPool2d(2),
            *act("first"),
            conv(16, 32, binary_input=True),
            nn.BatchNorm2d(32),
            nn.MaxPool2d(2),
            *act("last"),
        )
        features = 32 * (height // 4) * (width // 4)
        classifier = linear(recipe_, features, num_classes, not binary_layers, binary_input=True)
        if binary_layers:  # a sum of +-1 weights (or of weights times +-1 inputs) has no scale of its own
            classifier = nn.Sequential(classifier, nn.BatchNorm1d(num_classes))
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))

    def extra_repr(self) -> str:
        return f"recipe={self.recipe!r}"
