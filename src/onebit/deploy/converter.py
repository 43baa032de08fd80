"""Convert a trained PyTorch model into a :class:`~onebit.deploy.runtime.PackedModel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..nn import BinaryConv2d, BinaryLinear, HardSigmoid, LearnableBias, QuantizedLayer, RPReLU
from ..quantizers import SIGN_LEVELS, STEP_LEVELS, Quantizer
from . import kernels, runtime

__all__ = ["convert", "UnsupportedModelError", "fold_sign_threshold"]

_SKIPPED = (nn.Dropout, nn.Identity)
_COMMUTE_WITH_SIGN = (*_SKIPPED, nn.Flatten, nn.MaxPool2d)  # sign(f(y)) = f(sign(y))


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


class _Call(NamedTuple):
    """One step of the chain the converter walks: a call of a leaf module (or
    :class:`~onebit.nn.QuantizedLayer`), a flatten done by ``forward`` (``module`` is an
    ``nn.Flatten``), or a residual block (``module`` is the block; ``branches`` holds the two
    chains whose outputs it adds)."""

    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    branches: tuple[list[_Call], list[_Call]] | None = None


class _Node:
    """A module call recorded by :func:`_trace`; containers have the calls they made as children."""

    def __init__(self, name: str, module: nn.Module, leaf: bool) -> None:
        self.name, self.module, self.leaf = name, module, leaf
        self.children: list[_Node] = []
        self.inputs: tuple = ()
        self.output: Any = None


def _hooked_modules(module: nn.Module, prefix: str = ""):
    """``(name, module, is_leaf)`` for the layers of :func:`~onebit.nn.layers.layers` and every
    container above them."""
    leaf = isinstance(module, QuantizedLayer) or not any(True for _ in module.children())
    yield prefix or type(module).__name__, module, leaf
    if not leaf:
        for name, child in module.named_children():
            yield from _hooked_modules(child, f"{prefix}.{name}" if prefix else name)


def _trace(model: nn.Module, example_input: torch.Tensor) -> _Node:
    """Run ``model`` once on ``example_input``; return the tree of its module calls (in call
    order, with inputs and outputs)."""
    stack = [_Node("", model, False)]

    def enter(name, leaf):
        def hook(module, inputs):
            node = _Node(name, module, leaf)
            stack[-1].children.append(node)
            stack.append(node)

        return hook

    def leave(module, inputs, output):
        node = stack.pop()
        node.inputs, node.output = inputs, output

    handles = []
    try:
        for name, module, leaf in _hooked_modules(model):
            handles += [module.register_forward_pre_hook(enter(name, leaf)), module.register_forward_hook(leave)]
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return stack[0].children[0]


_NOT_A_CHAIN = ("so the model is not a chain of modules (a residual addition other than branch(x) + branch(x) "
                "inside one module, a concatenation or other computation in forward() between modules)")


def _follows(x: Any, previous: torch.Tensor, error: str) -> list[_Call]:
    """``[]`` if ``x`` is ``previous``, a flatten step if it is ``previous`` flattened to
    ``(N, F)`` (a view, as ``forward``'s ``x.flatten(1)``); else raise ``error``."""
    if x is previous:
        return []
    if isinstance(x, torch.Tensor) and x.dim() == 2 and previous.dim() > 2 and \
            x.shape == (previous.shape[0], previous[0].numel()) and x.data_ptr() == previous.data_ptr():
        return [_Call("flatten in forward()", nn.Flatten(), previous, x)]
    raise UnsupportedModelError(f"{error}, {_NOT_A_CHAIN}")


def _chain(nodes: list[_Node], x: torch.Tensor, what: str) -> tuple[list[_Call], torch.Tensor, str]:
    """The calls of ``nodes`` run one after another from ``x`` (described by ``what``), each
    reading the previous output (possibly flattened); returns the calls, the last output and
    its description."""
    calls, previous = [], x
    for node in nodes:
        calls += _follows(node.inputs[0] if node.inputs else None, previous,
                          f"{node.name}: reads a tensor other than {what}")
        calls += _structure(node)
        previous, what = node.output, f"the output of {node.name}"
    return calls, previous, what


def _structure(node: _Node) -> list[_Call]:
    """Flatten the call tree into the chain of :class:`_Call` the converter walks.

    A container whose children form a chain (from its input to its output) is inlined. A
    container that returns ``a + b``, where ``a`` and ``b`` are the ends of two chains of its
    children that both start from its input (either may be empty, i.e. the input itself),
    becomes one residual step; the sum is checked on the traced values.
    """
    if len(node.inputs) != 1 or not isinstance(node.inputs[0], torch.Tensor) or \
            not isinstance(node.output, torch.Tensor):
        raise UnsupportedModelError(f"{node.name}: only modules with one tensor input and one tensor output convert")
    x = node.inputs[0]
    if node.leaf:
        return [_Call(node.name, node.module, x, node.output)]
    try:
        calls, last, what = _chain(node.children, x, f"the input of {node.name}")
        return calls + _follows(node.output, last, f"{node.name}: returns a tensor other than {what}")
    except UnsupportedModelError as not_a_chain:
        for k in range(len(node.children) + 1):
            try:
                main, a, _ = _chain(node.children[:k], x, f"the input of {node.name}")
                shortcut, b, _ = _chain(node.children[k:], x, f"the input of {node.name}")
            except UnsupportedModelError:
                continue
            if a.shape == b.shape == node.output.shape and torch.equal(a + b, node.output):
                return [_Call(node.name, node.module, x, node.output, (main, shortcut))]
        raise not_a_chain from None


def _packs_signs(q: nn.Module | None) -> bool:
    """Whether ``q`` is a quantizer whose eval-mode output is the sign, 0 -> +1: one that packs
    (:class:`~onebit.quantizers.Quantizer`) with levels (-1, 1)."""
    return isinstance(q, Quantizer) and q.packs and tuple(q.levels) == SIGN_LEVELS


def _why_not_signs(q: nn.Module) -> str:
    """Why ``q`` (not :func:`_packs_signs`) cannot binarize a binary layer's weight or input."""
    if not isinstance(q, Quantizer):
        return f"{type(q).__name__} is not a onebit.quantizers.Quantizer"
    if not q.packs:
        return f"{type(q).__name__} does not pack (its eval-mode output is not a threshold at zero)"
    return f"{type(q).__name__} outputs {tuple(q.levels)}, and binary layers compute on signs {SIGN_LEVELS}"


def convert(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    input_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> runtime.PackedModel:
    """Convert a trained model into a bit-packed :class:`~onebit.deploy.runtime.PackedModel`.

    The model runs once (eval mode) on ``example_input`` (a batch shaped like real inputs) to
    find the order of its layers; it must be a chain of supported modules (each reads the
    previous one's output, possibly flattened by ``forward``), where a module may also be a
    residual block returning ``branch_a(x) + branch_b(x)`` of two such chains of its children
    (e.g. :class:`~onebit.models.cifar.BiRealBlock`). Supported modules:

    - :class:`~onebit.nn.BinaryLinear` and :class:`~onebit.nn.BinaryConv2d` (sign weights, real
      or sign inputs, the signs by quantizers that pack with levels (-1, 1), optional XNOR
      scaling, square stride / zero padding), with a directly following ``MaxPool2d``
      (convolutions) and ``BatchNorm1d/2d`` folded in. When the value
      is binarized next, by the next binary layer's sign input quantizer or a sign module
      (possibly after max pooling, flattening or dropout, which commute with the sign),
      batch norm and sign become integer thresholds on the popcount and the layer outputs
      packed bits (see :class:`~onebit.deploy.runtime.BinaryConv2d` for pooling before the
      batch norm);
    - float ``nn.Linear``, ``nn.Conv2d``, ``BatchNorm1d/2d``, ``MaxPool2d``, ``ReLU``,
      ``nn.Flatten`` (and the flattening a model's ``forward`` does between modules or at its
      end), :class:`~onebit.nn.HardSigmoid`, :class:`~onebit.nn.LearnableBias` (into a binary
      layer's thresholds where it follows one, else a float affine op) and
      :class:`~onebit.nn.RPReLU`, and every :class:`~onebit.quantizers.Quantizer`
      that packs (its ``packs`` attribute: at eval, a threshold at zero onto its ``levels``):
      a sign (``SignSTE``, ``StochasticSign``, ``ApproxSign``, or a quantizer of one's own)
      or a step (a :class:`~onebit.quantizers.BinaryNeuron` that does not sample at eval);
    - ``AvgPool2d`` and global ``AdaptiveAvgPool2d(1)`` on float maps;
    - ``Dropout`` and ``Identity`` (dropped).

    Few-shot models (:class:`~onebit.models.MatchingNetwork`, ...) called with images alone
    return embeddings, so ``convert(model, images)`` converts their encoder; the result
    maps images to embeddings (±1 values for a sign-terminated encoder).

    ``input_normalization=(mean, std)``, per channel in [0, 1] pixel units (what the model's
    inputs were normalized with: ``x = (pixel / 255 - mean) / std``), lets the packed model also
    take raw uint8 images; a binary first dense layer then computes its product exactly from
    the 8 bit planes of the pixels instead of in float (see
    :class:`~onebit.deploy.runtime.BinaryDense`). It is stored as ``meta["input_quantization"]``.

    Raises:
        UnsupportedModelError: naming the first module that cannot be converted and why.
        ValueError: ``input_normalization`` does not match the input's channels or has a
            non-positive std.
    """
    was_training = model.training
    model.eval()
    try:
        tree = _trace(model, example_input)
    finally:
        model.train(was_training)
    calls = _structure(tree)
    ops: list[runtime.Op] = []
    _convert_chain(ops, calls)
    if _carries_bits(ops):
        ops.append(runtime.UnpackSigns())
    meta = {"input_shape": list(example_input.shape[1:]), "source": type(model).__name__}
    if input_normalization is not None:
        meta["input_quantization"] = _input_quantization(input_normalization, example_input.shape[1])
    return runtime.PackedModel(ops, meta)


def _input_quantization(normalization, channels: int) -> dict[str, list[float]]:
    """``x = (p / 255 - mean) / std = p * scale + offset`` per channel."""
    mean, std = (np.asarray(v, np.float64).reshape(-1) for v in normalization)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"input_normalization has {len(mean)} means and {len(std)} stds for {channels} channels")
    if not np.all(std > 0):
        raise ValueError(f"input_normalization std must be positive, got {std.tolist()}")
    return {"scale": (1.0 / (255.0 * std)).tolist(), "offset": (-mean / std).tolist()}


def _convert_chain(ops: list[runtime.Op], calls: list[_Call]) -> None:
    i = 0
    while i < len(calls):
        i += _convert_one(ops, calls, i)


def _carries_bits(ops: list[runtime.Op]) -> bool:
    """Whether the chain so far ends in packed :class:`~onebit.deploy.runtime.Bits`."""
    bits = False
    for op in ops:
        bits = op.emits_bits(bits)
    return bits


def _append(ops: list[runtime.Op], op: runtime.Op) -> None:
    """Append ``op``, unpacking bits to ±1 floats first if it only takes floats."""
    if not op.accepts_bits and _carries_bits(ops):
        ops.append(runtime.UnpackSigns())
    ops.append(op)


def _sign_follows(calls: list[_Call], j: int) -> bool:
    """Whether the value entering ``calls[j]`` is binarized by a sign next: a sign module, or
    a binary layer's sign input quantizer, after only modules that commute with the sign
    (``sign(maxpool(y)) = maxpool(sign(y))`` as sign is monotone; flatten and dropout/identity
    at eval act elementwise)."""
    while j < len(calls) and isinstance(calls[j].module, _COMMUTE_WITH_SIGN):
        j += 1
    if j == len(calls):
        return False
    module = calls[j].module
    if isinstance(module, QuantizedLayer):
        return _packs_signs(module.input_quantizer)
    return _packs_signs(module)


def _convert_one(ops: list[runtime.Op], calls: list[_Call], i: int) -> int:
    """Append the op(s) for ``calls[i]`` (and modules fused into it); return how many calls
    were consumed."""
    name, module = calls[i].name, calls[i].module
    if calls[i].branches is not None:
        main, shortcut = calls[i].branches
        _append(ops, runtime.ResidualBegin())
        _convert_chain(ops, main)
        _append(ops, runtime.ResidualBranch())
        _convert_chain(ops, shortcut)
        _append(ops, runtime.ResidualAdd())
        return 1
    if isinstance(module, _SKIPPED):
        return 1
    if isinstance(module, (BinaryLinear, BinaryConv2d)):
        return _binary_layer(ops, calls, i)
    if isinstance(module, QuantizedLayer):
        raise UnsupportedModelError(f"{name}: {type(module).__name__} is not supported")
    if isinstance(module, Quantizer):
        if not module.packs:
            raise UnsupportedModelError(f"{name}: {type(module).__name__} does not pack (its eval-mode output is not "
                                        "a threshold at zero, e.g. it samples at eval time), so it has no "
                                        "deterministic packed form")
        if tuple(module.levels) == SIGN_LEVELS:
            if not _carries_bits(ops):  # on packed bits (±1 values) the sign is the identity
                ops.append(runtime.Sign())
            return 1
        assert tuple(module.levels) == STEP_LEVELS  # Quantizer allows these two
        _append(ops, runtime.Step())
        return 1
    if isinstance(module, nn.Linear):
        op = runtime.Linear(_np(module.weight).astype(np.float32), _bias(module))
    elif isinstance(module, nn.Conv2d):
        op = runtime.Conv2d(_np(module.weight).astype(np.float32), _bias(module), *_conv_geometry(name, module))
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _bn_affine(module)
        op = runtime.Affine(scale.astype(np.float32), shift.astype(np.float32))
    elif isinstance(module, nn.MaxPool2d):
        op = runtime.MaxPool2d(*_pool_geometry(name, module))
    elif isinstance(module, nn.AvgPool2d):
        k, st = module.kernel_size, module.stride
        if module.padding not in (0, (0, 0)) or module.ceil_mode or module.divisor_override is not None or \
                not isinstance(k, int) or not isinstance(st, int):
            raise UnsupportedModelError(f"{name}: only unpadded square average pooling converts")
        op = runtime.AvgPool2d(k, st)
    elif isinstance(module, nn.AdaptiveAvgPool2d):
        h, w = calls[i].input.shape[2:]
        if module.output_size not in (1, (1, 1)) or h != w:
            raise UnsupportedModelError(f"{name}: only global average pooling of square maps converts")
        op = runtime.AvgPool2d(h, h)
    elif isinstance(module, nn.ReLU):
        op = runtime.ReLU()
    elif isinstance(module, LearnableBias):
        op = runtime.Affine(np.ones(module.bias.numel(), np.float32), _np(module.bias).astype(np.float32))
    elif isinstance(module, RPReLU):
        op = runtime.RPReLU(*(_np(v).astype(np.float32) for v in (module.shift_in, module.slope, module.shift_out)))
    elif isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedModelError(f"{name}: only Flatten(start_dim=1, end_dim=-1) converts")
        op = runtime.Flatten()
    elif isinstance(module, HardSigmoid):
        op = runtime.HardSigmoid(module.slope)
    else:
        raise UnsupportedModelError(f"{name}: {type(module).__name__} has no packed equivalent")
    _append(ops, op)
    return 1


def _conv_geometry(name: str, module: nn.Conv2d) -> tuple[int, int]:
    """``(stride, padding)`` of a square, ungrouped, undilated, zero-padded convolution."""
    if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros" or \
            len(set(module.stride)) != 1 or not isinstance(module.padding, tuple) or len(set(module.padding)) != 1:
        raise UnsupportedModelError(f"{name}: only square, ungrouped, undilated, zero-padded convolutions convert")
    return module.stride[0], module.padding[0]


def _pool_geometry(name: str, module: nn.MaxPool2d) -> tuple[int, int]:
    """``(kernel, stride)`` of an unpadded square max pooling."""
    k, s = module.kernel_size, module.stride
    if module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode or \
            not isinstance(k, int) or not isinstance(s, int):
        raise UnsupportedModelError(f"{name}: only unpadded square max pooling converts")
    return k, s


def _bias(module: nn.Module) -> np.ndarray:
    n = module.weight.shape[0]
    return np.zeros(n, np.float32) if module.bias is None else _np(module.bias).astype(np.float32)


def _binary_layer(ops: list[runtime.Op], calls: list[_Call], i: int) -> int:
    r"""A binary linear / conv layer and what folds into it: ``layer -> [MaxPool2d] ->
    [BatchNorm] -> [LearnableBias] -> [sign]``.

    The layer computes :math:`y = \alpha\, d + b` from the ±1 product ``d`` (``alpha`` the
    XNOR scale or 1, ``b`` its bias); a batch norm :math:`z = s_{bn} y + t_{bn}` makes it
    :math:`z = \text{scale}\cdot d + \text{shift}` with :math:`\text{scale} = s_{bn}\alpha`,
    :math:`\text{shift} = s_{bn} b + t_{bn}`. A max pool between layer and batch norm acts on
    ``d`` (``alpha >= 0``). A learnable bias after it (:class:`~onebit.nn.LearnableBias`,
    ReActNet's learned threshold) adds to ``shift``. When a sign follows (:func:`_sign_follows`),
    ``sign(z)`` becomes ``(d >= t) XOR flip`` (:func:`fold_sign_threshold`) and the op emits
    packed bits.
    """
    name, layer = calls[i].name, calls[i].module
    conv = isinstance(layer, BinaryConv2d)
    if not layer.has_binary_weight:
        if layer.has_binary_input:
            raise UnsupportedModelError(f"{name}: binary inputs times float weights have no packed form (the "
                                        "binary-activations recipe is the first step of two-step training); convert "
                                        "the second step's network (bnn or xnor, trained with init_from)")
        raise UnsupportedModelError(f"{name}: {type(layer).__name__} without a weight quantizer has float weights; "
                                    "use nn.Linear / nn.Conv2d")
    if not _packs_signs(layer.weight_quantizer):
        raise UnsupportedModelError(f"{name}: weight quantizer {_why_not_signs(layer.weight_quantizer)}")
    if layer.has_binary_input and not _packs_signs(layer.input_quantizer):
        raise UnsupportedModelError(f"{name}: input quantizer {_why_not_signs(layer.input_quantizer)}")
    if layer.has_binary_input and not _carries_bits(ops):
        ops.append(runtime.PackSigns())
    weight = _np(layer.weight).astype(np.float32)
    n_out = weight.shape[0]
    scale = _np(layer.scale().flatten()).astype(np.float64) if layer.scaling else np.ones(n_out)
    shift = _np(layer.bias).astype(np.float64) if layer.bias is not None else np.zeros(n_out)
    j, pool = i + 1, (0, 0)
    if conv and j < len(calls) and isinstance(calls[j].module, nn.MaxPool2d):
        pool = _pool_geometry(calls[j].name, calls[j].module)
        j += 1
    norm = nn.BatchNorm2d if conv else nn.BatchNorm1d
    if j < len(calls) and isinstance(calls[j].module, norm):
        bn_scale, bn_shift = _bn_affine(calls[j].module)
        scale, shift = scale * bn_scale, shift * bn_scale + bn_shift
        j += 1
    while j < len(calls) and isinstance(calls[j].module, LearnableBias):  # learned thresholds: into the shift
        shift = shift + _np(calls[j].module.bias).astype(np.float64)
        j += 1
    if _sign_follows(calls, j):
        thresholds, flip = fold_sign_threshold(scale, shift)
        epilogue = {"output": "bits", "thresholds": thresholds, "flip": flip}
    else:
        epilogue = {"output": "float", "scale": scale.astype(np.float32), "shift": shift.astype(np.float32)}
    if conv:
        stride, padding = _conv_geometry(name, layer)
        bits = kernels.pack_signs(weight.transpose(0, 2, 3, 1))  # (C_out, kh, kw, ceil(C_in / 64))
        ops.append(runtime.BinaryConv2d(bits, weight.shape[1], stride=stride, padding=padding, pool_kernel=pool[0],
                                        pool_stride=pool[1], **epilogue))
    else:
        ops.append(runtime.BinaryDense(kernels.pack_signs(weight), weight.shape[1], **epilogue))
    return j - i
