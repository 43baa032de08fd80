"""Exported C on a Cortex-M4 (QEMU mps2-an386): flash, RAM, stack and instructions per inference.

    python benchmarks/bench_mcu.py [--images N] [--zeros] [--timeout SECONDS] [--only SUBSTRING ...]

For every model the C exporter supports, with random weights (sizes and instruction counts do
not depend on their values, up to a few data-dependent branches) and batch norm statistics of
random images (``bench_c.packed_model``): convert it (uint8 input with the MNIST or CIFAR-10
normalization; the Omniglot encoder takes float32), export it to C
(:func:`onebit.deploy.export_c.export_c`), build it for the Cortex-M4
(:func:`onebit.deploy.targets.build_cortex_m4`: ``arm-none-eabi-gcc -std=c99 -O2
-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16``), run it on ``--images`` random
images under ``qemu-system-arm -M mps2-an386 -icount shift=7``
(:func:`onebit.deploy.targets.run_cortex_m4`), check that its outputs equal the numpy runtime's
bit for bit, and print a markdown table of :func:`onebit.deploy.targets.size_report`.

Instructions are QEMU ``-icount`` instruction counts of one ``NAME_predict`` call (the largest
over the images), not cycles: a real Cortex-M4 takes more cycles than instructions (loads,
taken branches, flash wait states). A model whose program does not fit the board's 4 MiB of
flash, or whose run fails or exceeds ``--timeout``, keeps the figures measured before that, and
the notes under the table say what happened.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_c import packed_model  # the same random models as the x86 benchmark

from onebit import models
from onebit._cpu import cpu_name
from onebit.deploy import targets
from onebit.deploy.export_c import export_c

MNIST = ((0.1307,), (0.3081,))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
OMNIGLOT = (0.0830, 0.2377)  # onebit.data.omniglot's MEAN, STD: float input, normalized here
FLASH_BYTES = 4 << 20  # mps2_an386.ld: FLASH LENGTH = 4M

# label -> (build, input shape, uint8 normalization or None for float32 input)
MODELS = {
    "BNN MLP 784-2048x3-10 (study A)": (lambda: models.build("mlp", recipe="bnn"), (1, 28, 28), MNIST),
    "BNN MLP 784-256-256-10": (lambda: models.build("mlp", recipe="bnn", hidden=(256, 256)), (1, 28, 28), MNIST),
    "study B CNN, binary activations (float weights)": (
        lambda: models.build("small_cnn", binary="both"), (1, 28, 28), MNIST),
    "Omniglot Hamming encoder (float input)": (
        lambda: models.build("matching_net", binary_blocks=[1, 2, 3, 4], quantizer="sign", weight_quantizer="sign",
                             distance="hamming").encoder, (1, 28, 28), None),
    "VGG-small bnn, width 0.5 (CIFAR-10)": (
        lambda: models.build("vgg_small", recipe="bnn", width=0.5), (3, 32, 32), CIFAR10),
    "Bi-Real ResNet, width 0.5 (CIFAR-10)": (lambda: models.build("bireal_resnet", width=0.5), (3, 32, 32), CIFAR10),
    "mcu_cnn (32, 32, 48)": (lambda: models.build("mcu_cnn", channels=(32, 32, 48)), (1, 28, 28), MNIST),
    "mcu_cnn (32, 64, 64)": (lambda: models.build("mcu_cnn", channels=(32, 64, 64)), (1, 28, 28), MNIST),
    "mcu_cnn (32, 64, 128)": (lambda: models.build("mcu_cnn", channels=(32, 64, 128)), (1, 28, 28), MNIST),
}


def inputs(shape, normalization, count: int, rng: np.random.Generator, zeros: bool = False) -> np.ndarray:
    """``count`` random images: uint8 pixels, or for a float model pixels normalized like Omniglot;
    with ``zeros``, all-zero inputs of the model's type, as ``onebit export --target cortex-m4`` runs."""
    if zeros:
        return np.zeros((count, *shape), np.uint8 if normalization is not None else np.float32)
    pixels = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    if normalization is not None:
        return pixels
    mean, std = OMNIGLOT
    return ((pixels.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def network_sizes(directory: Path, name: str) -> dict[str, int]:
    """``NAME.o`` alone, compiled as for the board: its constants and its flash (text + rodata +
    data), from ``arm-none-eabi-size -A`` (for models whose whole program does not link)."""
    obj = directory / f"{name}_alone.o"
    subprocess.run(["arm-none-eabi-gcc", *targets.CORTEX_M4_FLAGS, "-c", str(directory / f"{name}.c"), "-o", str(obj)],
                   check=True, capture_output=True)
    listing = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(obj)], check=True, capture_output=True, text=True)
    sizes: dict[str, int] = {}
    for section, size in re.findall(r"^(\.\S+)\s+(\d+)", listing.stdout, re.MULTILINE):
        key = section.split(".")[1]
        sizes[key] = sizes.get(key, 0) + int(size)
    return {"weights_bytes": sizes.get("rodata", 0),
            "network_flash_bytes": sizes.get("text", 0) + sizes.get("rodata", 0) + sizes.get("data", 0)}


def first_line(error: Exception) -> str:
    text = str(error).strip()
    for line in text.splitlines():
        if "overflow" in line or "will not fit" in line:
            return re.sub(r"^.*?\.elf:? ", "", line.strip())  # the linker's message without its paths
    return text.splitlines()[0] if text else type(error).__name__


def measure(label: str, build, shape, normalization, directory: Path, images: int, timeout: float,
            rng: np.random.Generator, zeros: bool = False) -> tuple[dict, str | None]:
    """The size report of one model (missing figures None) and a note on what failed, if anything."""
    packed = packed_model(build, shape, normalization)
    name = "net"
    exported = export_c(packed, directory, name)
    row: dict = {"exported_weights_bytes": exported.weights_bytes, "arena_bytes": exported.arena_bytes}
    try:
        elf = targets.build_cortex_m4(directory, name)
    except targets.ToolchainError as error:
        row.update(network_sizes(directory, name))
        return row, f"does not link for the board ({first_line(error)})"
    row.update(targets.size_report(elf, directory, name))
    x = inputs(shape, normalization, images, rng, zeros)
    try:
        result = targets.run_cortex_m4(elf, x, timeout=timeout)
    except targets.HarnessError as error:
        reason = {2: "an inference outran the harness's 32-bit timer (more than about 1.3e9 instructions)",
                  3: "it faulted (stack overflow?)"}.get(error.returncode, first_line(error))
        return row, f"the QEMU run failed: {reason}"
    expected = packed(x)
    if not np.array_equal(result.outputs, expected):
        differ = int((~(result.outputs == expected).all(axis=1)).sum())
        raise SystemExit(f"{label}: the Cortex-M4's outputs differ from the numpy runtime's on {differ} of "
                         f"{images} images")
    row.update(targets.size_report(elf, directory, name, result=result))
    row["spread"] = float((result.instructions.max() - result.instructions.min()) / result.instructions.max())
    return row, None


def cell(value) -> str:
    return "-" if value is None else f"{value:,}"


def tool_version(command: str) -> str:
    done = subprocess.run([targets.require_tool(command), "--version"], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="random images per model (default 2)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one model's QEMU run (default 900)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING", help="only the models whose label contains one")
    parser.add_argument("--zeros", action="store_true",
                        help="all-zero images instead of random ones (what `onebit export --target cortex-m4` runs)")
    args = parser.parse_args()
    chosen = [label for label in MODELS if not args.only or any(s.lower() in label.lower() for s in args.only)]

    print(f"{datetime.date.today()}, host {cpu_name()} ({platform.machine()}, {os.cpu_count()} CPUs), "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{tool_version('arm-none-eabi-gcc')}; {tool_version('qemu-system-arm')}")
    print(f"board: QEMU mps2-an386 (Cortex-M4F), {FLASH_BYTES >> 20} MiB flash; flags: "
          f"{' '.join(targets.CORTEX_M4_FLAGS)}")
    kind = "all-zero" if args.zeros else "random"
    print(f"instructions: QEMU -icount instruction count of one NAME_predict call (the largest over {args.images} "
          f"{kind} images), NOT cycles; every run's outputs equal the numpy runtime's bit for bit")
    print("bytes; network flash = text + rodata + data of NAME.o alone; whole-program flash adds startup, "
          "harness and libgcc; RAM = arena + data + bss of the whole program (the harness's input and output "
          "buffers included), stack = high-water mark of NAME_predict\n")
    print("| model | weights | network flash | whole-program flash | RAM (arena + data + bss) | arena | stack "
          "| instructions per inference |")
    print("|---|---|---|---|---|---|---|---|")
    notes, spread = [], 0.0
    with tempfile.TemporaryDirectory(prefix="onebit-bench-mcu-") as tmp:
        for index, (label, (build, shape, normalization)) in enumerate(MODELS.items()):
            if label not in chosen:
                continue
            directory = Path(tmp) / str(index)
            rng = np.random.default_rng(index)  # the same images with or without --only
            row, note = measure(label, build, shape, normalization, directory, args.images, args.timeout, rng,
                                args.zeros)
            spread = max(spread, row.get("spread", 0.0))
            print(f"| {label} | {cell(row.get('weights_bytes', row['exported_weights_bytes']))} "
                  f"| {cell(row.get('network_flash_bytes'))} | {cell(row.get('flash_bytes'))} "
                  f"| {cell(row.get('ram_bytes'))} | {cell(row['arena_bytes'])} | {cell(row.get('stack_bytes'))} "
                  f"| {cell(row.get('instructions_per_inference'))} |", flush=True)
            if note:
                notes.append(f"- {label}: {note}")
    print(f"\ninstruction counts of one model differ between its images by at most {100 * spread:.2f}% "
          "(data-dependent branches)")
    if notes:
        print("\n".join(notes))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
