"""Exported C (``onebit export --format c``) vs the numba runtime, one image at a time (batch 1).

    python benchmarks/bench_c.py [--quick] [--threads N] [--cc cc]

Both run the same packed model on the same uint8 test images in one process, timed in
alternation (median of samples after a warm-up, see ``onebit.deploy.benchmark.compare``): the
C build (``cc -std=c99 -O3 -march=native``, loaded as a shared library and called through
ctypes, about a microsecond per call) and ``onebit.deploy.load``'s runtime, whose numba kernels
get ``--threads`` threads (default 1, like the C code). Models: study A's BNN MLP
(784-2048-2048-2048-10, recipe bnn) and CIFAR-10's VGG-small bnn at width 0.5, with random
weights (speed does not depend on their values) and batch norm statistics of random images.
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from onebit import models
from onebit._cpu import cpu_name
from onebit.deploy import convert
from onebit.deploy import kernels as K
from onebit.deploy.benchmark import compare
from onebit.deploy.export_c import export_c

MODELS = {
    "BNN MLP 784-2048x3-10": (lambda: models.build("mlp", recipe="bnn"), (1, 28, 28), ((0.1307,), (0.3081,))),
    "VGG-small bnn, width 0.5": (lambda: models.build("vgg_small", recipe="bnn", width=0.5), (3, 32, 32),
                                 ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))),
}


def packed_model(build, shape, normalization):
    """The model converted for uint8 input, its batch norms set from random images."""
    torch.manual_seed(0)
    model = build()
    model.train()
    with torch.no_grad():
        model(torch.randn(64, *shape))
    return convert(model.eval(), torch.zeros(2, *shape), input_normalization=normalization)


def c_predictor(packed, directory: Path, cc: str):
    """``predict(uint8 image) -> logits`` calling the exported C through ctypes."""
    exported = export_c(packed, directory, "net")
    library = directory / "libnet.so"
    subprocess.run([cc, "-std=c99", "-O3", "-march=native", "-shared", "-fPIC", str(exported.source), "-o",
                    str(library)], check=True)
    predict = ctypes.CDLL(str(library)).net_predict
    output = np.zeros(exported.output_size, np.float32)
    out_pointer = output.ctypes.data_as(ctypes.c_void_p)

    def run(image: np.ndarray) -> np.ndarray:
        predict(image.ctypes.data_as(ctypes.c_void_p), out_pointer)
        return output

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter samples")
    parser.add_argument("--threads", type=int, default=1, help="numba runtime threads (default 1)")
    parser.add_argument("--cc", default="cc", help="C compiler (default cc)")
    args = parser.parse_args()
    K.set_num_threads(args.threads)
    repeats, seconds = (3, 0.2) if args.quick else (7, 0.5)
    print(f"CPU: {cpu_name()} ({platform.machine()}); numba runtime back end {K.DEFAULT_BACKEND}, "
          f"{args.threads} thread(s); C: {args.cc} -O3 -march=native, 1 thread")
    print("| model | C ms | numba runtime ms | C speed-up |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, (build, shape, normalization)) in enumerate(MODELS.items()):
            packed = packed_model(build, shape, normalization)
            image = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
            directory = Path(tmp) / str(index)
            c = c_predictor(packed, directory, args.cc)
            expected = packed(image)[0]
            if not np.array_equal(c(image), expected):
                raise SystemExit(f"{label}: the C build's output differs from the runtime's")
            c_time, runtime_time = compare([partial(c, image), partial(packed, image)], repeats, seconds)
            print(f"| {label} | {1000 * c_time:.3f} | {1000 * runtime_time:.3f} | {runtime_time / c_time:.2f}x |")


if __name__ == "__main__":
    main()
