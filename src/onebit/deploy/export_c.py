"""Export a packed model as plain C99 for microcontrollers and other targets without Python.

:func:`export_c` writes three files for a model called ``NAME``:

- ``NAME.h``: ``NAME_INPUT_SIZE``, ``NAME_OUTPUT_SIZE``, ``NAME_INPUT_IS_U8``,
  ``NAME_ARENA_BYTES``, the input type ``NAME_input_t`` and
  ``void NAME_predict(const NAME_input_t *input, float *output)`` for one image. The input is
  laid out as :func:`onebit.deploy.load`'s models take it (NCHW, flattened): raw uint8 pixels
  when the model records its input normalization (``NAME_INPUT_IS_U8`` is 1), else float32
  values normalized like the training data.
- ``NAME.c``: the network. No ``malloc``, no libm, no C library calls; weights, thresholds and
  scales are ``static const`` arrays (they stay in flash), 1 bit per binary weight in 32-bit
  words; activations live in one static arena of ``NAME_ARENA_BYTES``, laid out once here by
  the lifetimes of the values (a value's memory is reused once nothing reads it).
- ``NAME_main.c``: a host harness: reads inputs from stdin (raw little-endian, one after
  another, ``NAME_INPUT_SIZE`` elements each, uint8 or float32), writes ``NAME_OUTPUT_SIZE``
  float32 values per input to stdout, and exits non-zero on a truncated input.

``cc -std=c99 -O2 -Wall -Wextra NAME.c NAME_main.c -o NAME`` builds it. The C code computes what
the numpy runtime computes (:mod:`onebit.deploy.runtime`), in the same precision: binary layers
on packed input in exact integer arithmetic; binary first layers on uint8 pixels (dense, or
convolutions without padding) exactly in integers, their thresholds moved onto the integer
product here by evaluating the runtime's own float64 expression; binary layers on real input
in float32, summed in the runtime's fixed order (:func:`~onebit.deploy.kernels.real_matmul_prepared`);
float convolutions and linear layers summing in double and rounding once, as the runtime does,
so that the result does not depend on the order of summation (exactly so for inputs such as
normalized pixels); every other float op in float32, in the runtime's order. Compile in an ISO
C mode (``-std=c99``): GCC's GNU modes contract ``a * b + c`` into fused multiply-adds, which
round differently from numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import runtime
from .c_kernels import KERNELS, closure

__all__ = ["export_c", "ExportError", "CExport"]

_INT32 = np.iinfo(np.int32)


class ExportError(ValueError):
    """The model contains a layer (or a layout) the C exporter cannot express."""


@dataclass(frozen=True)
class CExport:
    """The files :func:`export_c` wrote and the figures of the model they hold."""

    header: Path
    source: Path
    main: Path
    input_size: int
    output_size: int
    input_is_u8: bool
    arena_bytes: int
    weights_bytes: int


# -- values and their memory ------------------------------------------------------------------


@dataclass(eq=False)
class _Buffer:
    """Memory of one value: ``"f"`` (floats) or ``"b"`` (32-bit words) in the arena, or the
    caller's input. Written at step ``first``, read last at step ``last``."""

    space: str
    size: int
    first: int
    last: int = -1
    offset: int = 0
    merged: _Buffer | None = None  # computed in place in this (the input's) buffer

    def root(self) -> _Buffer:
        return self if self.merged is None else self.merged.root()


@dataclass(eq=False)
class _Value:
    """What flows between ops: ``kind`` is ``"pixels"``, ``"float"`` or ``"bits"``; ``shape``
    is ``(C, H, W)`` / ``(F,)`` for floats and pixels, ``(H, W, C)`` / ``(F,)`` for bits."""

    kind: str
    shape: tuple[int, ...]
    buffer: _Buffer

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def is_map(self) -> bool:
        return len(self.shape) == 3


@dataclass
class _Step:
    """One call in ``NAME_predict``: ``call`` formats ``{0}``, ``{1}``, ... as the C pointers of
    the inputs, then the output, then the scratch words (``int32_t``) the call alone uses."""

    call: str
    inputs: list[_Value]
    output: _Value | None
    in_place: bool = False  # the output may take over the first input's memory
    scratch: _Value | None = None


@dataclass
class _Program:
    name: str
    steps: list[_Step] = field(default_factory=list)
    arrays: list[tuple[str, np.ndarray, str]] = field(default_factory=list)
    kernels: set[str] = field(default_factory=set)
    #: the largest |pre-activation| an integer threshold is compared with
    threshold_bound: int = 0

    def new_value(self, kind: str, shape: tuple[int, ...]) -> _Value:
        size = _words(shape) if kind == "bits" else int(np.prod(shape))
        return _Value(kind, tuple(shape), _Buffer("b" if kind == "bits" else "f", size, len(self.steps)))

    def step(self, kernel: str, call: str, inputs: list[_Value], output: _Value | None, in_place: bool = False,
             scratch_words: int = 0):
        self.kernels.add(kernel)
        scratch = self.new_value("bits", (32 * scratch_words,)) if scratch_words else None
        self.steps.append(_Step(call, inputs, output, in_place, scratch))
        return output

    def array(self, label: str, values: np.ndarray, ctype: str) -> str:
        """Declare a ``static const`` array (``ctype`` ``"threshold"``: integer thresholds, whose
        C type is chosen once all are known); returns its C name."""
        name = f"{self.name}_{label}"
        self.arrays.append((name, np.asarray(values).reshape(-1), ctype))
        return name

    def thresholds(self, label: str, thresholds: np.ndarray, bound: int) -> str:
        """Integer thresholds on pre-activations with ``|d| <= bound``, clipped to
        ``[-bound - 1, bound + 1]`` (the same comparisons), so that most models store 16 bits each."""
        self.threshold_bound = max(self.threshold_bound, bound + 1)
        return self.array(label, np.clip(thresholds, -bound - 1, bound + 1), "threshold")

    @property
    def threshold_type(self) -> str:
        return "int16_t" if self.threshold_bound <= np.iinfo(np.int16).max else "int32_t"

    @property
    def weights_bytes(self) -> int:
        """Bytes of every constant array: weights, thresholds, flips, scales, shifts."""
        sizes = {"uint32_t": 4, "int16_t": 2, "int32_t": 4, "float": 4, "double": 8}
        return sum(v.size * sizes[self.threshold_type if t == "threshold" else t] for _, v, t in self.arrays)

    def declarations(self) -> str:
        lines = []
        for name, values, ctype in self.arrays:
            ctype = self.threshold_type if ctype == "threshold" else ctype
            lines.append(f"static const {ctype} {name}[{max(1, values.size)}] = {{\n{_literals(values, ctype)}\n}};")
        return "\n\n".join(lines)


def _words(shape: tuple[int, ...]) -> int:
    """32-bit words of packed bits: a vector ``(F,)`` or an NHWC map ``(H, W, C)``."""
    channels = shape[-1]
    pixels = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return pixels * -(-channels // 32)


# -- C literals ---------------------------------------------------------------------------------


def _float_literal(v: float) -> str:
    if np.isnan(v):
        raise ExportError("a NaN weight or threshold cannot be exported")
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    text = repr(float(v))
    return text + ("f" if "e" in text or "." in text else ".0f")


def _literals(values: np.ndarray, ctype: str) -> str:
    if ctype == "uint32_t":
        items = [f"0x{int(v):08x}u" for v in values]
    elif ctype in ("int16_t", "int32_t"):
        items = [str(int(v)) if v != _INT32.min else "(-2147483647 - 1)" for v in values]
    elif ctype == "float":
        items = [_float_literal(v) for v in values.astype(np.float32)]
    else:
        items = [_float_literal(v)[:-1] if np.isfinite(v) else _float_literal(v) for v in values.astype(np.float64)]
    rows = range(0, len(items), 8)
    return "\n".join("    " + ", ".join(items[i : i + 8]) + "," for i in rows) or "    0"


# -- weights ------------------------------------------------------------------------------------


def _words32(packed64: np.ndarray, k: int) -> np.ndarray:
    """uint64 packing (last axis) -> uint32 words, ``ceil(k / 32)`` of them per row (same bits)."""
    words = np.ascontiguousarray(packed64, dtype="<u8").view("<u4")
    return words[..., : -(-k // 32)]


def _flip_words(flip: np.ndarray) -> np.ndarray:
    """Packed flip bits (bit 1 = flip), tail bits 0."""
    bits = np.zeros(-(-len(flip) // 32) * 32, np.uint8)
    bits[: len(flip)] = np.asarray(flip, bool)
    return np.packbits(bits, bitorder="little").view("<u4")


# -- ops ----------------------------------------------------------------------------------------


def _binary_epilogue(p: _Program, op: runtime._BinaryLayer, label: str, out_shape, *, bound: int = 0,
                     int_thresholds=None, real_input: bool = False) -> tuple[str, _Value | None]:
    """The epilogue arguments ``thr, flip, ybits, scale, shift, yf`` (``{out}`` stands for the
    output) and, for bits, the output value. Integer thresholds act on ``|d| <= bound``; a
    layer on real input compares its float ``d``, as a double, with the float64 thresholds themselves."""
    if op.output == "bits":
        if real_input:
            thr = p.array(f"{label}_thr", op.thresholds, "double")
        else:
            thr = p.thresholds(f"{label}_thr", int_thresholds, bound)
        flip = p.array(f"{label}_flip", _flip_words(op.flip), "uint32_t")
        return f"{thr}, {flip}, {{out}}, 0, 0, 0", p.new_value("bits", out_shape)
    scale = p.array(f"{label}_scale", op.scale, "float")
    shift = p.array(f"{label}_shift", op.shift, "float")
    return f"0, 0, 0, {scale}, {shift}, {{out}}", None


def _pixel_epilogue(p: _Program, op: runtime._BinaryLayer, label: str, out_shape, k: int, quant,
                    sums: np.ndarray) -> tuple[str, _Value | None]:
    """The epilogue arguments ``thr, flip, ybits, s, ow, scale, shift, yf`` of a binary layer on
    uint8 pixels (``k`` of them per output), and for bits the output value."""
    scale, offset = quant
    if op.output == "bits":
        args, out = _binary_epilogue(p, op, label, out_shape, bound=255 * k,
                                     int_thresholds=runtime.pixel_thresholds(op.thresholds, scale, offset, sums))
        ow = "0"
    else:
        args, out = _binary_epilogue(p, op, label, out_shape)
        ow = p.array(f"{label}_ow", np.float64(offset) * sums.astype(np.float64), "double")
    thr, flip, ybits, fscale, fshift, yf = args.split(", ")
    return f"{thr}, {flip}, {ybits}, {float(scale)!r}, {ow}, {fscale}, {fshift}, {yf}", out


def _binary_dense(p: _Program, op: runtime.BinaryDense, x: _Value, label: str, quant) -> _Value:
    n, k = op.out_features, op.k
    if x.numel != k or x.is_map:
        raise ExportError(f"{label}: binary_dense expects {k} input features, got shape {x.shape}")
    w = p.array(f"{label}_w", _words32(op.weight_bits, k), "uint32_t")
    kw = -(-k // 32)
    if x.kind == "bits":
        args, out_bits = _binary_epilogue(p, op, label, (n,), bound=k, int_thresholds=op._int_thresholds)
        call = f"ob_dense_bits({{0}}, {kw}, {k}, {w}, {n}, {args})"
        kernel = "dense_bits"
    elif x.kind == "pixels":
        args, out_bits = _pixel_epilogue(p, op, label, (n,), k, quant, runtime.kernels.sign_sums(op.weight_bits, k))
        x = p.step("bit_planes", f"ob_bit_planes({{0}}, {k}, {kw}, {{1}})", [x], p.new_value("bits", (8 * kw * 32,)))
        call = f"ob_dense_u8({{0}}, {kw}, {w}, {n}, {args})"
        kernel = "dense_u8"
    else:
        args, out_bits = _binary_epilogue(p, op, label, (n,), real_input=True)
        call = f"ob_dense_float({{0}}, {k}, {w}, {kw}, {n}, {args})"
        kernel = "dense_float"
    out = out_bits or p.new_value("float", (n,))
    return p.step(kernel, call.replace("{out}", "{1}"), [x], out)


def _binary_conv(p: _Program, op: runtime.BinaryConv2d, x: _Value, label: str, quant) -> _Value:
    co, kh, kw_, _ = op.weight_bits.shape
    c_in = op.c_in
    if not x.is_map:
        raise ExportError(f"{label}: binary_conv2d needs a feature map, got shape {x.shape}")
    h, w = (x.shape[0], x.shape[1]) if x.kind == "bits" else (x.shape[1], x.shape[2])
    channels = x.shape[2] if x.kind == "bits" else x.shape[0]
    if channels != c_in:
        raise ExportError(f"{label}: binary_conv2d expects {c_in} input channels, got {channels}")
    if op.padding >= min(kh, kw_):
        raise ExportError(f"{label}: binary_conv2d with padding {op.padding} >= its kernel {kh}x{kw_} "
                          "(windows entirely in the padding) is not supported")
    ho = (h + 2 * op.padding - kh) // op.stride + 1
    wo = (w + 2 * op.padding - kw_) // op.stride + 1
    pk, ps = (op.pool_kernel, op.pool_stride) if op.pool_kernel > 0 else (1, 1)
    hp, wp = (ho - pk) // ps + 1, (wo - pk) // ps + 1
    cw = -(-c_in // 32)
    if x.kind == "pixels":  # runtime.BinaryConv2d takes pixels only unpadded: every tap sees one
        k = kh * kw_ * c_in
        signs = runtime.kernels.unpack_signs(op.weight_bits, c_in).reshape(co, k)  # tap-major, channel fastest
        weights = p.array(f"{label}_w", _words32(runtime.kernels.pack_signs(signs), k), "uint32_t")
        args, out_bits = _pixel_epilogue(p, op, label, (hp, wp, co), k, quant, op.weight_sums)
        out = out_bits or p.new_value("float", (co, hp, wp))
        call = (f"ob_conv_u8({{0}}, {h}, {w}, {c_in}, {weights}, {-(-k // 32)}, {co}, {kh}, {kw_}, {op.stride}, "
                f"{pk}, {ps}, {args.replace('{out}', '{1}')}, {{2}})")
        return p.step("conv_u8", call, [x], out, scratch_words=8 * -(-k // 32) + co)
    weights = p.array(f"{label}_w", _words32(op.weight_bits, c_in), "uint32_t")
    if x.kind == "bits":
        args, out_bits = _binary_epilogue(p, op, label, (hp, wp, co), bound=kh * kw_ * c_in,
                                          int_thresholds=op._int_thresholds)
        kernel = "conv_bits"
    else:
        args, out_bits = _binary_epilogue(p, op, label, (hp, wp, co), real_input=True)
        kernel = "conv_float"
    out = out_bits or p.new_value("float", (co, hp, wp))
    call = (f"ob_{kernel}({{0}}, {h}, {w}, {c_in}, {cw}, {weights}, {co}, {kh}, {kw_}, {op.stride}, {op.padding}, "
            f"{pk}, {ps}, {args.replace('{out}', '{1}')})")
    return p.step(kernel, call, [x], out)


def _elementwise(p: _Program, kernel: str, x: _Value, extra: str = "") -> _Value:
    out = p.new_value("float", x.shape)
    return p.step(kernel, f"ob_{kernel}({{0}}, {x.numel}{extra}, {{1}})", [x], out, in_place=True)


def _emit(p: _Program, op: runtime.Op, x: _Value, stack: list[_Value], label: str, quant) -> _Value:
    """Append the steps of ``op`` applied to ``x``; returns the output value."""
    kind = op.kind
    if x.kind == "bits" and not op.accepts_bits:
        raise ExportError(f"{label} ({kind}) receives packed bits (malformed model)")
    if kind == "flatten":
        if x.kind == "bits" and x.is_map:
            h, w, c = x.shape
            out = p.new_value("bits", (x.numel,))
            return p.step("flatten_bits", f"ob_flatten_bits({{0}}, {c}, {h * w}, {{1}})", [x], out)
        return _Value(x.kind, (x.numel,), x.buffer)
    if kind == "binary_dense":
        return _binary_dense(p, op, x, label, quant)
    if kind == "binary_conv2d":
        return _binary_conv(p, op, x, label, quant)
    if kind == "maxpool2d" and x.kind == "bits":
        h, w, c = x.shape
        ho, wo = (h - op.kernel) // op.stride + 1, (w - op.kernel) // op.stride + 1
        out = p.new_value("bits", (ho, wo, c))
        return p.step("pool_bits", f"ob_pool_bits({{0}}, {h}, {w}, {-(-c // 32)}, {op.kernel}, {op.stride}, {{1}})",
                      [x], out)
    if kind in ("maxpool2d", "avgpool2d"):
        c, h, w = x.shape
        ho, wo = (h - op.kernel) // op.stride + 1, (w - op.kernel) // op.stride + 1
        out = p.new_value("float", (c, ho, wo))
        mean = int(kind == "avgpool2d")
        return p.step("pool_float", f"ob_pool_float({{0}}, {c}, {h}, {w}, {op.kernel}, {op.stride}, {mean}, {{1}})",
                      [x], out)
    if kind == "affine":
        channels = x.shape[0]
        scale = p.array(f"{label}_scale", op.scale, "float")
        shift = p.array(f"{label}_shift", op.shift, "float")
        out = p.new_value("float", x.shape)
        return p.step("affine", f"ob_affine({{0}}, {channels}, {x.numel // channels}, {scale}, {shift}, {{1}})",
                      [x], out, in_place=True)
    if kind == "rprelu":
        channels = x.shape[0]
        g, s_, z = (p.array(f"{label}_{name}", getattr(op, name), "float") for name in op.array_names)
        return p.step("rprelu", f"ob_rprelu({{0}}, {channels}, {x.numel // channels}, {g}, {s_}, {z}, {{1}})",
                      [x], p.new_value("float", x.shape), in_place=True)
    if kind in ("relu", "step", "sign"):
        return _elementwise(p, kind, x)
    if kind == "hard_sigmoid":
        return _elementwise(p, kind, x, f", {_float_literal(np.float32(op.slope))}")
    if kind == "linear":
        n, k = op.weight.shape
        if x.numel != k or x.is_map:
            raise ExportError(f"{label}: linear expects {k} input features, got shape {x.shape}")
        weights = p.array(f"{label}_w", op.weight, "float")
        bias = p.array(f"{label}_b", op.bias, "float")
        return p.step("linear", f"ob_linear({{0}}, {k}, {weights}, {bias}, {n}, {{1}})", [x],
                      p.new_value("float", (n,)))
    if kind == "conv2d":
        co, ci, kh, kw_ = op.weight.shape
        if not x.is_map or x.shape[0] != ci:
            raise ExportError(f"{label}: conv2d expects ({ci}, H, W) input, got shape {x.shape}")
        _, h, w = x.shape
        ho = (h + 2 * op.padding - kh) // op.stride + 1
        wo = (w + 2 * op.padding - kw_) // op.stride + 1
        weights = p.array(f"{label}_w", op.weight, "float")
        bias = p.array(f"{label}_b", op.bias, "float")
        return p.step("conv2d", f"ob_conv2d({{0}}, {ci}, {h}, {w}, {weights}, {bias}, {co}, {kh}, {kw_}, "
                                f"{op.stride}, {op.padding}, {{1}})", [x], p.new_value("float", (co, ho, wo)))
    if kind == "pack_signs":
        channels, inner = x.shape[0], x.numel // x.shape[0]
        shape = (x.shape[1], x.shape[2], channels) if x.is_map else x.shape
        return p.step("pack", f"ob_pack({{0}}, {channels}, {inner}, {{1}})", [x], p.new_value("bits", shape))
    if kind == "unpack_signs":
        if x.kind != "bits":
            raise ExportError(f"{label}: unpack_signs needs packed bits (malformed model)")
        channels, inner = x.shape[-1], x.numel // x.shape[-1]
        shape = (channels, x.shape[0], x.shape[1]) if x.is_map else x.shape
        return p.step("unpack", f"ob_unpack({{0}}, {channels}, {inner}, {{1}})", [x], p.new_value("float", shape))
    if kind == "residual_begin":
        stack.append(x)
        return x
    if kind == "residual_branch":
        shortcut_input = stack.pop()
        stack.append(x)
        return shortcut_input
    if kind == "residual_add":
        main = stack.pop()
        if main.shape != x.shape:
            raise ExportError(f"{label}: residual branches of shapes {main.shape} and {x.shape}")
        return p.step("add", f"ob_add({{0}}, {{1}}, {x.numel}, {{2}})", [x, main], p.new_value("float", x.shape),
                      in_place=True)
    raise ExportError(f"{label}: the C exporter has no code for layer kind {kind!r}")


def _dequantize(p: _Program, x: _Value, scale: np.ndarray, offset: np.ndarray) -> _Value:
    channels = len(scale) if len(scale) > 1 else 1
    s = p.array("input_scale", np.broadcast_to(scale, channels), "float")
    o = p.array("input_offset", np.broadcast_to(offset, channels), "float")
    return p.step("dequantize", f"ob_dequantize({{0}}, {channels}, {x.numel // channels}, {s}, {o}, {{1}})", [x],
                  p.new_value("float", x.shape))


# -- memory plan ----------------------------------------------------------------------------------


def _plan(steps: list[_Step]) -> dict[str, int]:
    """Lifetimes, in-place merges and arena offsets of every buffer; returns each space's size."""
    for index, step in enumerate(steps):
        for value in step.inputs:
            value.buffer.last = max(value.buffer.last, index)
        if step.scratch is not None:
            step.scratch.buffer.last = index
    for index, step in enumerate(steps):
        source = step.inputs[0].buffer.root() if step.inputs else None
        if (step.in_place and step.output is not None and source.space == step.output.buffer.space
                and source.last == index):
            source.last = step.output.buffer.last
            step.output.buffer.merged = source
    buffers = {id(b): b for s in steps for v in [*s.inputs, s.output, s.scratch] if v is not None
               for b in [v.buffer.root()] if b.space != "input"}
    sizes = {"f": 0, "b": 0}
    placed: list[_Buffer] = []
    for buffer in sorted(buffers.values(), key=lambda b: (-b.size, b.first)):
        busy = sorted((b.offset, b.offset + b.size) for b in placed
                      if b.space == buffer.space and b.first <= buffer.last and buffer.first <= b.last)
        offset = 0
        for start, end in busy:
            if offset + buffer.size <= start:
                break
            offset = max(offset, end)
        buffer.offset = offset
        placed.append(buffer)
        sizes[buffer.space] = max(sizes[buffer.space], offset + buffer.size)
    return sizes


def _pointer(value: _Value, name: str) -> str:
    buffer = value.buffer.root()
    if buffer.space == "input":
        return "input"
    return f"{name}_arena.{buffer.space} + {buffer.offset}"


# -- files ----------------------------------------------------------------------------------------


def export_c(model: runtime.PackedModel | str | Path, directory: str | Path, name: str = "model") -> CExport:
    """Write ``NAME.h``, ``NAME.c`` and ``NAME_main.c`` for ``model`` into ``directory``.

    Args:
        model: a :class:`~onebit.deploy.PackedModel` or the path of a ``.onebit`` file.
        directory: created if missing; the three files are overwritten.
        name: a C identifier, the prefix of every exported symbol.

    Raises:
        ExportError: a layer the exporter cannot express (named), or a malformed model.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ExportError(f"name must be a C identifier (letters, digits, underscores), got {name!r}")
    if not isinstance(model, runtime.PackedModel):
        model = runtime.load(model)
    shape = model.meta.get("input_shape")
    if not shape:
        raise ExportError("the model does not record its input shape (meta['input_shape'])")
    p = _Program(name)
    quantization = model.meta.get("input_quantization")
    input_is_u8 = quantization is not None
    x = _Value("pixels" if input_is_u8 else "float", tuple(shape), _Buffer("input", 0, -1))
    quant = None
    if input_is_u8:
        scale = np.asarray(quantization["scale"], np.float64)
        offset = np.asarray(quantization["offset"], np.float64)
        if np.all(scale == scale[0]) and np.all(offset == offset[0]):
            quant = (float(scale[0]), float(offset[0]))
        else:  # per-channel normalization: dequantized before the first op, as the runtime does
            x = _dequantize(p, x, scale, offset)
    stack: list[_Value] = []
    for i, op in enumerate(model.ops):
        label = f"layer{i}"
        if x.kind == "pixels" and not op.accepts_pixels:
            x = _dequantize(p, x, np.float64([quant[0]]), np.float64([quant[1]]))
        x = _emit(p, op, x, stack, label, quant)
    if x.kind != "float":
        raise ExportError(f"the model ends in {x.kind}; it should end in a float layer")
    output_size = x.numel
    p.step("copy", f"ob_copy({{0}}, {output_size}, output)", [x], None)
    sizes = _plan(p.steps)
    arena_bytes = 4 * (max(1, sizes["f"]) + max(1, sizes["b"]))
    input_size = int(np.prod(shape))

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header, source, main = directory / f"{name}.h", directory / f"{name}.c", directory / f"{name}_main.c"
    header.write_text(_header(name, input_size, output_size, input_is_u8, arena_bytes, model))
    source.write_text(_source(p, sizes))
    main.write_text(_main(name))
    return CExport(header, source, main, input_size, output_size, input_is_u8, arena_bytes, p.weights_bytes)


def _header(name: str, input_size: int, output_size: int, input_is_u8: bool, arena_bytes: int,
            model: runtime.PackedModel) -> str:
    guard = f"{name.upper()}_H"
    layout = "x".join(map(str, model.meta["input_shape"]))
    input_doc = ("raw uint8 pixels" if input_is_u8 else "float32 values normalized like the training data")
    return f"""/* {name}: a binary network exported by onebit (source: {model.meta.get('source', 'unknown')}).
   Input: {input_size} {input_doc}, the NCHW image ({layout}) flattened.
   Output: {output_size} float32 values (logits, or the embedding of an encoder). */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#define {name}_INPUT_SIZE {input_size}
#define {name}_OUTPUT_SIZE {output_size}
#define {name}_INPUT_IS_U8 {int(input_is_u8)}
#define {name}_ARENA_BYTES {arena_bytes}

typedef {'uint8_t' if input_is_u8 else 'float'} {name}_input_t;

#ifdef __cplusplus
extern "C" {{
#endif

/* One image in ({name}_INPUT_SIZE values), {name}_OUTPUT_SIZE floats out. Not reentrant: the
   activations live in one static arena of {name}_ARENA_BYTES bytes. */
void {name}_predict(const {name}_input_t *input, float *output);

#ifdef __cplusplus
}}
#endif

#endif
"""


def _source(p: _Program, sizes: dict[str, int]) -> str:
    name = p.name
    kernels = "\n".join(KERNELS[k].code for k in closure(p.kernels))
    body = []
    for step in p.steps:
        pointers = [_pointer(v, name) for v in step.inputs]
        if step.output is not None:
            pointers.append(_pointer(step.output, name))
        if step.scratch is not None:
            pointers.append(f"(int32_t *)({_pointer(step.scratch, name)})")
        body.append("    " + step.call.format(*pointers) + ";")
    arrays = p.declarations()
    needs_math = "INFINITY" in arrays
    return f"""/* Generated by onebit.deploy.export_c: the network {name}, plain C99 (see {name}.h). */
#include "{name}.h"
{'#include <math.h> /* INFINITY only: no libm function is called */' + chr(10) if needs_math else ''}
typedef {p.threshold_type} ob_threshold_t;

{arrays}

static struct {{
    float f[{max(1, sizes['f'])}];
    uint32_t b[{max(1, sizes['b'])}];
}} {name}_arena;

{kernels}
void {name}_predict(const {name}_input_t *input, float *output)
{{
{chr(10).join(body)}
}}
"""


def _main(name: str) -> str:
    return f"""/* Host harness for {name}: inputs on stdin, outputs on stdout (raw little-endian).
   Each input is {name}_INPUT_SIZE elements (uint8 when {name}_INPUT_IS_U8, else float32);
   each output {name}_OUTPUT_SIZE float32 values. A truncated input is an error (exit 1). */
#include <stdio.h>
#include "{name}.h"

int main(void)
{{
    static {name}_input_t input[{name}_INPUT_SIZE];
    static float output[{name}_OUTPUT_SIZE];
    size_t got;
    while ((got = fread(input, sizeof input[0], {name}_INPUT_SIZE, stdin)) == {name}_INPUT_SIZE) {{
        {name}_predict(input, output);
        if (fwrite(output, sizeof output[0], {name}_OUTPUT_SIZE, stdout) != {name}_OUTPUT_SIZE) {{
            fprintf(stderr, "{name}: cannot write the output\\n");
            return 1;
        }}
    }}
    if (got != 0 || ferror(stdin)) {{
        fprintf(stderr, "{name}: truncated input: %lu of %d values\\n", (unsigned long)got, {name}_INPUT_SIZE);
        return 1;
    }}
    return 0;
}}
"""
