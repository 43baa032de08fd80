import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onebit import reinforce
from onebit.quantizers import BinaryNeuron, hard_sigmoid


class Toy(nn.Module):
    """Linear -> REINFORCE binary neuron; the loss of the bits has a closed-form expectation."""

    def __init__(self, mode="stochastic"):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.neuron = BinaryNeuron(mode, "reinforce")

    def forward(self, x):
        return self.neuron(self.linear(x))


COST = torch.tensor([1.0, -2.0, 0.5, 3.0])


def per_sample_loss(bits):
    return (bits * COST).sum(1) + 0.3


def exact_gradient(model, x):
    """Gradient of E_b[L] = sum_j p_j COST_j + 0.3 with respect to the upstream layer."""
    model.zero_grad()
    p = hard_sigmoid(model.linear(x))
    ((p * COST).sum(1) + 0.3).mean().backward()
    return model.linear.weight.grad.clone(), model.linear.bias.grad.clone()


@pytest.mark.parametrize("mode", ["stochastic", "deterministic"])
def test_surrogate_gradient_is_unbiased(mode):
    torch.manual_seed(0)
    model = Toy(mode)
    with torch.no_grad():
        model.linear.weight.mul_(0.5)
    x = torch.randn(1, 3)
    exact_w, exact_b = exact_gradient(model, x)

    estimates = []
    baseline = reinforce.MovingAverageBaseline()
    for _ in range(40):
        model.zero_grad()
        xs = x.expand(2000, -1)
        loss = per_sample_loss(model(xs))
        reinforce.surrogate_loss(model, loss, baseline).backward()
        estimates.append(torch.cat([model.linear.weight.grad.flatten(), model.linear.bias.grad]))
    est = torch.stack(estimates)
    mean, sem = est.mean(0), est.std(0) / len(estimates) ** 0.5
    exact = torch.cat([exact_w.flatten(), exact_b])
    assert exact.abs().max() > 0.1  # the problem has a non-trivial gradient
    assert torch.all((mean - exact).abs() <= 5 * sem + 1e-4), (mean, exact, sem)


def test_upstream_layer_learns_after_one_step():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), BinaryNeuron("stochastic", "reinforce"), nn.Linear(8, 3))
    before = model[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    per_sample = F.cross_entropy(model(x), y, reduction="none")
    loss = per_sample.mean() + reinforce.surrogate_loss(model, per_sample)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)


def test_errors_without_forward_or_with_wrong_batch():
    model = Toy()
    with pytest.raises(ValueError, match="no forward pass was recorded"):
        reinforce.surrogate_loss(model, torch.zeros(4))
    model(torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch size 4"):
        reinforce.surrogate_loss(model, torch.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        reinforce.surrogate_loss(model, torch.zeros(()))
    with pytest.raises(ValueError, match="no BinaryNeuron"):
        reinforce.surrogate_loss(nn.Linear(2, 2), torch.zeros(4))


def test_eval_and_no_grad_do_not_record():
    model = Toy()
    with torch.no_grad():
        model(torch.randn(2, 3))
    model.eval()
    model(torch.randn(2, 3))
    assert model.neuron.recorded_log_probs == []


def test_records_are_consumed_and_several_neurons_sum():
    model = nn.Sequential(nn.Linear(2, 3), BinaryNeuron("stochastic", "reinforce"), nn.Linear(3, 3),
                          BinaryNeuron("stochastic", "reinforce"))
    model(torch.randn(6, 2))
    lp = sum(n.recorded_log_probs[0] for n in reinforce.reinforce_neurons(model))
    loss = torch.arange(6.0)
    s = reinforce.surrogate_loss(model, loss, baseline=1.0)
    assert torch.allclose(s, ((loss - 1.0) * lp).mean())
    assert all(n.recorded_log_probs == [] for n in reinforce.reinforce_neurons(model))


def test_moving_average_baseline_uses_past_batches_only():
    b = reinforce.MovingAverageBaseline(momentum=0.5)
    assert b(torch.tensor([2.0, 4.0])) == 0.0
    assert b(torch.tensor([10.0])) == 3.0
    assert b.value == pytest.approx(6.5)


def test_per_sample_baselines_are_unbiased_and_lower_variance():
    """Inputs differ and so do their losses (an input-dependent offset): a per-sample
    baseline tracks that, a moving average cannot."""
    torch.manual_seed(0)
    model = Toy("stochastic")
    with torch.no_grad():
        model.linear.weight.mul_(0.5)
    xs = torch.randn(2000, 3)

    def loss_of(bits):
        return per_sample_loss(bits) + 4.0 * xs[:, 0] ** 2

    exact = torch.cat([g.flatten() for g in exact_gradient(model, xs)])

    def estimates(baseline_kind):
        rows = []
        ma = reinforce.MovingAverageBaseline()
        for _ in range(40):
            model.zero_grad()
            loss = loss_of(model(xs))
            if baseline_kind == "self-critical":
                with torch.no_grad(), reinforce.thresholded(model):
                    baseline = loss_of(model(xs))
            else:
                baseline = ma
            reinforce.surrogate_loss(model, loss, baseline).backward()
            rows.append(torch.cat([model.linear.weight.grad.flatten(), model.linear.bias.grad]))
        return torch.stack(rows)

    def leave_one_out():
        rows = []
        for _ in range(40):
            model.zero_grad()
            repeated = xs[:1000].repeat_interleave(2, dim=0)  # 2 samples of half the inputs: same 2000 rows
            loss = per_sample_loss(model(repeated)) + 4.0 * repeated[:, 0] ** 2
            baseline = reinforce.leave_one_out_baseline(loss, 2)
            reinforce.surrogate_loss(model, loss, baseline).backward()
            rows.append(torch.cat([model.linear.weight.grad.flatten(), model.linear.bias.grad]))
        return torch.stack(rows)

    critical, moving, loo = estimates("self-critical"), estimates("moving-average"), leave_one_out()
    exact_half = torch.cat([g.flatten() for g in exact_gradient(model, xs[:1000])])
    for est, target in ((critical, exact), (loo, exact_half)):
        sem = est.std(0) / len(est) ** 0.5
        assert torch.all((est.mean(0) - target).abs() <= 5 * sem + 1e-4)
        assert est.var(0).sum() < 0.5 * moving.var(0).sum()


def test_thresholded_restores_sampling_and_batchnorm():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), BinaryNeuron("stochastic", "reinforce"))
    x = torch.randn(64, 3)
    before = model[1].running_mean.clone()
    with torch.no_grad(), reinforce.thresholded(model):
        out = model(x)
        assert torch.equal(out, (model[1](model[0](x)) >= 0).float())
    assert torch.equal(model[1].running_mean, before)
    assert model[1].momentum == 0.1 and not model[2].thresholding


def test_leave_one_out_baseline_values_and_errors():
    losses = torch.tensor([1.0, 3.0, 5.0, 10.0, 20.0, 30.0])
    assert reinforce.leave_one_out_baseline(losses, 3).tolist() == [4.0, 3.0, 2.0, 25.0, 20.0, 15.0]
    with pytest.raises(ValueError, match="multiple"):
        reinforce.leave_one_out_baseline(losses, 4)
