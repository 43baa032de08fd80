"""Numba back end of :mod:`onebit.deploy.kernels` (imported only when numba is available).

Data layout shared with :mod:`onebit.deploy.kernels`:

* Bits: element ``j`` of a packed row lives in word ``j // 64``, bit ``j % 64``
  (bit 1 = +1, bit 0 = -1); tail bits past the true length are 0.
* Activations are addressed through a *gather*: row ``m`` of the left GEMM operand is
  ``a[rowbase[m] + koff[i]]`` for ``i < Kw``, with ``a`` a flat uint64 array.  A plain
  GEMM uses ``rowbase = arange(M) * Kw`` and ``koff = arange(Kw)``; a convolution uses
  ``rowbase`` = the top-left pixel of each receptive field and ``koff`` = the offsets of
  the ``kh * kw * Cw`` words of the field (implicit im2col, nothing is copied).
* Prepared weights ("panels"), shape ``(NB, Kw, 32)``: panel ``jb`` holds output
  columns ``32 * jb .. 32 * jb + 31``, and ``panels[jb, i]`` are the 32 weight words of
  reduction word ``i`` — four 512-bit vectors of 8 columns each.  Columns past ``N``
  are all-zero words.

GEMM micro-kernel (AVX-512 back end): a tile of up to 4 rows x 32 columns keeps 16
``<8 x i64>`` accumulators in registers.  Per reduction word it loads the 4 weight
vectors, broadcasts one activation word per row (``vpbroadcastq`` from memory: a load,
no ALU work) and does ``acc += popcount(a ^ w)`` (``vpxorq`` + ``vpopcntq`` + ``vpaddq``),
i.e. 3 vector instructions per 8 x 64 binary multiply-adds.  LLVM does not find this
schedule from scalar code, so the loop is written as LLVM vector IR through
:func:`numba.extending.intrinsic`.  The epilogue turns mismatch counts into
``dot = bias[rowclass[m], col] - 2 * popcount`` (one class with ``bias = k`` for a plain
GEMM; a convolution has one class per border pattern that also cancels the padding taps,
see ``kernels._conv_operand``) and either stores the dots (one accumulator truncated per
256-bit masked store, which also handles the last, partial panel) or compares them with
per-column thresholds, 16 columns per compare (two accumulators packed into one
``<16 x i32>`` by a ``vpermt2d``), and writes packed output bits directly.

Why this tile: the loop is bound by vector ALU throughput, not by loads or registers.  On
the Zen 4 measured (AVX-512 double-pumped on four 256-bit pipes) at most two 512-bit ALU
instructions issue per cycle, of which one ``vpopcntq``: the three instructions take 1.5
cycles per 8 x 64 multiply-adds, a peak of 16/3 word-ops per cycle, and the 4 x 32 tile
runs at about 97% of it at K = 4096 and 88% at K = 784, where the epilogue and the start
of the next tile (about 35 cycles per tile) weigh more.  Tiles of 5 or 6 rows (20 or 24
accumulators), unrolling the reduction loop by 2 and software prefetch of the next panel
measured no faster (within 2%), and 512-bit stores of the int32 dots were up to 10% slower
once the output outgrew the caches (an 8 MiB conv output), so every CPU runs this tile,
which also wastes least for small M.  Since the tile is at its ALU peak, what a call costs
beyond it is fixed overhead, kept small for small problems: :func:`gemm` calls the kernel
directly when one thread does the work (``python benchmarks/bench_kernels.py --threads 1
--quick`` gives torch ``F.linear`` / binary 31-33x at M=64, K=N=4096, about 20x at M=64,
K=784, N=1024 and 6-9x for a single row with K, N <= 1024 on that 2-core VM).

AVX2 back end (no ``vpopcntq``): the same tile, counted in sub-tiles of 2 rows x 8
columns whose 4 byte counters take ``popcount`` by two ``vpshufb`` nibble lookups per
256 bits and are summed into 64-bit accumulators (``vpsadbw``) every 31 reduction words.
Both tiles are compiled into the GEMM driver, which picks one per call (``mode``), so an
AVX-512 CPU runs the AVX2 tile too (there LLVM may count the bytes with AVX-512's
``vpopcntb`` instead of the nibble lookups; the code generator is the same).

The portable ``numba`` back end calls :func:`_tile_dot_portable`, a plain loop that LLVM
auto-vectorizes for whatever the CPU has (the threshold epilogue then runs unfused, in
numpy).

The kernels are integer-only, so numba's ``fastmath`` would change nothing in the GEMM
and would make NaN handling of the sign packer undefined: it is not used.

Threading: every kernel is a ``nogil`` *worker* that takes work items (row block x panel
for the GEMMs, row chunks for the packer) from a shared atomic counter until none are left.
:func:`onebit.deploy._threads.run_workers` runs the worker on the calling thread and on ``nthreads - 1``
helper threads of a persistent Python thread pool; small problems run on the calling thread alone
(see ``kernels._threads_for``).  No numba threading layer (OpenMP, TBB, workqueue) is
involved: on the 2-core VMs measured, numba's ``workqueue`` layer cost about 1 ms per launch
and gave no speed-up, and an OpenMP layer spin-waits against the libgomp that torch ships
when both share a process, whereas waking a pool thread costs about 0.1 ms and the
helpers block, not spin, while idle.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._threads import run_workers

PANEL = 32  # output columns per prepared panel
TILE_ROWS = 4  # rows per register tile
_LANES = 8  # 64-bit lanes per 512-bit vector
_VECS = PANEL // _LANES

_I1, _I8, _I16, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V8I64 = ir.VectorType(_I64, _LANES)
_V8I32 = ir.VectorType(_I32, _LANES)
_V8I1 = ir.VectorType(_I1, _LANES)
_V16I32 = ir.VectorType(_I32, 16)

_BLOCK_BYTES = 256 * 1024  # gathered activation rows per work item, kept hot in L2
_JIT = dict(cache=True, nogil=True)
_PACK_ITEM_ELEMENTS = 1 << 15  # input elements per work item of the parallel packer


def _host_features() -> dict:
    """The host CPU's features, or none when numba compiles for another CPU (``NUMBA_CPU_NAME``
    other than ``host``, e.g. ``generic`` for portable caches)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return {}
    return binding.get_host_cpu_features()


def has_avx512_vnni() -> bool:
    """True when the CPU numba compiles for has AVX512-VNNI (``vpdpbusd``)."""
    features = _host_features()
    return bool(features.get("avx512f") and features.get("avx512vnni"))


def has_avx512_popcount() -> bool:
    """True when the CPU numba compiles for has 512-bit vectors and ``vpopcntq``.

    A ``NUMBA_CPU_NAME`` other than ``host`` (e.g. ``generic`` for portable caches) means
    the host's features are not the target's: report False so the portable kernel runs.
    """
    features = _host_features()
    return bool(features.get("avx512f") and features.get("avx512vpopcntdq"))


def has_avx2() -> bool:
    """True when the CPU numba compiles for has AVX2 (256-bit integer vectors, ``vpshufb``)."""
    return bool(_host_features().get("avx2"))


def simd_backends() -> tuple[str, ...]:
    """The vector GEMM tiles this CPU runs, fastest first: ``"avx512"`` (``vpopcntq``) where it
    has AVX512-VPOPCNTDQ, ``"avx2"`` (nibble lookups) wherever it has AVX2, AVX-512 CPUs
    included; none where only the portable kernel runs."""
    return (("avx512",) if has_avx512_popcount() else ()) + (("avx2",) if has_avx2() else ())


@njit(**_JIT)
def address(a):
    """Address of ``a``'s first element (cheaper to call than ``a.ctypes.data``)."""
    return a.ctypes.data


# --------------------------------------------------------------------------------------
# LLVM IR helpers
# --------------------------------------------------------------------------------------


def _splat(builder: ir.IRBuilder, value: ir.Value, vtype: ir.VectorType) -> ir.Value:
    """Broadcast a scalar to every lane of ``vtype``."""
    first = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vtype.count), [0] * vtype.count)
    return builder.shuffle_vector(first, ir.Constant(vtype, ir.Undefined), zeros)


def _vec_ptr(builder: ir.IRBuilder, base: ir.Value, offset: ir.Value | int, vtype: ir.Type) -> ir.Value:
    """Pointer to a ``vtype`` starting at element ``offset`` of the scalar pointer ``base``."""
    if isinstance(offset, int):
        offset = ir.Constant(_I64, offset)
    return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())


def accumulate(builder: ir.IRBuilder, count: ir.Value, start: list[ir.Value], name: str,
               step: Callable[[ir.Value, list[ir.Value]], list[ir.Value]]) -> list[ir.Value]:
    """Emit ``for i in range(count): values = step(i, values)`` from the current block, the
    ``values`` (accumulators) starting at ``start`` and kept in registers (phi nodes); returns
    their final values, with the builder after the loop. ``step`` emits the loop body."""
    fn, entry = builder.function, builder.block
    head, body, tail = (fn.append_basic_block(f"{name}.{part}") for part in ("head", "body", "tail"))
    builder.branch(head)

    builder.position_at_end(head)
    i = builder.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), entry)
    values = [builder.phi(v.type) for v in start]
    for phi, v in zip(values, start):
        phi.add_incoming(v, entry)
    builder.cbranch(builder.icmp_signed("<", i, count), body, tail)

    builder.position_at_end(body)
    updated = step(i, values)
    for phi, v in zip(values, updated):
        phi.add_incoming(v, builder.block)
    i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.block)
    builder.branch(head)

    builder.position_at_end(tail)
    return values


class _Args:
    """Typed access to an intrinsic's arguments: array data pointers, shapes, int64 scalars."""

    def __init__(self, context, builder: ir.IRBuilder, sig, args) -> None:
        self.context, self.builder, self.sig, self.args = context, builder, sig, args

    def data(self, i: int) -> ir.Value:
        return self.context.make_array(self.sig.args[i])(self.context, self.builder, self.args[i]).data

    def shape(self, i: int, dim: int) -> ir.Value:
        arr = self.context.make_array(self.sig.args[i])(self.context, self.builder, self.args[i])
        return cgutils.unpack_tuple(self.builder, arr.shape)[dim]

    def int64(self, i: int) -> ir.Value:
        return self.context.cast(self.builder, self.args[i], self.sig.args[i], types.int64)


# Epilogue: (builder, row index i64, group g, dot <W x i32> of columns W g .. W g + W - 1) -> None,
# with W = 8 (one accumulator) or 16 (two accumulators packed together, see _emit_tile)
_Epilogue = Callable[[ir.IRBuilder, ir.Value, int, ir.Value], None]
_LOW_DWORDS = ir.Constant(ir.VectorType(_I32, 2 * _LANES), [2 * j for j in range(2 * _LANES)])


def _counts(builder: ir.IRBuilder, acc: list[ir.Value], g: int, width: int) -> ir.Value:
    """Columns ``width * g ..`` of a row's ``<8 x i64>`` counts (each below 2**31) as ``<width x i32>``:
    one accumulator truncated (``vpmovqd``), or the low dwords of two (one ``vpermt2d``)."""
    if width == _LANES:
        return builder.trunc(acc[g], _V8I32)
    lo, hi = (builder.bitcast(acc[2 * g + h], _V16I32) for h in range(2))
    return builder.shuffle_vector(lo, hi, _LOW_DWORDS)


def _emit_tile(ac: _Args, epilogue: _Epilogue, counter: str, width: int) -> None:
    """Emit the 4 x 32 popcount tile shared by all GEMM intrinsics.

    Argument positions 0..8 are always ``a, rowbase, koff, rowclass, bias, row0, mr,
    panels, jb``.  The tile covers rows ``row0 .. row0 + mr - 1`` (1 <= mr <= 4; one
    specialised loop per ``mr`` so a single-row GEMV does no wasted work) and panel
    ``jb``, and hands ``dot = bias[rowclass[row], col] - 2 * mismatches`` to ``epilogue``,
    ``width`` (8 or 16) columns per call (see :func:`_counts`).  The mismatches are counted
    by :func:`_count_vpopcntq` (generic LLVM vector IR) for ``counter="avx512"`` and by
    :func:`_count_bytes` for ``counter="avx2"``. On a CPU without AVX2 (where the ``"avx2"``
    back end is not available, so the tile never runs) the latter emits the former too,
    since LLVM cannot compile its AVX2 intrinsic there.
    """
    builder = ac.builder
    a, rowbase, koff, rowclass, bias, panels = (ac.data(i) for i in (0, 1, 2, 3, 4, 7))
    row0, mr, jb = ac.int64(5), ac.int64(6), ac.int64(8)
    kw, bias_stride = ac.shape(2, 0), ac.shape(4, 1)
    col0 = builder.mul(jb, ir.Constant(_I64, PANEL))
    panel = builder.gep(panels, [builder.mul(col0, kw)])
    count = _count_bytes if counter == "avx2" and has_avx2() else _count_vpopcntq

    fn = builder.function
    done = fn.append_basic_block("tile.done")
    switch = builder.switch(mr, done)
    for rows in range(1, TILE_ROWS + 1):
        entry = fn.append_basic_block(f"tile.mr{rows}")
        switch.add_case(ir.Constant(_I64, rows), entry)
        builder.position_at_end(entry)
        row_idx = [builder.add(row0, ir.Constant(_I64, r)) for r in range(rows)]
        row_base = [builder.load(builder.gep(rowbase, [idx])) for idx in row_idx]
        mismatches = count(builder, a, koff, row_base, panel, kw, f"tile.mr{rows}")
        for r in range(rows):
            cls = builder.sext(builder.load(builder.gep(rowclass, [row_idx[r]])), _I64)
            bias_row = builder.gep(bias, [builder.add(builder.mul(cls, bias_stride), col0)])
            vtype = ir.VectorType(_I32, width)
            for g in range(PANEL // width):
                bvec = builder.load(_vec_ptr(builder, bias_row, width * g, vtype), align=4)
                counts = _counts(builder, mismatches[r], g, width)
                epilogue(builder, row_idx[r], g, builder.sub(bvec, builder.add(counts, counts)))
        builder.branch(done)
    builder.position_at_end(done)


# Mismatch counters: (builder, a, koff, row_base per row, panel, kw, block name prefix) ->
# per row, _VECS <8 x i64> popcount sums over the reduction (one per 8 columns of the panel);
# they emit their loops from the current block and leave the builder after them.


def _count_vpopcntq(builder, a, koff, row_base, panel, kw, name) -> list[list[ir.Value]]:
    """All rows and 32 columns in one loop: 16 ``<8 x i64>`` accumulators, ``acc +=
    popcount(a ^ w)`` (``vpxorq``, ``vpopcntq``, ``vpaddq``) per reduction word."""
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8I64, [_V8I64]), "llvm.ctpop.v8i64")
    zero = ir.Constant(_V8I64, [0] * _LANES)

    def step(i: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:  # acc[r * _VECS + p]
        off = builder.load(builder.gep(koff, [i]))
        wrow = builder.gep(panel, [builder.mul(i, ir.Constant(_I64, PANEL))])
        w = [builder.load(_vec_ptr(builder, wrow, _LANES * p, _V8I64), align=8) for p in range(_VECS)]
        out = []
        for r, base in enumerate(row_base):
            av = _splat(builder, builder.load(builder.gep(a, [builder.add(base, off)])), _V8I64)
            out += [builder.add(acc[r * _VECS + p], builder.call(ctpop, [builder.xor(av, w[p])])) for p in range(_VECS)]
        return out

    acc = accumulate(builder, kw, [zero] * (_VECS * len(row_base)), name, step)
    return [acc[r * _VECS : (r + 1) * _VECS] for r in range(len(row_base))]


_V4I64 = ir.VectorType(_I64, 4)
_V32I8 = ir.VectorType(_I8, 32)
_BYTE_WORDS = 31  # reduction words a byte counter holds: <= 8 set bits per byte each, 31 * 8 < 256
_SUB_ROWS, _SUB_VECS = 2, 2  # AVX2 sub-tile: 2 rows x 2 <4 x i64> (8 columns): 4 byte counters


def _count_bytes(builder, a, koff, row_base, panel, kw, name) -> list[list[ir.Value]]:
    """For CPUs without ``vpopcntq`` (AVX2): per sub-tile of 2 rows x 8 columns, count the set
    bits of ``a ^ w`` per byte (``llvm.ctpop.v32i8``: two ``vpshufb`` nibble lookups) into
    byte counters, and every 31 reduction words add their per-word sums (``vpsadbw``
    against zero) into 64-bit accumulators. Sixteen 256-bit registers hold a sub-tile."""
    fn = builder.function
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V32I8, [_V32I8]), "llvm.ctpop.v32i8")
    psadbw = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V4I64, [_V32I8, _V32I8]), "llvm.x86.avx2.psad.bw")
    zero4, zero32 = ir.Constant(_V4I64, [0] * 4), ir.Constant(_V32I8, [0] * 32)
    sums: list[list[ir.Value]] = [[None] * (2 * _VECS) for _ in row_base]  # <4 x i64> per 4 columns
    for r0 in range(0, len(row_base), _SUB_ROWS):
        rows = range(r0, min(r0 + _SUB_ROWS, len(row_base)))
        for v0 in range(0, 2 * _VECS, _SUB_VECS):
            tag = f"{name}.r{r0}v{v0}"
            entry = builder.block
            outer, inner_pre, inner, body, flush, tail = (
                fn.append_basic_block(f"{tag}.{part}") for part in ("outer", "pre", "inner", "body", "flush", "tail"))
            builder.branch(outer)

            builder.position_at_end(outer)  # chunks of _BYTE_WORDS reduction words
            c0 = builder.phi(_I64)
            c0.add_incoming(ir.Constant(_I64, 0), entry)
            wide = {(r, v): builder.phi(_V4I64) for r in rows for v in range(_SUB_VECS)}
            for phi in wide.values():
                phi.add_incoming(zero4, entry)
            builder.cbranch(builder.icmp_signed("<", c0, kw), inner_pre, tail)

            builder.position_at_end(inner_pre)
            c1 = builder.add(c0, ir.Constant(_I64, _BYTE_WORDS))
            c1 = builder.select(builder.icmp_signed("<", c1, kw), c1, kw)
            builder.branch(inner)

            builder.position_at_end(inner)
            i = builder.phi(_I64)
            i.add_incoming(c0, inner_pre)
            counters = {key: builder.phi(_V32I8) for key in wide}
            for phi in counters.values():
                phi.add_incoming(zero32, inner_pre)
            builder.cbranch(builder.icmp_signed("<", i, c1), body, flush)

            builder.position_at_end(body)
            off = builder.load(builder.gep(koff, [i]))
            wrow = builder.gep(panel, [builder.mul(i, ir.Constant(_I64, PANEL))])
            w = [builder.load(_vec_ptr(builder, wrow, 4 * (v0 + v), _V4I64), align=8) for v in range(_SUB_VECS)]
            for r in rows:
                av = _splat(builder, builder.load(builder.gep(a, [builder.add(row_base[r], off)])), _V4I64)
                for v in range(_SUB_VECS):
                    bits = builder.bitcast(builder.xor(av, w[v]), _V32I8)
                    counters[r, v].add_incoming(builder.add(counters[r, v], builder.call(ctpop, [bits])), body)
            i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), body)
            builder.branch(inner)

            builder.position_at_end(flush)
            for key, phi in wide.items():
                phi.add_incoming(builder.add(phi, builder.call(psadbw, [counters[key], zero32])), flush)
            c0.add_incoming(c1, flush)
            builder.branch(outer)

            builder.position_at_end(tail)
            for (r, v), phi in wide.items():
                sums[r][v0 + v] = phi
    return [[builder.shuffle_vector(row[2 * p], row[2 * p + 1], ir.Constant(ir.VectorType(_I32, 8), list(range(8))))
             for p in range(_VECS)] for row in sums]


def _named_intrinsic(fn, name: str):
    """``intrinsic(fn)`` under its own name (the tile factories make one function per counter)."""
    fn.__name__ = fn.__qualname__ = name
    return intrinsic(fn)


def _make_tile_dot(counter: str):
    def tile_dot(typingctx, a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols):
        """Tile -> int32 dot products, ``out[row, 32 * jb + c]`` for ``c < ncols``."""
        sig = types.void(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols)

        def codegen(context, builder, sig, args):
            ac = _Args(context, builder, sig, args)
            out_data, ldo = ac.data(9), ac.shape(9, 1)
            col0 = builder.mul(ac.int64(8), ir.Constant(_I64, PANEL))
            nvalid = _splat(builder, builder.trunc(ac.int64(10), _I32), _V8I32)
            mstore = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [_V8I32, _V8I32.as_pointer(), _I32, _V8I1]),
                "llvm.masked.store.v8i32.p0",
            )

            def store(b: ir.IRBuilder, row: ir.Value, p: int, dot: ir.Value) -> None:
                lanes = ir.Constant(_V8I32, [_LANES * p + j for j in range(_LANES)])
                mask = b.icmp_signed("<", lanes, nvalid)
                ptr = _vec_ptr(b, out_data, b.add(b.mul(row, ldo), b.add(col0, ir.Constant(_I64, _LANES * p))), _V8I32)
                b.call(mstore, [dot, ptr, ir.Constant(_I32, 4), mask])

            # 256-bit stores: 512-bit ones are slower when the output does not fit the caches
            _emit_tile(ac, store, counter, _LANES)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(tile_dot, f"_tile_dot_{counter}")


def _make_tile_threshold(counter: str):
    def tile_threshold(typingctx, a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, thresholds, flipbits, out):
        """Tile -> packed bits ``(dot >= thresholds[col]) ^ flip[col]`` into the byte view ``out``.

        ``thresholds`` (int32) and ``flipbits`` (one bit per column, little-endian bytes) are
        padded to the panel width; padded columns must give 0 bits.
        """
        sig = types.void(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, thresholds, flipbits, out)

        def codegen(context, builder, sig, args):
            ac = _Args(context, builder, sig, args)
            thr, flips, out_data, ldo = ac.data(9), ac.data(10), ac.data(11), ac.shape(11, 1)
            byte0 = builder.mul(ac.int64(8), ir.Constant(_I64, PANEL // 8))

            def store(b: ir.IRBuilder, row: ir.Value, g: int, dot: ir.Value) -> None:
                byte = b.add(byte0, ir.Constant(_I64, 2 * g))
                tvec = b.load(_vec_ptr(b, thr, b.mul(byte, ir.Constant(_I64, 8)), _V16I32), align=4)
                bits = b.bitcast(b.icmp_signed(">=", dot, tvec), _I16)
                bits = b.xor(bits, b.load(b.bitcast(b.gep(flips, [byte]), _I16.as_pointer()), align=1))
                b.store(bits, b.bitcast(b.gep(out_data, [b.add(b.mul(row, ldo), byte)]), _I16.as_pointer()), align=1)

            # 16 columns per compare: one vpcmpd and a 2-byte store per row and half panel
            _emit_tile(ac, store, counter, 2 * _LANES)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(tile_threshold, f"_tile_threshold_{counter}")


# The tiles of the "avx512" and "avx2" back ends (see _emit_tile).
_tile_dot, _tile_dot_avx2 = _make_tile_dot("avx512"), _make_tile_dot("avx2")
_tile_threshold, _tile_threshold_avx2 = _make_tile_threshold("avx512"), _make_tile_threshold("avx2")


@intrinsic
def _popcount64(typingctx, x):
    """Scalar ``llvm.ctpop.i64`` (numba has no popcount of its own), as a signed int64 so
    that int32/int64 accumulators stay integer (int + uint64 would promote to float64)."""
    sig = types.int64(x)

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], types.uint64)
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64")
        return builder.call(ctpop, [value])

    return sig, codegen


@njit(**_JIT)
def _tile_dot_portable(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols):
    """Portable equivalent of :func:`_tile_dot`; accumulates in ``out`` (vectorized over columns)."""
    col0 = jb * PANEL
    for r in range(row0, row0 + mr):
        acc = out[r, col0 : col0 + ncols]
        acc[:] = 0
        for i in range(koff.shape[0]):
            av = a[rowbase[r] + koff[i]]
            w = panels[jb, i]
            for c in range(ncols):
                acc[c] += _popcount64(av ^ w[c])
        b = bias[rowclass[r], col0 : col0 + ncols]
        for c in range(ncols):
            acc[c] = b[c] - 2 * acc[c]


# --------------------------------------------------------------------------------------
# GEMM drivers
# --------------------------------------------------------------------------------------


@intrinsic
def _fetch_add(typingctx, counter, value):
    """Atomic ``counter[0] += value`` returning the old value: threads take work items
    from a shared counter, so a thread that the OS has descheduled (another process on
    the core) holds up no statically assigned share of the work."""
    sig = types.int64(counter, value)

    def codegen(context, builder, sig, args):
        ac = _Args(context, builder, sig, args)
        return builder.atomic_rmw("add", ac.data(0), ac.int64(1), "monotonic")

    return sig, codegen


# GEMM modes: dots by the AVX-512 tile, the portable loop or the AVX2 tile; thresholded bits
# by the AVX-512 or the AVX2 tile.
MODE_DOT, MODE_DOT_PORTABLE, MODE_THRESHOLD, MODE_DOT_AVX2, MODE_THRESHOLD_AVX2 = 0, 1, 2, 3, 4


@njit(**_JIT)
def _gemm_items(
    start, stop, mode, block_rows, n, a, rowbase, koff, rowclass, bias, panels, out, thresholds, flipbits, out_bits
):
    """Run work items ``start .. stop - 1``; item = (row block, panel), panel index fastest.

    A row block (``block_rows`` rows) of the gathered activations stays in L2 while
    every panel streams past it; one panel (``Kw * 256`` bytes) stays in L1 across the
    4-row tiles of the block.
    """
    m, n_panels = rowbase.shape[0], panels.shape[0]
    for item in range(start, stop):
        first = (item // n_panels) * block_rows
        jb = item % n_panels
        ncols = min(PANEL, n - jb * PANEL)
        for row0 in range(first, min(m, first + block_rows), TILE_ROWS):
            mr = min(TILE_ROWS, m - row0)
            if mode == MODE_DOT:
                _tile_dot(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols)
            elif mode == MODE_DOT_PORTABLE:
                _tile_dot_portable(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols)
            elif mode == MODE_DOT_AVX2:
                _tile_dot_avx2(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, out, ncols)
            elif mode == MODE_THRESHOLD:
                _tile_threshold(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, thresholds, flipbits, out_bits)
            else:
                _tile_threshold_avx2(a, rowbase, koff, rowclass, bias, row0, mr, panels, jb, thresholds, flipbits,
                                     out_bits)


@njit(**_JIT)
def _gemm_worker(
    counter, nitems, mode, block_rows, n, a, rowbase, koff, rowclass, bias, panels, out, thresholds, flipbits, out_bits
):
    item = _fetch_add(counter, 1)
    while item < nitems:
        _gemm_items(item, item + 1, mode, block_rows, n, a, rowbase, koff, rowclass, bias, panels, out,
                    thresholds, flipbits, out_bits)  # fmt: skip
        item = _fetch_add(counter, 1)


def gemm(
    mode: int,
    nthreads: int,
    n: int,
    a: np.ndarray,
    rowbase: np.ndarray,
    koff: np.ndarray,
    rowclass: np.ndarray,
    bias: np.ndarray,
    panels: np.ndarray,
    out: np.ndarray,
    thresholds: np.ndarray,
    flipbits: np.ndarray,
    out_bits: np.ndarray,
) -> None:
    """Fill ``out`` (int32 ``(M, n)`` dots; ``MODE_DOT*``) or ``out_bits`` (uint8 view of the
    packed ``(M, ceil(n / 64))`` output; ``MODE_THRESHOLD*``).  Arrays a mode does not use
    are passed empty (fixed argument types keep one cached compilation).

    ``rowclass`` (int32, M) and ``bias`` (int32, (classes, 32 * n_panels)) give
    ``dot = bias[rowclass[m], col] - 2 * mismatches``: ``bias = k`` for a plain GEMM.
    """
    block_rows = max(TILE_ROWS, _BLOCK_BYTES // (8 * max(koff.shape[0], 1)) // TILE_ROWS * TILE_ROWS)
    nitems = -(-rowbase.shape[0] // block_rows) * panels.shape[0]
    if nthreads <= 1 or nitems <= 1:  # the common small call: straight to the kernel
        _gemm_worker(np.zeros(1, np.int64), nitems, mode, block_rows, n, a, rowbase, koff, rowclass, bias, panels,
                     out, thresholds, flipbits, out_bits)  # fmt: skip
        return
    run_workers(min(nthreads, nitems), _gemm_worker, nitems, mode, block_rows, n, a, rowbase, koff, rowclass, bias,
                panels, out, thresholds, flipbits, out_bits)  # fmt: skip


# --------------------------------------------------------------------------------------
# 8-bit x ±1 GEMM (first layers on raw pixels), AVX512-VNNI
# --------------------------------------------------------------------------------------

PIXEL_ROW_BLOCK = 64  # rows of codes per work item (64 x k bytes stay in L1/L2 while panels stream)


@intrinsic
def _tile_u8s8(typingctx, a, row0, panels, jb, out, thresholds, flipbits, out_bits):
    """``out[row0 + r, 32 jb + c] = sum_g dot4(a[row0 + r, g], panels[jb, g, c])`` for ``r < 4``,
    ``c < 32``: ``a`` is int32 ``(M4, G)`` holding 4 uint8 codes each, ``panels`` int32
    ``(NB, G, 32)`` holding 4 int8 weights each (VNNI layout). One ``vpdpbusd`` per row, group
    and 16 columns: 64 multiply-adds per instruction, 8 accumulators in registers.

    With ``thresholds`` (int32, one per padded column; empty for products) the tile writes packed
    bits ``(product >= thresholds[col]) ^ flip[col]`` into the byte view ``out_bits`` instead of
    ``out`` (``flipbits``: one bit per column, little-endian bytes)."""
    sig = types.void(a, row0, panels, jb, out, thresholds, flipbits, out_bits)

    def codegen(context, builder, sig, args):
        ac = _Args(context, builder, sig, args)
        groups, ldo = ac.shape(0, 1), ac.shape(4, 1)
        row0, jb = ac.int64(1), ac.int64(3)
        vpdpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3), "llvm.x86.avx512.vpdpbusd.512")
        panel = builder.gep(ac.data(2), [builder.mul(builder.mul(jb, groups), ir.Constant(_I64, PANEL))])
        rows = [builder.gep(ac.data(0), [builder.mul(builder.add(row0, ir.Constant(_I64, r)), groups)])
                for r in range(TILE_ROWS)]

        def step(g: ir.Value, flat: list[ir.Value]) -> list[ir.Value]:  # flat[2 * r + v]
            wrow = builder.gep(panel, [builder.mul(g, ir.Constant(_I64, PANEL))])
            w = [builder.load(_vec_ptr(builder, wrow, 16 * v, _V16I32), align=4) for v in range(2)]
            out = []
            for r in range(TILE_ROWS):
                codes = _splat(builder, builder.load(builder.gep(rows[r], [g])), _V16I32)
                out += [builder.call(vpdpbusd, [flat[2 * r + v], codes, w[v]]) for v in range(2)]
            return out

        flat = accumulate(builder, groups, [ir.Constant(_V16I32, [0] * 16)] * (2 * TILE_ROWS), "u8s8", step)
        acc = [flat[2 * r : 2 * r + 2] for r in range(TILE_ROWS)]
        fn = builder.function
        col0 = builder.mul(jb, ir.Constant(_I64, PANEL))
        products, bits, done = (fn.append_basic_block(f"u8s8.{name}") for name in ("products", "bits", "done"))
        builder.cbranch(builder.icmp_signed("==", ac.shape(5, 0), ir.Constant(_I64, 0)), products, bits)

        builder.position_at_end(products)
        for r in range(TILE_ROWS):
            out_row = builder.add(builder.mul(builder.add(row0, ir.Constant(_I64, r)), ldo), col0)
            for v in range(2):
                ptr = _vec_ptr(builder, ac.data(4), builder.add(out_row, ir.Constant(_I64, 16 * v)), _V16I32)
                builder.store(acc[r][v], ptr, align=4)
        builder.branch(done)

        builder.position_at_end(bits)
        thr, flips, out_bits, ldb = ac.data(5), ac.data(6), ac.data(7), ac.shape(7, 1)
        for v in range(2):
            byte = builder.add(builder.mul(jb, ir.Constant(_I64, PANEL // 8)), ir.Constant(_I64, 2 * v))
            tvec = builder.load(_vec_ptr(builder, thr, builder.mul(byte, ir.Constant(_I64, 8)), _V16I32), align=4)
            flip = builder.load(builder.bitcast(builder.gep(flips, [byte]), _I16.as_pointer()), align=1)
            for r in range(TILE_ROWS):
                mask = builder.bitcast(builder.icmp_signed(">=", acc[r][v], tvec), _I16)
                row = builder.add(row0, ir.Constant(_I64, r))
                ptr = builder.gep(out_bits, [builder.add(builder.mul(row, ldb), byte)])
                builder.store(builder.xor(mask, flip), builder.bitcast(ptr, _I16.as_pointer()), align=1)
        builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def _u8s8_worker(counter, nitems, a, panels, out, thresholds, flipbits, out_bits):
    """Work items (block of PIXEL_ROW_BLOCK rows, panel) until none are left."""
    n_panels = panels.shape[0]
    item = _fetch_add(counter, 1)
    while item < nitems:
        first = (item // n_panels) * PIXEL_ROW_BLOCK
        jb = item % n_panels
        for row0 in range(first, min(a.shape[0], first + PIXEL_ROW_BLOCK), TILE_ROWS):
            _tile_u8s8(a, row0, panels, jb, out, thresholds, flipbits, out_bits)
        item = _fetch_add(counter, 1)


def u8s8_gemm(nthreads: int, a: np.ndarray, panels: np.ndarray, out: np.ndarray, thresholds: np.ndarray,
              flipbits: np.ndarray, out_bits: np.ndarray) -> None:
    """``out = codes @ weights.T`` with ``a`` the int32 view ``(M4, G)`` of zero-padded uint8
    codes (``M4`` a multiple of 4), ``panels`` int32 ``(NB, G, 32)`` and ``out`` int32
    ``(M4, 32 NB)``; or, with ``thresholds`` (int32 ``(32 NB,)``; padded columns must give 0
    bits), the thresholded bits into ``out_bits`` (uint8 view of ``(M4, words)`` uint64).
    Arrays a mode does not use are passed empty."""
    nitems = -(-a.shape[0] // PIXEL_ROW_BLOCK) * panels.shape[0]
    run_workers(min(nthreads, nitems), _u8s8_worker, nitems, a, panels, out, thresholds, flipbits, out_bits)


# --------------------------------------------------------------------------------------
# Sign packing
# --------------------------------------------------------------------------------------


@intrinsic
def _sign_word(typingctx, x, offset):
    """Bits ``x[offset + j] >= 0`` for ``j < 64`` as one uint64 (one vector compare).

    Floats compare ordered (NaN -> 0, -0.0 -> 1); signed integers compare signed.
    """
    if not isinstance(x, types.Array) or not isinstance(x.dtype, (types.Float, types.Integer)):
        return None
    sig = types.uint64(x, offset)

    def codegen(context, builder, sig, args):
        ac = _Args(context, builder, sig, args)
        elem = context.get_data_type(sig.args[0].dtype)
        vtype = ir.VectorType(elem, 64)
        values = builder.load(_vec_ptr(builder, ac.data(0), ac.int64(1), vtype), align=1)
        zero = ir.Constant(vtype, [0] * 64)
        if isinstance(sig.args[0].dtype, types.Float):
            bits = builder.fcmp_ordered(">=", values, zero)
        elif sig.args[0].dtype.signed:
            bits = builder.icmp_signed(">=", values, zero)
        else:
            bits = ir.Constant(ir.VectorType(_I1, 64), [1] * 64)
        return builder.bitcast(bits, _I64)

    return sig, codegen


@njit(**_JIT)
def _pack_rows(start, stop, x, length, out):
    """Pack rows ``start .. stop - 1`` of the flat row-major ``x`` (rows of ``length``)."""
    words = out.shape[1]
    full = length // 64
    for r in range(start, stop):
        base = r * length
        for w in range(full):
            out[r, w] = _sign_word(x, base + 64 * w)
        if full < words:
            word = np.uint64(0)
            for j in range(length - 64 * full):
                if x[base + 64 * full + j] >= 0:
                    word |= np.uint64(1) << np.uint64(j)
            out[r, full] = word


@njit(**_JIT)
def _pack_worker(counter, rows_per_item, x, length, out):
    rows = out.shape[0]
    start = _fetch_add(counter, rows_per_item)
    while start < rows:
        _pack_rows(start, min(rows, start + rows_per_item), x, length, out)
        start = _fetch_add(counter, rows_per_item)


def pack_rows(nthreads: int, x: np.ndarray, length: int, out: np.ndarray) -> None:
    """Pack the C-contiguous ``x`` viewed as rows of ``length`` into ``out`` (rows, Kw)."""
    rows_per_item = max(1, _PACK_ITEM_ELEMENTS // max(length, 1))
    nitems = -(-out.shape[0] // rows_per_item)
    run_workers(min(nthreads, nitems), _pack_worker, rows_per_item, x.reshape(-1), length, out)
