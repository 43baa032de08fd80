"""mnist-mcu: fully binary MNIST networks that fit a small microcontroller."""

from __future__ import annotations

from .registry import Experiment, McuBenchmark, Row

#: row name -> McuCNN channels; about 4, 8 and 16 KiB of packed weights, thresholds and scales
SIZES = {"mcu-4k": (32, 32, 48), "mcu-8k": (32, 64, 64), "mcu-16k": (32, 64, 128)}


MNIST_MCU = Experiment(
    name="mnist-mcu",
    description="Fully binary MNIST CNNs of 4-16 KiB for microcontrollers, measured on an emulated Cortex-M4",
    rows=tuple(Row(name, {"name": "mcu_cnn", "channels": list(channels), "recipe": "bnn"}, task={"shift": 2})
               for name, channels in SIZES.items()),
    train={"epochs": 20, "optimizer": "adam", "lr": 2e-3, "lr_schedule": "cosine", "batch_size": 100,
           "precision": "auto", "compile": True},
    dataset="mnist",
    mcu=McuBenchmark(images=10000, anchors=(
        ("eBNN (McDanel et al. 2017), Intel Curie", "95", "15 KB of memory, binary weights and activations"),
        ("BitNetMCU (2024), CH32V003", "99.02", "12.3 KB model, 2-4-bit weights and 8-bit activations"),
        ("CBin-NN (Sakr et al. 2024), STM32", "no MNIST figure (CIFAR-10 only)",
         "binary weights and activations, 8-bit first layer"),
    )),
    targets={"mcu-16k": 0.99, "mcu-4k": 0.98},
    published={"mcu-16k": "BitNetMCU: 99.02 in 12.3 KB (2-4-bit weights, 8-bit activations)",
               "mcu-4k": "eBNN: 95 in 15 KB (Intel Curie)"},
    notes=(
        "Every row is `McuCNN` (onebit.models): three binary 5x5/3x3 convolutions, each followed by "
        "2x2 max pooling, batch norm and the sign, and a binary classifier whose batch norm gives the "
        "logits a float scale and shift. Every weight and every activation after the input is one bit. "
        "The first convolution has no padding, so on uint8 pixels the deployed layer is exact integer "
        "arithmetic; the others are XNOR-popcount layers with integer thresholds.",
        "Training: Adam, learning rate 2e-3 with cosine decay, batch 100, 20 epochs, latent weights "
        "clipped to [-1, 1], training images shifted by up to 2 pixels.",
        "The microcontroller columns are measured on seed 0's model: exported to C "
        "(`onebit export --format c`), built with arm-none-eabi-gcc -O2 for a Cortex-M4F and run on "
        "QEMU's mps2-an386 board on the whole MNIST test set (10,000 images). Weights: the constant arrays "
        "(packed weights, thresholds, flips, scales); flash: text + rodata of the whole program; RAM: "
        "activation arena + data + bss; stack: the high-water mark of one inference; instructions: "
        "QEMU's count under -icount, not cycles.",
    ),
)
