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


def test_sign_ste_unclipped_is_identity_backward():
    assert grad_of(lambda x: sign_ste(x, clip=None), X).tolist() == [1.0] * len(X)


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
    assert 0 < neuron(x.expand(1000, -1))[:, 2].mean() < 1


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
    assert 0.4 < neuron(x).mean() < 0.8  # p = 0.6: sampled
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
