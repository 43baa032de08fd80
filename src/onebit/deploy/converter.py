"""Convert a trained PyTorch model into a :class:`~onebit.deploy.runtime.PackedModel`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn import BinaryConv2d, BinaryLinear, HardSigmoid, QuantizedLayer
from ..nn.layers import layers
from ..quantizers import ApproxSign, BinaryNeuron, SignSTE, StochasticSign
from . import kernels, runtime

__all__ = ["convert", "UnsupportedModelError", "fold_sign_threshold"]

_SIGN_QUANTIZERS = (SignSTE, StochasticSign, ApproxSign)  # eval-mode forward: sign, 0 -> +1
_SKIPPED = (nn.Dropout, nn.Identity)


class UnsupportedModelError(ValueError):
    """The model contains a module (or a layout) the packed runtime cannot reproduce."""


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def fold_sign_threshold(scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Fold ``sign(scale * d + shift)`` (0 -> +1) into ``(d >= t) XOR flip`` per channel.

    - scale > 0: +1 iff :math:`d \ge -\text{shift}/\text{scale}`: ``t = -shift/scale``.
    - scale < 0: +1 iff :math:`d \le -\text{shift}/\text{scale}`, i.e. not
      :math:`d \ge \text{nextafter}(-\text{shift}/\text{scale}, +\infty)`: flip.
    - scale = 0: constant, +1 iff shift >= 0: ``t = -inf`` (always true), flip iff shift < 0.

    Computed in float64. Returns ``(thresholds float64, flip bool)``.
    """
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -shift / scale
    thresholds = np.where(scale > 0, t, np.nextafter(t, np.inf))
    thresholds = np.where(scale == 0, -np.inf, thresholds)
    flip = np.where(scale == 0, shift < 0, scale < 0)
    return thresholds, flip


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """``BN(y) = y * scale + shift`` in eval mode (float64)."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise UnsupportedModelError(f"{bn}: batch norm without running statistics cannot be folded")
    invstd = 1.0 / np.sqrt(_np(bn.running_var).astype(np.float64) + bn.eps)
    gamma = _np(bn.weight).astype(np.float64) if bn.affine else np.ones_like(invstd)
    beta = _np(bn.bias).astype(np.float64) if bn.affine else np.zeros_like(invstd)
    scale = gamma * invstd
    return scale, beta - _np(bn.running_mean).astype(np.float64) * scale


def _trace(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, nn.Module, tuple, torch.Tensor]]:
    """Leaf modules in the order the forward pass calls them, with their input and output."""
    calls = []

    def hook(name):
        def record(module, inputs, output):
            calls.append((name, module, inputs, output))

        return record

    handles = [m.register_forward_hook(hook(name or type(m).__name__)) for name, m in layers(model)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return calls


def _quantizer_kind(q: nn.Module | None) -> str:
    if q is None:
        return "none"
    if isinstance(q, _SIGN_QUANTIZERS):
        return "sign"
    raise UnsupportedModelError(f"input quantizer {type(q).__name__} has no packed equivalent")


def convert(model: nn.Module, example_input: torch.Tensor) -> runtime.PackedModel:
    """Convert a trained model into a bit-packed :class:`~onebit.deploy.runtime.PackedModel`.

    The model runs once (eval mode) on ``example_input`` (a batch shaped like real inputs) to
    find the order of its layers; it must be a chain of supported modules:

    - :class:`~onebit.nn.BinaryLinear` (sign weights, real or sign inputs, optional XNOR
      scaling), with a following ``BatchNorm1d`` folded in; when the next layer binarizes its
      input, batch norm and sign become integer thresholds on the popcount and the layer
      outputs packed bits;
    - float ``nn.Linear``, ``nn.Conv2d``, ``BatchNorm1d/2d``, ``MaxPool2d``, ``ReLU``,
      ``nn.Flatten`` (and the flattening a model's ``forward`` does before a linear layer),
      :class:`~onebit.nn.HardSigmoid`, and deterministic / thresholding
      :class:`~onebit.quantizers.BinaryNeuron` (eval mode);
    - ``Dropout`` and ``Identity`` (dropped).

    Raises:
        UnsupportedModelError: naming the first module that cannot be converted and why.
    """
    was_training = model.training
    model.eval()
    try:
        calls = _trace(model, example_input)
    finally:
        model.train(was_training)
    ops: list[runtime.Op] = []
    i, previous_output = 0, example_input
    while i < len(calls):
        name, module, inputs, output = calls[i]
        x = inputs[0]
        if x.dim() == 2 and previous_output.dim() > 2 and x.shape[1] == previous_output[0].numel():
            ops.append(runtime.Flatten())  # the model's forward flattened between modules
        elif x.shape != previous_output.shape:
            raise UnsupportedModelError(f"{name}: input shape {tuple(x.shape)} does not follow the previous "
                                        f"output {tuple(previous_output.shape)}; only chains of modules convert")
        consumed = _convert_one(ops, calls, i)
        previous_output = calls[i + consumed - 1][3]
        i += consumed
    meta = {"input_shape": list(example_input.shape[1:]), "source": type(model).__name__}
    return runtime.PackedModel(ops, meta)


def _next_module(calls, j: int) -> nn.Module | None:
    while j < len(calls) and isinstance(calls[j][1], _SKIPPED):
        j += 1
    return calls[j][1] if j < len(calls) else None


def _convert_one(ops: list[runtime.Op], calls, i: int) -> int:
    """Append the op(s) for ``calls[i]`` (and modules fused into it); return how many calls
    were consumed."""
    name, module, _, _ = calls[i]
    if isinstance(module, _SKIPPED):
        return 1
    if isinstance(module, BinaryConv2d):
        raise UnsupportedModelError(f"{name}: BinaryConv2d is not supported by the packed runtime yet")
    if isinstance(module, BinaryLinear):
        return _binary_dense(ops, calls, i)
    if isinstance(module, QuantizedLayer):
        raise UnsupportedModelError(f"{name}: {type(module).__name__} is not supported")
    if isinstance(module, nn.Linear):
        ops.append(runtime.Linear(_np(module.weight).astype(np.float32), _bias(module)))
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros" or \
                len(set(module.stride)) != 1 or not isinstance(module.padding, tuple) or len(set(module.padding)) != 1:
            raise UnsupportedModelError(f"{name}: only square, ungrouped, undilated, zero-padded convolutions convert")
        ops.append(runtime.Conv2d(_np(module.weight).astype(np.float32), _bias(module), module.stride[0],
                                   module.padding[0]))
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _bn_affine(module)
        ops.append(runtime.Affine(scale.astype(np.float32), shift.astype(np.float32)))
    elif isinstance(module, nn.MaxPool2d):
        k, s = module.kernel_size, module.stride
        if module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode or \
                not isinstance(k, int) or not isinstance(s, int):
            raise UnsupportedModelError(f"{name}: only unpadded square max pooling converts")
        ops.append(runtime.MaxPool2d(k, s))
    elif isinstance(module, nn.ReLU):
        ops.append(runtime.ReLU())
    elif isinstance(module, nn.Flatten):
        ops.append(runtime.Flatten())
    elif isinstance(module, HardSigmoid):
        ops.append(runtime.HardSigmoid(module.slope))
    elif isinstance(module, BinaryNeuron):
        if module.mode == "stochastic" and module.sample_at_eval:
            raise UnsupportedModelError(f"{name}: a neuron that samples at eval time has no deterministic packed form")
        ops.append(runtime.Step())
    else:
        raise UnsupportedModelError(f"{name}: {type(module).__name__} has no packed equivalent")
    return 1


def _bias(module: nn.Module) -> np.ndarray:
    n = module.weight.shape[0]
    return np.zeros(n, np.float32) if module.bias is None else _np(module.bias).astype(np.float32)


def _binary_dense(ops: list[runtime.Op], calls, i: int) -> int:
    name, layer, _, _ = calls[i]
    if not layer.has_binary_weight:
        raise UnsupportedModelError(f"{name}: BinaryLinear without a weight quantizer; use nn.Linear")
    input_kind = _quantizer_kind(layer.input_quantizer)
    if input_kind == "sign" and (not ops or not _emits_bits(ops[-1])):
        ops.append(runtime.PackSigns())
    weight = layer.weight.detach()
    bits = kernels.pack_signs(_np(weight).astype(np.float32))
    alpha = _np(layer.scale().flatten()).astype(np.float64) if layer.scaling else np.ones(weight.shape[0])
    bias = _np(layer.bias).astype(np.float64) if layer.bias is not None else np.zeros(weight.shape[0])
    scale, shift = alpha, bias  # y = d * alpha + bias
    consumed = 1
    following = calls[i + 1][1] if i + 1 < len(calls) else None
    if isinstance(following, nn.BatchNorm1d):
        bn_scale, bn_shift = _bn_affine(following)
        scale, shift = scale * bn_scale, shift * bn_scale + bn_shift
        consumed = 2
    nxt = _next_module(calls, i + consumed)
    k = weight.shape[1]
    if isinstance(nxt, BinaryLinear) and _quantizer_kind(nxt.input_quantizer) == "sign":
        thresholds, flip = fold_sign_threshold(scale, shift)
        ops.append(runtime.BinaryDense(bits, k, "bits", thresholds=thresholds, flip=flip))
    else:
        ops.append(runtime.BinaryDense(bits, k, "float", scale=scale.astype(np.float32),
                                        shift=shift.astype(np.float32)))
    return consumed


def _emits_bits(op: runtime.Op) -> bool:
    return isinstance(op, runtime.BinaryDense) and op.output == "bits"

