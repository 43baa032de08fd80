"""Binary kernels of onebit.deploy.kernels vs torch fp32 on the same shapes, in one process.

    python benchmarks/bench_kernels.py [--quick] [--threads N]

Every ratio is torch time / binary time, measured side by side: the two are timed in
alternating samples (median of each), after a warm-up that also excludes numba's JIT
compilation, so load from other processes on the machine mostly cancels in the ratio.
GEMM: binary_matmul_prepared on packed activations (as a network's previous binary
layer emits them) vs F.linear; "w/ pack" adds pack_signs of the float activations.
Conv: pack_signs of the float NHWC input + binary_conv2d (int32 outputs) vs F.conv2d on
NCHW, and "fused": binary_conv2d_threshold (batch norm + sign folded in, packed bits out).
--threads N gives torch and the binary kernels N threads each.
"""

from onebit.deploy.benchmark import kernels_main

if __name__ == "__main__":
    kernels_main()
