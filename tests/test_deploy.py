import subprocess
import sys

import numpy as np
import pytest
import torch
from packed_checks import randomize_batchnorm
from torch import nn

from onebit import models
from onebit.deploy import InvalidModelFile, UnsupportedModelError, convert, kernels, load
from onebit.deploy.converter import fold_sign_threshold
from onebit.models import MLP, SmallCNN
from onebit.nn import BinaryConv2d, BinaryLinear


def test_fold_sign_threshold_matches_batchnorm_sign():
    rng = np.random.default_rng(0)
    k, channels = 65, 400
    bn = nn.BatchNorm1d(channels).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-20, 20)
        bn.running_var.uniform_(0.1, 50)
        bn.weight.uniform_(-2, 2)
        bn.weight[:40] = 0.0  # constant channels
        bn.weight[40:80] *= -1  # make sure negative gammas abound
        bn.bias.uniform_(-3, 3)
        bn.bias[:20] = 0.0  # zero gamma and zero beta: BN output 0 -> sign +1
    dots = torch.arange(-k, k + 1, 2, dtype=torch.float32)  # every value a +-1 dot product can take
    expected = (bn(dots[:, None].expand(-1, channels)) >= 0).numpy()
    invstd = 1 / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps)
    scale = bn.weight.detach().numpy() * invstd
    shift = bn.bias.detach().numpy() - bn.running_mean.numpy() * scale
    thresholds, flip = fold_sign_threshold(scale, shift)
    # float comparison, and the integer popcount kernel's epilogue
    assert np.array_equal((dots.numpy()[:, None] >= thresholds) ^ flip, expected)
    a = np.where(rng.random((len(dots), k)) < 0.5, -1.0, 1.0)
    a[:, : (k - dots.numpy().astype(int)).max() // 2 + 1] = 1
    w = np.ones((channels, k))
    bits = kernels.binary_matmul_threshold(kernels.pack_signs(a), kernels.prepare_weights(kernels.pack_signs(w)), k,
                                           np.ceil(np.clip(thresholds, -1e9, 1e9)), flip)
    got = kernels.unpack_signs(bits, channels) > 0
    want = ((a @ w.T) >= thresholds) ^ flip
    assert np.array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("build", [
    lambda: MLP(hidden=(256, 256), recipe="bnn", input_dropout=0.2),
    lambda: MLP(hidden=(256, 256), recipe="xnor"),
    lambda: MLP(hidden=(256, 256), recipe="binaryconnect"),
    lambda: SmallCNN("both"),
    lambda: SmallCNN("first", mode="stochastic"),
], ids=["bnn", "xnor", "binaryconnect", "cnn-both", "cnn-first"])
def test_packed_model_equals_pytorch_on_mnist(build, mnist_small, train_briefly, tmp_path):
    torch.manual_seed(0)
    model = train_briefly(build(), mnist_small)
    images = torch.cat([x for x, _ in mnist_small.eval_batches("test")])
    with torch.no_grad():
        expected = model(images).numpy()
    packed = convert(model, images[:2])
    packed.save(tmp_path / "m.onebit")
    logits = load(tmp_path / "m.onebit")(images.numpy())
    assert (expected.argmax(1) == mnist_small.splits["test"].labels.numpy()).mean() > 0.5  # really trained
    assert np.array_equal(logits.argmax(1), expected.argmax(1))
    # Logits agree to float precision. A unit whose real-valued pre-activation lies within
    # float32 rounding of its threshold can flip (torch and the runtime both sum in float32, in
    # different orders); allow that for at most 0.5% of the images.
    close = np.isclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()).all(axis=1)
    assert close.mean() >= 0.995, np.flatnonzero(~close)

    # The same model fed raw uint8 images (its first binary layer then runs on bit planes).
    from onebit.data.mnist import MEAN, STD

    pixels = convert(model, images[:2], input_normalization=(MEAN, STD))
    pixels.save(tmp_path / "p.onebit")
    codes = mnist_small.splits["test"].images.numpy()
    from_codes = load(tmp_path / "p.onebit")(codes)
    assert (from_codes.argmax(1) != expected.argmax(1)).mean() <= 0.001
    close = np.isclose(from_codes, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()).all(axis=1)
    assert close.mean() >= 0.999, np.flatnonzero(~close)


def test_uint8_input_needs_the_input_normalization():
    model = MLP(hidden=(64,), recipe="bnn").eval()
    codes = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8)
    with pytest.raises(ValueError, match="input_normalization"):
        convert(model, torch.zeros(2, 1, 28, 28))(codes)
    with pytest.raises(ValueError, match="channels"):
        convert(model, torch.zeros(2, 1, 28, 28), input_normalization=([0.1, 0.2], [0.3, 0.3]))
    with pytest.raises(ValueError, match="positive"):
        convert(model, torch.zeros(2, 1, 28, 28), input_normalization=(0.1, 0.0))
    # per-channel normalization that differs between channels: dequantized, same as float input
    cnn = SmallCNN("both").eval()
    cnn.features[0] = nn.Conv2d(3, 16, 5, padding=2, bias=False)
    rgb = np.random.default_rng(1).integers(0, 256, (2, 3, 28, 28)).astype(np.uint8)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    packed = convert(cnn, torch.zeros(2, 3, 28, 28), input_normalization=(mean, std))
    normalized = ((rgb / 255 - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    np.testing.assert_allclose(packed(rgb), packed(normalized), rtol=1e-4, atol=1e-4)


def test_binary_mlp_file_is_much_smaller(tmp_path):
    model = MLP(hidden=(1024, 1024), recipe="bnn").eval()
    convert(model, torch.zeros(2, 1, 28, 28)).save(tmp_path / "m.onebit")
    float_bytes = sum(p.numel() * 4 for p in model.state_dict().values() if p.is_floating_point())
    assert float_bytes / (tmp_path / "m.onebit").stat().st_size > 25


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onebit"
    convert(MLP(hidden=(64,), recipe="bnn").eval(), torch.zeros(2, 1, 28, 28)).save(path)
    return path


def test_truncated_tampered_and_foreign_files(saved, tmp_path):
    raw = saved.read_bytes()
    cases = {
        "truncated": (raw[: len(raw) // 2], "checksum|truncated"),
        "tampered": (raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:], "checksum"),
        "foreign": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a .onebit"),
        "empty": (b"", "too short"),
        "future": (raw[:8] + (99).to_bytes(4, "little") + raw[12:], "version 99"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.onebit"
        path.write_bytes(data)
        with pytest.raises(InvalidModelFile, match=message):
            load(path)


@pytest.mark.parametrize("build, outputs", [
    (lambda: MLP(hidden=(64,), recipe="bnn"), 10),
    (lambda: models.build("matching_net", binary_blocks="all", quantizer="sign", weight_quantizer="sign",
                          distance="hamming", hidden=16), 16),  # its binary encoder: embeddings
], ids=["mlp", "conv-encoder"])
def test_runtime_never_imports_torch(build, outputs, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onebit"
    model = randomize_batchnorm(build(), torch.randn(50, 1, 28, 28))
    convert(model, torch.zeros(2, 1, 28, 28)).save(path)
    code = (
        "import sys, numpy as np\n"
        "import onebit.deploy as deploy\n"
        f"out = deploy.load({str(path)!r})(np.zeros((3, 1, 28, 28), np.float32))\n"
        f"assert out.shape == (3, {outputs}), out.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_input_shape_is_reported(saved):
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        load(saved)(np.zeros((2, 784), np.float32))


def test_unsupported_modules_are_named():
    model = nn.Sequential(nn.Flatten(), BinaryLinear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="2: GELU"):
        convert(model, torch.zeros(2, 4))
    conv = nn.Sequential(BinaryConv2d(1, 2, 3, dilation=2), nn.Flatten())
    with pytest.raises(UnsupportedModelError, match="0: only square, ungrouped, undilated"):
        convert(conv, torch.zeros(2, 1, 5, 5))


@pytest.mark.parametrize("recipe", ["bnn", "xnor"])
def test_a_batch_split_over_threads_gives_every_row_its_own_result(recipe, monkeypatch):
    """Each thread runs a slice of the batch through every layer: the rows must not depend on
    the split (float input, and uint8 input through the exact pixel layer)."""
    from onebit.data.mnist import MEAN, STD

    torch.manual_seed(0)
    model = MLP(hidden=(96, 80), recipe=recipe).eval()
    packed = convert(model, torch.zeros(2, 1, 28, 28), input_normalization=(MEAN, STD))
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (37, 1, 28, 28)).astype(np.uint8)
    floats = rng.standard_normal((37, 1, 28, 28)).astype(np.float32)
    for x in (codes, floats):
        monkeypatch.setattr(kernels, "_num_threads", 1)
        rows = np.concatenate([packed(x[i : i + 1]) for i in range(len(x))])
        assert len(packed._slices(len(x))) == 1
        monkeypatch.setattr(kernels, "_num_threads", 3)
        assert len(packed._slices(len(x))) == 3
        np.testing.assert_array_equal(packed(x), rows)
        assert len(packed._slices(20)) == 2 and len(packed._slices(15)) == 1  # at least 8 rows per thread


def test_layer_seconds_attribute_the_time_to_the_op_that_takes_it(monkeypatch):
    import time

    torch.manual_seed(0)
    packed = convert(MLP(hidden=(64, 64), recipe="bnn").eval(), torch.zeros(2, 1, 28, 28))
    slow = packed.ops[2]
    original = type(slow).__call__
    monkeypatch.setattr(type(slow), "__call__", lambda op, x: (time.sleep(0.03) if op is slow else None) or
                        original(op, x))
    x = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
    for threads in (1, 2):
        monkeypatch.setattr(kernels, "_num_threads", threads)
        seconds = packed.layer_seconds(x)
        assert len(seconds) == len(packed.ops) and min(seconds) >= 0
        assert seconds[2] >= 0.03 and max(seconds[:2] + seconds[3:]) < 0.03
