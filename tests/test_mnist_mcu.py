"""mnist-mcu: rows that fit their flash budgets, and a quick run measured on an emulated Cortex-M4."""

import json

import numpy as np
import pytest
import torch
from packed_checks import assert_close_logits, randomize_batchnorm

from onebit import models
from onebit.cli import main
from onebit.deploy import convert, load
from onebit.deploy.export_c import export_c
from onebit.experiments.mnist_mcu import SIZES

BUDGETS = {"mcu-4k": 4096, "mcu-8k": 8192, "mcu-16k": 16384}


@pytest.mark.parametrize("row", list(SIZES))
def test_each_row_fits_its_flash_budget_and_takes_exact_uint8_pixels(row, tmp_path):
    torch.manual_seed(0)
    model = models.build("mcu_cnn", channels=SIZES[row])
    codes = np.random.default_rng(0).integers(0, 256, (500, 1, 28, 28), dtype=np.uint8)
    floats = torch.from_numpy((codes / 255 - 0.1307) / 0.3081).float()
    randomize_batchnorm(model, floats)
    packed = convert(model, torch.zeros(2, 1, 28, 28), input_normalization=((0.1307,), (0.3081,)))
    exported = export_c(packed, tmp_path, "net")
    assert BUDGETS[row] // 2 < exported.weights_bytes <= BUDGETS[row]
    assert exported.arena_bytes <= 2048  # activations: a few hundred bytes of packed bits
    assert "ob_conv_u8" in exported.source.read_text()  # the first layer runs on the pixels in integers
    with torch.no_grad():
        reference = model(floats).numpy()
    assert_close_logits(packed(codes), reference)


def test_mcu_cnn_is_fully_binary():
    with pytest.raises(ValueError, match="bnn or xnor"):
        models.build("mcu_cnn", recipe="binaryconnect")
    assert "channels=(32, 32, 48)" in repr(models.build("mcu_cnn", channels=(32, 32, 48)))


@pytest.mark.slow
def test_quick_run_reports_the_cortex_m4_figures(shared_datasets, tmp_path, require_tools):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    assert main(["run", "mnist-mcu", "--quick", "--rows", "mcu-4k", "--out", str(tmp_path), "--no-progress"]) == 0
    exp_dir = tmp_path / "mnist-mcu"
    row = json.loads((exp_dir / "results.json").read_text())["rows"][0]
    mcu = row["mcu"]
    assert mcu["same_outputs"] and mcu["images"] == 20
    assert mcu["accuracy"]["mcu"] == mcu["accuracy"]["packed"]
    assert 2048 < mcu["weights_bytes"] <= 4096 and mcu["weights_bytes"] < mcu["flash_bytes"]
    assert 0 < mcu["stack_bytes"] < 4096 and mcu["instructions_per_inference"] > 24 * 24 * 32 * 25
    seed_dir = exp_dir / "mcu-4k" / "seed0"
    assert json.loads((seed_dir / "mcu.json").read_text()) == mcu
    assert load(seed_dir / "model.onebit").meta["row"] == "mcu-4k"
    table = (exp_dir / "results.md").read_text()
    assert "| mcu-4k | 20 |" in table and "BitNetMCU" in table
    before = table
    assert main(["report", str(exp_dir), "--stored-packed"]) == 0  # rebuilt from mcu.json
    assert (exp_dir / "results.md").read_text() == before
