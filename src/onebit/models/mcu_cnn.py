"""A fully binary CNN small enough for a microcontroller's flash and RAM."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .. import recipes
from .._shape import image_shape
from ..nn import BinaryConv2d, BinaryLinear

__all__ = ["McuCNN"]


class McuCNN(nn.Module):
    r"""Three binary convolutions and a binary classifier, sized by ``channels = (c1, c2, c3)``.

    For 28x28 inputs::

        (in_channels, 28, 28)
        -> BinaryConv5x5(in -> c1, no padding) -> MaxPool2 -> BN -> sign   (c1, 12, 12)
        -> BinaryConv3x3(c1 -> c2, padding 1)  -> MaxPool2 -> BN -> sign   (c2, 6, 6)
        -> BinaryConv3x3(c2 -> c3, padding 1)  -> MaxPool2 -> BN -> sign   (c3, 3, 3)
        -> flatten -> BinaryLinear(9 c3 -> classes) -> BN                  logits

    Every weight is binary and every activation after the first layer is a sign, so the
    deployed network (:func:`onebit.deploy.convert`) is XNOR-popcount layers with integer
    thresholds, and a float scale and shift on the logits. The first convolution has no
    padding so that every tap sees a pixel: on raw uint8 pixels ``x = s c + o`` its
    pre-activation is :math:`s\,(c \star S) + o \sum S`, an exact integer product and one
    constant per channel, so the deployed first layer is exact integer arithmetic too. Pooling
    comes before batch norm, as in BinaryNet. Packed 32 channels to a word, ``c1`` and ``c2``
    waste no bits when they are multiples of 32.

    Args:
        channels: output channels of the three convolutions.
        recipe: ``"bnn"`` or ``"xnor"`` (:mod:`onebit.recipes`; both binarize weights and
            activations).
        in_channels, num_classes, image_size: input and output sizes (28x28 MNIST by default;
            ``image_size`` is an int for square images or ``(height, width)``).

    Shape:
        - Input: ``(N, in_channels, height, width)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 32, 32),
        recipe: str = "bnn",
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int | Sequence[int] = 28,
    ) -> None:
        super().__init__()
        recipe_ = recipes.get(recipe)
        if not (recipe_.binary_weights and recipe_.binary_activations):
            raise ValueError(f"McuCNN is fully binary: its recipe must binarize weights and activations "
                             f"(bnn or xnor), got {recipe_.name!r}")
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels must be three positive integers, got {tuple(channels)}")
        height, width = (((side - 4) // 2) // 2 // 2 for side in image_shape(image_size))
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be at least 12, got {image_size}")
        self.channels, self.recipe = tuple(channels), recipe_.name
        c1, c2, c3 = channels
        first = recipe_.layer_kwargs(binary_input=False)
        hidden = recipe_.layer_kwargs(binary_input=True)
        self.features = nn.Sequential(
            BinaryConv2d(in_channels, c1, 5, bias=False, **first), nn.MaxPool2d(2), nn.BatchNorm2d(c1),
            BinaryConv2d(c1, c2, 3, padding=1, bias=False, **hidden), nn.MaxPool2d(2), nn.BatchNorm2d(c2),
            BinaryConv2d(c2, c3, 3, padding=1, bias=False, **hidden), nn.MaxPool2d(2), nn.BatchNorm2d(c3),
        )
        self.classifier = nn.Sequential(
            BinaryLinear(c3 * height * width, num_classes, bias=False, **hidden), nn.BatchNorm1d(num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, recipe={self.recipe!r}"
