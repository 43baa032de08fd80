"""Benchmarks of the packed engine against PyTorch fp32, measured side by side in one process.

    onebit bench [--quick] [--run-dir RUN]        # both tables below
    python benchmarks/bench_kernels.py [--quick] [--threads N]
    python benchmarks/bench_end_to_end.py [--run-dir runs/mnist-mlp/bnn] [--quick]

This module times models it is given; :mod:`onebit.experiments.bench` picks the model
(a trained run, or an untrained study A MLP) for ``onebit bench`` and the end-to-end script.

Kernels: binary GEMM (packed activations, prepared weights) vs ``F.linear`` for M in
{1, 64, 256}, K, N in {784, 1024, 4096} ("w/ pack" adds packing the float activations), and
3x3 binary conv 64->64 on 32x32 with input packing vs ``F.conv2d``, with int32 outputs and
with batch norm + sign fused into it (packed bits out, as a deployed hidden layer runs).

End to end: a packed model vs PyTorch float eval of the same model, and the packed file vs
the float32 state dict.

Ratios are PyTorch time / packed time on the same inputs, timed in alternation (median of
samples after a warm-up that excludes numba's compilation), so load from other processes
mostly cancels in the ratio. Absolute times on a shared machine mean little.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .._cpu import cpu_name
from . import kernels as K

__all__ = ["numpy_blas", "sample", "compare", "set_threads", "bench_gemm", "bench_conv", "kernels_main", "Subject",
           "end_to_end", "end_to_end_table"]


def numpy_blas() -> str:
    """numpy's BLAS and, for OpenBLAS, the kernel family it runs (``OPENBLAS_CORETYPE`` can
    force an older one, e.g. Haswell's AVX2 kernels on an AVX-512 CPU, which halves the speed
    of the packed models' float first layer)."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    core = _openblas_core()
    if core:
        text += f", core {core}"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return text + (f" (forced by OPENBLAS_CORETYPE={forced})" if forced else "")


def _openblas_core() -> str | None:
    """The kernel family of the OpenBLAS loaded in this process, or None if there is none."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            path = next(line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line)
        library = ctypes.CDLL(path)
    except (OSError, StopIteration):
        return None
    for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
        get = getattr(library, symbol, None)
        if get is not None:
            get.restype = ctypes.c_char_p
            return get().decode()
    return None


def set_threads(threads: int | None) -> None:
    """Give torch and the binary kernels the same number of threads (None: their defaults)."""
    if threads is not None and threads < 1:
        raise SystemExit(f"--threads must be a positive integer, got {threads}")
    if threads:
        torch.set_num_threads(threads)
        K.set_num_threads(threads)


def sample(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call, averaged over enough calls to last ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def compare(fns: list[Callable[[], object]], repeats: int, min_seconds: float) -> list[float]:
    """Median seconds per call of each function, sampled in alternation after a warm-up."""
    for fn in fns:
        sample(fn, min_seconds)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            ts.append(sample(fn, min_seconds))
    return [statistics.median(ts) for ts in times]


def _no_grad_call(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def sign_tensor(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).sign_().add_(0.5).sign_()  # ±1, no zeros


def bench_gemm(m: int, k: int, n: int, repeats: int, min_seconds: float, backend: K.Backend | None = None):
    x, w = sign_tensor(m, k), sign_tensor(n, k)
    xf = x.numpy()
    xp, prepared = K.pack_signs(xf), K.prepare_weights(K.pack_signs(w.numpy()))
    with torch.inference_mode():
        return compare(
            [
                lambda: F.linear(x, w),
                lambda: K.binary_matmul_prepared(xp, prepared, k, backend=backend),
                lambda: K.binary_matmul_prepared(K.pack_signs(xf), prepared, k, backend=backend),
            ],
            repeats,
            min_seconds,
        )


def bench_conv(batch: int, repeats: int, min_seconds: float, c: int = 64, hw: int = 32):
    x, w = sign_tensor(batch, c, hw, hw), sign_tensor(c, c, 3, 3)
    x_nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
    prepared = K.prepare_conv_weights(K.pack_signs(w.numpy().transpose(0, 2, 3, 1)), c)
    thresholds, flip = np.zeros(c, np.int32), np.zeros(c, bool)
    with torch.inference_mode():
        return compare(
            [
                lambda: F.conv2d(x, w, padding=1),
                lambda: K.binary_conv2d(K.pack_signs(x_nhwc), c, prepared, padding=1),
                lambda: K.binary_conv2d_threshold(K.pack_signs(x_nhwc), c, prepared, thresholds, flip, padding=1),
            ],
            repeats,
            min_seconds,
        )


def kernels_main(argv: list[str] | None = None) -> None:
    try:
        import llvmlite
        import numba
    except ImportError as error:
        raise SystemExit("the kernel benchmark needs numba: pip install 'onebit[fast]'") from error
    parser = argparse.ArgumentParser(description="binary kernels vs torch fp32")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--threads", type=int, help="threads for both torch and the binary kernels (default: "
                        "their defaults)")
    args = parser.parse_args(argv)
    repeats, min_seconds = (5, 0.01) if args.quick else (11, 0.03)
    set_threads(args.threads)

    print(f"CPU: {cpu_name()}")
    print(
        f"versions: python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"numba {numba.__version__}, llvmlite {llvmlite.__version__}"
    )
    print(
        f"threads: torch {torch.get_num_threads()}, binary kernels {K.get_num_threads()}; "
        f"backend {K.DEFAULT_BACKEND} (available {', '.join(K.AVAILABLE_BACKENDS)})"
    )
    K.binary_matmul(K.pack_signs(np.ones((300, 4096))), K.pack_signs(np.ones((64, 4096))), 4096)  # JIT + threads
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("note: other processes may share the CPU; ratios come from alternating samples in one run.\n")

    print("binary GEMM vs torch F.linear (fp32), median ms per call")
    print(f"{'M':>4} {'K':>5} {'N':>5} | {'torch':>8} {'binary':>8} {'ratio':>6} | {'w/ pack':>8} {'ratio':>6}")
    for m in (1, 64, 256):
        for k in (784, 1024, 4096):
            for n in (784, 1024, 4096):
                t_torch, t_bin, t_pack = bench_gemm(m, k, n, repeats, min_seconds)
                print(
                    f"{m:>4} {k:>5} {n:>5} | {t_torch * 1e3:8.3f} {t_bin * 1e3:8.3f} {t_torch / t_bin:5.1f}x"
                    f" | {t_pack * 1e3:8.3f} {t_torch / t_pack:5.1f}x"
                )

    print("\nbinary conv 3x3 64->64 32x32 pad 1 (input packing included) vs torch F.conv2d (fp32);")
    print("'binary': int32 outputs; 'fused': batch norm + sign folded in, packed bits out (a deployed layer)")
    print(f"{'batch':>5} | {'torch':>8} {'binary':>8} {'ratio':>6} | {'fused':>8} {'ratio':>6}")
    for batch in (1, 32):
        t_torch, t_bin, t_fused = bench_conv(batch, repeats, min_seconds)
        print(f"{batch:>5} | {t_torch * 1e3:8.3f} {t_bin * 1e3:8.3f} {t_torch / t_bin:5.1f}x"
              f" | {t_fused * 1e3:8.3f} {t_torch / t_fused:5.1f}x")

    print("\nother back ends, M=64 K=N=1024")
    print(f"{'backend':>8} | {'torch':>8} {'binary':>8} {'ratio':>6}")
    for backend in K.AVAILABLE_BACKENDS:
        t_torch, t_bin, _ = bench_gemm(64, 1024, 1024, repeats, min_seconds, backend=backend)
        print(f"{backend:>8} | {t_torch * 1e3:8.3f} {t_bin * 1e3:8.3f} {t_torch / t_bin:5.1f}x")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


class Subject(NamedTuple):
    """The model an end-to-end benchmark times, with what it needs to say and feed."""

    model: torch.nn.Module
    input_size: tuple[int, ...]
    name: str
    normalization: tuple[tuple[float, ...], tuple[float, ...]]


def end_to_end(model: torch.nn.Module, input_size: tuple[int, ...], batch_sizes=(1, 256), repeats: int = 5,
               min_seconds: float = 0.2, input_normalization=None) -> list[dict]:
    """Time ``model`` (PyTorch, eval, on normalized float inputs) and its packed conversion on
    random inputs of each batch size: fed the same float inputs, and, with
    ``input_normalization``, raw uint8 images (``packed_u8_ms``, the deployment input format);
    also compare the float32 state dict with the packed file. Returns one dict per batch size."""
    import tempfile

    from . import convert

    model = model.eval()
    packed = convert(model, torch.zeros(2, *input_size), input_normalization=input_normalization)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with tempfile.TemporaryDirectory() as tmp:
        packed.save(Path(tmp) / "m.onebit")
        packed_bytes = (Path(tmp) / "m.onebit").stat().st_size
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *input_size)
        xn = x.numpy()
        codes = rng.integers(0, 256, (batch, *input_size)).astype(np.uint8)

        fns = [partial(_no_grad_call, model, x), partial(packed, xn)] + (
            [partial(packed, codes)] if input_normalization else [])
        t_torch, t_packed, *t_u8 = compare(fns, repeats, min_seconds)
        rows.append({"batch": batch, "torch_ms": 1e3 * t_torch, "packed_ms": 1e3 * t_packed,
                     "speedup": t_torch / t_packed, "state_dict_bytes": buffer.tell(),
                     "packed_bytes": packed_bytes, "size_ratio": buffer.tell() / packed_bytes,
                     "layers": [op.kind for op in packed.ops], "layers_ms": layer_ms(packed, xn, repeats)})
        if t_u8:
            rows[-1].update(packed_u8_ms=1e3 * t_u8[0], speedup_u8=t_torch / t_u8[0],
                            layers_u8_ms=layer_ms(packed, codes, repeats))
    return rows


def layer_ms(packed, x: np.ndarray, repeats: int) -> list[float]:
    """Median milliseconds of each op of ``packed`` on ``x`` over ``repeats`` forward passes
    (:meth:`~onebit.deploy.PackedModel.layer_seconds`: the batch split as a call splits it)."""
    packed.layer_seconds(x)  # warm-up
    runs = [packed.layer_seconds(x) for _ in range(max(repeats, 3))]
    return [1e3 * statistics.median(times) for times in zip(*runs)]


def end_to_end_table(subject: Subject, quick: bool, thread_counts: list[int | None] | None = None) -> None:
    """Print :func:`end_to_end` of ``subject`` with the setup it ran in, for each of
    ``thread_counts`` (torch and the packed model get that many threads; None: their defaults),
    and, per thread count, the packed model's time per layer at the largest batch beside its total."""
    repeats, min_seconds = (3, 0.05) if quick else (7, 0.3)
    print(f"end to end: {subject.name}; torch {torch.__version__}")
    print(f"numpy {np.__version__}, BLAS {numpy_blas()} (the packed models' float layers run on it)")
    print("torch and 'packed' get normalized float32 inputs; 'packed u8' gets the raw uint8 images")
    for threads in thread_counts or [None]:
        set_threads(threads)
        print(f"\nthreads: torch {torch.get_num_threads()}, packed {K.get_num_threads()}; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"{'batch':>6} {'torch ms':>10} {'packed ms':>10} {'speed-up':>9} {'packed u8':>10} {'speed-up':>9} "
              f"{'state dict':>12} {'packed file':>12} {'smaller':>8}")
        rows = end_to_end(subject.model, subject.input_size, repeats=repeats, min_seconds=min_seconds,
                          input_normalization=subject.normalization)
        for r in rows:
            u8 = (f"{r['packed_u8_ms']:>10.3f} {r['speedup_u8']:>8.1f}x" if "packed_u8_ms" in r
                  else f"{'-':>10} {'-':>9}")
            print(f"{r['batch']:>6} {r['torch_ms']:>10.3f} {r['packed_ms']:>10.3f} {r['speedup']:>8.1f}x {u8} "
                  f"{r['state_dict_bytes']:>12,} {r['packed_bytes']:>12,} {r['size_ratio']:>7.1f}x")
        _layer_table(rows[-1])


def _layer_table(row: dict) -> None:
    """The per-layer times of one :func:`end_to_end` row, their sum and the measured total."""
    u8 = "layers_u8_ms" in row
    print(f"packed model per layer at batch {row['batch']} (median ms; the slices of a split batch run at once)")
    print(f"{'':>3} {'layer':<16} {'float in':>9}" + (f" {'u8 in':>9}" if u8 else ""))
    for i, kind in enumerate(row["layers"]):
        print(f"{i:>3} {kind:<16} {row['layers_ms'][i]:>9.3f}" + (f" {row['layers_u8_ms'][i]:>9.3f}" if u8 else ""))
    print(f"{'':>3} {'sum of layers':<16} {sum(row['layers_ms']):>9.3f}"
          + (f" {sum(row['layers_u8_ms']):>9.3f}" if u8 else ""))
    print(f"{'':>3} {'total':<16} {row['packed_ms']:>9.3f}" + (f" {row['packed_u8_ms']:>9.3f}" if u8 else ""))
