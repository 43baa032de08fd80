"""CIFAR-10 networks under any binarization recipe: BinaryNet's VGG-small and a Bi-Real ResNet.

Both take a ``width`` multiplier that scales every hidden width (channels and fully connected
units), so the same architecture fits a CPU budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor, nn

from .. import recipes
from .._shape import image_shape
from ..nn import LearnableBias, RPReLU
from ._layers import conv2d, linear

__all__ = ["VGGSmall", "BiRealBlock", "BiRealResNet", "scaled_width"]


def scaled_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer, at least 1."""
    if not width > 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    return max(1, round(channels * width))


def _float_activation(recipe: recipes.Recipe) -> list[nn.Module]:
    """ReLU where activations stay real; nothing where the next layer binarizes its input."""
    return [] if recipe.binary_activations else [nn.ReLU()]


class VGGSmall(nn.Module):
    r"""The VGG-like CIFAR-10 network of BinaryNet (Courbariaux, Hubara et al. 2016).

    With width multiplier :math:`w` and :math:`c(n) = \mathrm{round}(n w)`::

        (3, 32, 32)
        -> Conv3x3(3 -> c128)        -> BN -> act
        -> Conv3x3(c128 -> c128)     -> MaxPool2 -> BN -> act    (c128, 16, 16)
        -> Conv3x3(c128 -> c256)     -> BN -> act
        -> Conv3x3(c256 -> c256)     -> MaxPool2 -> BN -> act    (c256, 8, 8)
        -> Conv3x3(c256 -> c512)     -> BN -> act
        -> Conv3x3(c512 -> c512)     -> MaxPool2 -> BN -> act    (c512, 4, 4)
        -> flatten -> Linear(16 c512 -> c1024) -> BN -> act
        -> Linear(c1024 -> c1024)    -> BN -> act
        -> Linear(c1024 -> classes)  [-> BN]                     logits

    Convolutions are 3x3 with padding 1 and no bias (batch norm follows every conv and linear
    layer); pooling comes before batch norm, as in BinaryNet. At ``width=1`` the network has
    14.0 M parameters and 0.62 G multiply-accumulates per image.

    The recipe (:mod:`onebit.recipes`) decides each layer's precision:

    - ``float``: ``nn.Conv2d`` / ``nn.Linear``, ``act`` = ReLU; the last layer has a bias and
      no batch norm.
    - ``binaryconnect`` (and ``-stochastic``): binary weights in **every** layer, ReLU.
    - ``bnn`` / ``xnor``: binary weights in every layer, and every layer but the first
      binarizes its input (the sign of the previous batch norm's output), so ``act`` is that
      sign, applied by the next layer. The first convolution sees real (normalized) pixels.
    - ``binary-activations``: the ``bnn`` network with real weights (the first step of two-step
      training), with the same parameter names, so its trained weights initialize it.

    With binary weights or activations the logits get a final ``BatchNorm1d`` (as in BinaryNet),
    since a sum of +-1 weights has no learnable scale of its own. Logits are real in every recipe.

    Args:
        recipe: a name from :func:`onebit.recipes.names`.
        width: multiplier of every hidden width (1.0 is BinaryNet's 128-256-512-1024).
        num_classes: output size.
        in_channels: input channels.
        image_size: input height and width, multiples of 8 (an int for square images or
            ``(height, width)``).

    Shape:
        - Input: ``(N, in_channels, height, width)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(self, recipe: str = "float", width: float = 1.0, *, num_classes: int = 10, in_channels: int = 3,
                 image_size: int | Sequence[int] = 32) -> None:
        super().__init__()
        height, width_px = image_shape(image_size)
        if height % 8 or width_px % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x2 poolings), got {image_size}")
        self.recipe = recipes.get(recipe)
        self.width = width
        c128, c256, c512, c1024 = (scaled_width(c, width) for c in (128, 256, 512, 1024))
        plan = [(in_channels, c128, False), (c128, c128, True), (c128, c256, False), (c256, c256, True),
                (c256, c512, False), (c512, c512, True)]
        features: list[nn.Module] = []
        for i, (fan_in, fan_out, pool) in enumerate(plan):
            features.append(conv2d(self.recipe, fan_in, fan_out, 3, padding=1, binary_input=i > 0))
            if pool:
                features.append(nn.MaxPool2d(2))
            features += [nn.BatchNorm2d(fan_out), *_float_activation(self.recipe)]
        self.features = nn.Sequential(*features)
        flat = c512 * (height // 8) * (width_px // 8)
        final_norm = self.recipe.binary_weights or self.recipe.binary_activations
        self.classifier = nn.Sequential(
            nn.Flatten(),
            linear(self.recipe, flat, c1024, False, binary_input=True),
            nn.BatchNorm1d(c1024),
            *_float_activation(self.recipe),
            linear(self.recipe, c1024, c1024, False, binary_input=True),
            nn.BatchNorm1d(c1024),
            *_float_activation(self.recipe),
            linear(self.recipe, c1024, num_classes, not final_norm, binary_input=True),
            *([nn.BatchNorm1d(num_classes)] if final_norm else []),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return f"recipe={self.recipe.name!r}, width={self.width:g}"


class BiRealBlock(nn.Module):
    r"""One Bi-Real Net block (Liu et al. 2018): a single 3x3 convolution with its own real
    shortcut.

    Binary activations (``bnn`` / ``xnor`` recipes)::

        x -> sign -> BinaryConv3x3(C_in -> C_out, stride) -> BN -> (+) -> y
        |                                                          ^
        +------------------------ shortcut(x) --------------------+

    The sign is the convolution's input quantizer. ``shortcut`` is the identity when shape is
    kept, else ``[AvgPool2x2 (stride 2)] -> Conv1x1(C_in -> C_out) -> BN`` with real weights.
    With real activations (``float``, ``binaryconnect``) the sign is replaced by a ReLU:
    ``x -> ReLU -> Conv3x3 -> BN -> (+ shortcut(x))``.

    Args:
        in_channels, out_channels: channels of ``x`` and ``y``.
        stride: 1 or 2 (2 halves height and width).
        recipe: a recipe name or :class:`~onebit.recipes.Recipe`; its weight quantizer,
            activation quantizer and scaling apply to the 3x3 convolution only.
        learnable_threshold: with binary activations, shift ``x`` by a learnable per-channel
            bias before the sign (:class:`~onebit.nn.LearnableBias`: ReActNet's RSign).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H / stride, W / stride)``
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 recipe: str | recipes.Recipe = "xnor", learnable_threshold: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        recipe = recipes.get(recipe)
        if not recipe.binary_activations:
            self.act = nn.ReLU()
        else:
            self.act = LearnableBias(in_channels) if learnable_threshold else nn.Identity()
        self.conv = conv2d(recipe, in_channels, out_channels, 3, stride=stride, padding=1, binary_input=True)
        self.bn = nn.BatchNorm2d(out_channels)
        shortcut: list[nn.Module] = []
        if stride == 2:
            shortcut.append(nn.AvgPool2d(2))
        if in_channels != out_channels:
            shortcut += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.act(x))) + self.shortcut(x)


class BiRealResNet(nn.Module):
    r"""Bi-Real Net (Liu et al. 2018) for 32x32 images: a ResNet whose every binary 3x3
    convolution has its own real-valued shortcut, so real activations flow around each sign.

    With width multiplier :math:`w`, stage widths :math:`c_s = \mathrm{round}(\text{channels}_s
    \, w)` and the default ``channels=(64, 128, 256, 512)``, ``blocks=(4, 4, 4, 4)`` (Bi-Real-18:
    16 binary convolutions)::

        (3, 32, 32)
        -> Conv3x3(3 -> c_1) -> BN                         real stem
        -> stage 1: blocks[0] x BiRealBlock(c_1 -> c_1)     (c_1, 32, 32)
        -> stage 2: BiRealBlock(c_1 -> c_2, stride 2), then (blocks[1] - 1) x BiRealBlock(c_2 -> c_2)
        -> ...                                             (c_4, 4, 4)
        -> global AvgPool -> Linear(c_4 -> classes)          real classifier

    Each :class:`BiRealBlock` is ``x -> sign -> BinaryConv3x3 -> BN -> + shortcut(x)``;
    downsampling shortcuts are ``AvgPool2x2 -> real Conv1x1 -> BN``. The stem convolution, the
    shortcuts and the final linear layer are always real.

    The recipe sets the 3x3 convolutions: ``xnor`` gives Bi-Real's binary weights scaled by
    the per-filter mean :math:`|W|`; ``bnn`` drops the scale; ``float`` is the real-valued
    twin with the same topology (ReLU in place of the sign). ``activation_quantizer``
    replaces the recipe's activation quantizer when it binarizes activations: Bi-Real's
    piecewise-polynomial estimator :class:`~onebit.quantizers.ApproxSign` by default.

    Args:
        recipe: a name from :func:`onebit.recipes.names`.
        width: multiplier of every stage width.
        channels: stage widths at ``width=1``.
        blocks: binary blocks (3x3 convolutions) per stage.
        activation_quantizer: quantizer name (see :func:`onebit.quantizers.names`) for binary
            activations; ``None`` keeps the recipe's.
        react: ReActNet's generalized activations (Liu et al. 2020) with binary activations: a
            learnable threshold before every sign (:class:`~onebit.nn.LearnableBias`, RSign) and
            :class:`~onebit.nn.RPReLU` after every block; both add a few parameters per channel
            and deploy as float ops.
        num_classes: output size.
        in_channels: input channels.
        image_size: input height and width (an int for square images or ``(height, width)``),
            each divisible by ``2 ** (len(channels) - 1)``; the network pools globally, so it
            serves only to check the input.

    Shape:
        - Input: ``(N, in_channels, H, W)``, H and W divisible by ``2 ** (len(channels) - 1)``
        - Output: ``(N, num_classes)`` logits
    """

    def __init__(
        self,
        recipe: str = "xnor",
        width: float = 1.0,
        *,
        channels: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (4, 4, 4, 4),
        activation_quantizer: str | None = "approx-sign",
        react: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
    ) -> None:
        super().__init__()
        if len(channels) != len(blocks) or not channels or min(blocks) < 1:
            raise ValueError(f"channels and blocks need one entry per stage and blocks >= 1; got channels="
                             f"{tuple(channels)}, blocks={tuple(blocks)}")
        factor = 2 ** (len(channels) - 1)
        if any(side % factor for side in image_shape(image_size)):
            raise ValueError(f"image_size must be divisible by {factor} ({len(channels) - 1} stride-2 stages), "
                             f"got {image_size}")
        self.recipe = recipes.get(recipe)
        if self.recipe.binary_activations and activation_quantizer is not None:
            self.recipe = dataclasses.replace(self.recipe, activation_quantizer=activation_quantizer)
        self.width = width
        if react and not self.recipe.binary_activations:
            raise ValueError(f"react=True needs binary activations (bnn or xnor); recipe {recipe!r} keeps them real")
        self.react = react
        widths = [scaled_width(c, width) for c in channels]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]))
        layers: list[nn.Module] = []
        fan_in = widths[0]
        for stage, (fan_out, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BiRealBlock(fan_in, fan_out, stride, recipe=self.recipe, learnable_threshold=self.react))
                if self.react:
                    layers.append(RPReLU(fan_out))
                fan_in = fan_out
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fan_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))

    def extra_repr(self) -> str:
        return (f"recipe={self.recipe.name!r}, width={self.width:g}, "
                f"activation_quantizer={self.recipe.activation_quantizer!r}" + (", react=True" if self.react else ""))
