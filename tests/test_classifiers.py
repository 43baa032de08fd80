"""Every image classifier takes its input and output sizes and a recipe the same way."""

import pytest
import torch
from packed_checks import assert_close_logits, randomize_batchnorm

from onebit import models
from onebit.deploy import convert

_NARROW = {"vgg_small": {"width": 0.125}, "bireal_resnet": {"width": 0.125}, "mlp": {"hidden": [32]},
           "mcu_cnn": {"channels": [8, 8, 8]}}


@pytest.mark.parametrize("name", models.CLASSIFIERS)
@pytest.mark.parametrize("channels,size", [(1, 32), (3, (16, 24))])
def test_classifiers_take_channels_classes_and_image_size(name, channels, size):
    torch.manual_seed(0)
    model = models.build(name, recipe="bnn", in_channels=channels, num_classes=3, image_size=size,
                         **_NARROW.get(name, {}))
    height, width = models.image_shape(size)
    assert model.eval()(torch.randn(2, channels, height, width)).shape == (2, 3)


def test_image_shape():
    assert models.image_shape(28) == (28, 28) and models.image_shape([16, 24]) == (16, 24)
    for bad in (0, "28", [28], (28, 0), 2.5, True):
        with pytest.raises(ValueError, match="image_size"):
            models.image_shape(bad)


def test_sizes_each_model_cannot_take_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        models.build("vgg_small", image_size=(32, 20))
    with pytest.raises(ValueError, match="divisible by 8"):
        models.build("bireal_resnet", image_size=20)
    with pytest.raises(ValueError, match="at least 12"):
        models.build("mcu_cnn", image_size=(28, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        models.build("small_cnn", image_size=3)


def test_mlp_in_features_from_the_image_or_given():
    assert models.MLP().layers[1].in_features == 784  # study A's MNIST default
    assert models.MLP(in_channels=3, image_size=(8, 4), hidden=[4]).layers[1].in_features == 96
    assert models.MLP(in_features=20, hidden=[4]).layers[1].in_features == 20
    with pytest.raises(ValueError, match="contradicts"):
        models.MLP(in_features=20, in_channels=3, image_size=32)


def test_small_cnn_float_recipe_is_study_bs_network():
    torch.manual_seed(0)
    default = models.SmallCNN("both")
    torch.manual_seed(0)
    float_ = models.SmallCNN("both", recipe="float")
    assert repr(default) == repr(float_)
    pairs = zip(default.state_dict().values(), float_.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="binary='none'"):
        models.SmallCNN("both", recipe="bnn")


@pytest.mark.parametrize("recipe", ["bnn", "xnor", "binaryconnect"])
def test_binary_small_cnn_deploys(recipe):
    torch.manual_seed(0)
    model = models.SmallCNN(recipe=recipe, in_channels=3, num_classes=4, image_size=(16, 20))
    x = torch.randn(1000, 3, 16, 20)
    randomize_batchnorm(model, x)
    packed = convert(model, torch.zeros(2, 3, 16, 20))
    with torch.no_grad():
        expected = model(x).numpy()
    assert_close_logits(packed(x.numpy()), expected)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "vgg_small", "bireal_resnet"])
def test_binary_activations_network_has_the_tensors_of_its_binary_twin(name):
    """Two-step training copies the first step (real weights, binary activations) into the
    second (bnn / xnor) by name and shape: every classifier builds the same tensors under both."""
    kwargs = {"width": 0.125} if name in ("vgg_small", "bireal_resnet") else {}
    shapes = {recipe: {k: v.shape for k, v in models.build(name, recipe=recipe, **kwargs).state_dict().items()}
              for recipe in ("binary-activations", "bnn", "xnor")}
    assert shapes["binary-activations"] == shapes["bnn"] == shapes["xnor"]


@pytest.mark.parametrize("binary, neurons", [("none", []), ("first", [3]), ("last", [7]), ("both", [3, 7])])
def test_small_cnn_puts_binary_neurons_where_asked(binary, neurons):
    """Study B's grid: ``binary`` places BinaryNeurons after the first, the last or both conv
    blocks, hard sigmoids elsewhere."""
    from onebit.nn import HardSigmoid
    from onebit.quantizers import BinaryNeuron

    model = models.build("small_cnn", binary=binary, mode="stochastic", estimator="reinforce")
    acts = {i: type(m) for i, m in enumerate(model.features) if isinstance(m, (BinaryNeuron, HardSigmoid))}
    assert sorted(acts) == [3, 7]
    assert [i for i, kind in acts.items() if kind is BinaryNeuron] == neurons
