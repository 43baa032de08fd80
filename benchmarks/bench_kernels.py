"""Binary kernels of onebit.deploy.kernels vs torch fp32 on the same shapes, in one process.

    python benchmarks/bench_kernels.py [--quick] [--threads N]

Every ratio is torch time / binary time, measured side by side: the two are timed in
alternating samples (median of each), after a warm-up that also excludes numba's JIT
compilation, so load from other processes on the machine mostly cancels in the ratio.
GEMM: binary_matmul_prepared on packed activations (as a network's previous binary
layer emits them) vs F.linear; "w/ pack" adds pack_signs of the float activations.
Conv: pack_signs of the float NHWC input + binary_conv2d vs F.conv2d on NCHW.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import llvmlite
import numba
import onebit.deploy.kernels as K


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = sorted({w for w in info.split() if w.startswith("avx512")})
    return f"{name}; {' '.join(flags)}"


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
    with torch.inference_mode():
        return compare(
            [
                lambda: F.conv2d(x, w, padding=1),
                lambda: K.binary_conv2d(K.pack_signs(x_nhwc), c, prepared, padding=1),
            ],
            repeats,
            min_seconds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--threads", type=int, help="threads for both torch and numba (default: their defaults)")
    args = parser.parse_args()
    repeats, min_seconds = (5, 0.01) if args.quick else (11, 0.03)
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    print(f"CPU: {cpu_name()}")
    print(
        f"versions: python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"numba {numba.__version__}, llvmlite {llvmlite.__version__}"
    )
    print(
        f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; "
        f"backend {K.DEFAULT_BACKEND} (available {', '.join(K.AVAILABLE_BACKENDS)})"
    )
    K.binary_matmul(K.pack_signs(np.ones((300, 4096))), K.pack_signs(np.ones((64, 4096))), 4096)  # JIT + threads
    print(f"numba threading layer: {numba.threading_layer()}")
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

    print("\nbinary conv 3x3 64->64 32x32 pad 1 (input packing included) vs torch F.conv2d (fp32)")
    print(f"{'batch':>5} | {'torch':>8} {'binary':>8} {'ratio':>6}")
    for batch in (1, 32):
        t_torch, t_bin = bench_conv(batch, repeats, min_seconds)
        print(f"{batch:>5} | {t_torch * 1e3:8.3f} {t_bin * 1e3:8.3f} {t_torch / t_bin:5.1f}x")

    print("\nother back ends, M=64 K=N=1024")
    print(f"{'backend':>8} | {'torch':>8} {'binary':>8} {'ratio':>6}")
    for backend in K.AVAILABLE_BACKENDS:
        t_torch, t_bin, _ = bench_gemm(64, 1024, 1024, repeats, min_seconds, backend=backend)
        print(f"{backend:>8} | {t_torch * 1e3:8.3f} {t_bin * 1e3:8.3f} {t_torch / t_bin:5.1f}x")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
