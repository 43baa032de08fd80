"""Numpy-only inference of converted models (no torch import, here or below).

A :class:`PackedModel` is a chain of ops. Between ops flows either a float32 array in the
layout PyTorch uses (``(N, C, H, W)`` or ``(N, F)``) or :class:`Bits`: ±1 activations packed
64 per uint64 word along the feature axis (bit 1 = +1, see :mod:`onebit.deploy.kernels`):
``(N, Fw)`` for feature vectors, ``(N, H, W, Cw)`` (NHWC, channels packed) for feature maps.
Feature vectors always keep PyTorch's feature order (a flattened map is ordered ``c, y, x``).
A model converted with its input normalization also takes raw 8-bit images; they flow as
:class:`Pixels` into the first ops that take them (``accepts_pixels``: flatten, and a binary
dense layer, which computes its product exactly in integers: uint8 x ±1, AVX512-VNNI) and are
dequantized before any other op.

Each op says whether it takes :class:`Bits` (``accepts_bits``) and whether it emits them
(:meth:`Op.emits_bits`); the converter inserts :class:`PackSigns` / :class:`UnpackSigns`
where the two representations meet. A residual block ``y = main(x) + shortcut(x)`` is the
sequence ``residual_begin, main ops, residual_branch, shortcut ops, residual_add``: those three
ops also get the model's value stack (:attr:`Op.uses_stack`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from . import _threads, fileformat, kernels

__all__ = ["Bits", "Pixels", "PackedModel", "load", "OPS"]

_TASK_MIN_ROWS = 8  # inputs per thread below which a forward pass runs on the calling thread alone
_IM2COL_BYTES = 1 << 23  # receptive fields built at a time by float convolutions (8 MiB)
# byte -> its 8 bits as -1.0/+1.0, least significant bit first (the packing's bit order)
_SIGN_TABLE = (2 * ((np.arange(256)[:, None] >> np.arange(8)) & 1) - 1).astype(np.float32)


class Bits(NamedTuple):
    """Packed ±1 activations: ``words`` uint64 ``(N, ceil(k / 64))`` (``k`` features) or
    ``(N, H, W, ceil(k / 64))`` (NHWC maps of ``k`` channels)."""

    words: np.ndarray
    k: int


class Pixels(NamedTuple):
    """8-bit input codes whose real value is ``codes * scale + offset``.

    Shape:
        - ``codes``: uint8, the model's input layout ``(N, C, H, W)`` or flattened ``(N, F)``
        - ``scale``, ``offset``: floats (the form ops with ``accepts_pixels`` take), or arrays
          broadcasting against ``codes`` (per channel, only ever dequantized)
    """

    codes: np.ndarray
    scale: float | np.ndarray
    offset: float | np.ndarray

    def dequantize(self) -> np.ndarray:
        """float32 values, shaped like ``codes``."""
        return (self.codes.astype(np.float32) * np.asarray(self.scale, np.float32)
                + np.asarray(self.offset, np.float32))


def _float(x, op: str) -> np.ndarray:
    if isinstance(x, Bits):
        raise TypeError(f"{op} needs float input, got packed bits (converter bug)")
    return x


def _unpack_float(words: np.ndarray, k: int) -> np.ndarray:
    """±1 float32 values of the first ``k`` bits of each row of ``words`` (last axis)."""
    words = np.ascontiguousarray(words)
    signs = _SIGN_TABLE[words.view(np.uint8)].reshape(*words.shape[:-1], -1)
    return signs[..., :k]


def _pool(x: np.ndarray, kernel: int, stride: int, axes: tuple[int, int], mean: bool = False) -> np.ndarray:
    """Unpadded max (or ``mean``) pooling of ``x`` over the two spatial ``axes``."""
    ya, xa = axes
    ho, wo = (x.shape[ya] - kernel) // stride + 1, (x.shape[xa] - kernel) // stride + 1
    out = None
    for dy in range(kernel):
        for dx in range(kernel):
            index = [slice(None)] * x.ndim
            index[ya] = slice(dy, dy + stride * (ho - 1) + 1, stride)
            index[xa] = slice(dx, dx + stride * (wo - 1) + 1, stride)
            tap = x[tuple(index)]
            if out is None:
                out = tap.copy()
            else:
                (np.add if mean else np.maximum)(out, tap, out=out)
    return out / np.float32(kernel * kernel) if mean else out


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """Receptive fields of NCHW ``x`` (zero padded): ``(N, Ho, Wo, kh * kw * C)``, ordered
    tap-major with the channel fastest (the layout of ``weight.transpose(0, 2, 3, 1)``)."""
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = cols.shape[2:4]
    return cols.transpose(0, 2, 3, 4, 5, 1).reshape(n, ho, wo, kh * kw * c)


def _conv_matmul(x: np.ndarray, product, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """A convolution of NCHW ``x`` as products of its receptive fields: ``(N, Ho, Wo, C_out)``.

    ``product`` maps receptive fields ``(rows, kh * kw * C)`` (tap-major, channel fastest, in
    ``x``'s dtype) to their outputs ``(rows, C_out)``. The fields are built a few images at a
    time (:data:`_IM2COL_BYTES`): a whole batch's im2col would take gigabytes and run at memory
    speed.
    """
    n, c, h, wd = x.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    images = max(1, _IM2COL_BYTES // (x.itemsize * ho * wo * kh * kw * c))
    blocks = []
    for first in range(0, n, images):
        cols = _im2col(x[first : first + images], kh, kw, stride, padding)
        blocks.append(product(cols.reshape(-1, cols.shape[-1])))  # one 2-D product (a 4-D one runs per image row)
    out = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return out.reshape(n, ho, wo, -1)


@dataclass
class Op:
    """Base class: ``params`` go to the file header, ``arrays`` to its data section."""

    kind: ClassVar[str]
    array_names: ClassVar[tuple[str, ...]] = ()
    #: the op takes :class:`Bits` as well as float arrays
    accepts_bits: ClassVar[bool] = False
    #: the op takes :class:`Pixels` (else the model dequantizes them to float32 first)
    accepts_pixels: ClassVar[bool] = False
    #: ``__call__(x, stack)``: the op also reads / writes the model's value stack (residual blocks)
    uses_stack: ClassVar[bool] = False

    def emits_bits(self, bits_in: bool) -> bool:
        """Whether the output is :class:`Bits`, given whether the input is."""
        return False

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.array_names}

    def __call__(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Flatten(Op):
    """``(N, ...) -> (N, F)`` in PyTorch's order. Packed NHWC maps are reordered to
    ``c, y, x`` (unpacked, transposed and packed again), so the features that follow keep
    PyTorch's flatten order."""

    kind = "flatten"
    accepts_bits = True

    def emits_bits(self, bits_in):
        return bits_in

    accepts_pixels = True

    def __call__(self, x):
        if isinstance(x, Pixels):
            return x._replace(codes=x.codes.reshape(x.codes.shape[0], -1))
        if isinstance(x, Bits):
            if x.words.ndim == 2:
                return x
            signs = kernels.unpack_signs(x.words, x.k, dtype=np.int8)  # (N, H, W, C)
            flat = signs.transpose(0, 3, 1, 2).reshape(signs.shape[0], -1)
            return Bits(kernels.pack_signs(flat), flat.shape[1])
        return x.reshape(x.shape[0], -1)


@dataclass
class Affine(Op):
    """``y = x * scale + shift`` per channel (axis 1): a folded batch norm."""

    scale: np.ndarray
    shift: np.ndarray
    kind = "affine"
    array_names = ("scale", "shift")

    def __call__(self, x):
        x = _float(x, self.kind)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


@dataclass
class RPReLU(Op):
    """ReActNet's RPReLU per channel (axis 1), in float32 in this order:
    ``t = x - shift_in; y = (t if t >= 0 else slope * t) + shift_out``."""

    shift_in: np.ndarray
    slope: np.ndarray
    shift_out: np.ndarray
    kind = "rprelu"
    array_names = ("shift_in", "slope", "shift_out")

    def __call__(self, x):
        x = _float(x, self.kind)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        t = x - self.shift_in.reshape(shape)
        return np.where(t >= 0, t, t * self.slope.reshape(shape)) + self.shift_out.reshape(shape)


@dataclass
class ReLU(Op):
    kind = "relu"

    def __call__(self, x):
        return np.maximum(_float(x, self.kind), 0)


@dataclass
class HardSigmoid(Op):
    slope: float
    kind = "hard_sigmoid"

    def params(self):
        return {"slope": self.slope}

    def __call__(self, x):
        return np.clip((np.float32(self.slope) * _float(x, self.kind) + 1) / 2, 0, 1)


@dataclass
class Step(Op):
    """A binary neuron at eval: 1 where ``x >= 0`` else 0 (as float32)."""

    kind = "step"

    def __call__(self, x):
        return (_float(x, self.kind) >= 0).astype(np.float32)


@dataclass
class Sign(Op):
    """A sign activation on real values: +1 where ``x >= 0`` else -1 (as float32)."""

    kind = "sign"

    def __call__(self, x):
        return np.where(_float(x, self.kind) >= 0, np.float32(1), np.float32(-1))


@dataclass
class MaxPool2d(Op):
    """Unpadded max pooling; on :class:`Bits` the max of ±1 values is the OR of their bits
    (:func:`~onebit.deploy.kernels.binary_maxpool2d`)."""

    kernel: int
    stride: int
    kind = "maxpool2d"
    accepts_bits = True

    def emits_bits(self, bits_in):
        return bits_in

    def params(self):
        return {"kernel": self.kernel, "stride": self.stride}

    def __call__(self, x):
        if isinstance(x, Bits):
            return Bits(kernels.binary_maxpool2d(x.words, self.kernel, self.stride), x.k)
        return _pool(x, self.kernel, self.stride, axes=(2, 3))


@dataclass
class AvgPool2d(Op):
    """Unpadded average pooling of float NCHW maps (global pooling: ``kernel`` = map size)."""

    kernel: int
    stride: int
    kind = "avgpool2d"

    def params(self):
        return {"kernel": self.kernel, "stride": self.stride}

    def __call__(self, x):
        return _pool(_float(x, self.kind), self.kernel, self.stride, axes=(2, 3), mean=True)


@dataclass
class ResidualBegin(Op):
    """Start of a residual block ``y = main(x) + shortcut(x)``: keep ``x`` on the stack and
    continue with the main branch."""

    kind = "residual_begin"
    uses_stack = True

    def __call__(self, x, stack):
        stack.append(_float(x, self.kind))
        return x


@dataclass
class ResidualBranch(Op):
    """End of the main branch: keep ``main(x)`` on the stack, continue with ``x`` (the shortcut)."""

    kind = "residual_branch"
    uses_stack = True

    def __call__(self, x, stack):
        main = _float(x, self.kind)
        x = stack.pop()
        stack.append(main)
        return x


@dataclass
class ResidualAdd(Op):
    """End of the shortcut branch: ``main(x) + shortcut(x)``."""

    kind = "residual_add"
    uses_stack = True

    def __call__(self, x, stack):
        return stack.pop() + _float(x, self.kind)


@dataclass
class Linear(Op):
    """Float fully connected layer, ``y = x W^T + b``: the products summed in float64 and
    rounded once to float32 before the bias is added (float32 products are exact in float64, so
    the result hardly depends on the order of summation, and the exported C code gets the
    same float32 values)."""

    weight: np.ndarray
    bias: np.ndarray
    kind = "linear"
    array_names = ("weight", "bias")

    def __post_init__(self) -> None:
        self._weight64 = self.weight.astype(np.float64)

    def __call__(self, x):
        products = _float(x, self.kind).astype(np.float64) @ self._weight64.T
        return products.astype(np.float32) + self.bias


@dataclass
class Conv2d(Op):
    """Float convolution (im2col + matmul), NCHW like ``F.conv2d``, summed in float64 and
    rounded once to float32 before the bias is added, as :class:`Linear`."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    kind = "conv2d"
    array_names = ("weight", "bias")

    def params(self):
        return {"stride": self.stride, "padding": self.padding}

    def __post_init__(self) -> None:
        co = self.weight.shape[0]
        self._weight64 = self.weight.transpose(0, 2, 3, 1).reshape(co, -1).astype(np.float64)

    def __call__(self, x):
        _, _, kh, kw = self.weight.shape
        x = _float(x, self.kind).astype(np.float64)
        out = _conv_matmul(x, lambda cols: cols @ self._weight64.T, kh, kw, self.stride, self.padding)
        out = out.astype(np.float32)
        out += self.bias
        return out.transpose(0, 3, 1, 2)


@dataclass
class PackSigns(Op):
    """Float -> :class:`Bits` (``x >= 0`` is +1): ``(N, F)`` vectors, or NCHW maps packed
    as NHWC."""

    kind = "pack_signs"

    def emits_bits(self, bits_in):
        return True

    def __call__(self, x):
        x = _float(x, self.kind)
        if x.ndim == 4:
            return Bits(kernels.pack_signs(x.transpose(0, 2, 3, 1)), x.shape[1])
        return Bits(kernels.pack_signs(x), x.shape[1])


@dataclass
class UnpackSigns(Op):
    """:class:`Bits` -> float32 ±1 values in PyTorch's layout (NHWC maps become NCHW)."""

    kind = "unpack_signs"
    accepts_bits = True

    def __call__(self, x):
        if not isinstance(x, Bits):
            raise TypeError("unpack_signs needs packed bits (converter bug)")
        values = _unpack_float(x.words, x.k)
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2)) if values.ndim == 4 else values


def pixel_thresholds(thresholds: np.ndarray, scale: float, offset: float, weight_sums: np.ndarray) -> np.ndarray:
    r"""Integer thresholds on the exact product :math:`P = c\,S^\top` of a binary layer on
    pixels ``x = scale * c + offset``: per output channel, the smallest integer ``T`` with
    ``P * scale + offset * sum(S) >= t`` evaluated in float64 (the pre-activation of
    :class:`BinaryDense` and :class:`BinaryConv2d` on :class:`Pixels`), so that the output bit is
    ``(P >= T) XOR flip``. Found from the real-valued solution by stepping over the few integers
    rounding can move it by; ``scale > 0`` makes the expression non-decreasing in ``P``. int32
    ``(C_out,)``: thresholds no product reaches (``+inf``, NaN) become the int32 maximum, ``-inf``
    the minimum."""
    if not scale > 0:
        raise ValueError(f"input scale must be positive, got {scale}")
    t = np.asarray(thresholds, np.float64)
    base = np.float64(offset) * np.asarray(weight_sums, np.float64)
    finite = np.isfinite(t)
    guess = np.clip(np.ceil((np.where(finite, t, 0.0) - base) / np.float64(scale)), -(2.0**40), 2.0**40)

    def reaches(products: np.ndarray) -> np.ndarray:
        return products * np.float64(scale) + base >= t

    while (down := finite & reaches(guess - 1)).any():
        guess[down] -= 1
    while (up := finite & ~reaches(guess)).any():
        guess[up] += 1
    limits = np.iinfo(np.int32)
    out = np.where(finite, guess, np.where(t < 0, limits.min, limits.max))
    return np.clip(out, limits.min, limits.max).astype(np.int32)


class _BinaryLayer(Op):
    r"""What :class:`BinaryDense` and :class:`BinaryConv2d` share: 1-bit weights ``S`` and
    the epilogue applied to the pre-activation ``d`` (output channels on the last axis).

    ``d`` is the exact integer XNOR-popcount product when the input is :class:`Bits`, and when
    the input is real a float32 sum in a fixed order, :math:`d = 2 P - T` with :math:`P` the sum of
    the inputs whose weight is +1 and :math:`T` the sum of all inputs, each accumulated in input
    order (:func:`~onebit.deploy.kernels.real_matmul_prepared`; the weights keep one bit each):
    ``d`` does not depend on how the batch is split, and the exported C code
    (:mod:`onebit.deploy.export_c`) computes the same bits. Output, per output channel ``c``:

    - ``"bits"``: :math:`(d_c \ge t_c) \oplus \text{flip}_c`, i.e. the sign of
      :math:`\text{scale}_c\, d_c + \text{shift}_c` (XNOR scale, bias, batch norm and the
      sign that follows, folded by :func:`onebit.deploy.converter.fold_sign_threshold`);
      packed for the next binary layer.
    - ``"float"``: :math:`d_c \cdot \text{scale}_c + \text{shift}_c`.

    ``thresholds`` (float64) act on integer ``d`` as their ceiling, on float32 ``d`` as
    themselves (``d`` is compared in float64).
    """

    accepts_bits = True
    output: str
    thresholds: np.ndarray
    flip: np.ndarray
    scale: np.ndarray
    shift: np.ndarray

    def emits_bits(self, bits_in):
        return self.output == "bits"

    def _init_epilogue(self) -> None:
        if self.output not in ("bits", "float"):
            raise ValueError(f"output must be 'bits' or 'float', got {self.output!r}")
        self._int_thresholds = None
        if self.output == "bits":
            self._int_thresholds = np.clip(np.ceil(self.thresholds), -(2**31), 2**31 - 1).astype(np.int32)
        self._pixel_thresholds: dict[tuple[float, float], np.ndarray] = {}

    def _pixel_epilogue(self, products: np.ndarray, x: Pixels, channels: int):
        """The epilogue of exact integer products ``c S`` of :class:`Pixels` ``x``: their bits by
        :func:`pixel_thresholds` (computed once per input quantization), or the floats of
        ``d = s P + o \\Sigma S`` in float64."""
        if self.output == "bits":
            return Bits(kernels.threshold_bits(products, self._pixel_int_thresholds(x), self.flip), channels)
        return self._epilogue(products * x.scale + x.offset * self._weight_sums.astype(np.float64), channels)

    def _pixel_int_thresholds(self, x: Pixels) -> np.ndarray:
        """:func:`pixel_thresholds` for ``x``'s quantization (computed once per quantization)."""
        key = (x.scale, x.offset)
        if key not in self._pixel_thresholds:
            self._pixel_thresholds[key] = pixel_thresholds(self.thresholds, x.scale, x.offset, self._weight_sums)
        return self._pixel_thresholds[key]

    def _epilogue(self, dot: np.ndarray, channels: int):
        """``dot (..., C_out)`` (int or float) -> :class:`Bits` or float32, channels last."""
        if self.output == "bits":
            return Bits(kernels.threshold_bits(dot, self.thresholds, self.flip), channels)
        out = dot.astype(np.float32, copy=False)  # int32 dots are exact in float32 (|d| < 2**24)
        out *= self.scale
        out += self.shift
        return out


@dataclass
class BinaryDense(_BinaryLayer):
    r"""Fully connected layer with 1-bit weights ``S`` (stored packed, ``(N, ceil(K/64))``):
    :math:`d = x S^\top`, then the epilogue of :class:`_BinaryLayer`. Real inputs given as
    :class:`Pixels` ``x = s c + o`` give :math:`d = s\,(c S^\top) + o\,\Sigma S` with the
    integer product :math:`c S^\top` computed exactly by
    :func:`~onebit.deploy.kernels.pixel_matmul_prepared` (weights prepared for it on first use)."""

    accepts_pixels = True

    weight_bits: np.ndarray
    k: int
    output: str
    scale: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    thresholds: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    flip: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    kind = "binary_dense"
    array_names = ("weight_bits", "scale", "shift", "thresholds", "flip")

    def __post_init__(self) -> None:
        self._init_epilogue()
        self._prepared = kernels.prepare_weights(np.ascontiguousarray(self.weight_bits))
        self._weight_sums = kernels.sign_sums(self.weight_bits, self.k)
        self._real: kernels.PreparedRealWeights | None = None
        self._pixel_weights: kernels.PreparedPixelWeights | None = None

    def params(self):
        return {"k": self.k, "output": self.output}

    @property
    def out_features(self) -> int:
        return self.weight_bits.shape[0]

    def __call__(self, x):
        if isinstance(x, Bits):
            if x.k != self.k or x.words.ndim != 2:
                raise ValueError(f"binary_dense expects {self.k} packed input features, got {x.k} "
                                 f"in words of shape {x.words.shape}")
            if self.output == "bits":
                bits = kernels.binary_matmul_threshold(x.words, self._prepared, self.k, self._int_thresholds, self.flip)
                return Bits(bits, self.out_features)
            dot = kernels.binary_matmul_prepared(x.words, self._prepared, self.k)
        elif isinstance(x, Pixels):
            if x.codes.ndim != 2 or x.codes.shape[1] != self.k:
                raise ValueError(f"binary_dense expects {self.k} input features, got codes of shape {x.codes.shape}")
            if self._pixel_weights is None:
                self._pixel_weights = kernels.prepare_pixel_weights(self.weight_bits, self.k)
            if self.output == "bits":
                bits = kernels.pixel_matmul_threshold(x.codes, self._pixel_weights, self._pixel_int_thresholds(x),
                                                      self.flip)
                return Bits(bits, self.out_features)
            return self._pixel_epilogue(kernels.pixel_matmul_prepared(x.codes, self._pixel_weights), x,
                                        self.out_features)
        else:
            if x.shape[1] != self.k:
                raise ValueError(f"binary_dense expects {self.k} input features, got {x.shape[1]}")
            if self._real is None:
                self._real = kernels.prepare_real_weights(self.weight_bits, self.k)
            dot = kernels.real_matmul_prepared(x, self._real)
        return self._epilogue(dot, self.out_features)


@dataclass
class BinaryConv2d(_BinaryLayer):
    r"""Convolution with 1-bit weights ``S`` (stored packed along input channels,
    ``(C_out, kh, kw, ceil(C_in / 64))``), zero padding, optionally followed by max pooling
    of the pre-activations (``pool_kernel > 0``), then the epilogue of :class:`_BinaryLayer`.

    :math:`d = x \star S`: on packed NHWC :class:`Bits` with
    :func:`~onebit.deploy.kernels.binary_conv2d` (padding contributes exactly 0), on real NCHW
    input by :func:`~onebit.deploy.kernels.real_matmul_prepared` of its receptive fields.

    Raw 8-bit images given as :class:`Pixels` ``x = s c + o`` reach an unpadded convolution
    (``padding == 0``, so every tap sees a pixel) undequantized: :math:`d = s\,(c \star S) +
    o\,\Sigma S`, with the integer product :math:`c \star S` exact (a float32 product of
    integers below :math:`2^{24}`, float64 beyond) and :math:`\Sigma S` each output channel's
    sum of weights, evaluated in float64 as :class:`BinaryDense` does. A padded convolution
    gets the dequantized floats: its border taps see zeros, not pixels.

    Pooling comes *before* the batch norm here (``conv -> MaxPool -> BN -> sign``, as in
    BinaryNet). The comparison :math:`d \ge t` is monotone non-decreasing in ``d``, so
    :math:`\max_w d \ge t \iff \mathrm{OR}_w (d \ge t)` and, for every channel (negative
    batch-norm scales included, where the flip turns the max into a min),

    .. math:: \mathrm{sign}(\text{scale}\cdot\max_w d + \text{shift})
              = \Big(\mathrm{OR}_w\,(d \ge t)\Big) \oplus \text{flip}.

    On packed input this runs as the fused threshold convolution without the flip, a bitwise
    OR pool, and an XOR with the packed flips. Float outputs pool ``d`` itself, then scale.
    Bits come out NHWC; floats NCHW.
    """

    weight_bits: np.ndarray
    c_in: int
    output: str
    stride: int = 1
    padding: int = 0
    pool_kernel: int = 0
    pool_stride: int = 0
    scale: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    thresholds: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    flip: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    kind = "binary_conv2d"
    array_names = ("weight_bits", "scale", "shift", "thresholds", "flip")

    def __post_init__(self) -> None:
        self._init_epilogue()
        self._prepared = kernels.prepare_conv_weights(np.ascontiguousarray(self.weight_bits), self.c_in)
        signs = kernels.unpack_signs(self.weight_bits, self.c_in).reshape(self.out_channels, -1)  # one field a row
        self._weight_sums = signs.sum(axis=1, dtype=np.int64)
        self._field_bits = kernels.pack_signs(signs)
        self._real: kernels.PreparedRealWeights | None = None
        if self.output == "bits":
            self._no_flip = np.zeros(self.out_channels, bool)
            self._flip_words = kernels.pack_signs(np.where(self.flip, 1, -1).astype(np.int8))

    def params(self):
        return {"c_in": self.c_in, "output": self.output, "stride": self.stride, "padding": self.padding,
                "pool_kernel": self.pool_kernel, "pool_stride": self.pool_stride}

    @property
    def accepts_pixels(self) -> bool:  # type: ignore[override]
        return self.padding == 0

    @property
    def weight_sums(self) -> np.ndarray:
        """Sum of each output channel's ±1 weights over its whole receptive field: int64 ``(C_out,)``."""
        return self._weight_sums

    @property
    def out_channels(self) -> int:
        return self.weight_bits.shape[0]

    def _real_conv(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` real input -> float32 ``(N, Ho, Wo, C_out)`` by
        :func:`~onebit.deploy.kernels.real_matmul_prepared` of the receptive fields (inputs in
        tap-major, channel-fastest order; padding taps are +0.0)."""
        _, kh, kw, _ = self.weight_bits.shape
        if self._real is None:
            self._real = kernels.prepare_real_weights(self._field_bits, kh * kw * self.c_in)
        return _conv_matmul(np.asarray(x, np.float32), partial(kernels.real_matmul_prepared, prepared=self._real),
                            kh, kw, self.stride, self.padding)

    def _pixel_products(self, x: Pixels) -> np.ndarray:
        """Exact integer products ``c * S`` of uint8 NCHW codes: int64 ``(N, Ho, Wo, C_out)``."""
        _, kh, kw, _ = self.weight_bits.shape
        k = kh * kw * self.c_in
        dtype = np.float32 if 255 * k < 2**24 else np.float64
        products = _conv_matmul(x.codes.astype(dtype), lambda cols: kernels.signs_matmul(cols, self._field_bits, k),
                                kh, kw, self.stride, self.padding)
        return products.astype(np.int64)

    def __call__(self, x):
        pooled = self.pool_kernel > 0
        if isinstance(x, Pixels):
            if x.codes.ndim != 4 or x.codes.shape[1] != self.c_in:
                raise ValueError(f"binary_conv2d expects (N, {self.c_in}, H, W) input, got {x.codes.shape}")
            products = self._pixel_products(x)
            if pooled:  # d increases with the product (s > 0): pool the exact integers
                products = _pool(products, self.pool_kernel, self.pool_stride, axes=(1, 2))
            out = self._pixel_epilogue(products, x, self.out_channels)
            return out if isinstance(out, Bits) else np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        if isinstance(x, Bits):
            if x.k != self.c_in or x.words.ndim != 4:
                raise ValueError(f"binary_conv2d expects packed NHWC maps of {self.c_in} channels, got {x.k} "
                                 f"in words of shape {x.words.shape}")
            if self.output == "bits":
                flip = self._no_flip if pooled else self.flip
                bits = kernels.binary_conv2d_threshold(x.words, self.c_in, self._prepared, self._int_thresholds,
                                                       flip, self.padding, self.stride)
                if pooled:
                    bits = kernels.binary_maxpool2d(bits, self.pool_kernel, self.pool_stride) ^ self._flip_words
                return Bits(bits, self.out_channels)
            dot = kernels.binary_conv2d(x.words, self.c_in, self._prepared, self.padding, self.stride)
        else:
            if x.ndim != 4 or x.shape[1] != self.c_in:
                raise ValueError(f"binary_conv2d expects (N, {self.c_in}, H, W) input, got {x.shape}")
            dot = self._real_conv(x)
        if pooled:
            dot = _pool(dot, self.pool_kernel, self.pool_stride, axes=(1, 2))
        return self._finish(dot)

    def _finish(self, dot: np.ndarray):
        """The epilogue of pooled pre-activations ``(N, Ho, Wo, C_out)``: NHWC bits or NCHW floats."""
        out = self._epilogue(dot, self.out_channels)
        return out if isinstance(out, Bits) else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


OPS: dict[str, type[Op]] = {
    cls.kind: cls
    for cls in (Flatten, Affine, RPReLU, ReLU, HardSigmoid, Step, Sign, MaxPool2d, AvgPool2d, ResidualBegin,
                ResidualBranch, ResidualAdd, Linear, Conv2d, PackSigns, UnpackSigns, BinaryDense, BinaryConv2d)
}


class PackedModel:
    """A converted model: call it on a numpy batch shaped like the PyTorch model's input.

    Args:
        ops: the chain of ops.
        meta: free-form information (input shape, source model, recipe, ...).

    Example::

        model = onebit.deploy.load("mlp.onebit")
        logits = model(images)          # (N, 10) float32
    """

    def __init__(self, ops: list[Op], meta: dict[str, Any] | None = None) -> None:
        self.ops = ops
        self.meta = dict(meta or {})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (or embeddings) of the batch ``x``: float32 normalized like the training data,
        or raw uint8 images when the model records ``meta["input_quantization"]``.

        A batch of at least ``2 * _TASK_MIN_ROWS`` inputs is split into one slice per thread of
        the engine, each slice running through every layer on its own thread (one hand-off per
        forward pass instead of one per kernel call; the BLAS of float layers runs on one thread per
        slice then, and otherwise on at most the engine's threads); every output row is the same
        either way.
        """
        expected = self.meta.get("input_shape")
        x = np.asarray(x)
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(f"input must have shape (N, {', '.join(map(str, expected))}), got {x.shape}")
        return np.concatenate(self._split_forward(x))

    def _split_forward(self, x: np.ndarray, seconds: list[list[float]] | None = None) -> list[np.ndarray]:
        """The outputs of the batch's slices (:meth:`_slices`), one per engine thread; with
        ``seconds`` (one list per slice), each op's wall time in each slice is added there."""
        slices = self._slices(len(x))
        times = seconds or [None] * len(slices)
        if len(slices) == 1:
            with _threads.blas_threads(kernels.get_num_threads()):
                return [self._forward(x, times[0])]
        with _threads.blas_threads(1):  # every engine thread has a slice: BLAS calls stay on it
            return _threads.run_tasks([partial(self._forward, x[part], t) for part, t in zip(slices, times)])

    @staticmethod
    def _slices(batch: int) -> list[slice]:
        """The batch split evenly over the engine's threads (:func:`~onebit.deploy.kernels.get_num_threads`),
        at least :data:`_TASK_MIN_ROWS` rows each; one slice when the batch is smaller."""
        parts = max(1, min(kernels.get_num_threads(), batch // _TASK_MIN_ROWS))
        bounds = [batch * i // parts for i in range(parts + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def layer_seconds(self, x: np.ndarray) -> list[float]:
        """Wall seconds each op takes in one forward pass of ``x``, the batch split as
        :meth:`__call__` splits it (per op, the mean over the slices, which run at the same time;
        an op that dequantizes pixels includes that)."""
        x = np.asarray(x)
        per_slice = [[0.0] * len(self.ops) for _ in self._slices(len(x))]
        self._split_forward(x, per_slice)
        return [sum(times) / len(per_slice) for times in zip(*per_slice)]

    def _forward(self, x: np.ndarray, seconds: list[float] | None = None) -> np.ndarray:
        """The op chain on one batch; with ``seconds``, each op's wall time is added there."""
        x = self._pixels(x) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        stack: list[np.ndarray] = []
        for i, op in enumerate(self.ops):
            start = time.perf_counter() if seconds is not None else 0.0
            if isinstance(x, Pixels) and not op.accepts_pixels:
                x = x.dequantize()
            x = op(x, stack) if op.uses_stack else op(x)
            if seconds is not None:
                seconds[i] += time.perf_counter() - start
        if isinstance(x, Bits):
            raise TypeError("the model ends in packed bits; it should end in a float layer")
        return x

    def _pixels(self, codes: np.ndarray):
        """uint8 images -> :class:`Pixels` (one scale for all channels) or float32 (per channel)."""
        quantization = self.meta.get("input_quantization")
        if quantization is None:
            raise ValueError("this model takes float32 inputs normalized like its training data; uint8 images "
                             "need a model converted with input_normalization=(mean, std) (onebit export does "
                             "that for the experiments' datasets)")
        scale = np.asarray(quantization["scale"], np.float64)
        offset = np.asarray(quantization["offset"], np.float64)
        if np.all(scale == scale[0]) and np.all(offset == offset[0]):
            return Pixels(codes, float(scale[0]), float(offset[0]))
        if codes.ndim < 2 or codes.shape[1] != len(scale):
            raise ValueError(f"input has {codes.shape[1] if codes.ndim > 1 else 0} channels (axis 1), "
                             f"the input normalization {len(scale)}")
        shape = (1, -1) + (1,) * (codes.ndim - 2)
        return Pixels(codes, scale.reshape(shape), offset.reshape(shape)).dequantize()

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class of each input, computed in batches."""
        return np.concatenate([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    @property
    def nbytes(self) -> int:
        """Bytes of all stored arrays."""
        return sum(a.nbytes for op in self.ops for a in op.arrays().values())

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` (the ``.onebit`` format, see :mod:`onebit.deploy.fileformat`)."""
        arrays, layers = {}, []
        for i, op in enumerate(self.ops):
            for name, array in op.arrays().items():
                arrays[f"{i}.{name}"] = array
            layers.append({"kind": op.kind, "params": op.params(), "arrays": list(op.array_names)})
        fileformat.write(path, {"layers": layers, **self.meta}, arrays)

    def __repr__(self) -> str:
        lines = [f"PackedModel({self.nbytes:,} bytes)"]
        lines += [f"  ({i}) {op.kind} {op.params() or ''}".rstrip() for i, op in enumerate(self.ops)]
        return "\n".join(lines)


def load(path: str | Path) -> PackedModel:
    """Load a ``.onebit`` file written by :meth:`PackedModel.save`.

    Raises:
        onebit.deploy.fileformat.InvalidModelFile: truncated, modified, foreign or malformed file.
    """
    meta, arrays = fileformat.read(path)
    ops = []
    try:
        layers = meta.pop("layers")
        for i, layer in enumerate(layers):
            cls = OPS.get(layer["kind"])
            if cls is None:
                raise fileformat.InvalidModelFile(f"{path}: unknown layer kind {layer['kind']!r}")
            named = {name: np.array(arrays[f"{i}.{name}"]) for name in layer["arrays"]}
            ops.append(cls(**layer["params"], **named))
    except (KeyError, TypeError) as error:
        raise fileformat.InvalidModelFile(f"{path}: malformed layer description ({error})") from error
    return PackedModel(ops, meta)

