"""Compute kernels of the bit-packed inference engine (numpy, plus numba when installed).

Bit layout
----------
A vector of ``K`` values in {-1, +1} is stored as ``Kw = ceil(K / 64)`` uint64 words:
element ``j`` is bit ``j % 64`` of word ``j // 64`` (little-endian bit order), bit 1
means +1 and bit 0 means -1.  Bits past ``K`` in the last word are 0.  The true length
``K`` travels separately (argument ``k``); it cannot be recovered from the words.

Binary dot product
------------------
For two packed vectors with the same ``K``::

    dot = sum_j a_j * b_j = (K - mismatches) - mismatches = K - 2 * popcount(a XOR b)

The zero padding bits are equal in both operands, so they add no mismatches and
``K - 2 * popcount`` is exact without any masking.

Back ends
---------
``"avx512"``
    numba + an LLVM-IR micro-kernel (``vpxorq``/``vpopcntq``/``vpaddq`` on 4 x 32 output
    tiles held in 16 zmm registers; see :mod:`onebit.deploy._numba_kernels`).  Chosen
    when the CPU has AVX512-VPOPCNTDQ.
``"avx2"``
    the same tiles on 256-bit vectors, popcount by ``vpshufb`` nibble lookups into byte
    counters.  Chosen on AVX2 CPUs without AVX512-VPOPCNTDQ (e.g. AMD Zen 2/3), and
    available on every AVX2 CPU, AVX-512 ones included, so that one machine tests both
    code generators.
``"numba"``
    numba, portable auto-vectorized loop over the same prepared layout.
``"numpy"``
    ``np.bitwise_count`` on chunks of the XOR-ed operands; used when numba is missing
    or ``ONEBIT_NO_NUMBA=1`` (any value other than ``""``/``"0"``) is set at import.

Every compute function takes ``backend=None`` (= :data:`DEFAULT_BACKEND`: the fastest
available, or the one ``ONEBIT_BACKEND`` names at import); all back ends give
bit-identical results.  This module imports numpy and, optionally, numba:
never torch.

Threads: the numba back ends use :func:`get_num_threads` threads (``ONEBIT_NUM_THREADS``,
else every CPU this process may run on; :func:`set_num_threads` changes it) for problems
large enough to pay for it, and run small ones (e.g. a single-row GEMV) on the calling
thread.  The threads are plain Python threads running GIL-free kernels: idle, they block
instead of spin-waiting, and no second OpenMP runtime meets the one torch ships.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _threads

__all__ = [
    "AVAILABLE_BACKENDS", "DEFAULT_BACKEND", "PANEL", "Backend", "PreparedConvWeights", "PreparedWeights",
    "binary_conv2d", "binary_conv2d_threshold", "binary_matmul", "binary_matmul_prepared", "get_num_threads",
    "binary_matmul_threshold", "binary_maxpool2d", "pack_signs", "pixel_matmul_prepared", "PreparedPixelWeights",
    "pixel_matmul_threshold", "prepare_conv_weights", "prepare_pixel_weights", "prepare_real_weights",
    "prepare_weights", "PreparedRealWeights", "real_matmul_prepared", "set_num_threads", "sign_sums", "signs_matmul",
    "threshold_bits", "unpack_signs",
]  # fmt: skip

Backend = Literal["avx512", "avx2", "numba", "numpy"]

if os.environ.get("ONEBIT_NO_NUMBA", "") in ("", "0"):
    try:
        from . import _numba_kernels as _nb
        from . import _numba_real as _nb_real
    except ImportError:  # numba (or llvmlite) not installed
        _nb = _nb_real = None
else:
    _nb = _nb_real = None

#: Back ends usable in this process, fastest first.
AVAILABLE_BACKENDS: tuple[Backend, ...] = (
    (_nb.simd_backends() if _nb is not None else ()) + (("numba",) if _nb is not None else ()) + ("numpy",)
)
_SIMD_BACKENDS = ("avx512", "avx2")  # the LLVM-IR tiles (available as the CPU has them)


def _default_backend() -> Backend:
    value = os.environ.get("ONEBIT_BACKEND", "")
    if not value:
        return AVAILABLE_BACKENDS[0]
    if value not in AVAILABLE_BACKENDS:
        raise ValueError(f"ONEBIT_BACKEND={value!r} is not available here (have {', '.join(AVAILABLE_BACKENDS)})")
    return value  # type: ignore[return-value]


#: Back end used when a function is called with ``backend=None``: ``ONEBIT_BACKEND`` at
#: import if set, else the first of :data:`AVAILABLE_BACKENDS`.
DEFAULT_BACKEND: Backend = _default_backend()

PANEL = 32  # output columns per prepared weight panel (see PreparedWeights)
_PARALLEL_MIN_WORDS = 1 << 23  # word-ops below which threading costs more than it saves: waking a
# pool thread and joining it cost ~0.1 ms on the 2-core VMs measured, 8M word-ops ~0.3 ms on one core
_PACK_PARALLEL_MIN = 1 << 22  # elements below which packing (memory-bound) stays on one thread
_NUMPY_CHUNK_WORDS = 1 << 20  # XOR temporaries of the numpy GEMM, in words
_UNPACK_CHUNK = 1 << 22  # weights unpacked at a time by signs_matmul (16 MiB as float32)
_PACK_DTYPES = (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64)

_NO_I32_2D = np.empty((0, 0), np.int32)
_NO_I32 = np.empty(0, np.int32)
_NO_U8 = np.empty(0, np.uint8)
_NO_U8_2D = np.empty((0, 0), np.uint8)
_INT32_MAX = int(np.iinfo(np.int32).max)
_CONV_BIASES_KEPT = 16  # input geometries whose border biases a PreparedConvWeights keeps


def _backend(backend: Backend | None) -> Backend:
    chosen = DEFAULT_BACKEND if backend is None else backend
    if chosen not in AVAILABLE_BACKENDS:
        raise ValueError(f"backend {chosen!r} is not available here (have {AVAILABLE_BACKENDS})")
    return chosen


def _words(k: int) -> int:
    return -(-k // 64)


def _default_threads() -> int:
    value = os.environ.get("ONEBIT_NUM_THREADS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"ONEBIT_NUM_THREADS must be a positive integer, got {value!r}")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_num_threads = _default_threads()


def get_num_threads() -> int:
    """Threads the numba back ends use for large problems: :func:`set_num_threads`, else
    ``ONEBIT_NUM_THREADS`` at import, else the CPUs this process may run on."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use up to ``n`` threads (the calling thread included) in the numba back ends."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    _num_threads = n


def _threads_for(work: int, minimum: int | None = None) -> int:
    """Threads for a numba kernel doing ``work`` units (threshold: ``minimum``, default
    :data:`_PARALLEL_MIN_WORDS`, read at call time); 1 keeps it on the calling thread, as does
    being called from a task of a parallel forward pass (:func:`onebit.deploy._threads.in_task`)."""
    if _threads.in_task():
        return 1
    return _num_threads if work >= (_PARALLEL_MIN_WORDS if minimum is None else minimum) else 1


# --------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------


def _pack_bool(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis into uint64 words (numpy)."""
    length = bits.shape[-1]
    packed = np.packbits(bits, axis=-1, bitorder="little")
    padded = np.zeros(bits.shape[:-1] + (8 * _words(length),), np.uint8)
    padded[..., : packed.shape[-1]] = packed
    return padded.view("<u8").astype(np.uint64, copy=False)


def pack_signs(x: np.ndarray, axis: int = -1, *, backend: Backend | None = None) -> np.ndarray:
    """Binarize ``x`` with ``sign`` (``x >= 0`` -> +1, so 0 and -0.0 map to +1; NaN -> -1)
    and pack it along ``axis`` into uint64 words.

    Returns a C-contiguous uint64 array shaped like ``x`` with ``axis`` of length
    ``ceil(K / 64)``; element ``j`` of that axis is bit ``j % 64`` of word ``j // 64`` and
    the ``64 * Kw - K`` tail bits are 0.  Keep ``K = x.shape[axis]``: the kernels need it.
    Floats and signed integers take a numba kernel (one vector compare per word) when
    available; other dtypes use ``np.packbits``.
    """
    x = np.asarray(x)
    last = axis in (-1, x.ndim - 1)
    moved = x if last else np.moveaxis(x, axis, -1)
    length = moved.shape[-1]
    if _backend(backend) == "numpy" or x.dtype.type not in _PACK_DTYPES:
        packed = _pack_bool(moved >= 0)
    else:
        packed = np.empty(moved.shape[:-1] + (_words(length),), np.uint64)
        rows = packed.reshape(math.prod(packed.shape[:-1]), packed.shape[-1])
        _nb.pack_rows(_threads_for(x.size, _PACK_PARALLEL_MIN), np.ascontiguousarray(moved), length, rows)
    return packed if last else np.ascontiguousarray(np.moveaxis(packed, -1, axis))


def unpack_signs(packed: np.ndarray, k: int, axis: int = -1, dtype: npt.DTypeLike = np.int8) -> np.ndarray:
    """Inverse of :func:`pack_signs`: the first ``k`` bits along ``axis`` as -1/+1 values."""
    moved = np.moveaxis(np.asarray(packed, dtype=np.uint64), axis, -1)
    as_bytes = np.ascontiguousarray(moved).astype("<u8", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=k, bitorder="little")
    return np.moveaxis(2 * bits.astype(dtype) - 1, -1, axis)


# --------------------------------------------------------------------------------------
# Prepared weights
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedWeights:
    """Packed weights of an ``N``-output layer in the kernels' panel layout.

    ``panels`` has shape ``(ceil(N / 32), Kw, 32)``: ``panels[jb, i, c]`` is word ``i`` of
    output column ``32 * jb + c``, so the 32 weight words one activation word meets are
    contiguous (four 512-bit vectors).  Columns ``>= n`` are zero words.  Build it once
    at conversion time with :func:`prepare_weights` and store ``panels`` and ``n``.
    """

    panels: np.ndarray
    n: int

    def __post_init__(self) -> None:
        panels = np.ascontiguousarray(self.panels)
        if panels.dtype != np.uint64 or panels.ndim != 3 or panels.shape[2] != PANEL:
            raise ValueError(f"panels must be uint64 (n_panels, Kw, {PANEL}), got {panels.dtype} {panels.shape}")
        if not (panels.shape[0] - 1) * PANEL < self.n <= panels.shape[0] * PANEL:
            raise ValueError(f"n={self.n} does not fit {panels.shape[0]} panels of {PANEL} columns")
        object.__setattr__(self, "panels", panels)

    @property
    def kw(self) -> int:
        """Words per packed row (``ceil(K / 64)``)."""
        return self.panels.shape[1]

    def rows(self) -> np.ndarray:
        """The weights back in row layout ``(N, Kw)`` (a copy)."""
        return self.panels.transpose(0, 2, 1).reshape(self.panels.shape[0] * PANEL, self.kw)[: self.n]


def _ctypes_address(a: np.ndarray) -> int:
    return a.ctypes.data


_address = _nb.address if _nb is not None else _ctypes_address  # the numba call costs a fifth of ctypes'


def _aligned_empty(shape: tuple[int, ...], dtype: npt.DTypeLike, align: int = 64) -> np.ndarray:
    """Uninitialised C array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    raw = np.empty(count + align // dtype.itemsize, dtype)  # numpy's allocations are itemsize-aligned
    start = (-_address(raw) % align) // dtype.itemsize
    return raw[start : start + count].reshape(shape)


def prepare_weights(b_packed: np.ndarray) -> PreparedWeights:
    """Rearrange packed weights ``(N, Kw)`` (from :func:`pack_signs`) into panels."""
    b = _check_packed(b_packed, "b_packed")
    n, kw = b.shape
    n_panels = -(-n // PANEL)
    panels = _aligned_empty((n_panels, kw, PANEL), np.uint64)
    padded = np.zeros((n_panels * PANEL, kw), np.uint64)
    padded[:n] = b
    panels[...] = padded.reshape(n_panels, PANEL, kw).transpose(0, 2, 1)
    return PreparedWeights(panels=panels, n=n)


def _check_packed(a: np.ndarray, name: str, k: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint64 or a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D uint64 array, got {a.dtype} {a.shape}")
    if k is not None and (k < 0 or a.shape[1] != _words(k)):
        raise ValueError(f"{name} has {a.shape[1]} words per row, k={k} needs {_words(k)}")
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------------------


class _Operand(NamedTuple):
    """Left GEMM operand as a gather, plus the per-row constant of the dot product.

    Row ``m`` is ``a[rowbase[m] + koff]`` (``Kw`` words) and its dot with column ``n`` is
    ``bias[rowclass[m], n] - 2 * popcount(row ^ w[n])``.  A plain GEMM has one class with
    ``bias = k``; a convolution has one class per border pattern (see :func:`_conv_operand`).
    ``bias`` has ``32 * n_panels`` columns (the kernels read whole panels).
    """

    a: np.ndarray  # flat uint64 words
    rowbase: np.ndarray  # int64 (M,)
    koff: np.ndarray  # int64 (Kw,)
    rowclass: np.ndarray  # int32 (M,)
    bias: np.ndarray  # int32 (classes, 32 * n_panels)


def _run_gemm(op: _Operand, w: PreparedWeights, backend: Backend, out: np.ndarray, thresholds: np.ndarray,
              flipbits: np.ndarray, out_bits: np.ndarray) -> None:  # fmt: skip
    """Call the numba driver: dots into ``out``, or (``thresholds`` given) bits into ``out_bits``."""
    if thresholds.size:
        mode = _nb.MODE_THRESHOLD_AVX2 if backend == "avx2" else _nb.MODE_THRESHOLD
    else:
        mode = {"avx512": _nb.MODE_DOT, "avx2": _nb.MODE_DOT_AVX2}.get(backend, _nb.MODE_DOT_PORTABLE)
    m = op.rowbase.shape[0]
    _nb.gemm(mode, _threads_for(m * w.panels.size), w.n, op.a, op.rowbase, op.koff, op.rowclass, op.bias, w.panels,
             out, thresholds, flipbits, out_bits)  # fmt: skip


def _dots(op: _Operand, w: PreparedWeights, backend: Backend) -> np.ndarray:
    """int32 ``(M, N)`` dot products of every operand row with every weight column."""
    if backend == "numpy":
        return _dots_numpy(op, w)
    out = _aligned_empty((op.rowbase.shape[0], w.n), np.int32)  # vector stores never straddle cache lines
    _run_gemm(op, w, backend, out, _NO_I32, _NO_U8, _NO_U8_2D)
    return out


def _dots_numpy(op: _Operand, w: PreparedWeights) -> np.ndarray:
    """Pure-numpy GEMM: ``np.bitwise_count`` of XOR-ed row chunks, bounded temporaries."""
    weights = w.rows()
    out = np.empty((op.rowbase.shape[0], w.n), np.int32)
    step = max(1, _NUMPY_CHUNK_WORDS // max(1, weights.size))
    for s in range(0, out.shape[0], step):
        rows = op.a[op.rowbase[s : s + step, None] + op.koff[None, :]]
        mismatches = np.bitwise_count(rows[:, None, :] ^ weights[None, :, :]).sum(axis=-1, dtype=np.int32)
        out[s : s + step] = op.bias[op.rowclass[s : s + step], : w.n] - 2 * mismatches
    return out


def threshold_bits(dots: np.ndarray, thresholds: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Packed ``(dots >= thresholds) XOR flip`` along the last axis: uint64 ``(..., ceil(N / 64))``.

    The numpy reference of the fused epilogue of :func:`binary_matmul_threshold`.
    """
    return _pack_bool(np.greater_equal(dots, thresholds) ^ np.asarray(flip, dtype=bool))


def _int_thresholds(thresholds: npt.ArrayLike, n: int) -> np.ndarray:
    """int32 thresholds; a real ``t`` becomes ``ceil(t)`` (``dot >= t`` iff ``dot >= ceil(t)``
    for integer ``dot``), clipped to the int32 range (|dot| never reaches its ends)."""
    t = np.asarray(thresholds).reshape(n)
    if t.dtype == np.int32:
        return t
    if not np.issubdtype(t.dtype, np.integer):
        t = np.ceil(t)
    info = np.iinfo(np.int32)
    return np.clip(t, info.min, info.max).astype(np.int32)


def _bits(
    op: _Operand, w: PreparedWeights, thresholds: npt.ArrayLike, flip: npt.ArrayLike, backend: Backend
) -> np.ndarray:
    """Packed ``(dot >= thresholds) XOR flip``, fused into the GEMM on the SIMD back ends."""
    thresholds = _int_thresholds(thresholds, w.n)
    flip = np.asarray(flip, dtype=bool).reshape(w.n)
    if backend not in _SIMD_BACKENDS:
        return threshold_bits(_dots(op, w, backend), thresholds, flip)
    out = np.zeros((op.rowbase.shape[0], _words(w.n)), np.uint64)
    _run_gemm(op, w, backend, _NO_I32_2D, *_panel_epilogue(thresholds, flip, op.bias.shape[1]), out.view(np.uint8))
    return out


def _panel_epilogue(thresholds: np.ndarray, flip: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 thresholds and packed flip bits padded to the panels' ``width`` columns, as the
    threshold tiles read them: padded columns never reach their threshold and do not flip."""
    n = len(flip)
    thr = np.full(width, _INT32_MAX, np.int32)
    thr[:n] = thresholds
    flips = np.zeros(width, bool)
    flips[:n] = flip
    return thr, np.packbits(flips, bitorder="little")


@lru_cache(maxsize=64)
def _dense_layout(m: int, kw: int, k: int, width: int) -> tuple[np.ndarray, ...]:
    """``rowbase, koff, rowclass, bias`` of a plain ``(m, kw)`` operand (cached: shared,
    read-only by convention)."""
    return (np.arange(m, dtype=np.int64) * kw, np.arange(kw, dtype=np.int64), np.zeros(m, np.int32),
            np.full((1, width), k, np.int32))  # fmt: skip


def _dense_operand(a_packed: np.ndarray, w: PreparedWeights, k: int) -> _Operand:
    """Validate a plain ``(M, Kw)`` operand and describe it for the kernels."""
    a = _check_packed(a_packed, "a_packed", k)
    m, kw = a.shape
    if kw != w.kw:
        raise ValueError(f"a_packed has {kw} words per row, the weights have {w.kw}")
    return _Operand(a.reshape(-1), *_dense_layout(m, kw, k, w.panels.shape[0] * PANEL))


def binary_matmul_prepared(
    a_packed: np.ndarray, prepared: PreparedWeights, k: int, *, backend: Backend | None = None
) -> np.ndarray:
    """``a @ w.T`` for ±1 matrices: int32 ``(M, N)``, ``out[m, n] = k - 2 * popcount(a[m] ^ w[n])``.

    ``a_packed`` is ``(M, Kw)`` uint64 from :func:`pack_signs` with ``Kw = ceil(k / 64)``;
    ``prepared`` comes from :func:`prepare_weights` of ``(N, Kw)`` packed weights.
    """
    return _dots(_dense_operand(a_packed, prepared, k), prepared, _backend(backend))


def binary_matmul(
    a_packed: np.ndarray, b_packed: np.ndarray, k: int, *, backend: Backend | None = None
) -> np.ndarray:
    """Like :func:`binary_matmul_prepared` with unprepared ``(N, Kw)`` weights.

    Prepares the weights on every call; store :func:`prepare_weights` output instead
    when the same weights are used again.
    """
    return binary_matmul_prepared(a_packed, prepare_weights(b_packed), k, backend=backend)


def sign_sums(b_packed: np.ndarray, k: int) -> np.ndarray:
    """Sum of the ``k`` ±1 values of each row of packed ``(N, Kw)`` signs: int64 ``(N,)``."""
    b = _check_packed(b_packed, "b_packed", k)
    return 2 * np.bitwise_count(b).sum(axis=1, dtype=np.int64) - k


@dataclass(frozen=True)
class PreparedPixelWeights:
    """±1 weights prepared for :func:`pixel_matmul_prepared`: the packed bits ``(N, Kw)``, and
    on CPUs with AVX512-VNNI also int8 panels (4 consecutive weights of one output column per
    int32, 32 columns per panel: ``(ceil(N / 32), ceil(k / 4), 32)`` int32; ``None`` otherwise).
    The panels take one byte per weight in memory; files keep one bit."""

    bits: np.ndarray
    panels: np.ndarray | None
    n: int
    k: int


def prepare_pixel_weights(b_packed: np.ndarray, k: int) -> PreparedPixelWeights:
    """Prepare packed ``(N, ceil(k / 64))`` ±1 weights for :func:`pixel_matmul_prepared`."""
    bits = _check_packed(b_packed, "b_packed", k)
    n = bits.shape[0]
    panels = None
    if _nb is not None and _nb.has_avx512_vnni():
        groups, n_panels = -(-k // 4), -(-n // PANEL)
        signs = np.zeros((n_panels * PANEL, 4 * groups), np.int8)
        signs[:n, :k] = unpack_signs(bits, k, dtype=np.int8)
        panels = np.ascontiguousarray(signs.reshape(n_panels, PANEL, groups, 4).transpose(0, 2, 1, 3))
        panels = panels.view(np.int32).reshape(n_panels, groups, PANEL)
    return PreparedPixelWeights(bits, panels, n, k)


def pixel_matmul_prepared(codes: np.ndarray, prepared: PreparedPixelWeights, *,
                          backend: Backend | None = None) -> np.ndarray:
    r"""``codes @ w.T`` for uint8 ``codes (M, k)`` and ±1 weights ``w``, exact: int32 ``(M, N)``.

    The first layer of a binary network sees real inputs; when those are 8-bit pixels
    ``x = s c + o`` its product is :math:`s\,(c\,w^\top) + o \sum_k w_k`, and
    :math:`c\,w^\top` is an integer product computed here exactly. A numba back end on a
    CPU with AVX512-VNNI runs ``vpdpbusd`` (64 uint8 x int8 multiply-adds per instruction) on
    a 4 x 32 register tile; elsewhere (and with ``backend="numpy"``) the product is a float GEMM
    of the codes with ±1 weights unpacked block by block, exact because every partial sum is an integer below
    :math:`2^{24}` (float32; float64 when :math:`255 k \ge 2^{24}`).
    """
    return _pixel_gemm(codes, prepared, backend)


def pixel_matmul_threshold(codes: np.ndarray, prepared: PreparedPixelWeights, thresholds: np.ndarray,
                           flip: np.ndarray, *, backend: Backend | None = None) -> np.ndarray:
    """Packed ``(codes @ w.T >= thresholds) XOR flip`` (as :func:`binary_matmul_threshold` packs
    it: uint64 ``(M, ceil(N / 64))``) of the exact product of :func:`pixel_matmul_prepared`; on
    AVX512-VNNI the comparison runs in the tile's epilogue, without materialising the product.
    ``thresholds``: int32 ``(N,)``; ``flip``: bool ``(N,)``."""
    return _pixel_gemm(codes, prepared, backend, (np.asarray(thresholds, np.int32).reshape(prepared.n),
                                                  np.asarray(flip, bool).reshape(prepared.n)))


def _pixel_gemm(codes: np.ndarray, prepared: PreparedPixelWeights, backend: Backend | None,
                threshold: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The product of :func:`pixel_matmul_prepared`, or with ``threshold = (thresholds, flip)``
    the bits of :func:`pixel_matmul_threshold`."""
    codes = np.asarray(codes)
    k, n = prepared.k, prepared.n
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != k:
        raise ValueError(f"codes must be uint8 of shape (M, {k}), got {codes.dtype} {codes.shape}")
    m = codes.shape[0]
    if _backend(backend) == "numpy" or prepared.panels is None:  # panels exist only with AVX512-VNNI
        dtype = np.float32 if 255 * k < 2**24 else np.float64
        products = signs_matmul(codes.astype(dtype), prepared.bits, k).astype(np.int32)
        return products if threshold is None else threshold_bits(products, *threshold)
    n_panels, groups = prepared.panels.shape[0], prepared.panels.shape[1]
    rows = -(-m // 4) * 4
    if rows == m and 4 * groups == k:
        padded = np.ascontiguousarray(codes)
    else:
        padded = np.zeros((rows, 4 * groups), np.uint8)
        padded[:m, :k] = codes
    work = m * n * groups // 8  # vpdpbusd count x 2: about the cost of as many popcount word-ops
    if threshold is None:
        out = _aligned_empty((rows, n_panels * PANEL), np.int32)
        _nb.u8s8_gemm(_threads_for(work), padded.view(np.int32), prepared.panels, out, _NO_I32, _NO_U8, _NO_U8_2D)
        return out[:m, :n]
    bits = np.zeros((rows, _words(n)), np.uint64)
    _nb.u8s8_gemm(_threads_for(work), padded.view(np.int32), prepared.panels, _NO_I32_2D,
                  *_panel_epilogue(*threshold, n_panels * PANEL), bits.view(np.uint8))
    return bits[:m]


@dataclass(frozen=True)
class PreparedRealWeights:
    """±1 weights prepared for :func:`real_matmul_prepared`: ``masks`` uint32 ``(ceil(N / 32), k)``,
    bit ``c`` of ``masks[jb, i]`` set where output column ``32 jb + c`` has weight +1 at input
    ``i`` (one bit per weight; columns past ``n`` are 0)."""

    masks: np.ndarray
    n: int
    k: int


def prepare_real_weights(b_packed: np.ndarray, k: int) -> PreparedRealWeights:
    """Prepare packed ``(N, ceil(k / 64))`` ±1 weights for :func:`real_matmul_prepared`."""
    bits = _check_packed(b_packed, "b_packed", k)
    n, n_panels = bits.shape[0], -(-bits.shape[0] // PANEL)
    plus = np.zeros((n_panels * PANEL, k), bool)
    plus[:n] = unpack_signs(bits, k) > 0
    masks = np.packbits(plus.reshape(n_panels, PANEL, k).transpose(0, 2, 1), axis=-1, bitorder="little")
    return PreparedRealWeights(np.ascontiguousarray(masks).view("<u4").reshape(n_panels, k), n, k)


def real_matmul_prepared(x: np.ndarray, prepared: PreparedRealWeights, *, backend: Backend | None = None) -> np.ndarray:
    r"""``x @ w.T`` for real ``x`` and ±1 weights ``w``, in float32 summed in a fixed order:
    float32 ``(M, N)``.

    With :math:`P_n = \sum_{i:\,w_{n,i} = +1} x_i` and :math:`T = \sum_i x_i`, each accumulated
    in float32 from +0.0 in order of ``i``, the result is :math:`2 P_n - T` (one rounding:
    :math:`2 P_n` is exact). The order is part of the definition, so every back end and the C
    export (:mod:`onebit.deploy.export_c`) give the same bits, however the work is split. The
    numba back ends run one masked vector add per 16 weights (:mod:`onebit.deploy._numba_real`);
    the numpy back end adds one input column at a time.

    ``x``: float32 ``(M, k)`` (other real dtypes are converted).
    """
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != prepared.k:
        raise ValueError(f"x must have shape (M, {prepared.k}), got {x.shape}")
    m, n = x.shape[0], prepared.n
    if _backend(backend) != "numpy":
        out = np.empty((m, n), np.float32)
        _nb_real.real_matmul(_threads_for(m * prepared.masks.size // 2), x, prepared.masks, n, out)
        return out
    plus = np.unpackbits(prepared.masks.view(np.uint8), axis=-1, bitorder="little").reshape(-1, prepared.k, PANEL)
    plus = plus.transpose(1, 0, 2).reshape(prepared.k, -1)[:, :n].astype(bool)  # (k, N)
    p = np.zeros((m, n), np.float32)
    for i in range(prepared.k):
        p += np.where(plus[i], x[:, i : i + 1], np.float32(0))
    totals = np.add.accumulate(x, axis=1)[:, -1:] if prepared.k else np.zeros((m, 1), np.float32)
    return 2 * p - totals


def signs_matmul(x: np.ndarray, b_packed: np.ndarray, k: int) -> np.ndarray:
    """``x @ w.T`` for real ``x (M, k)`` (float32 or float64) and packed ±1 weights ``(N, Kw)``,
    in ``x``'s dtype. The weights are unpacked block by block (:data:`_UNPACK_CHUNK` elements
    at a time), never all at once."""
    out = np.empty((x.shape[0], b_packed.shape[0]), x.dtype)
    rows = max(1, _UNPACK_CHUNK // max(1, k))
    for start in range(0, b_packed.shape[0], rows):
        out[:, start : start + rows] = x @ unpack_signs(b_packed[start : start + rows], k, dtype=x.dtype).T
    return out


def binary_matmul_threshold(
    a_packed: np.ndarray,
    prepared: PreparedWeights,
    k: int,
    thresholds: np.ndarray,
    flip: np.ndarray,
    *,
    backend: Backend | None = None,
) -> np.ndarray:
    """Binary GEMM followed by a per-output-channel sign step, packed for the next layer.

    Output bit ``(m, n)`` (bit ``n % 64`` of word ``n // 64`` of row ``m``; 1 = +1) is::

        (dot[m, n] >= thresholds[n]) XOR flip[n],   dot = k - 2 * popcount(a[m] ^ w[n])

    with ``thresholds`` int32 ``(N,)`` (real values act as their ceiling) and ``flip``
    bool ``(N,)``; tail bits past ``N`` are 0.  Folding ``sign(BatchNorm(dot))`` with ``s = gamma / sqrt(var + eps)``:
    for ``s > 0`` the output is +1 iff ``dot >= mean - beta / s``, i.e.
    ``threshold = ceil(mean - beta / s)``, ``flip = False``; for ``s < 0`` it is +1 iff
    ``dot <= mean - beta / s``, i.e. ``threshold = floor(mean - beta / s) + 1``,
    ``flip = True``.  (``dot`` always has the parity of ``k``.)  The AVX-512 back end
    computes the bits in the GEMM epilogue without materialising ``dot``.
    """
    return _bits(_dense_operand(a_packed, prepared, k), prepared, thresholds, flip, _backend(backend))


# --------------------------------------------------------------------------------------
# Convolution and pooling (NHWC, packed along channels)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedConvWeights:
    """Binary conv weights ready for :func:`binary_conv2d`.

    ``weights`` are the ``(C_out, kh, kw, Cw)`` packed weights flattened to GEMM rows of
    ``kh * kw * Cw`` words (tap-major, channel words fastest) and prepared as panels.
    ``tap_dots[dy, dx, co] = c_in - 2 * popcount(w[co, dy, dx])`` is the dot product of
    one tap with an all-zero-bits (all -1) pixel, used to cancel the padding taps.
    The per-border-pattern biases derived from them are cached per input geometry.
    """

    weights: PreparedWeights
    kernel_size: tuple[int, int]
    c_in: int
    tap_dots: np.ndarray
    _biases: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)


def prepare_conv_weights(w_packed: np.ndarray, c_in: int) -> PreparedConvWeights:
    """Prepare packed conv weights ``(C_out, kh, kw, ceil(c_in / 64))`` (``pack_signs`` of
    ``(C_out, kh, kw, C_in)`` weights along the last axis)."""
    w = np.asarray(w_packed)
    if w.dtype != np.uint64 or w.ndim != 4 or w.shape[3] != _words(c_in):
        raise ValueError(f"w_packed must be uint64 (C_out, kh, kw, {_words(c_in)}), got {w.dtype} {w.shape}")
    c_out, kh, kw, cw = w.shape
    tap_dots = c_in - 2 * np.bitwise_count(w).sum(axis=-1, dtype=np.int32)
    return PreparedConvWeights(
        weights=prepare_weights(w.reshape(c_out, kh * kw * cw)),
        kernel_size=(kh, kw),
        c_in=c_in,
        tap_dots=np.ascontiguousarray(tap_dots.transpose(1, 2, 0)),
    )


def _tap_patterns(size: int, out_size: int, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct patterns of in-image taps along one axis, and each output's pattern index.

    Tap ``d`` of output ``o`` reads input ``o * stride - padding + d``; it is valid when
    that lies in ``0 .. size - 1``.  Returns ``(patterns (P, kernel) int32, index (out_size,))``.
    """
    pos = np.arange(out_size)[:, None] * stride - padding + np.arange(kernel)[None, :]
    valid = (pos >= 0) & (pos < size)
    _, first, index = np.unique(valid @ (1 << np.arange(kernel)), return_index=True, return_inverse=True)
    return valid[first].astype(np.int32), index.reshape(-1)


@dataclass(frozen=True)
class _ConvGeometry:
    """Weight-independent part of a convolution's implicit im2col (cached per shape; the
    arrays are shared between calls and must not be modified)."""

    out_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    rowbase: np.ndarray  # int64 (N * Ho * Wo,): first word of each receptive field
    koff: np.ndarray  # int64 (kh * kw * Cw,): word offsets inside a receptive field
    rowclass: np.ndarray  # int32 (N * Ho * Wo,): index of the (row, column) tap pattern
    patterns: tuple[np.ndarray, np.ndarray]  # valid-tap patterns along y and x


@lru_cache(maxsize=32)
def _conv_geometry(n: int, h: int, wd: int, cw: int, kh: int, kw: int, padding: int, stride: int) -> _ConvGeometry:
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    hp, wp = h + 2 * padding, wd + 2 * padding
    rowbase = (np.arange(n)[:, None, None] * hp + np.arange(ho)[None, :, None] * stride) * wp
    rowbase = ((rowbase + np.arange(wo)[None, None, :] * stride) * cw).reshape(-1)
    koff = ((np.arange(kh)[:, None, None] * wp + np.arange(kw)[None, :, None]) * cw + np.arange(cw)).reshape(-1)
    ypat, yclass = _tap_patterns(h, ho, kh, stride, padding)
    xpat, xclass = _tap_patterns(wd, wo, kw, stride, padding)
    rowclass = np.broadcast_to((yclass[:, None] * xpat.shape[0] + xclass[None, :]).astype(np.int32), (n, ho, wo))
    return _ConvGeometry(
        (ho, wo), (hp, wp), rowbase.astype(np.int64), koff.astype(np.int64), rowclass.reshape(-1), (ypat, xpat)
    )


def _conv_operand(x: np.ndarray, w: PreparedConvWeights, padding: int, stride: int) -> tuple[_Operand, tuple[int, ...]]:
    """Implicit im2col of the NHWC packed input for a ``kh x kw`` convolution.

    The input is copied into a buffer padded with zero words; GEMM row ``(n, y, x)``
    gathers the ``kh * kw * Cw`` words of its receptive field.  A zero word is an all -1
    pixel, which would add ``tap_dots[dy, dx]`` per padding tap, whereas zero padding of
    ±1 activations adds 0.  So each output position gets the class of its (row, column)
    tap pattern, and ``bias[class] = kh * kw * c_in - sum of tap_dots over its padding
    taps`` makes the kernel's ``bias - 2 * mismatches`` exact at the borders.
    Returns the operand and the output shape ``(N, Ho, Wo, C_out)``.
    """
    n, h, wd, cw = x.shape
    kh, kw = w.kernel_size
    _check_window(h, wd, kh, kw, padding, stride)
    geo = _conv_geometry(n, h, wd, cw, kh, kw, padding, stride)
    padded = np.zeros((n, *geo.padded_hw, cw), np.uint64)
    padded[:, padding : padding + h, padding : padding + wd] = x
    key = (h, wd, padding, stride)
    bias = w._biases.get(key)
    if bias is None:  # depends on the weights and the tap patterns only: computed once per geometry
        ypat, xpat = geo.patterns
        inside = np.einsum("ya,xb,abc->yxc", ypat, xpat, w.tap_dots)  # (Py, Px, C_out)
        bias = np.zeros((ypat.shape[0] * xpat.shape[0], w.weights.panels.shape[0] * PANEL), np.int32)
        bias[:, : w.weights.n] = (kh * kw * w.c_in - w.tap_dots.sum(axis=(0, 1)) + inside).reshape(bias.shape[0], -1)
        if len(w._biases) >= _CONV_BIASES_KEPT:
            w._biases.clear()
        w._biases[key] = bias
    op = _Operand(padded.reshape(-1), geo.rowbase, geo.koff, geo.rowclass, bias)
    return op, (n, *geo.out_hw, w.weights.n)


def _check_window(h: int, w: int, kh: int, kw: int, padding: int, stride: int) -> None:
    if stride < 1 or padding < 0 or h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(f"a {kh}x{kw} window (stride {stride}, padding {padding}) does not fit {h}x{w} maps")


def _check_conv_input(x_packed: np.ndarray, c_in: int, w_prepared: PreparedConvWeights) -> np.ndarray:
    x = np.asarray(x_packed)
    if x.dtype != np.uint64 or x.ndim != 4 or x.shape[3] != _words(c_in) or c_in != w_prepared.c_in:
        raise ValueError(f"x_packed must be uint64 (N, H, W, {_words(w_prepared.c_in)}) for c_in={w_prepared.c_in}")
    return x


def binary_conv2d(
    x_packed: np.ndarray,
    c_in: int,
    w_prepared: PreparedConvWeights,
    padding: int = 1,
    stride: int = 1,
    *,
    backend: Backend | None = None,
) -> np.ndarray:
    """Binary 2-D convolution (cross-correlation, like ``F.conv2d``) of NHWC packed input.

    ``x_packed``: ``(N, H, W, Cw)`` uint64, channels packed with :func:`pack_signs`
    (``Cw = ceil(c_in / 64)``).  Returns int32 ``(N, Ho, Wo, C_out)``, exactly
    ``F.conv2d`` of the ±1 tensors with *zero* padding: padding positions contribute 0,
    neither +1 nor -1.  Runs as one GEMM over implicit im2col rows
    (``k = kh * kw * c_in``) with a per-border-pattern correction (:func:`_conv_operand`).
    """
    x = _check_conv_input(x_packed, c_in, w_prepared)
    op, shape = _conv_operand(x, w_prepared, padding, stride)
    return _dots(op, w_prepared.weights, _backend(backend)).reshape(shape)


def binary_conv2d_threshold(
    x_packed: np.ndarray,
    c_in: int,
    w_prepared: PreparedConvWeights,
    thresholds: np.ndarray,
    flip: np.ndarray,
    padding: int = 1,
    stride: int = 1,
    *,
    backend: Backend | None = None,
) -> np.ndarray:
    """:func:`binary_conv2d` followed by the sign step of :func:`binary_matmul_threshold`:
    packed NHWC output ``(N, Ho, Wo, ceil(C_out / 64))`` with bit
    ``(conv >= thresholds[c]) XOR flip[c]`` per output channel ``c``."""
    x = _check_conv_input(x_packed, c_in, w_prepared)
    op, shape = _conv_operand(x, w_prepared, padding, stride)
    bits = _bits(op, w_prepared.weights, thresholds, flip, _backend(backend))
    return bits.reshape(shape[:3] + (bits.shape[1],))


def binary_maxpool2d(x_packed: np.ndarray, kernel: int = 2, stride: int = 2) -> np.ndarray:
    """Max-pool of packed ±1 NHWC maps: the max of ±1 values is +1 iff any bit is 1, so
    it is the bitwise OR of the words in each ``kernel x kernel`` window (no padding;
    ``Ho = (H - kernel) // stride + 1``).  Padding bits stay 0."""
    x = np.asarray(x_packed)
    if x.dtype != np.uint64 or x.ndim != 4:
        raise ValueError(f"x_packed must be a uint64 NHWC array, got {x.dtype} {x.shape}")
    _check_window(x.shape[1], x.shape[2], kernel, kernel, 0, stride)
    ho, wo = (x.shape[1] - kernel) // stride + 1, (x.shape[2] - kernel) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    for dy in range(kernel):
        for dx in range(kernel):
            window = x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
            np.bitwise_or(out, window, out=out)
    return out
