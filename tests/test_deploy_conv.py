"""Packed conversion of convolutional models: Omniglot encoders, CIFAR VGG-small, errors."""

import numpy as np
import pytest
import torch
from packed_checks import assert_close_logits, assert_same_signs, randomize_batchnorm
from torch import nn

from onebit import models, quantizers
from onebit.deploy import UnsupportedModelError, convert, load
from onebit.models.matching_net import ConvEncoder
from onebit.nn import BinaryConv2d, BinaryLinear, LearnableBias
from onebit.quantizers import BinaryNeuron, SignSTE


def roundtrip(packed, tmp_path):
    packed.save(tmp_path / "m.onebit")
    return load(tmp_path / "m.onebit")


def omniglot_like(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_omniglot_binary_encoder_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = models.build("matching_net", binary_blocks=[1, 2, 3, 4], quantizer="sign", weight_quantizer="sign",
                         distance="hamming")
    images = omniglot_like(1000)
    randomize_batchnorm(model, images)
    with torch.no_grad():
        expected = model(images).numpy()  # images alone: embeddings
    packed = roundtrip(convert(model.encoder, images[:2]), tmp_path)
    kinds = [op.kind for op in packed.ops]
    # every block: conv with BN + sign folded into thresholds (bits out), then OR pooling on bits
    assert kinds == ["binary_conv2d", "maxpool2d"] * 4 + ["flatten", "unpack_signs"]
    assert all(op.output == "bits" for op in packed.ops if op.kind == "binary_conv2d")
    assert all(a.dtype != np.float32 or a.size <= 64 for op in packed.ops for a in op.arrays().values())
    got = packed(images.numpy())
    assert got.shape == (1000, 64)
    assert_same_signs(got, expected)
    # the MatchingNetwork itself converts to the same embedding path
    whole = convert(model, images[:2])
    assert [op.kind for op in whole.ops] == kinds
    assert np.array_equal(whole(images.numpy()), got)
    # Hamming logits of an episode from the packed embeddings equal the model's
    support, labels, query = images[:25], torch.arange(5).repeat_interleave(5), images[25:125]
    with torch.no_grad():
        logits = model(support, labels, query)
        from_packed = model.classify(torch.from_numpy(packed(support.numpy())), labels,
                                     torch.from_numpy(packed(query.numpy())))
    assert np.array_equal(got[:125], expected[:125])  # no threshold tie in these seeded rows
    assert torch.allclose(from_packed, logits, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(binary_blocks=[1]),  # float convolutions, a BinaryNeuron (Step op) in block 1
    dict(binary_blocks=[1], weight_quantizer="sign"),  # binary convolutions on real / {0, 1} inputs
    dict(binary_blocks=[1, 4], quantizer="sign"),  # float convolutions, sign activations
], ids=["float-neuron", "binweights-neuron", "float-sign"])
def test_omniglot_float_activation_encoders_match_pytorch(kwargs, tmp_path):
    torch.manual_seed(0)
    images = omniglot_like(500, seed=1)
    model = randomize_batchnorm(models.build("matching_net", hidden=32, **kwargs), images)
    with torch.no_grad():
        expected = model(images).numpy()
    packed = roundtrip(convert(model, images[:2]), tmp_path)
    kinds = [op.kind for op in packed.ops]
    assert ("sign" if kwargs.get("quantizer") == "sign" else "step") in kinds
    got = packed(images.numpy())
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()).all(axis=1)
    assert close.mean() >= 0.999, np.flatnonzero(~close)


@pytest.mark.parametrize("recipe", ["bnn", "xnor", "binaryconnect"])
def test_vgg_small_matches_pytorch(recipe, tmp_path):
    torch.manual_seed(0)
    images = torch.randn(300, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = randomize_batchnorm(models.build("vgg_small", recipe=recipe, width=0.125), images)
    with torch.no_grad():
        expected = model(images).numpy()
    packed = roundtrip(convert(model, images[:2]), tmp_path)
    convs = [op for op in packed.ops if op.kind == "binary_conv2d"]
    assert len(convs) == 6 and [op.pool_kernel for op in convs] == [0, 2] * 3
    if recipe != "binaryconnect":  # every conv's BN + the next layer's sign become thresholds
        assert all(op.output == "bits" for op in convs)
        assert [op.kind for op in packed.ops][6:] == ["flatten", "binary_dense", "binary_dense", "binary_dense"]
    assert_close_logits(packed(images.numpy()), expected)


def test_pooling_around_batchnorm_with_flipped_channels_is_exact():
    """``conv -> MaxPool -> BN -> sign`` (pool fused before the thresholds, on real and on
    packed input) and ``conv -> BN -> MaxPool -> sign`` (OR pooling of the bits), with
    negative / zero BN scales, a channel count that leaves tail bits (70), overlapping and
    floor pooling, stride 2, bias and XNOR scaling."""
    torch.manual_seed(0)
    model = nn.Sequential(
        BinaryConv2d(3, 70, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(70),
        BinaryConv2d(70, 70, 3, padding=1, input_quantizer="sign"), nn.MaxPool2d(3, 2), nn.BatchNorm2d(70),
        BinaryConv2d(70, 40, 3, padding=1, input_quantizer="sign"), nn.BatchNorm2d(40), nn.MaxPool2d(2),
        BinaryConv2d(40, 20, 3, stride=2, padding=1, input_quantizer="sign", scaling="xnor"), nn.BatchNorm2d(20),
        SignSTE(), nn.Flatten(),
    )
    images = torch.randn(300, 3, 27, 27, generator=torch.Generator().manual_seed(4))
    randomize_batchnorm(model, images, seed=3)
    with torch.no_grad():
        expected = model(images).numpy()
    packed = convert(model, images[:2])
    kinds = [op.kind for op in packed.ops]
    assert kinds == ["binary_conv2d"] * 3 + ["maxpool2d", "binary_conv2d", "flatten", "unpack_signs"]
    convs = [op for op in packed.ops if op.kind == "binary_conv2d"]
    assert [op.output for op in convs] == ["bits"] * 4
    assert [op.pool_kernel for op in convs] == [2, 3, 0, 0]
    for op in convs[:2]:
        assert (op.flip & (op.thresholds > -np.inf)).any()  # flipped, non-constant channels
    assert_same_signs(packed(images.numpy()), expected)


def _bnn_cnn() -> nn.Module:
    return nn.Sequential(
        BinaryConv2d(1, 32, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32),
        BinaryConv2d(32, 64, 3, padding=1, bias=False, input_quantizer="sign"), nn.MaxPool2d(2), nn.BatchNorm2d(64),
        nn.Flatten(), BinaryLinear(64 * 7 * 7, 10, bias=False, input_quantizer="sign"), nn.BatchNorm1d(10),
    )


def _sign_encoder_classifier() -> nn.Module:
    encoder = ConvEncoder("all", "sign", weight_quantizer="sign", hidden=32)
    return nn.Sequential(encoder, BinaryLinear(32, 10, bias=False), nn.BatchNorm1d(10))


@pytest.mark.slow
@pytest.mark.parametrize("build", [_bnn_cnn, _sign_encoder_classifier], ids=["bnn-cnn", "sign-encoder"])
def test_trained_conv_models_match_pytorch(build, mnist_small, train_briefly, tmp_path):
    model = train_briefly(build(), mnist_small)
    images = torch.cat([x for x, _ in mnist_small.eval_batches("test")])
    with torch.no_grad():
        expected = model(images).numpy()
    assert (expected.argmax(1) == mnist_small.splits["test"].labels.numpy()).mean() > 0.3  # really trained
    assert_close_logits(roundtrip(convert(model, images[:2]), tmp_path)(images.numpy()), expected)


@pytest.mark.parametrize("recipe,react", [("xnor", False), ("bnn", False), ("float", False), ("xnor", True)])
def test_bireal_resnet_matches_pytorch(recipe, react, tmp_path):
    """Residual blocks ``bn(conv(sign(x))) + shortcut(x)`` become ``residual_begin -> main
    branch -> residual_branch -> shortcut branch -> residual_add``; the real-valued residual
    stream is packed again before every binary convolution. With ReActNet's activations the
    learned thresholds are affine ops before the packing and every block ends in an RPReLU op."""
    torch.manual_seed(0)
    images = torch.randn(300, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    model = randomize_batchnorm(models.build("bireal_resnet", recipe=recipe, width=0.125, blocks=(1, 2, 1, 1),
                                             react=react), images)
    features = {}
    handle = model.pool.register_forward_hook(lambda module, inputs, output: features.setdefault("f", output))
    with torch.no_grad():
        model(images)
        handle.remove()
        f = features["f"].flatten(1)  # standardize what the classifier sees: varied predictions
        model.fc.weight.div_(f.std(0).clamp_min(1e-3))
        model.fc.bias.sub_(model.fc.weight @ f.mean(0))
        expected = model(images).numpy()
    packed = roundtrip(convert(model, images[:2]), tmp_path)
    kinds = [op.kind for op in packed.ops]
    assert kinds.count("residual_begin") == kinds.count("residual_branch") == kinds.count("residual_add") == 5
    if recipe != "float":
        assert kinds.count("pack_signs") == kinds.count("binary_conv2d") == 5
    assert kinds.count("rprelu") == (5 if react else 0)
    thresholded = sum(kinds[i - 1] == "affine" for i, kind in enumerate(kinds) if kind == "pack_signs")
    assert thresholded == (5 if react else 0)
    assert_close_logits(packed(images.numpy()), expected)


class _Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = BinaryConv2d(2, 2, 3, padding=1)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return self.conv(x) - self.shortcut(x)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = BinaryConv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(2 * x)  # silently dropping the "2 *" would be wrong


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(2, 2, 1), _Difference()), r"1\.shortcut: reads a tensor other than the output of 1\.conv"),
    (_Scaled(), r"conv: reads a tensor other than the input of _Scaled"),
], ids=["difference", "computation"])
def test_non_chains_are_rejected_naming_the_module(model, message):
    with pytest.raises(UnsupportedModelError, match=message + ".*not a chain"):
        convert(model, torch.zeros(2, 2, 5, 5))


class _TanhGradSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(x)
        ctx.beta = beta
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.beta * (1 - torch.tanh(ctx.beta * x) ** 2), None


@quantizers.register("test-tanh-sign")
@quantizers.register("test-tanh-sign-steep", beta=5.0)
class TanhSign(quantizers.Quantizer):
    r"""A quantizer of one's own: :math:`q(x) = +1` if :math:`x \ge 0` else :math:`-1`, gradient
    :math:`\partial L/\partial q \cdot \frac{d}{dx} \tanh(\beta x)`. One class and one
    decorator: nothing in the converter names it."""

    packs = True

    def __init__(self, beta: float = 2.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return _TanhGradSign.apply(x, self.beta)


def test_a_registered_quantizer_of_ones_own_deploys(tmp_path):
    """Weight and input quantizers, by name and alias, and a quantizer module of its own:
    the converter packs them by their ``packs`` and ``levels`` alone."""
    assert quantizers.get("test-tanh-sign-steep").beta == 5.0
    assert quantizers.get("test-tanh-sign-steep", beta=3.0).beta == 3.0
    x = torch.linspace(-1, 1, 9, requires_grad=True)
    quantizers.get("test-tanh-sign")(x).sum().backward()
    assert torch.allclose(x.grad, 2.0 * (1 - torch.tanh(2.0 * x.detach()) ** 2))  # its own backward

    torch.manual_seed(0)
    q, steep = "test-tanh-sign", "test-tanh-sign-steep"
    model = nn.Sequential(
        BinaryConv2d(3, 24, 3, padding=1, bias=False, weight_quantizer=q, input_quantizer=q), nn.BatchNorm2d(24),
        TanhSign(), nn.MaxPool2d(2),
        BinaryConv2d(24, 40, 3, padding=1, weight_quantizer=steep, input_quantizer=q), nn.MaxPool2d(2),
        nn.BatchNorm2d(40), nn.Flatten(),
        BinaryLinear(40 * 4 * 4, 10, bias=False, weight_quantizer=q, input_quantizer=steep), nn.BatchNorm1d(10),
    )
    images = torch.randn(300, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    randomize_batchnorm(model, images, seed=7)
    with torch.no_grad():
        expected = model(images).numpy()
    packed = roundtrip(convert(model, images[:2]), tmp_path)
    ops = [(op.kind, getattr(op, "output", None)) for op in packed.ops]
    assert ops == [("pack_signs", None), ("binary_conv2d", "bits"), ("maxpool2d", None), ("binary_conv2d", "bits"),
                   ("flatten", None), ("binary_dense", "float")]
    assert_close_logits(packed(images.numpy()), expected)


def test_quantizers_that_do_not_pack_to_signs_are_refused():
    class Noisy(quantizers.Quantizer):  # packs is False by default
        def forward(self, x):
            return torch.where(torch.rand_like(x) < 0.5, 1.0, -1.0)

    x = torch.zeros(2, 4)
    with pytest.raises(UnsupportedModelError, match="1: Noisy does not pack"):
        convert(nn.Sequential(nn.Linear(4, 4), Noisy()), x)
    with pytest.raises(UnsupportedModelError, match="0: weight quantizer Noisy does not pack"):
        convert(nn.Sequential(BinaryLinear(4, 4, weight_quantizer=Noisy())), x)
    with pytest.raises(UnsupportedModelError, match=r"0: input quantizer BinaryNeuron outputs \(0.0, 1.0\)"):
        convert(nn.Sequential(BinaryLinear(4, 4, input_quantizer="binary-neuron")), x)
    with pytest.raises(UnsupportedModelError, match="1: BinaryNeuron does not pack"):
        convert(nn.Sequential(nn.Linear(4, 4), BinaryNeuron("stochastic", sample_at_eval=True)), x)


def test_a_learned_threshold_after_a_binary_layer_folds_into_its_integer_thresholds(tmp_path):
    """ReActNet's RSign after a binary layer's batch norm, sign(BN(d) + b), is a threshold on the
    integer product ``d``: no float op is left for it, and the packed model matches PyTorch."""
    torch.manual_seed(0)
    model = nn.Sequential(
        BinaryConv2d(1, 32, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32), LearnableBias(32),
        BinaryConv2d(32, 32, 3, padding=1, bias=False, input_quantizer="sign"), nn.BatchNorm2d(32), LearnableBias(32),
        nn.Flatten(), BinaryLinear(32 * 14 * 14, 10, bias=False, input_quantizer="sign"), nn.BatchNorm1d(10),
    )
    images = omniglot_like(500)
    model = randomize_batchnorm(model, images)
    packed = roundtrip(convert(model, images), tmp_path)
    assert [op.kind for op in packed.ops] == ["binary_conv2d", "binary_conv2d", "flatten", "binary_dense"]
    with torch.no_grad():
        expected = model(images).numpy()
    assert_close_logits(packed(images.numpy()), expected)
