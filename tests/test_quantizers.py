import math

import pytest
import torch

from onebit import quantizers
from onebit.quantizers import BinaryNeuron, hard_sigmoid, sign_ste, stochastic_sign


def grad_of(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).backward(torch.ones_like(x))
    return x.grad


X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])


def test_sign_ste_forward_maps_zero_to_plus_one():
    assert sign_ste(X).tolist() == [-1, -1, -1, 1, 1, 1, 1]


def test_sign_ste_backward_mask_is_inclusive_at_clip():
    assert grad_of(sign_ste, X).tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert grad_of(lambda x: sign_ste(x, clip=0.5), X).tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_stochastic_sign_values_and_backward():
    torch.manual_seed(0)
    out = stochastic_sign(X)
    assert set(out.tolist()) <= {-1.0, 1.0}
    # beyond +-1 the probability is 0 or 1: deterministic
    assert out[0] == -1 and out[-1] == 1
    assert grad_of(stochastic_sign, X).tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_stochastic_sign_mean_matches_probability():
    n = 200_000
    x = torch.tensor([-0.8, -0.3, 0.0, 0.4, 0.9])
    torch.manual_seed(1)
    samples = stochastic_sign(x.expand(n, -1))
    p = hard_sigmoid(x)
    freq = (samples > 0).double().mean(0)
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-9  # 5 standard errors
    assert torch.all((freq - p).abs() <= tol), (freq, p)


def test_hard_sigmoid_values():
    assert hard_sigmoid(X).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_binary_neuron_deterministic_st(slope):
    neuron = BinaryNeuron("deterministic", "st", slope=slope)
    assert neuron(X).tolist() == [0, 0, 0, 1, 1, 1, 1]
    expected = [0.5 * slope * float(abs(slope * v) < 1) for v in X.tolist()]
    assert grad_of(neuron, X).tolist() == expected


def test_binary_neuron_stochastic_samples_in_train_thresholds_in_eval():
    neuron = BinaryNeuron("stochastic", "st")
    n = 100_000
    x = torch.tensor([-0.6, 0.0, 0.2, 0.7])
    torch.manual_seed(2)
    freq = neuron(x.expand(n, -1)).double().mean(0)
    p = hard_sigmoid(x).double()
    assert torch.all((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n))
    neuron.eval()
    assert neuron(x).tolist() == [0, 1, 1, 1]
    neuron.sample_at_eval = True
    torch.manual_seed(3)
    freq = neuron(x.expand(n, -1)).double().mean(0)  # eval mode samples too, at the same probabilities
    assert torch.all((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n))


def test_binary_neuron_slope_is_settable_and_validated():
    neuron = BinaryNeuron(slope=1.0)
    neuron.slope = 3.0
    assert grad_of(neuron, torch.tensor([0.2, 0.4])).tolist() == [1.5, 0.0]
    with pytest.raises(ValueError):
        neuron.slope = 0.0
    assert "slope=3" in repr(neuron)


def test_binary_neuron_reinforce_records_log_prob_and_blocks_gradient():
    neuron = BinaryNeuron("stochastic", "reinforce")
    x = torch.tensor([[-0.5, 0.5], [0.0, 2.0]], requires_grad=True)
    torch.manual_seed(4)
    b = neuron(x)
    assert not b.requires_grad
    (log_p,) = neuron.recorded_log_probs
    p = hard_sigmoid(x.detach()).clamp(1e-6, 1 - 1e-6)
    expected = (b * p.log() + (1 - b) * (1 - p).log()).sum(1)
    assert torch.allclose(log_p, expected)
    assert log_p.requires_grad  # the score-function path exists


def test_deterministic_reinforce_samples_while_training_and_thresholds_at_eval():
    neuron = BinaryNeuron("deterministic", "reinforce")
    x = torch.full((5000,), 0.2)
    torch.manual_seed(5)
    p = float(hard_sigmoid(x[0]))  # 0.6: sampled, not thresholded
    assert abs(float(neuron(x).mean()) - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    neuron.eval()
    assert neuron(x).mean() == 1.0
    assert neuron.recorded_log_probs.__len__() == 1  # eval does not record


def test_bad_mode_and_estimator_raise():
    with pytest.raises(ValueError, match="mode"):
        BinaryNeuron("random")
    with pytest.raises(ValueError, match="estimator"):
        BinaryNeuron(estimator="gumbel")


def test_registry_resolves_and_lists_names():
    assert isinstance(quantizers.get("sign"), quantizers.SignSTE)
    assert quantizers.get("sign-unclipped").clip is None
    assert quantizers.get("sign-unclipped", clip=0.5).clip == 0.5  # an alias's defaults yield to keywords
    neuron = quantizers.get("binary-neuron", mode="stochastic", estimator="reinforce")
    assert neuron.mode == "stochastic" and neuron.estimator == "reinforce"
    assert quantizers.get(None) is None
    with pytest.raises(ValueError, match="valid names: .*sign"):
        quantizers.get("sgn")


def test_approx_sign_gradient():
    g = grad_of(quantizers.ApproxSign(), torch.tensor([-1.5, -0.5, 0.0, 0.25, 1.0]))
    assert torch.allclose(g, torch.tensor([0.0, 1.0, 2.0, 1.5, 0.0]))


def test_log_prob_is_finite_at_saturation():
    neuron = BinaryNeuron("stochastic", "reinforce")
    neuron(torch.tensor([[-5.0, 5.0]], requires_grad=True))
    assert math.isfinite(neuron.recorded_log_probs[0].item())


BUILTIN = {  # every name configs and code use: class, output levels, packs
    "sign": (quantizers.SignSTE, (-1.0, 1.0), True),
    "sign-unclipped": (quantizers.SignSTE, (-1.0, 1.0), True),
    "stochastic-sign": (quantizers.StochasticSign, (-1.0, 1.0), True),
    "approx-sign": (quantizers.ApproxSign, (-1.0, 1.0), True),
    "binary-neuron": (BinaryNeuron, (0.0, 1.0), True),
}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_names_state_the_contract(name):
    cls, levels, packs = BUILTIN[name]
    q = quantizers.get(name)
    assert type(q) is cls and isinstance(q, quantizers.Quantizer) and q.name == name
    assert tuple(q.levels) == levels and q.packs is packs
    low, high = levels  # packed as bits: x >= 0 gives the high level at eval, x < 0 the low one
    assert q.eval()(X).tolist() == [high if x >= 0 else low for x in X.tolist()]
    assert set(quantizers.names()) >= set(BUILTIN)


def test_binary_neuron_that_samples_at_eval_does_not_pack():
    assert BinaryNeuron("stochastic", sample_at_eval=True).packs is False
    assert BinaryNeuron("deterministic", sample_at_eval=True).packs is True


def test_register_validates_classes_and_names():
    with pytest.raises(ValueError, match="'sign' is already registered"):
        quantizers.register("sign")(quantizers.ApproxSign)
    with pytest.raises(TypeError, match="Quantizer subclasses"):
        quantizers.register("relu")(torch.nn.ReLU)
    with pytest.raises(TypeError, match="levels"):

        class Ternary(quantizers.Quantizer):  # noqa: F841 (defining it is the test)
            levels = (-1.0, 0.0)


BAD_CLIPS = [0, -1.0, float("nan"), "1", True]


@pytest.mark.parametrize("clip", BAD_CLIPS)
@pytest.mark.parametrize("build", [
    lambda clip: sign_ste(X, clip=clip),
    lambda clip: stochastic_sign(X, clip=clip),
    lambda clip: quantizers.SignSTE(clip=clip),
    lambda clip: quantizers.StochasticSign(clip=clip),
    lambda clip: quantizers.get("sign", clip=clip),
    lambda clip: quantizers.get("stochastic-sign", clip=clip),
], ids=["sign_ste", "stochastic_sign", "SignSTE", "StochasticSign", "get-sign", "get-stochastic-sign"])
def test_clip_is_validated_the_same_way_everywhere(build, clip):
    with pytest.raises(ValueError, match=r"clip must be a positive number or None, got "):
        build(clip)


@pytest.mark.parametrize("clip", [0.5, 2, float("inf"), None])
def test_valid_clips_are_accepted(clip):
    assert quantizers.SignSTE(clip=clip).clip == clip
    assert sign_ste(X, clip=clip).tolist() == [-1, -1, -1, 1, 1, 1, 1]


def _saved_tensor_count(fn, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(x)
    return y, len(saved)


@pytest.mark.parametrize("fn", [
    lambda x: sign_ste(x, clip=None),
    quantizers.SignSTE(clip=None),
    quantizers.get("sign-unclipped"),
], ids=["sign_ste", "SignSTE", "sign-unclipped"])
def test_plain_straight_through_passes_the_gradient_on_and_saves_nothing(fn):
    x = torch.randn(4, 7, requires_grad=True)
    y, saved = _saved_tensor_count(fn, x)
    assert saved == 0  # no ones_like(x) (nor anything else) kept for backward
    grad = torch.randn(4, 7)
    (grad_x,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(grad_x, grad)


def test_clipped_straight_through_saves_only_its_mask():
    x = torch.randn(4, 7, requires_grad=True)
    _, saved = _saved_tensor_count(sign_ste, x)
    assert saved == 1
