"""Numpy-only inference of converted models (no torch import, here or below).

A :class:`PackedModel` is a chain of ops. Between ops flows either a float32 array in the
layout PyTorch uses (``(N, C, H, W)`` or ``(N, F)``) or :class:`Bits`: ±1 activations packed
64 per uint64 word along the feature axis (bit 1 = +1, see :mod:`onebit.deploy.kernels`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from . import fileformat, kernels

__all__ = ["Bits", "PackedModel", "load", "OPS"]

_WEIGHT_CHUNK = 1 << 22  # weight elements unpacked to float32 at a time (16 MiB)
# byte -> its 8 bits as -1.0/+1.0, least significant bit first (the packing's bit order)
_SIGN_TABLE = (2 * ((np.arange(256)[:, None] >> np.arange(8)) & 1) - 1).astype(np.float32)


class Bits(NamedTuple):
    """Packed ±1 activations: ``words`` uint64 ``(N, ceil(k / 64))``, ``k`` features."""

    words: np.ndarray
    k: int


def _float(x, op: str) -> np.ndarray:
    if isinstance(x, Bits):
        raise TypeError(f"{op} needs float input, got packed bits (converter bug)")
    return x


@dataclass
class Op:
    """Base class: ``params`` go to the file header, ``arrays`` to its data section."""

    kind: ClassVar[str]
    array_names: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.array_names}

    def __call__(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Flatten(Op):
    kind = "flatten"

    def __call__(self, x):
        x = _float(x, self.kind)
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
class MaxPool2d(Op):
    kernel: int
    stride: int
    kind = "maxpool2d"

    def params(self):
        return {"kernel": self.kernel, "stride": self.stride}

    def __call__(self, x):
        x = _float(x, self.kind)
        n, c, h, w = x.shape
        k, s = self.kernel, self.stride
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        out = None
        for dy in range(k):
            for dx in range(k):
                tap = x[:, :, dy : dy + s * (ho - 1) + 1 : s, dx : dx + s * (wo - 1) + 1 : s]
                out = tap.copy() if out is None else np.maximum(out, tap)
        return out


@dataclass
class Linear(Op):
    """Float fully connected layer, ``y = x W^T + b``."""

    weight: np.ndarray
    bias: np.ndarray
    kind = "linear"
    array_names = ("weight", "bias")

    def __call__(self, x):
        return _float(x, self.kind) @ self.weight.T + self.bias


@dataclass
class Conv2d(Op):
    """Float convolution (im2col + matmul), NCHW like ``F.conv2d``."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    kind = "conv2d"
    array_names = ("weight", "bias")

    def params(self):
        return {"stride": self.stride, "padding": self.padding}

    def __call__(self, x):
        x = _float(x, self.kind)
        n, c, h, w = x.shape
        co, _, kh, kw = self.weight.shape
        p, s = self.padding, self.stride
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        cols = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        out = cols @ self.weight.reshape(co, -1).T + self.bias
        return out.reshape(n, ho, wo, co).transpose(0, 3, 1, 2)


@dataclass
class PackSigns(Op):
    """Float ``(N, F)`` -> :class:`Bits` (``x >= 0`` is +1)."""

    kind = "pack_signs"

    def __call__(self, x):
        x = _float(x, self.kind)
        return Bits(kernels.pack_signs(x), x.shape[1])


@dataclass
class BinaryDense(Op):
    r"""Fully connected layer with 1-bit weights ``S`` (stored packed, ``(N, ceil(K/64))``).

    The pre-activation is ``d = x S^T``: an exact integer XNOR-popcount dot product when the
    input is :class:`Bits`, a float product (weights unpacked block by block, never stored
    as float32) when the input is real. Output:

    - ``"bits"``: :math:`(d \ge t) \oplus \text{flip}` per output channel (a batch norm and
      the next layer's sign, folded); packed for the next binary layer.
    - ``"float"``: :math:`d \cdot \text{scale} + \text{shift}` (XNOR scale, bias and batch
      norm folded).
    """

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
        if self.output not in ("bits", "float"):
            raise ValueError(f"output must be 'bits' or 'float', got {self.output!r}")
        self._prepared = kernels.prepare_weights(np.ascontiguousarray(self.weight_bits))
        self._int_thresholds = None
        if self.output == "bits":
            self._int_thresholds = np.clip(np.ceil(self.thresholds), -(2**31), 2**31 - 1).astype(np.int32)

    def params(self):
        return {"k": self.k, "output": self.output}

    @property
    def out_features(self) -> int:
        return self.weight_bits.shape[0]

    def _float_dot(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.out_features), np.float32)
        rows = max(1, _WEIGHT_CHUNK // max(1, self.k))
        for start in range(0, self.out_features, rows):
            words = np.ascontiguousarray(self.weight_bits[start : start + rows])
            signs = _SIGN_TABLE[words.view(np.uint8)].reshape(words.shape[0], -1)[:, : self.k]
            out[:, start : start + rows] = x @ signs.T
        return out

    def __call__(self, x):
        if isinstance(x, Bits):
            if x.k != self.k:
                raise ValueError(f"binary_dense expects {self.k} input features, got {x.k}")
            if self.output == "bits":
                bits = kernels.binary_matmul_threshold(x.words, self._prepared, self.k, self._int_thresholds, self.flip)
                return Bits(bits, self.out_features)
            dot = kernels.binary_matmul_prepared(x.words, self._prepared, self.k)
        else:
            if x.shape[1] != self.k:
                raise ValueError(f"binary_dense expects {self.k} input features, got {x.shape[1]}")
            dot = self._float_dot(np.ascontiguousarray(x, np.float32))
            if self.output == "bits":
                return Bits(kernels.threshold_bits(dot, self.thresholds, self.flip), self.out_features)
        return (dot * self.scale + self.shift).astype(np.float32)


OPS: dict[str, type[Op]] = {
    cls.kind: cls for cls in (Flatten, Affine, ReLU, HardSigmoid, Step, MaxPool2d, Linear, Conv2d, PackSigns, BinaryDense)
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
        expected = self.meta.get("input_shape")
        x = np.asarray(x, dtype=np.float32)
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(f"input must have shape (N, {', '.join(map(str, expected))}), got {x.shape}")
        for op in self.ops:
            x = op(x)
        if isinstance(x, Bits):
            raise TypeError("the model ends in packed bits; it should end in a float layer")
        return x

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


def time_model(model: PackedModel, x: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of ``model(x)`` over ``repeats`` calls after one warm-up call."""
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
