"""Toolchains for the exported C (`onebit.deploy.targets`): host, aarch64 under qemu-aarch64 and
Cortex-M4 under qemu-system-arm, on a hand-written toy model that obeys export_c's contract."""


import numpy as np
import pytest

from onebit.deploy import targets
from onebit.deploy.targets import HarnessError, HeaderInfo

# -- a toy model in export_c's contract: 3 weighted sums of 16 uint8 pixels ----------------------

TOY_WEIGHTS = np.array([
    [1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16],
    [-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1],
    [127, -128, 0, 0, 3, 3, 3, 3, -7, 0, 0, 0, 0, 0, 0, 2],
])

TOY_H = """#ifndef TOY_H
#define TOY_H
#include <stdint.h>
#define toy_INPUT_SIZE 16
#define toy_OUTPUT_SIZE 3
#define toy_INPUT_IS_U8 1
#define toy_ARENA_BYTES 12
typedef uint8_t toy_input_t;
void toy_predict(const toy_input_t *input, float *output);
#endif
"""

TOY_C = """#include "toy.h"
static const int8_t weights[toy_OUTPUT_SIZE][toy_INPUT_SIZE] = {
WEIGHTS
};
static int32_t arena[toy_ARENA_BYTES / 4];

void toy_predict(const toy_input_t *input, float *output)
{
    for (int o = 0; o < toy_OUTPUT_SIZE; o++) {
        arena[o] = 0;
        for (int i = 0; i < toy_INPUT_SIZE; i++)
            arena[o] += weights[o][i] * input[i];
    }
    for (int o = 0; o < toy_OUTPUT_SIZE; o++)
        output[o] = (float)arena[o] * 0.5f + 1.0f;
}
""".replace("WEIGHTS", ",\n".join("    {" + ", ".join(map(str, row)) + "}" for row in TOY_WEIGHTS))

TOY_MAIN_C = """#include <stdio.h>
#include "toy.h"

int main(void)
{
    static toy_input_t input[toy_INPUT_SIZE];
    float output[toy_OUTPUT_SIZE];
    size_t got;
    while ((got = fread(input, sizeof input[0], toy_INPUT_SIZE, stdin)) == toy_INPUT_SIZE) {
        toy_predict(input, output);
        if (fwrite(output, sizeof output[0], toy_OUTPUT_SIZE, stdout) != toy_OUTPUT_SIZE)
            return 1;
    }
    if (got != 0) {
        fprintf(stderr, "toy: truncated input: %lu of %d values\\n", (unsigned long)got, toy_INPUT_SIZE);
        return 1;
    }
    return ferror(stdin) ? 1 : 0;
}
"""

# A Cortex-M4-only "model" whose input n (uint32 LE) runs a loop of exactly 2 n instructions.
SPIN_H = """#include <stdint.h>
#define spin_INPUT_SIZE 4
#define spin_OUTPUT_SIZE 1
#define spin_INPUT_IS_U8 1
#define spin_ARENA_BYTES 0
typedef uint8_t spin_input_t;
void spin_predict(const spin_input_t *input, float *output);
"""

SPIN_C = """#include "spin.h"
void spin_predict(const spin_input_t *input, float *output)
{
    uint32_t n = input[0] | (uint32_t)input[1] << 8 | (uint32_t)input[2] << 16 | (uint32_t)input[3] << 24;
    output[0] = (float)n;
    if (n)
        __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");
}
"""

# Recursion of input[0] + 256 input[1] + 65536 input[2] frames of at least 16 words each.
DEEP_C = """#include "deep.h"
static uint32_t depth(uint32_t n)
{
    volatile uint32_t frame[16];
    frame[n % 16] = n;
    return n ? depth(n - 1) + frame[3] : 0;
}

void deep_predict(const deep_input_t *input, float *output)
{
    output[0] = (float)depth(input[0] | (uint32_t)input[1] << 8 | (uint32_t)input[2] << 16);
}
"""


def toy_reference(images: np.ndarray) -> np.ndarray:
    """What toy_predict computes, exactly (integer sums below 2^24, scaled by powers of two)."""
    sums = images.reshape(len(images), -1).astype(np.int64) @ TOY_WEIGHTS.T
    return sums.astype(np.float32) * np.float32(0.5) + np.float32(1.0)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy")
    for name, text in {"toy.h": TOY_H, "toy.c": TOY_C, "toy_main.c": TOY_MAIN_C}.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 16), dtype=np.uint8)
    return np.concatenate([pixels, np.zeros((1, 16), np.uint8), np.full((1, 16), 255, np.uint8)])


def truncated(images: np.ndarray) -> bytes:
    return images[:2].tobytes() + images[2, :5].tobytes()


def test_header_info(toy_dir, tmp_path):
    info = targets.header_info(toy_dir, "toy")
    assert info == HeaderInfo("toy", 16, 3, True, 12)
    assert info.input_dtype == np.uint8
    (tmp_path / "bad.h").write_text(TOY_H.replace("toy_", "bad_").replace("#define bad_ARENA_BYTES 12\n", ""))
    with pytest.raises(ValueError, match="bad_ARENA_BYTES"):
        targets.header_info(tmp_path, "bad")


def test_missing_tool_names_the_package():
    message = str(targets.MissingToolError("qemu-aarch64"))
    assert "qemu-aarch64 not found" in message and "apt-get install -y qemu-user " in message
    assert targets.APT_INSTALL in message
    with pytest.raises(targets.MissingToolError, match="no-such-compiler"):
        targets.require_tool("no-such-compiler")


def test_host(toy_dir, images, require_tools):
    require_tools("cc")
    executable = targets.build_host(toy_dir, "toy", flags=("-O2", "-Werror"))
    assert np.array_equal(targets.run_harness(executable, images), toy_reference(images))
    assert np.array_equal(targets.run_harness(executable, images[:2].reshape(2, 1, 4, 4)), toy_reference(images[:2]))
    assert targets.run_harness(executable, images[:0]).shape == (0, 3)
    with pytest.raises(HarnessError, match="truncated") as e:
        targets.run_harness(executable, truncated(images))
    assert e.value.returncode != 0
    with pytest.raises(ValueError, match="16 elements"):
        targets.run_harness(executable, images[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        targets.run_harness(executable, images.astype(np.float32))


def test_build_error_carries_the_compiler_output(toy_dir, tmp_path, require_tools):
    require_tools("cc")
    for name in ("toy.h", "toy_main.c"):
        (tmp_path / name).write_text((toy_dir / name).read_text())
    (tmp_path / "toy.c").write_text(TOY_C.replace("arena[o] = 0;", "arena[o] = undeclared;"))
    with pytest.raises(targets.ToolchainError, match="undeclared"):
        targets.build_host(tmp_path, "toy")


def test_aarch64_under_qemu(toy_dir, images, require_tools):
    require_tools("aarch64-linux-gnu-gcc", "qemu-aarch64")
    executable = targets.build_aarch64(toy_dir, "toy")
    elf = executable.read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    outputs = targets.run_harness(executable, images, emulator=targets.AARCH64_EMULATOR)
    assert np.array_equal(outputs, toy_reference(images))
    with pytest.raises(HarnessError, match="truncated") as e:
        targets.run_harness(executable, truncated(images), emulator=targets.AARCH64_EMULATOR)
    assert e.value.returncode != 0


def test_cortex_m4_under_qemu(toy_dir, images, require_tools):
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    toy_elf = targets.build_cortex_m4(toy_dir, "toy")
    result = targets.run_cortex_m4(toy_elf, images)
    assert np.array_equal(result.outputs, toy_reference(images))
    # 48 multiply-accumulates and their loads: a few hundred instructions (295 with GCC 12.2),
    # the same for every image (no data-dependent branch) and on every run
    assert result.instructions.shape == (len(images),)
    assert np.all(result.instructions == result.instructions[0])
    assert 3 * 48 < result.instructions_per_inference == result.instructions[0] < 1000
    again = targets.run_cortex_m4(toy_elf, images[:3])
    assert np.array_equal(again.instructions, result.instructions[:3])
    assert 0 < result.stack_bytes <= 64  # pushed registers, no locals
    assert targets.run_cortex_m4(toy_elf, images[:0]).outputs.shape == (0, 3)
    with pytest.raises(HarnessError, match="truncated") as e:
        targets.run_cortex_m4(toy_elf, truncated(images))
    assert e.value.returncode == 1

    report = targets.size_report(toy_elf, toy_dir, "toy", result=result)
    assert report["weights_bytes"] == TOY_WEIGHTS.size  # int8 weights
    assert report["arena_bytes"] == 12 <= report["network_ram_bytes"] <= report["ram_bytes"]
    assert report["weights_bytes"] < report["network_flash_bytes"] < report["flash_bytes"]
    assert report["stack_bytes"] == result.stack_bytes
    assert report["instructions_per_inference"] == result.instructions_per_inference
    assert targets.size_report(toy_elf, toy_dir, "toy")["instructions_per_inference"] is None


def test_cortex_m4_fault_ends_the_run(tmp_path, require_tools):
    """A stack overflow faults (the stack grows towards unmapped memory) and QEMU exits with 3."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    (tmp_path / "deep.h").write_text(SPIN_H.replace("spin", "deep"))
    (tmp_path / "deep.c").write_text(DEEP_C)
    elf = targets.build_cortex_m4(tmp_path, "deep")
    shallow = targets.run_cortex_m4(elf, np.array([[10, 0, 0, 0]], np.uint8))
    assert 10 * 64 < shallow.stack_bytes < 10 * 64 * 2  # ten frames of 16 words and a little more
    with pytest.raises(HarnessError, match="fault") as e:
        targets.run_cortex_m4(elf, np.array([[0, 0, 1, 0]], np.uint8))  # 65536 frames
    assert e.value.returncode == 3


def test_cortex_m4_instruction_count_is_exact(tmp_path, require_tools):
    """The count of a loop of 2 n instructions grows by exactly 2 per n, over six decades."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    (tmp_path / "spin.h").write_text(SPIN_H)
    (tmp_path / "spin.c").write_text(SPIN_C)
    elf = targets.build_cortex_m4(tmp_path, "spin")
    n = np.array([1, 2, 3, 10, 1000, 12345, 3_000_001], np.uint32)
    result = targets.run_cortex_m4(elf, n.view(np.uint8).reshape(-1, 4))
    assert np.array_equal(result.outputs[:, 0], n.astype(np.float32))
    overhead = result.instructions - 2 * n.astype(np.int64)  # the function's own instructions
    assert np.all(overhead == overhead[0]) and 0 < overhead[0] < 20, result.instructions
    assert np.array_equal(targets.run_cortex_m4(elf, n[:4].view(np.uint8).reshape(-1, 4)).instructions,
                          result.instructions[:4])


def test_exported_model_on_the_host_and_cortex_m4(tmp_path, require_tools):
    require_tools("cc", "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    import torch
    from packed_checks import assert_close_logits, randomize_batchnorm

    from onebit.deploy import convert
    from onebit.deploy.export_c import export_c
    from onebit.models import MLP

    torch.manual_seed(0)
    codes = np.random.default_rng(1).integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    floats = torch.from_numpy((codes / 255 - 0.1307) / 0.3081).float()
    model = randomize_batchnorm(MLP(hidden=(64,), recipe="bnn"), floats)
    packed = convert(model, torch.zeros(2, 1, 28, 28), input_normalization=((0.1307,), (0.3081,)))
    export_c(packed, tmp_path, "net")
    host = targets.run_harness(targets.build_host(tmp_path, "net", flags=("-O2", "-Werror")), codes)
    assert_close_logits(host, packed(codes), exact=True)  # integer layers, the float epilogue in the runtime's order
    elf = targets.build_cortex_m4(tmp_path, "net")
    m4 = targets.run_cortex_m4(elf, codes)
    assert np.array_equal(m4.outputs, host)  # the same float32 operations in the same order
    assert m4.instructions_per_inference > 784  # at least one per pixel
    report = targets.size_report(elf, tmp_path, "net", result=m4)
    assert report["weights_bytes"] >= 64 * 784 // 8  # layer 1's weights, one bit each
    assert report["network_flash_bytes"] <= report["flash_bytes"]
    assert report["arena_bytes"] <= report["network_ram_bytes"] <= report["ram_bytes"]
