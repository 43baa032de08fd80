"""The layers a recipe gives a model: one place decides float or quantized."""

from __future__ import annotations

from torch import nn

from .. import recipes
from ..nn import BinaryConv2d, BinaryLinear


def linear(recipe: recipes.Recipe, in_features: int, out_features: int, bias: bool = True, *,
           binary_input: bool) -> nn.Module:
    """``nn.Linear`` where the recipe quantizes neither the weight nor (``binary_input``) the input
    of this layer, else :class:`~onebit.nn.BinaryLinear` with the recipe's quantizers."""
    kwargs = recipe.layer_kwargs(binary_input)
    if kwargs["weight_quantizer"] is None and kwargs["input_quantizer"] is None:
        return nn.Linear(in_features, out_features, bias)
    return BinaryLinear(in_features, out_features, bias, **kwargs)


def conv2d(recipe: recipes.Recipe, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
           padding: int = 0, bias: bool = False, binary_input: bool) -> nn.Module:
    """``nn.Conv2d`` where the recipe quantizes neither the weight nor (``binary_input``) the input
    of this layer, else :class:`~onebit.nn.BinaryConv2d` with the recipe's quantizers."""
    kwargs = recipe.layer_kwargs(binary_input)
    if kwargs["weight_quantizer"] is None and kwargs["input_quantizer"] is None:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    return BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias, **kwargs)
