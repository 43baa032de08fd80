"""Bop: the flip rule written out in its docstring, Adam for the real parameters, and training with it."""

import pytest
import torch
from torch import nn

from onebit.nn import BinaryLinear
from onebit.optim import Bop
from onebit.training import TrainConfig, Trainer


def test_bop_flips_where_the_momentum_passes_the_threshold_against_the_sign():
    w = nn.Parameter(torch.tensor([0.5, -0.5, 0.3, -0.2]))
    bias = nn.Parameter(torch.tensor([1.0, 2.0]))
    reference = nn.Parameter(bias.detach().clone())
    bop = Bop([{"params": [w], "bop": True, "lr": 0.5, "threshold": 0.1}, {"params": [bias]}], lr=0.01)
    adam = torch.optim.Adam([reference], lr=0.01)
    for g_w, g_b in ((torch.tensor([0.4, 0.4, 0.1, -0.3]), torch.tensor([0.3, -0.2])),
                     (torch.zeros(4), torch.tensor([-0.1, 0.5]))):
        w.grad, bias.grad, reference.grad = g_w, g_b, g_b.clone()
        bop.step()
        adam.step()
        torch.testing.assert_close(bias, reference, rtol=0, atol=0)  # Adam's exact step on the real ones
        assert w.grad is None  # consumed by the flip
    # m1 = 0.5 g1 = [0.2, 0.2, 0.05, -0.15]: flips where |m| > 0.1 and sign(m) = sign(w): entries 0 and 3;
    # m2 = 0.5 m1 = [0.1, 0.1, 0.025, -0.075]: no more flips
    torch.testing.assert_close(bop.state[w]["bop_momentum"], torch.tensor([0.1, 0.1, 0.025, -0.075]))
    torch.testing.assert_close(w.detach(), torch.tensor([-0.5, -0.5, 0.3, 0.2]), rtol=0, atol=0)
    assert "exp_avg" not in bop.state[w]  # Adam never saw the binary weight


def test_bop_rejects_bad_hyper_parameters():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="threshold"):
        Bop([{"params": [w], "bop": True}], threshold=-1.0)
    with pytest.raises(ValueError, match="adaptivity rate"):
        Bop([{"params": [w], "bop": True, "lr": 2.0}])


def _synthetic_task():
    from test_training import synthetic_task

    return synthetic_task()


def test_training_with_bop_flips_binary_weights_and_keeps_their_magnitude(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), BinaryLinear(36, 32, bias=False), nn.BatchNorm1d(32),
                          BinaryLinear(32, 4, bias=False, input_quantizer="sign"), nn.BatchNorm1d(4))
    initial = [model[1].weight.detach().clone(), model[3].weight.detach().clone()]
    config = TrainConfig(epochs=4, lr=0.01, optimizer="bop", bop_gamma=1e-2, bop_threshold=1e-6, seed=0,
                         device="cpu", progress=False)
    final = Trainer(model, _synthetic_task(), config, tmp_path / "bop").fit()
    assert final["test_acc"] > 0.5  # chance is 0.25
    for before, layer in zip(initial, (model[1], model[3])):
        after = layer.weight.detach()
        torch.testing.assert_close(after.abs(), before.abs(), rtol=0, atol=0)  # only signs change
        assert 0 < int((after.sign() != before.sign()).sum()) < before.numel()
    # it deploys like any binary network: the packed model predicts what PyTorch predicts
    from onebit.deploy import convert

    x, _ = next(_synthetic_task().eval_batches("test"))
    with torch.no_grad():
        expected = model.eval()(x).argmax(1).numpy()
    assert (convert(model, x)(x.numpy()).argmax(1) == expected).all()


def test_bop_needs_deterministic_binary_weights_and_no_latent_learning_rate(tmp_path):
    task = _synthetic_task()
    with pytest.raises(ValueError, match="needs binary weights"):
        Trainer(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)), task, TrainConfig(optimizer="bop"), tmp_path / "a")
    binary = nn.Sequential(nn.Flatten(), BinaryLinear(36, 4))
    with pytest.raises(ValueError, match="latent_lr_scale"):
        Trainer(binary, task, TrainConfig(optimizer="bop", latent_lr_scale="glorot"), tmp_path / "b")
    stochastic = nn.Sequential(nn.Flatten(), BinaryLinear(36, 4, weight_quantizer="stochastic-sign"))
    with pytest.raises(ValueError, match="not stochastic ones"):
        Trainer(stochastic, task, TrainConfig(optimizer="bop"), tmp_path / "c")
    with pytest.raises(ValueError, match="bop_gamma in"):
        Trainer(binary, task, TrainConfig(optimizer="bop", lr=0.0), tmp_path / "d")
