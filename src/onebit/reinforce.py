r"""Score-function (REINFORCE) training of stochastic binary neurons.

A :class:`~onebit.quantizers.BinaryNeuron` built with ``estimator="reinforce"`` passes no
gradient backwards through its output. In training mode it records, for every forward call,
the per-sample log-probability :math:`\log P(b_i)` of the bits it sampled. After the forward
pass, :func:`surrogate_loss` builds the scalar

.. math:: S = \frac{1}{N} \sum_{i=1}^{N} (L_i - \beta)\, \log P(b_i)

with :math:`L_i` and :math:`\beta` treated as constants, so that

.. math:: \nabla_\theta S = \frac{1}{N} \sum_i (L_i - \beta)\, \nabla_\theta \log P(b_i)

is the score-function estimate of :math:`\nabla_\theta\, \mathbb{E}_b[\frac1N\sum_i L_i]` for
every parameter :math:`\theta` upstream of the neurons (Williams 1992). Subtracting a baseline
:math:`\beta` leaves the estimate unbiased as long as :math:`\beta` does not depend on the
current samples; the default is an exponential moving average of past batch losses.

Typical use::

    out = model(x)
    per_sample = F.cross_entropy(out, y, reduction="none")
    loss = per_sample.mean() + onebit.reinforce.surrogate_loss(model, per_sample)
    loss.backward()
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .quantizers import BinaryNeuron

__all__ = ["MovingAverageBaseline", "reinforce_neurons", "has_reinforce_neurons", "surrogate_loss", "clear",
           "thresholded", "leave_one_out_baseline", "BASELINES"]

#: Baselines the trainer offers (``TrainConfig.reinforce_baseline``).
BASELINES = ("moving-average", "self-critical", "leave-one-out")


class MovingAverageBaseline:
    r"""Exponential moving average of the mean batch loss.

    :math:`\beta_t = m\,\beta_{t-1} + (1 - m)\,\bar L_t`. The value returned for a batch is the
    average of *previous* batches, so it is independent of the current samples (the estimate
    stays unbiased); the first batch gets baseline 0.

    Args:
        momentum: :math:`m \in [0, 1)`.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.value: float | None = None

    def __call__(self, per_sample_loss: Tensor) -> float:
        """Return the baseline for this batch, then fold the batch's mean loss into it."""
        current = 0.0 if self.value is None else self.value
        batch_mean = float(per_sample_loss.detach().mean())
        self.value = batch_mean if self.value is None else self.momentum * self.value + (1 - self.momentum) * batch_mean
        return current

    def state_dict(self) -> dict:
        """The momentum and the running value, for checkpoints."""
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`."""
        self.momentum = state["momentum"]
        self.value = state["value"]


_default_baselines: weakref.WeakKeyDictionary[nn.Module, MovingAverageBaseline] = weakref.WeakKeyDictionary()


@contextmanager
def thresholded(model: nn.Module) -> Iterator[None]:
    r"""Within the block, every :class:`BinaryNeuron` of ``model`` outputs its most likely bits
    :math:`\mathbb{1}_{p \ge 1/2}` even in training mode, and batch-norm layers leave their
    running statistics untouched.

    This is the forward pass of a *self-critical* baseline (Rennie et al. 2017): the loss
    :math:`L(x_i, \hat b_i)` of the thresholded bits depends on the input and the parameters but
    not on the sampled bits, so subtracting it keeps the score-function estimate unbiased, and
    it tracks each sample's own loss far more closely than a moving average::

        with torch.no_grad(), onebit.reinforce.thresholded(model):
            baseline = F.cross_entropy(model(x), y, reduction="none")
        surrogate = onebit.reinforce.surrogate_loss(model, per_sample_loss, baseline)
    """
    neurons = [m for m in model.modules() if isinstance(m, BinaryNeuron)]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for neuron in neurons:
        neuron.thresholding = True
    for norm in norms:
        norm.momentum = 0.0  # running = 1 * running + 0 * batch
    try:
        yield
    finally:
        for neuron in neurons:
            neuron.thresholding = False
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum


def leave_one_out_baseline(per_sample_loss: Tensor, samples: int) -> Tensor:
    r"""Baseline for ``samples`` consecutive bit samples of each input (Kool et al. 2019):
    :math:`\beta_{i,s} = \frac{1}{S-1}\sum_{t \ne s} L_{i,t}`. Independent of sample
    :math:`s` itself, so the estimate stays unbiased.

    Args:
        per_sample_loss: ``(N * S,)``, the ``S`` samples of each input next to each other.
        samples: ``S >= 2``.
    """
    if samples < 2 or per_sample_loss.shape[0] % samples:
        raise ValueError(f"leave-one-out needs >= 2 samples per input and a batch that is a multiple of them; "
                         f"got {per_sample_loss.shape[0]} losses for {samples} samples")
    losses = per_sample_loss.detach().view(-1, samples)
    return ((losses.sum(1, keepdim=True) - losses) / (samples - 1)).flatten()


def reinforce_neurons(model: nn.Module) -> list[BinaryNeuron]:
    """Every :class:`BinaryNeuron` in ``model`` trained by REINFORCE."""
    return [m for m in model.modules() if isinstance(m, BinaryNeuron) and m.estimator == "reinforce"]


def has_reinforce_neurons(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`BinaryNeuron` trained by REINFORCE."""
    return bool(reinforce_neurons(model))


def default_baseline(model: nn.Module) -> MovingAverageBaseline:
    """The moving-average baseline :func:`surrogate_loss` uses for ``model`` by default."""
    if model not in _default_baselines:
        _default_baselines[model] = MovingAverageBaseline()
    return _default_baselines[model]


def clear(model: nn.Module) -> None:
    """Drop the log-probabilities recorded by the last forward pass(es) without using them."""
    for neuron in reinforce_neurons(model):
        neuron.recorded_log_probs.clear()


def surrogate_loss(
    model: nn.Module,
    per_sample_loss: Tensor,
    baseline: float | Tensor | MovingAverageBaseline | None = None,
) -> Tensor:
    r"""Loss whose gradient is the REINFORCE estimate for every REINFORCE neuron in ``model``.

    Consumes (and clears) the log-probabilities recorded since the last call.

    Args:
        model: the model whose forward pass just ran in training mode.
        per_sample_loss: shape ``(N,)``, the loss of each sample (``reduction="none"``).
            Every recorded forward call must have batch size ``N``.
        baseline: a number or ``(N,)`` tensor subtracted from the loss, or a
            :class:`MovingAverageBaseline`; ``None`` uses a moving average kept per model.

    Returns:
        Scalar :math:`\frac1N \sum_i (L_i - \beta)\log P(b_i)`, summed over neurons and calls,
        with the loss and baseline detached. Add it to the ordinary loss before ``backward``.

    Raises:
        ValueError: the model has no REINFORCE neurons, no forward pass was recorded (was the
            model in eval mode or under ``torch.no_grad``?), or the batch sizes do not match.
    """
    neurons = reinforce_neurons(model)
    if not neurons:
        raise ValueError("surrogate_loss: the model has no BinaryNeuron with estimator='reinforce'")
    records = [lp for n in neurons for lp in n.recorded_log_probs]
    if not records:
        raise ValueError(
            "surrogate_loss: no forward pass was recorded; run the model in training mode "
            "(model.train()) with autograd enabled before calling surrogate_loss"
        )
    if per_sample_loss.dim() != 1:
        raise ValueError(
            f"surrogate_loss: per_sample_loss must have shape (N,), got {tuple(per_sample_loss.shape)}; "
            "compute the loss with reduction='none'"
        )
    n = per_sample_loss.shape[0]
    for lp in records:
        if lp.shape[0] != n:
            raise ValueError(
                f"surrogate_loss: a recorded forward pass had batch size {lp.shape[0]} but "
                f"per_sample_loss has {n} entries"
            )
    if baseline is None:
        baseline = default_baseline(model)
    if isinstance(baseline, MovingAverageBaseline):
        baseline = baseline(per_sample_loss)
    baseline = torch.as_tensor(baseline, dtype=per_sample_loss.dtype, device=per_sample_loss.device)
    advantage = (per_sample_loss.detach() - baseline).detach()
    clear(model)
    log_prob = torch.stack(records).sum(dim=0)
    return (advantage * log_prob).mean()
