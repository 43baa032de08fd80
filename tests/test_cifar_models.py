"""CIFAR-10 models: shapes, parameter counts, where the binary layers are, gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebit
from onebit import models
from onebit.models.cifar import BiRealBlock, BiRealResNet, VGGSmall, scaled_width
from onebit.nn import BinaryConv2d, BinaryLinear, QuantizedLayer
from onebit.quantizers import ApproxSign, SignSTE


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def weight_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def vgg_params(w, binary_weights):
    c128, c256, c512, c1024 = (round(c * w) for c in (128, 256, 512, 1024))
    convs = [(3, c128), (c128, c128), (c128, c256), (c256, c256), (c256, c512), (c512, c512)]
    n = sum(9 * i * o + 2 * o for i, o in convs)  # 3x3 kernels (no bias) + batch norm
    n += 16 * c512 * c1024 + 2 * c1024 + c1024 * c1024 + 2 * c1024  # two hidden FC + batch norm
    n += c1024 * 10 + (2 * 10 if binary_weights else 10)  # logits: batch norm (binary) or bias (float)
    return n


def vgg_macs(w):
    """Multiply-accumulates per image: 3x3 convolutions at 32, 32, 16, 16, 8, 8 pixels a side
    (each stage pools after its second), then the three linear layers."""
    c128, c256, c512, c1024 = (round(c * w) for c in (128, 256, 512, 1024))
    convs = [(3, c128, 32), (c128, c128, 32), (c128, c256, 16), (c256, c256, 16), (c256, c512, 8), (c512, c512, 8)]
    return sum(9 * i * o * side * side for i, o, side in convs) + 16 * c512 * c1024 + c1024 * c1024 + c1024 * 10


@pytest.mark.parametrize("recipe", ["float", "binaryconnect", "bnn", "xnor"])
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_vgg_small_shapes_and_parameter_count(recipe, width):
    model = VGGSmall(recipe, width=width)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == vgg_params(width, recipe != "float")
    assert f"recipe='{recipe}', width={width:g}" in repr(model)


def test_vgg_small_width_one_is_binarynet():
    assert vgg_params(1.0, True) == sum(p.numel() for p in VGGSmall("bnn").parameters()) == 14_029_716
    stats = onebit.summary(VGGSmall("bnn"), (3, 32, 32))
    assert stats.binary_macs + stats.float_macs == vgg_macs(1.0) == 616_966_144
    # only the first convolution (real pixels in) runs float multiply-accumulates
    assert stats.float_macs == 3 * 128 * 9 * 32 * 32


def test_vgg_small_binary_layer_placement():
    bnn = weight_layers(VGGSmall("bnn", width=0.125))
    assert len(bnn) == 9 and all(isinstance(m, QuantizedLayer) and m.has_binary_weight for m in bnn)
    assert not bnn[0].has_binary_input  # first conv sees real pixels
    assert all(isinstance(m.input_quantizer, SignSTE) for m in bnn[1:])
    assert not any(isinstance(m, nn.ReLU) for m in VGGSmall("bnn", width=0.125).modules())
    # the logits are real: a batch norm follows the last binary layer
    assert isinstance(VGGSmall("bnn", width=0.125).classifier[-1], nn.BatchNorm1d)

    xnor = weight_layers(VGGSmall("xnor", width=0.125))
    assert all(m.scaling == "xnor" for m in xnor)

    bc = VGGSmall("binaryconnect", width=0.125)
    assert all(m.has_binary_weight and not m.has_binary_input for m in weight_layers(bc))
    assert sum(isinstance(m, nn.ReLU) for m in bc.modules()) == 8

    fp = VGGSmall("float", width=0.125)
    assert not any(isinstance(m, QuantizedLayer) for m in fp.modules())
    assert isinstance(fp.classifier[-1], nn.Linear) and fp.classifier[-1].bias is not None


def test_bireal_resnet_shapes_and_structure():
    model = BiRealResNet("xnor", width=0.25)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    binary = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    assert len(binary) == 16  # Bi-Real-18: 4 stages x 4 binary 3x3 convolutions
    assert all(isinstance(m, BinaryConv2d) and m.kernel_size == (3, 3) for m in binary)
    assert all(isinstance(m.input_quantizer, ApproxSign) and m.scaling == "xnor" for m in binary)
    # real stem, real shortcuts, real classifier
    assert type(model.stem[0]) is nn.Conv2d and type(model.fc) is nn.Linear
    shortcut_convs = [m for b in model.blocks for m in b.shortcut.modules() if isinstance(m, nn.Conv2d)]
    assert len(shortcut_convs) == 3 and all(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in shortcut_convs)
    widths = [b.conv.out_channels for b in model.blocks]
    assert widths == [16] * 4 + [32] * 4 + [64] * 4 + [128] * 4
    assert [b.conv.stride[0] for b in model.blocks] == [1] * 4 + [2, 1, 1, 1] * 3


def test_bireal_parameter_count():
    model = BiRealResNet("xnor", width=0.25, channels=(16, 32), blocks=(1, 2), num_classes=7)
    c1, c2 = 4, 8
    stem = 3 * c1 * 9 + 2 * c1
    blocks = (9 * c1 * c1 + 2 * c1) + (9 * c1 * c2 + 2 * c2 + c1 * c2 + 2 * c2) + (9 * c2 * c2 + 2 * c2)
    assert sum(p.numel() for p in model.parameters()) == stem + blocks + c2 * 7 + 7
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_bireal_block_is_sign_conv_bn_plus_real_shortcut():
    torch.manual_seed(0)
    block = BiRealBlock(4, 4, recipe="xnor").eval()
    x = torch.randn(2, 4, 8, 8)
    w = sign(block.conv.weight) * block.conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    residual = block.bn(F.conv2d(sign(x), w, padding=1))
    assert torch.allclose(block(x), residual + x, atol=1e-5)  # the identity shortcut carries real x

    down = BiRealBlock(4, 8, stride=2, recipe="bnn").eval()
    shortcut = down.shortcut[2](down.shortcut[1](F.avg_pool2d(x, 2)))
    residual = down.bn(F.conv2d(sign(x), sign(down.conv.weight), stride=2, padding=1))
    assert torch.allclose(down(x), residual + shortcut, atol=1e-5)


def test_bireal_float_twin_and_quantizer_choice():
    twin = BiRealResNet("float", width=0.25)
    assert not any(isinstance(m, QuantizedLayer) for m in twin.modules())
    assert sum(isinstance(m, nn.ReLU) for m in twin.modules()) == 16  # ReLU where the sign was
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in BiRealResNet("xnor", 0.25).parameters())
    plain = BiRealResNet("bnn", width=0.25, activation_quantizer=None)
    assert all(isinstance(m.input_quantizer, SignSTE) and m.scaling is None
               for m in plain.modules() if isinstance(m, QuantizedLayer))


@pytest.mark.parametrize("spec", [
    {"name": "vgg_small", "recipe": "bnn", "width": 0.125},
    {"name": "vgg_small", "recipe": "xnor", "width": 0.125},
    {"name": "vgg_small", "recipe": "binaryconnect", "width": 0.125},
    {"name": "bireal_resnet", "recipe": "xnor", "width": 0.125},
])
def test_gradients_reach_every_latent_weight(spec):
    torch.manual_seed(0)
    spec = dict(spec)
    model = models.build(spec.pop("name"), **spec)
    F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
    layers = weight_layers(model)
    assert any(isinstance(m, QuantizedLayer) for m in layers)
    for m in layers:  # binary layers through their estimators, real ones (stem, shortcuts) through the signs
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, m


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="valid recipes"):
        VGGSmall("bnnn")
    with pytest.raises(ValueError, match="valid recipes"):
        models.build("bireal_resnet", recipe="bireal")
    with pytest.raises(ValueError, match="valid names"):
        BiRealResNet("bnn", activation_quantizer="approxsign")
    with pytest.raises(ValueError, match="width multiplier must be positive"):
        VGGSmall("float", width=0)
    with pytest.raises(ValueError, match="multiple of 8"):
        VGGSmall("float", image_size=28)
    with pytest.raises(ValueError, match="one entry per stage"):
        BiRealResNet("xnor", channels=(16, 32), blocks=(2,))
    with pytest.raises(ValueError, match="valid models"):
        models.build("vgg16")
    assert scaled_width(3, 0.1) == 1  # never zero channels


def test_registered_names():
    assert {"vgg_small", "bireal_resnet"} <= set(models.names())
    assert isinstance(models.build("vgg_small", recipe="bnn", width=0.125).classifier[1], BinaryLinear)


@pytest.mark.parametrize("build", [lambda recipe: VGGSmall(recipe, width=0.125),
                                   lambda recipe: BiRealResNet(recipe, width=0.125, react=True)])
def test_binary_activations_recipe_is_the_binary_network_with_real_weights(build):
    """Two-step training's first step: hidden layers binarize their input but keep real weights,
    the first layer stays real, and the network shares every tensor with its xnor twin, which
    loads its state strictly."""
    torch.manual_seed(0)
    step1, step2 = build("binary-activations"), build("xnor")
    hidden = [m for m in step1.modules() if isinstance(m, QuantizedLayer)]
    assert hidden and all(not m.has_binary_weight and m.has_binary_input for m in hidden)
    convs = [m for m in step1.modules() if isinstance(m, nn.Conv2d)]
    assert not isinstance(convs[0], QuantizedLayer)  # real pixels into real weights
    step2.load_state_dict(step1.state_dict())
    # the hidden layers see signs: their output is the real weights applied to +-1 inputs
    layer = hidden[0]
    x = torch.randn(2, layer.in_channels, 8, 8)
    expected = F.conv2d(sign(x), layer.weight, layer.bias, layer.stride, layer.padding)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(onebit.deploy.UnsupportedModelError, match="two-step training"):
        onebit.deploy.convert(step1.eval(), torch.randn(2, 3, 32, 32))
