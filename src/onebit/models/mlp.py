"""Study A's multilayer perceptron, under any binarization recipe."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .. import recipes
from .._shape import image_shape
from ._layers import linear


class MLP(nn.Module):
    r"""Fully connected classifier: ``in -> hidden... -> classes`` (study A: 784-2048-2048-2048-10).

    Every block is ``Linear -> BatchNorm1d -> activation [-> Dropout]`` (linear layers followed
    by batch norm have no bias: it would be redundant). The recipe decides:

    - ``float``: ``nn.Linear``, ReLU, dropout.
    - ``binaryconnect`` / ``binaryconnect-stochastic``: binary weights in every layer, ReLU.
    - ``bnn`` / ``xnor``: binary weights in every layer; every layer but the first also
      binarizes its input (the sign of the previous block's batch-norm output), so hidden
      activations are one bit. The first layer sees real pixels; the output (a final
      ``BatchNorm1d`` over the logits, as in Courbariaux et al. 2016) is real.
    - ``binary-activations``: the ``bnn`` network with real weights (the first step of two-step
      training): the same layers and parameter names, so its trained weights initialize it.

    Args:
        in_features: input size; by default ``in_channels`` x the pixels of ``image_size``
            (784 for MNIST).
        num_classes: output size.
        hidden: widths of the hidden layers.
        recipe: a name from :func:`onebit.recipes.names`.
        dropout: dropout probability after each hidden block (by default 0.2 in the float
            recipe, 0 in the others: with binary activations a hidden block ends in batch norm,
            whose zeroed outputs the next layer's sign would turn into +1).
        input_dropout: dropout probability on the (real) input pixels.
        batch_norm: use batch norm after every linear layer.
        in_channels, image_size: the input images (``image_size``: an int for square images or
            ``(height, width)``), which give ``in_features`` when it is not set.

    Shape:
        - Input: ``(N, *)`` flattened to ``(N, in_features)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(
        self,
        in_features: int | None = None,
        num_classes: int = 10,
        hidden: Sequence[int] = (2048, 2048, 2048),
        recipe: str = "float",
        *,
        dropout: float | None = None,
        input_dropout: float = 0.0,
        batch_norm: bool = True,
        in_channels: int | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        height, width = image_shape(28 if image_size is None else image_size)
        pixels = (1 if in_channels is None else in_channels) * height * width
        if in_features is None:
            in_features = pixels
        elif (in_channels is not None or image_size is not None) and in_features != pixels:
            raise ValueError(f"in_features={in_features} contradicts in_channels={in_channels} and "
                             f"image_size={image_size} ({pixels} inputs); give one or the other")
        self.recipe = recipes.get(recipe)
        if dropout is None:
            dropout = 0.0 if self.recipe.binary_weights or self.recipe.binary_activations else 0.2
        widths = [in_features, *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            norm = batch_norm and (not last or self.recipe.binary_activations)
            layers.append(linear(self.recipe, fan_in, fan_out, not norm, binary_input=i > 0))
            if norm:
                layers.append(nn.BatchNorm1d(fan_out))
            if not last:
                if not self.recipe.binary_activations:
                    layers.append(nn.ReLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def extra_repr(self) -> str:
        return f"recipe={self.recipe.name!r}"
