"""A trained run on a microcontroller: its packed model exported to C, built for a Cortex-M4 and
run on QEMU's mps2-an386 board beside the numpy runtime and PyTorch."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import registry
from .packed import pack_run
from .runs import run_config

__all__ = ["evaluate_mcu"]


def _compiler() -> str:
    version = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True, check=True)
    return version.stdout.splitlines()[0]


def evaluate_mcu(run_dir: str | Path, root: str | None = None, images: int = 1000) -> dict[str, Any]:
    """Export the run's packed model to C, build it for a Cortex-M4 and run it under QEMU on the
    first ``images`` test images (uint8 pixels).

    Returns:
        the figures of :func:`onebit.deploy.targets.size_report` (``weights_bytes``,
        ``flash_bytes``, ``ram_bytes``, ``stack_bytes``, ``instructions_per_inference``, ...),
        plus ``images``, ``accuracy`` (``{"mcu", "packed", "torch"}`` on those images),
        ``same_outputs`` (the Cortex-M4's outputs equal the numpy runtime's, bit for bit) and
        ``compiler``.
    """
    from ..deploy import targets
    from ..deploy.export_c import export_c

    model, packed = pack_run(run_dir)
    config = run_config(run_dir)
    data = registry.of_run(config).dataset_of(config, root).load()
    codes, labels = data.test_arrays(raw=True)
    floats = data.test_arrays()[0]
    codes, floats, labels = codes[:images], floats[:images], labels[:images]
    with tempfile.TemporaryDirectory(prefix="onebit-mcu-") as tmp:
        export_c(packed, tmp, "model")
        elf = targets.build_cortex_m4(tmp, "model")
        result = targets.run_cortex_m4(elf, codes)
        report = targets.size_report(elf, tmp, "model", result=result)
    expected = packed(codes)
    with torch.no_grad():
        reference = model(torch.from_numpy(floats)).numpy()
    return {
        **report,
        "images": len(labels),
        "accuracy": {name: float((outputs.argmax(1) == labels).mean())
                     for name, outputs in (("mcu", result.outputs), ("packed", expected), ("torch", reference))},
        "same_outputs": bool(np.array_equal(result.outputs, expected)),
        "compiler": _compiler(),
    }
