"""Numba kernel of :func:`onebit.deploy.kernels.real_matmul_prepared`: real (float32) inputs times
±1 weights, summed in float32 in a fixed order (imported only when numba is available).

For input row ``x`` and the weights ``s`` of output ``n`` the kernel returns

    d = 2 * P - T,   P = x[0]*[s_0 = +1] + x[1]*[s_1 = +1] + ...,   T = x[0] + x[1] + ...

each sum accumulated in float32 from +0.0 in order of ``k`` (``T`` comes in precomputed), so
the result does not depend on how the work is split, and C code that sums in the same order gets
the same bits. Per input ``k`` the weights of 32 output columns are one uint32 mask
(``masks[jb, k]``, bit ``c`` set where column ``32 jb + c`` has weight +1), so the weights keep
one bit each and a masked vector add (``vaddps`` with a merge mask) does 16 columns' worth of
``P`` in one instruction. A tile is up to 4 rows x 32 columns: 8 accumulators of 16 floats in
registers. Work items are (row block x panel), taken from a shared counter as in
:mod:`onebit.deploy._numba_kernels`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._numba_kernels import _JIT, PANEL, TILE_ROWS, _Args, _fetch_add, _splat, _vec_ptr, accumulate
from ._threads import run_workers

_I1, _I16, _I32, _I64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()
_V16F = ir.VectorType(_F32, 16)
_V16I1 = ir.VectorType(_I1, 16)
_V16I32 = ir.VectorType(_I32, 16)
_BLOCK_BYTES = 128 * 1024  # input rows per work item, kept in L2 while the panels stream past


@intrinsic
def _tile_real(typingctx, x, totals, row0, mr, masks, jb, out, ncols):
    """``out[row0 + r, 32 jb + c] = 2 P - T`` for ``r < mr`` (1..4) and ``c < ncols``, with ``x``
    float32 ``(M, K)``, ``totals`` float32 ``(M,)`` (``T``), ``masks`` uint32 ``(NB, K)``."""
    sig = types.void(x, totals, row0, mr, masks, jb, out, ncols)

    def codegen(context, builder, sig, args):
        ac = _Args(context, builder, sig, args)
        xs, totals, masks, out = ac.data(0), ac.data(1), ac.data(4), ac.data(6)
        k, ldo = ac.shape(0, 1), ac.shape(6, 1)
        row0, mr, jb, ncols = ac.int64(2), ac.int64(3), ac.int64(5), ac.int64(7)
        mask_row = builder.gep(masks, [builder.mul(jb, k)])
        col0 = builder.mul(jb, ir.Constant(_I64, PANEL))
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_V16F, _V16F.as_pointer(), _I32, _V16I1]),
            "llvm.masked.store.v16f32.p0")
        nvalid = _splat(builder, builder.trunc(ncols, _I32), _V16I32)
        two = ir.Constant(_V16F, [2.0] * 16)

        fn = builder.function
        done = fn.append_basic_block("real.done")
        switch = builder.switch(mr, done)
        for rows in range(1, TILE_ROWS + 1):
            entry = fn.append_basic_block(f"real.mr{rows}")
            switch.add_case(ir.Constant(_I64, rows), entry)
            builder.position_at_end(entry)
            row_idx = [builder.add(row0, ir.Constant(_I64, r)) for r in range(rows)]
            row_ptr = [builder.gep(xs, [builder.mul(i, k)]) for i in row_idx]

            def step(i: ir.Value, flat: list[ir.Value], row_ptr=row_ptr) -> list[ir.Value]:  # flat[2 * r + v]
                word = builder.load(builder.gep(mask_row, [i]))
                halves = [builder.bitcast(builder.trunc(word, _I16), _V16I1),
                          builder.bitcast(builder.trunc(builder.lshr(word, ir.Constant(_I32, 16)), _I16), _V16I1)]
                out = []
                for r, ptr in enumerate(row_ptr):
                    value = _splat(builder, builder.load(builder.gep(ptr, [i])), _V16F)
                    out += [builder.select(halves[v], builder.fadd(flat[2 * r + v], value), flat[2 * r + v])
                            for v in range(2)]
                return out

            flat = accumulate(builder, k, [ir.Constant(_V16F, [0.0] * 16)] * (2 * rows), f"real.mr{rows}", step)
            acc = [flat[2 * r : 2 * r + 2] for r in range(rows)]
            for r in range(rows):
                total = _splat(builder, builder.load(builder.gep(totals, [row_idx[r]])), _V16F)
                for v in range(2):
                    d = builder.fsub(builder.fmul(acc[r][v], two), total)
                    lanes = ir.Constant(_V16I32, [16 * v + j for j in range(16)])
                    ptr = _vec_ptr(builder, out, builder.add(builder.mul(row_idx[r], ldo),
                                                             builder.add(col0, ir.Constant(_I64, 16 * v))), _V16F)
                    builder.call(mstore, [d, ptr, ir.Constant(_I32, 4), builder.icmp_signed("<", lanes, nvalid)])
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def _real_worker(counter, nitems, block_rows, n, x, totals, masks, out):
    m, n_panels = x.shape[0], masks.shape[0]
    item = _fetch_add(counter, 1)
    while item < nitems:
        first = (item // n_panels) * block_rows
        jb = item % n_panels
        ncols = min(PANEL, n - jb * PANEL)
        for row0 in range(first, min(m, first + block_rows), TILE_ROWS):
            _tile_real(x, totals, row0, min(TILE_ROWS, m - row0), masks, jb, out, ncols)
        item = _fetch_add(counter, 1)


@njit(**_JIT)
def _row_totals(x, totals):
    """``totals[m] = x[m, 0] + x[m, 1] + ...`` in float32, in order."""
    for r in range(x.shape[0]):
        t = np.float32(0.0)
        for i in range(x.shape[1]):
            t += x[r, i]
        totals[r] = t


def real_matmul(nthreads: int, x: np.ndarray, masks: np.ndarray, n: int, out: np.ndarray) -> None:
    """Fill float32 ``out (M, n)`` with ``2 P - T`` of float32 ``x (M, K)`` and uint32 ``masks
    (ceil(n / 32), K)``."""
    totals = np.empty(x.shape[0], np.float32)
    _row_totals(x, totals)
    block_rows = max(TILE_ROWS, _BLOCK_BYTES // (4 * max(x.shape[1], 1)) // TILE_ROWS * TILE_ROWS)
    nitems = -(-x.shape[0] // block_rows) * masks.shape[0]
    run_workers(min(nthreads, nitems), _real_worker, nitems, block_rows, n, x, totals, masks, out)
