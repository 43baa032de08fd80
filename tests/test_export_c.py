"""C export (`onebit.deploy.export_c`): the C build predicts what the numpy runtime predicts,
image for image, on the host, on ARM64 (qemu-aarch64) and on a Cortex-M4 (QEMU mps2-an386)."""

import json
import subprocess

import numpy as np
import pytest
import torch
from packed_checks import assert_close_logits, randomize_batchnorm

from onebit import models
from onebit.cli import main
from onebit.deploy import convert, load, runtime, targets
from onebit.deploy.export_c import ExportError, export_c
from onebit.deploy.runtime import pixel_thresholds
from onebit.models import MLP, SmallCNN
from onebit.training import TrainConfig, Trainer

MNIST_NORM = ((0.1307,), (0.3081,))


def _trained(model: torch.nn.Module, task, directory) -> torch.nn.Module:
    torch.manual_seed(0)
    trainer = Trainer(model, task, TrainConfig(epochs=1, lr=3e-3, device="cpu", progress=False), directory)
    trainer.fit()
    return trainer.model.eval()


@pytest.fixture(scope="module")
def mnist_test(shared_datasets_dir):
    from onebit.data import dataset

    return dataset("mnist", shared_datasets_dir).test_arrays(raw=True)[0]


@pytest.fixture(scope="module")
def trained_mlps(mnist_small, tmp_path_factory):
    """Briefly trained study-A MLPs (two hidden layers of 256), packed for uint8 pixels."""
    packed = {}
    for recipe in ("bnn", "xnor", "binaryconnect"):
        torch.manual_seed(0)
        model = _trained(MLP(hidden=(256, 256), recipe=recipe, input_dropout=0.2), mnist_small,
                         tmp_path_factory.mktemp(recipe))
        packed[recipe] = convert(model, torch.zeros(2, 1, 28, 28), input_normalization=MNIST_NORM)
    return packed


@pytest.fixture(scope="module")
def bnn_mlp():
    """An untrained study-A BNN MLP (two hidden layers of 256) with random batch norms, packed for
    uint8 pixels: what the exported files hold needs no training or data."""
    torch.manual_seed(0)
    codes = np.random.default_rng(0).integers(0, 256, (256, 1, 28, 28), dtype=np.uint8)
    floats = torch.from_numpy((codes / 255 - MNIST_NORM[0][0]) / MNIST_NORM[1][0]).float()
    model = randomize_batchnorm(MLP(hidden=(256, 256), recipe="bnn"), floats)
    return convert(model, torch.zeros(2, 1, 28, 28), input_normalization=MNIST_NORM)


def _host(packed, directory, name="net"):
    export_c(packed, directory, name)
    return targets.build_host(directory, name, flags=("-O2", "-Werror"))


# -- exactness of the constants -----------------------------------------------------------------


def test_pixel_thresholds_reproduce_the_runtime_float64_comparison():
    rng = np.random.default_rng(0)
    scale, offset = 1 / (255 * 0.3081), -0.1307 / 0.3081
    sums = rng.integers(-784, 785, 50)
    thresholds = rng.normal(0, 30, 50)
    thresholds[:5] = sums[:5] * offset + np.arange(5) * scale  # ties exactly on reachable products
    thresholds[5] = -np.inf
    thresholds[6] = np.inf
    got = pixel_thresholds(thresholds, scale, offset, sums)
    products = np.arange(-255 * 784, 255 * 784 + 1, 97, dtype=np.int64)
    products = np.concatenate([products, got[7:], got[7:] - 1])
    for t, s, threshold in zip(thresholds, sums, got, strict=True):
        runtime_bit = products.astype(np.float64) * scale + offset * np.float64(s) >= t
        assert np.array_equal(runtime_bit, products >= threshold)


# -- the exported files -------------------------------------------------------------------------


def test_header_arena_and_weights_in_flash(bnn_mlp, tmp_path):
    exported = export_c(bnn_mlp, tmp_path, "digits")
    header = exported.header.read_text()
    for line in ("#define digits_INPUT_SIZE 784", "#define digits_OUTPUT_SIZE 10", "#define digits_INPUT_IS_U8 1",
                 f"#define digits_ARENA_BYTES {exported.arena_bytes}", "typedef uint8_t digits_input_t;",
                 "void digits_predict(const digits_input_t *input, float *output);"):
        assert line in header
    source = exported.source.read_text()
    assert "malloc" not in source and "<stdio.h>" not in source and "<math.h>" not in source
    assert source.count("_w[") == 3  # three binary layers' weights, 1 bit each, in 32-bit words
    weight_words = 256 * 25 + 256 * 8 + 10 * 8
    thresholds = 4 * 512  # int32: the uint8 layer's products reach 255 * 784
    assert "typedef int32_t ob_threshold_t;" in source
    assert exported.weights_bytes == 4 * weight_words + thresholds + 4 * 2 * 8 + 4 * 2 * 10  # + flips, scale, shift
    # floats: the logits; words: the input's 8 bit planes (8 x 25) and one packed hidden vector (8)
    # beside them; the second hidden vector takes the planes' place
    assert exported.arena_bytes == 4 * (10 + 8 * 25 + 8)


def test_mlp_recipes_equal_the_runtime_on_the_whole_mnist_test_set(trained_mlps, mnist_test, tmp_path):
    for recipe, packed in trained_mlps.items():
        executable = _host(packed, tmp_path / recipe)
        # bnn / xnor: integer layers, float epilogue in the runtime's order; binaryconnect's layers on
        # real input: float sums in the runtime's fixed order
        assert_close_logits(targets.run_harness(executable, mnist_test), packed(mnist_test), exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("binary", ["both", "first"])
def test_study_b_cnn_equals_the_runtime(binary, mnist_small, mnist_test, tmp_path):
    torch.manual_seed(0)
    model = _trained(SmallCNN(binary), mnist_small, tmp_path / "run")
    packed = convert(model, torch.zeros(2, 1, 28, 28), input_normalization=MNIST_NORM)
    executable = _host(packed, tmp_path / "c")
    assert_close_logits(targets.run_harness(executable, mnist_test), packed(mnist_test), exact=False, atol=1e-5)


def test_cifar10_networks_equal_the_runtime_on_1000_test_images(shared_datasets_dir, tmp_path):
    from onebit.data import dataset

    codes = dataset("cifar10", shared_datasets_dir).test_arrays(raw=True)[0][:1000]
    norm = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    images = (torch.from_numpy(codes).float() / 255 - mean) / std
    # VGG-small: the first conv's float sums in a fixed order, the rest integers; Bi-Real's float
    # shortcut convolutions round differently in C and numpy (and so its ReActNet variant)
    for name, build, exact in [("vgg", lambda: models.build("vgg_small", recipe="bnn", width=0.25), True),
                               ("bireal", lambda: models.build("bireal_resnet", width=0.25), False),
                               ("bireal-react", lambda: models.build("bireal_resnet", width=0.25, react=True), False)]:
        torch.manual_seed(0)
        model = randomize_batchnorm(build(), images[:200])
        packed = convert(model, images[:2], input_normalization=norm)
        got = targets.run_harness(_host(packed, tmp_path / name), codes)
        assert_close_logits(got, packed(codes), exact=exact, atol=1e-5)


def test_omniglot_hamming_encoder_outputs_the_runtime_embedding(shared_datasets_dir, tmp_path):
    """The encoder's output is the ±1 embedding (the flattened last block, PyTorch's order); the
    Hamming head compares embeddings outside the network."""
    from onebit.data.omniglot import load_omniglot

    pixels = load_omniglot(shared_datasets_dir, download=False).evaluation.images[:1000]
    images = (pixels.float() / 255 - 0.08) / 0.27
    torch.manual_seed(0)
    model = models.build("matching_net", binary_blocks=[1, 2, 3, 4], quantizer="sign", weight_quantizer="sign",
                         distance="hamming")
    randomize_batchnorm(model, images[:200])
    packed = convert(model.encoder, images[:2])
    got = targets.run_harness(_host(packed, tmp_path), images.numpy())
    expected = packed(images.numpy())
    assert set(np.unique(got)) <= {-1.0, 1.0}
    assert np.array_equal(got, expected)  # the first conv's double sums of pixels are exact
    assert len(np.unique(expected, axis=0)) > 500


def test_harness_rejects_truncated_input(bnn_mlp, tmp_path):
    executable = _host(bnn_mlp, tmp_path)
    result = subprocess.run([str(executable)], input=bytes(784 + 100), capture_output=True)
    assert result.returncode != 0 and b"truncated" in result.stderr
    assert len(result.stdout) == 40  # the whole first image was answered
    assert subprocess.run([str(executable)], input=b"", capture_output=True).returncode == 0


def test_a_layer_without_c_code_is_named(bnn_mlp, tmp_path):
    class Mystery(runtime.Op):
        kind = "mystery"

        def __call__(self, x):
            return x

    packed = runtime.PackedModel([runtime.Flatten(), Mystery()], {"input_shape": [1, 4, 4]})
    with pytest.raises(ExportError, match="layer1: the C exporter has no code for layer kind 'mystery'"):
        export_c(packed, tmp_path)
    with pytest.raises(ExportError, match="C identifier"):
        export_c(bnn_mlp, tmp_path, name="my-model")


def test_export_from_a_onebit_file_and_the_cli(trained_mlps, mnist_test, tmp_path, capsys):
    trained_mlps["xnor"].save(tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c"),
                 "--name", "xnor"]) == 0
    assert "xnor.c" in capsys.readouterr().out
    executable = targets.build_host(tmp_path / "c", "xnor")
    expected = load(tmp_path / "m.onebit")(mnist_test[:500])
    assert np.array_equal(targets.run_harness(executable, mnist_test[:500]), expected)


# -- other targets ------------------------------------------------------------------------------


def test_mnist_bnn_on_arm64_and_cortex_m4_equals_the_host(trained_mlps, mnist_test, tmp_path, require_tools):
    require_tools("aarch64-linux-gnu-gcc", "qemu-aarch64", "arm-none-eabi-gcc", "qemu-system-arm")
    packed = trained_mlps["bnn"]
    export_c(packed, tmp_path, "net")
    expected = packed(mnist_test[:1000])
    arm64 = targets.run_harness(targets.build_aarch64(tmp_path, "net"), mnist_test[:1000],
                                emulator=targets.AARCH64_EMULATOR)
    assert np.array_equal(arm64, expected)
    m4 = targets.run_cortex_m4(targets.build_cortex_m4(tmp_path, "net"), mnist_test[:1000])
    assert np.array_equal(m4.outputs, expected)
    assert m4.instructions_per_inference > 256 * 784  # at least one instruction per weight of layer 1


@pytest.mark.slow
def test_short_trained_cifar10_bnn_on_arm64_and_cortex_m4_equals_the_runtime(shared_datasets, tmp_path,
                                                                             require_tools):
    require_tools("aarch64-linux-gnu-gcc", "qemu-aarch64", "arm-none-eabi-gcc", "qemu-system-arm")
    from onebit.data.cifar10 import MEAN, STD
    from onebit.experiments import get

    task = get("cifar10").build_task(quick=True, batch_size=50)
    model = _trained(models.build("vgg_small", recipe="bnn", width=0.0625), task, tmp_path / "run")
    packed = convert(model, torch.zeros(2, 3, 32, 32), input_normalization=(MEAN, STD))
    codes = task.splits["test"].images[:200].numpy()
    expected = packed(codes)
    export_c(packed, tmp_path / "c", "net")
    host = targets.run_harness(targets.build_host(tmp_path / "c", "net", flags=("-O2", "-Werror")), codes)
    arm64 = targets.run_harness(targets.build_aarch64(tmp_path / "c", "net"), codes, emulator=targets.AARCH64_EMULATOR)
    m4 = targets.run_cortex_m4(targets.build_cortex_m4(tmp_path / "c", "net"), codes)
    assert np.array_equal(host, expected) and np.array_equal(arm64, expected)
    assert np.array_equal(m4.outputs, expected)
    assert len(np.unique(expected.argmax(1))) > 1


def test_cli_builds_for_the_cortex_m4_with_a_size_report(trained_mlps, tmp_path, capsys, require_tools):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    trained_mlps["bnn"].save(tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c"),
                 "--target", "cortex-m4"]) == 0
    report = json.loads((tmp_path / "c" / "model_cortex_m4.json").read_text())
    assert (tmp_path / "c" / "model.elf").exists()
    assert report["weights_bytes"] <= report["network_flash_bytes"] <= report["flash_bytes"]
    assert report["arena_bytes"] <= report["ram_bytes"] and report["stack_bytes"] > 0
    assert report["instructions_per_inference"] > 256 * 784 // 32  # at least one per weight word of layer 1
    assert "not cycles" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "m.onebit"), "--target", "host", "-o", str(tmp_path / "x")]) == 2
