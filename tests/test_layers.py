import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebit
from onebit import recipes
from onebit.nn import BinaryConv2d, BinaryLinear


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_binary_linear_matches_f_linear_with_hand_signs():
    torch.manual_seed(0)
    layer = BinaryLinear(7, 5, input_quantizer="sign")
    x = torch.randn(3, 7)
    assert torch.allclose(layer(x), F.linear(sign(x), sign(layer.weight), layer.bias))


def test_binary_linear_xnor_scaling():
    torch.manual_seed(0)
    layer = BinaryLinear(6, 4, bias=False, scaling="xnor")
    x = torch.randn(2, 6)
    alpha = layer.weight.abs().mean(dim=1, keepdim=True)
    assert torch.allclose(layer(x), F.linear(x, sign(layer.weight) * alpha))


@pytest.mark.parametrize("scaling", [None, "xnor"])
def test_binary_conv_matches_f_conv2d(scaling):
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 3, stride=2, padding=1, input_quantizer="sign", scaling=scaling)
    x = torch.randn(2, 3, 9, 9)
    w = sign(conv.weight)
    if scaling:
        w = w * conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(conv(x), F.conv2d(sign(x), w, conv.bias, stride=2, padding=1), atol=1e-6)


def test_latent_weights_get_straight_through_gradients():
    layer = BinaryLinear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -2.0, 0.1], [-0.3, 0.9, 1.5]]))
    x = torch.ones(1, 3)
    layer(x).sum().backward()
    # d out / d sign(W) = x = 1; masked where |W| > 1
    assert layer.weight.grad.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]


def test_xnor_scaled_weights_get_the_gradient_of_alpha_too():
    r"""With :math:`y_o = \alpha_o \sum_j s_{oj} x_j`, :math:`\alpha_o = \frac1K \sum_k |W_{ok}|` and
    :math:`s = \mathrm{sign}(W)` passing gradients where :math:`|W| \le 1`:
    :math:`\partial L / \partial W_{oj} = g_o\,(\alpha_o x_j [|W_{oj}| \le 1]
    + \mathrm{sign}(W_{oj}) \sum_k s_{ok} x_k / K)`."""
    layer = BinaryLinear(3, 2, bias=False, scaling="xnor")
    w = torch.tensor([[0.5, -2.0, 0.1], [-0.3, 0.9, 1.5]])
    with torch.no_grad():
        layer.weight.copy_(w)
    x, g = torch.tensor([[1.0, 2.0, -3.0]]), torch.tensor([[0.5, -1.0]])
    layer(x).backward(g)
    alpha, s = w.abs().mean(1, keepdim=True), sign(w)
    expected = g.T * (alpha * x * (w.abs() <= 1) + s * (s * x).sum(1, keepdim=True) / 3)
    # row 0: alpha = 0.8667, sum s x = 1 - 2 - 3 = -4; row 1: alpha = 0.9, sum s x = -1 + 2 - 3 = -2
    assert torch.allclose(layer.weight.grad, expected)
    assert torch.allclose(expected[0], 0.5 * torch.tensor([0.8667 - 4 / 3, 4 / 3, -2.6 - 4 / 3]), atol=1e-4)


def test_float_weights_without_quantizer():
    layer = BinaryLinear(3, 2, weight_quantizer=None)
    x = torch.randn(4, 3)
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_clip_latent_weights_only_touches_binary_layers():
    model = nn.Sequential(BinaryLinear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    onebit.clip_latent_weights(model, bound=1.0)
    assert model[0].weight.max() == 1.0
    assert model[1].weight.max() == 3.0
    with pytest.raises(ValueError):
        onebit.clip_latent_weights(model, bound=0)


def test_bad_quantizer_and_scaling_names_raise():
    with pytest.raises(ValueError, match="unknown quantizer"):
        BinaryLinear(2, 2, weight_quantizer="sgn")
    with pytest.raises(ValueError, match="scaling"):
        BinaryConv2d(2, 2, 3, scaling="dorefa")
    with pytest.raises(ValueError, match="needs a weight_quantizer"):
        BinaryLinear(2, 2, weight_quantizer=None, scaling="xnor")


def test_extra_repr_shows_quantizers():
    r = repr(BinaryConv2d(1, 2, 3, input_quantizer="sign", scaling="xnor"))
    assert "weight_quantizer='sign'" in r and "input_quantizer='sign'" in r and "scaling='xnor'" in r


def test_stochastic_weights_sample_in_training_and_are_fixed_at_eval():
    torch.manual_seed(0)
    layer = BinaryLinear(50, 50, bias=False, weight_quantizer="stochastic-sign")
    x = torch.randn(1, 50)
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), F.linear(x, sign(layer.weight)))


def test_recipes():
    assert recipes.get("xnor").layer_kwargs(binary_input=True) == {
        "weight_quantizer": "sign", "input_quantizer": "sign", "scaling": "xnor"}
    assert recipes.get("bnn").layer_kwargs(binary_input=False)["input_quantizer"] is None
    assert not recipes.get("float").binary_weights
    with pytest.raises(ValueError, match="valid recipes"):
        recipes.get("ternary")


def test_rprelu_and_learnable_bias_follow_their_formulas():
    from onebit.nn import LearnableBias, RPReLU

    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    act, shift = RPReLU(3), LearnableBias(3)
    assert torch.equal(act(x), torch.nn.functional.prelu(x, torch.full((3,), 0.25))) and torch.equal(shift(x), x)
    with torch.no_grad():
        for p, values in zip((act.shift_in, act.slope, act.shift_out, shift.bias),
                             ([0.5, -1.0, 0.0], [0.1, -0.3, 1.0], [1.0, 2.0, -3.0], [0.2, 0.0, -0.7])):
            p.copy_(torch.tensor(values))
    g, b, z = (v.view(1, 3, 1, 1) for v in (act.shift_in, act.slope, act.shift_out))
    torch.testing.assert_close(act(x), torch.where(x - g >= 0, x - g, b * (x - g)) + z)
    torch.testing.assert_close(shift(x), x + shift.bias.view(1, 3, 1, 1))
    torch.testing.assert_close(act(x[:, :, 0, 0]), act(x)[:, :, 0, 0])  # (N, C) inputs too
    with pytest.raises(ValueError, match="binary activations"):
        onebit.models.build("bireal_resnet", recipe="float", react=True)
