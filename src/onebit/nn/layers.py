"""Layers with binary (latent fp32) weights and optionally binary inputs."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import quantizers

__all__ = ["BinaryLinear", "BinaryConv2d", "QuantizedLayer", "clip_latent_weights", "computing_layers"]

_SCALINGS = (None, "xnor")



class QuantizedLayer(nn.Module):
    """Mixin for layers whose weight and input pass through quantizers before the float op.

    ``self.weight`` stays the latent fp32 parameter that the optimizer updates; the forward
    pass uses :meth:`quantized_weight`. Subclasses call :meth:`_init_quantizers` in their
    constructor.
    """

    weight: Tensor
    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None
    scaling: str | None

    def _init_quantizers(self, weight_quantizer: str | nn.Module | None, input_quantizer: str | nn.Module | None,
                         scaling: str | None) -> None:
        """Set the quantizers (resolved by :func:`onebit.quantizers.get`) and the scaling, checked."""
        if scaling not in _SCALINGS:
            raise ValueError(f"unknown scaling {scaling!r}; choose None or 'xnor'")
        if scaling is not None and weight_quantizer is None:
            raise ValueError("scaling='xnor' needs a weight_quantizer")
        self.weight_quantizer = quantizers.get(weight_quantizer)
        self.input_quantizer = quantizers.get(input_quantizer)
        self.scaling = scaling

    @property
    def has_binary_weight(self) -> bool:
        """Whether the weight passes through a quantizer."""
        return self.weight_quantizer is not None

    @property
    def has_binary_input(self) -> bool:
        """Whether the input passes through a quantizer."""
        return self.input_quantizer is not None

    def scale(self) -> Tensor | None:
        """Per-output-channel XNOR-Net factor alpha = mean |W| over the other axes, shaped to
        broadcast against the weight; ``None`` without scaling."""
        if self.scaling != "xnor":
            return None
        dims = tuple(range(1, self.weight.dim()))
        return self.weight.abs().mean(dim=dims, keepdim=True)

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses: ``alpha * q(W)`` (or ``W`` without quantizer)."""
        if self.weight_quantizer is None:
            return self.weight
        w = self.weight_quantizer(self.weight)
        alpha = self.scale()
        return w if alpha is None else w * alpha

    def quantize_input(self, x: Tensor) -> Tensor:
        """``x`` through the layer's input quantizer (unchanged without one)."""
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _quantizer_repr(self) -> str:
        def name(q):
            return None if q is None else (q.name or type(q).__name__)

        s = f"weight_quantizer={name(self.weight_quantizer)!r}, input_quantizer={name(self.input_quantizer)!r}"
        if self.scaling is not None:
            s += f", scaling={self.scaling!r}"
        return s


class BinaryLinear(nn.Linear, QuantizedLayer):
    r"""Fully connected layer with binarized weights and optionally binarized inputs.

    .. math:: y = q_x(x)\,\big(\alpha \odot q_w(W)\big)^\top + b

    where :math:`q_w` / :math:`q_x` are the weight / input quantizers and :math:`\alpha_o =
    \frac{1}{K}\sum_k |W_{ok}|` when ``scaling="xnor"`` (1 otherwise). ``self.weight`` is the
    latent fp32 weight; gradients reach it through the quantizer's estimator.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`torch.nn.Linear`.
        weight_quantizer: quantizer name (see :func:`onebit.quantizers.names`), module, or
            ``None`` for float weights. Default ``"sign"``.
        input_quantizer: same, for the input; default ``None`` (real-valued inputs).
        scaling: ``None`` or ``"xnor"``: XNOR-Net's per-output-channel weight scale
            :math:`\alpha`. XNOR-Net's input scale :math:`K` (mean :math:`|x|` over each
            receptive field) is not applied.

    Shape:
        - Input: ``(*, in_features)``
        - Output: ``(*, out_features)``
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_quantizer: str | nn.Module | None = "sign",
        input_quantizer: str | nn.Module | None = None,
        scaling: str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quantizers(weight_quantizer, input_quantizer, scaling)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(self.quantize_input(input), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quantizer_repr()}"


class BinaryConv2d(nn.Conv2d, QuantizedLayer):
    r"""2-D convolution with binarized weights and optionally binarized inputs.

    .. math:: y = q_x(x) \star \big(\alpha \odot q_w(W)\big) + b

    with :math:`\alpha_o` the mean of :math:`|W|` over filter ``o`` when ``scaling="xnor"``.
    Zero padding pads the *quantized* input with zeros, as in PyTorch and Larq (a third value
    besides +-1; the packed runtime reproduces it exactly).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode, device, dtype: as :class:`torch.nn.Conv2d`.
        weight_quantizer, input_quantizer, scaling: as :class:`BinaryLinear`.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)``, sizes as :class:`torch.nn.Conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_quantizer: str | nn.Module | None = "sign",
        input_quantizer: str | nn.Module | None = None,
        scaling: str | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_quantizers(weight_quantizer, input_quantizer, scaling)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(input), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quantizer_repr()}"


def computing_layers(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for the computing layers of ``model`` in definition order:
    every :class:`QuantizedLayer` (whose quantizers are part of it) and every leaf module not
    inside one."""
    if isinstance(model, QuantizedLayer) or not any(True for _ in model.children()):
        yield prefix, model
        return
    for name, child in model.named_children():
        yield from computing_layers(child, f"{prefix}.{name}" if prefix else name)


@torch.no_grad()
def clip_latent_weights(model: nn.Module, bound: float = 1.0) -> None:
    """Clamp every latent binary weight of ``model`` to ``[-bound, bound]`` in place.

    Beyond the bound a latent weight no longer changes its sign and (with a clipped
    straight-through estimator) receives no gradient; clipping keeps it able to flip back
    (BinaryConnect, Courbariaux et al. 2015). Float layers are left alone.
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    for module in model.modules():
        if isinstance(module, QuantizedLayer) and module.has_binary_weight:
            module.weight.clamp_(-bound, bound)
