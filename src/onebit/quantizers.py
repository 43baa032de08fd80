"""Binarization functions and their gradient estimators.

Every quantizer here is a differentiable-in-name-only function: its forward pass outputs one
bit per element, its backward pass is an *estimator* of the gradient. Each docstring writes out
both passes.

Functions (stateless):

- :func:`sign_ste`: deterministic sign, straight-through backward (optionally clipped).
- :func:`stochastic_sign`: sign sampled with probability ``hard_sigmoid(x)``.
- :func:`hard_sigmoid`: ``clamp((x + 1) / 2, 0, 1)``.

Modules (for use inside layers, so that ``.train()`` / ``.eval()`` and ``repr`` work), all
subclasses of :class:`Quantizer`:

- :class:`SignSTE`, :class:`StochasticSign`, :class:`ApproxSign`: weight / activation
  quantizers with outputs in {-1, +1}.
- :class:`BinaryNeuron`: a binary stochastic / deterministic neuron with outputs in {0, 1}
  (Chung, Ahn & Bengio 2016), trained by straight-through or REINFORCE.

Configs name quantizers by string; :func:`get` resolves them. A new quantizer is a subclass of
:class:`Quantizer` that states its output ``levels`` and whether it ``packs``, registered under
a name by :func:`register`::

    @register("my-sign")
    class MySign(Quantizer):
        packs = True  # at eval: +1 where x >= 0, else -1

        def forward(self, x): ...

The deploy converter (:func:`onebit.deploy.convert`) reads only those two attributes, so such a
quantizer deploys without changes to the converter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "SIGN_LEVELS",
    "STEP_LEVELS",
    "hard_sigmoid",
    "sign_ste",
    "stochastic_sign",
    "Quantizer",
    "SignSTE",
    "StochasticSign",
    "ApproxSign",
    "BinaryNeuron",
    "register",
    "get",
    "names",
]

#: Output levels of a sign, {-1, +1}.
SIGN_LEVELS: tuple[float, float] = (-1.0, 1.0)
#: Output levels of a step (a binary neuron), {0, 1}.
STEP_LEVELS: tuple[float, float] = (0.0, 1.0)


class _StraightThrough(torch.autograd.Function):
    """Output a precomputed ``value`` in the forward pass; multiply the incoming gradient by a
    precomputed ``grad_scale`` in the backward pass. Every estimator in this module except the
    plain straight-through one (:class:`_PassThrough`) is this one mechanism with a different
    (value, grad_scale) pair."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad_scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad_scale)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad_scale,) = ctx.saved_tensors
        return grad_output * grad_scale, None, None


class _PassThrough(torch.autograd.Function):
    """Output a precomputed ``value``; hand the incoming gradient to ``x`` unchanged (the plain
    straight-through estimator). Saves nothing for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        return grad_output, None


def _straight_through(x: Tensor, value: Tensor, grad_scale: Tensor | None) -> Tensor:
    """``value`` forward; backward ``grad * grad_scale``, or ``grad`` itself when ``grad_scale``
    is ``None``."""
    if grad_scale is None:
        return _PassThrough.apply(x, value.to(x.dtype))
    return _StraightThrough.apply(x, value.to(x.dtype), grad_scale.to(x.dtype))


def _pm_one(positive: Tensor, like: Tensor) -> Tensor:
    one = torch.ones((), dtype=like.dtype, device=like.device)
    return torch.where(positive, one, -one)


def _check_clip(clip: float | None) -> float | None:
    """``clip`` if it is a positive number or ``None``; else a ValueError."""
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, Real) or not clip > 0:
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    return clip


def _ste_mask(x: Tensor, clip: float | None) -> Tensor | None:
    r"""The straight-through gradient scale :math:`\mathbb{1}_{|x| \le \text{clip}}`, or
    ``None`` (the identity) without a clip."""
    if clip is None:
        return None
    return (x.detach().abs() <= clip).to(x.dtype)


def hard_sigmoid(x: Tensor) -> Tensor:
    r"""The hard sigmoid of Courbariaux et al. (2015) and Chung et al. (2016).

    .. math:: \sigma(x) = \mathrm{clamp}\left(\frac{x + 1}{2}, 0, 1\right)

    Differentiable as an ordinary clamp (gradient 1/2 inside [-1, 1], 0 outside).

    References:
        - Courbariaux, Bengio & David (2015). `BinaryConnect: Training Deep Neural Networks
          with binary weights during propagations <https://arxiv.org/abs/1511.00363>`_.
          NeurIPS 2015.
        - Chung, Ahn & Bengio (2016). `Hierarchical Multiscale Recurrent Neural Networks
          <https://arxiv.org/abs/1609.01704>`_. ICLR 2017.
    """
    return torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)


def sign_ste(x: Tensor, clip: float | None = 1.0) -> Tensor:
    r"""Deterministic sign with a straight-through gradient estimator.

    Forward:

    .. math:: q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

    Zero maps to +1, so the output is always exactly one bit (never 0).

    Backward (Hubara/Courbariaux et al. 2016, Larq's ``ste_sign``):

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial q}\,
              \mathbb{1}_{|x| \le \text{clip}}

    With ``clip=None`` the backward pass is the identity (the plain straight-through estimator
    of Bengio et al. 2013): the incoming gradient is passed on as is, and nothing is saved for
    the backward pass.

    Args:
        x: input tensor, any shape.
        clip: gradient is cancelled where ``|x| > clip``; ``None`` never cancels.

    Returns:
        Tensor of the same shape and dtype as ``x`` with values in {-1, +1}.

    Raises:
        ValueError: ``clip`` is neither a positive number nor ``None``.

    References:
        - Hubara, Courbariaux, Soudry, El-Yaniv & Bengio (2016). `Binarized Neural Networks:
          Training Deep Neural Networks with Weights and Activations Constrained to +1 or -1
          <https://arxiv.org/abs/1602.02830>`_. NeurIPS 2016.
        - Bengio, Léonard & Courville (2013). `Estimating or Propagating Gradients Through
          Stochastic Neurons for Conditional Computation <https://arxiv.org/abs/1308.3432>`_.
    """
    return _straight_through(x, _pm_one(x >= 0, x), _ste_mask(x, _check_clip(clip)))


def stochastic_sign(x: Tensor, clip: float | None = 1.0, generator: torch.Generator | None = None) -> Tensor:
    r"""Stochastic sign (BinaryConnect's stochastic binarization).

    Forward:

    .. math:: q(x) = \begin{cases} +1 & \text{with probability } p = \sigma(x) \\
              -1 & \text{with probability } 1 - p \end{cases}
              \qquad \sigma(x) = \mathrm{clamp}\left(\frac{x + 1}{2}, 0, 1\right)

    so :math:`\mathbb{E}[q(x)] = 2\sigma(x) - 1 = \mathrm{clamp}(x, -1, 1)`.

    Backward: as :func:`sign_ste`, :math:`\partial L/\partial x = \partial L/\partial q \cdot
    \mathbb{1}_{|x| \le \text{clip}}`, which equals the gradient of the expectation inside
    [-1, 1].

    Args:
        x: input tensor, any shape.
        clip: see :func:`sign_ste`.
        generator: optional random generator for reproducible sampling.

    Raises:
        ValueError: ``clip`` is neither a positive number nor ``None``.

    References:
        - Courbariaux, Bengio & David (2015). `BinaryConnect: Training Deep Neural Networks
          with binary weights during propagations <https://arxiv.org/abs/1511.00363>`_.
          NeurIPS 2015.
        - Hubara, Courbariaux, Soudry, El-Yaniv & Bengio (2016). `Binarized Neural Networks:
          Training Deep Neural Networks with Weights and Activations Constrained to +1 or -1
          <https://arxiv.org/abs/1602.02830>`_. NeurIPS 2016.
    """
    mask = _ste_mask(x, _check_clip(clip))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return _straight_through(x, _pm_one(u < hard_sigmoid(x.detach()), x), mask)


class Quantizer(nn.Module):
    r"""Base class of the quantizer modules: ``forward(x)`` maps a tensor to one bit per element.

    A subclass states two class attributes, which is all the deploy converter
    (:func:`onebit.deploy.convert`) reads about a quantizer:

    - ``levels``: the two values the forward pass outputs, :data:`SIGN_LEVELS` ``(-1, 1)``
      (the default) or :data:`STEP_LEVELS` ``(0, 1)``.
    - ``packs``: whether the deploy engine reproduces it with one bit per value. A quantizer
      that packs promises that in eval mode its forward pass is the threshold at zero,

      .. math:: q(x) = \begin{cases} \text{levels}[1] & x \ge 0 \\
                \text{levels}[0] & x < 0 \end{cases}

      (zero maps to the high level), whatever its backward pass or its training-mode forward
      pass. The converter then packs a sign quantizer's output to bits, folds batch norm and
      the sign into integer thresholds of the binary layer before it, and feeds the bits to
      XNOR-popcount kernels; a step (levels ``(0, 1)``) becomes the runtime's float step. A
      quantizer that does not pack makes :func:`~onebit.deploy.convert` refuse the model.
      Default ``False``.

    Registered subclasses (:func:`register`) are built by name with :func:`get`.

    Raises:
        TypeError: at class creation, for ``levels`` other than the two above.
    """

    #: Values the forward pass outputs, low then high.
    levels: tuple[float, float] = SIGN_LEVELS
    #: In eval mode the forward pass is ``levels[1] if x >= 0 else levels[0]`` (see above).
    packs: bool = False
    #: The name :func:`get` built it under ("" when constructed directly); ``repr`` of layers shows it.
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tuple(cls.levels) not in (SIGN_LEVELS, STEP_LEVELS):
            raise TypeError(f"{cls.__name__}.levels must be {SIGN_LEVELS} or {STEP_LEVELS}, got {cls.levels}")


_REGISTRY: dict[str, tuple[type[Quantizer], dict[str, Any]]] = {}
_Q = TypeVar("_Q", bound=type[Quantizer])


def register(name: str, **defaults: Any) -> Callable[[_Q], _Q]:
    """Class decorator: :func:`get` builds the class under ``name``, with ``defaults`` as
    keyword arguments (which :func:`get`'s own keyword arguments override).

    Stack it to register aliases of a configured variant::

        @register("sign")
        @register("sign-unclipped", clip=None)
        class SignSTE(Quantizer): ...

    Raises:
        TypeError: the decorated object is not a :class:`Quantizer` subclass.
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: _Q) -> _Q:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"register({name!r}) decorates Quantizer subclasses, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"quantizer name {name!r} is already registered (to {_REGISTRY[name][0].__name__})")
        _REGISTRY[name] = (cls, dict(defaults))
        return cls

    return decorator


@register("sign")
@register("sign-unclipped", clip=None)
class SignSTE(Quantizer):
    r"""Module form of :func:`sign_ste`.

    Forward:

    .. math:: q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

    Backward:

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial q}\,
              \mathbb{1}_{|x| \le \text{clip}}

    (the identity when ``clip`` is ``None``: ``"sign-unclipped"``).

    Args:
        clip: see :func:`sign_ste`. Default 1.

    Shape: input ``(*)``, output ``(*)``.

    Raises:
        ValueError: ``clip`` is neither a positive number nor ``None``.

    References:
        - Hubara, Courbariaux, Soudry, El-Yaniv & Bengio (2016). `Binarized Neural Networks:
          Training Deep Neural Networks with Weights and Activations Constrained to +1 or -1
          <https://arxiv.org/abs/1602.02830>`_. NeurIPS 2016.
        - Bengio, Léonard & Courville (2013). `Estimating or Propagating Gradients Through
          Stochastic Neurons for Conditional Computation <https://arxiv.org/abs/1308.3432>`_.
    """

    packs = True

    def __init__(self, clip: float | None = 1.0) -> None:
        super().__init__()
        self.clip = _check_clip(clip)

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


@register("stochastic-sign")
class StochasticSign(Quantizer):
    r"""Module form of :func:`stochastic_sign`.

    Forward in training mode: :math:`q = +1` with probability
    :math:`p = \mathrm{clamp}((x+1)/2, 0, 1)`, else :math:`-1`. In eval mode it outputs the most
    likely value, :math:`q(x) = +1` if :math:`x \ge 0` else :math:`-1`, so a trained model is
    deterministic and can be bit-packed.

    Backward in both modes:

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial q}\,
              \mathbb{1}_{|x| \le \text{clip}}

    Args:
        clip: see :func:`sign_ste`. Default 1.

    Shape: input ``(*)``, output ``(*)``.

    Raises:
        ValueError: ``clip`` is neither a positive number nor ``None``.

    References:
        - Courbariaux, Bengio & David (2015). `BinaryConnect: Training Deep Neural Networks
          with binary weights during propagations <https://arxiv.org/abs/1511.00363>`_.
          NeurIPS 2015.
        - Hubara, Courbariaux, Soudry, El-Yaniv & Bengio (2016). `Binarized Neural Networks:
          Training Deep Neural Networks with Weights and Activations Constrained to +1 or -1
          <https://arxiv.org/abs/1602.02830>`_. NeurIPS 2016.
    """

    packs = True

    def __init__(self, clip: float | None = 1.0) -> None:
        super().__init__()
        self.clip = _check_clip(clip)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return stochastic_sign(x, self.clip)
        return sign_ste(x, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


@register("approx-sign")
class ApproxSign(Quantizer):
    r"""Sign with the piecewise-polynomial gradient of Bi-Real Net (Liu et al. 2018).

    Forward:

    .. math:: q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

    Backward (the derivative of the piecewise quadratic that approximates the sign):

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial q} \cdot
              \begin{cases} 2 - 2|x| & |x| \le 1 \\ 0 & \text{otherwise} \end{cases}

    Shape: input ``(*)``, output ``(*)``.

    References:
        - Liu, Wu, Luo, Yang, Liu & Cheng (2018). `Bi-Real Net: Enhancing the Performance of
          1-bit CNNs With Improved Representational Capability and Advanced Training Algorithm
          <https://arxiv.org/abs/1808.00278>`_. ECCV 2018.
    """

    packs = True

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.clamp(2.0 - 2.0 * x.detach().abs(), min=0.0)
        return _straight_through(x, _pm_one(x >= 0, x), scale)


_MODES = ("deterministic", "stochastic")
_ESTIMATORS = ("st", "reinforce")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")


@register("binary-neuron")
class BinaryNeuron(Quantizer):
    r"""Binary neuron with outputs in {0, 1} (Chung, Ahn & Bengio 2016).

    Let :math:`p = \sigma(a x) = \mathrm{clamp}\left(\frac{a x + 1}{2}, 0, 1\right)` with
    slope :math:`a` (``slope``, settable at run time for slope annealing).

    Forward:

    - ``mode="deterministic"``: :math:`b = \mathbb{1}_{p \ge 1/2}` (that is,
      :math:`\mathbb{1}_{x \ge 0}`).
    - ``mode="stochastic"``: :math:`b \sim \mathrm{Bernoulli}(p)` in training. In eval mode
      it thresholds like the deterministic neuron unless ``sample_at_eval`` is True.

    Backward, ``estimator="st"`` (straight-through through the hard sigmoid):

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial b}\cdot
              \frac{a}{2}\,\mathbb{1}_{|a x| < 1}

    Backward, ``estimator="reinforce"``: the output carries **no** pathwise gradient
    (:math:`\partial b / \partial x = 0`). Instead, in training mode with autograd enabled,
    every forward call records the per-sample log-probability of the sampled bits,

    .. math:: \log P(b) = \sum_j b_j \log \tilde p_j + (1 - b_j) \log (1 - \tilde p_j),
              \qquad \tilde p = \mathrm{clamp}(p, \epsilon, 1 - \epsilon)

    and :func:`onebit.reinforce.surrogate_loss` turns the recorded log-probabilities into the
    score-function (REINFORCE) gradient :math:`(L - \text{baseline})\,\nabla \log P(b)`.

    A deterministic neuron has no distribution to score. ``mode="deterministic",
    estimator="reinforce"`` is therefore defined as: **sample** :math:`b \sim
    \mathrm{Bernoulli}(p)` while training (so REINFORCE has something to score) and threshold
    at eval. With ``estimator="reinforce"`` the two modes differ only at eval time when
    ``sample_at_eval`` is True.

    It packs (see :class:`Quantizer`) unless it samples at eval time (``mode="stochastic"``
    with ``sample_at_eval``).

    Args:
        mode: ``"deterministic"`` or ``"stochastic"``.
        estimator: ``"st"`` (straight-through) or ``"reinforce"`` (score function).
        slope: initial slope :math:`a > 0` of the hard sigmoid.
        sample_at_eval: stochastic neurons keep sampling in eval mode.
        eps: probability clamp for the log-probability.

    Shape:
        - Input: ``(N, *)``
        - Output: ``(N, *)``, values in {0, 1}, same dtype as the input.

    References:
        - Chung, Ahn & Bengio (2016). `Hierarchical Multiscale Recurrent Neural Networks
          <https://arxiv.org/abs/1609.01704>`_. ICLR 2017. (Straight-through through the hard
          sigmoid, slope annealing.)
        - Bengio, Léonard & Courville (2013). `Estimating or Propagating Gradients Through
          Stochastic Neurons for Conditional Computation <https://arxiv.org/abs/1308.3432>`_.
        - Williams (1992). `Simple statistical gradient-following algorithms for connectionist
          reinforcement learning <https://doi.org/10.1007/BF00992696>`_. Machine Learning 8,
          229-256. (REINFORCE.)
    """

    levels = STEP_LEVELS

    def __init__(
        self,
        mode: str = "deterministic",
        estimator: str = "st",
        slope: float = 1.0,
        *,
        sample_at_eval: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_choice("mode", mode, _MODES)
        _check_choice("estimator", estimator, _ESTIMATORS)
        self.mode = mode
        self.estimator = estimator
        self.slope = slope
        self.sample_at_eval = sample_at_eval
        self.eps = eps
        self.recorded_log_probs: list[Tensor] = []
        self.thresholding = False  # set by onebit.reinforce.thresholded(): most likely bits even in training

    @property
    def packs(self) -> bool:  # type: ignore[override]
        """Eval mode thresholds (every neuron but a stochastic one that samples at eval)."""
        return not (self.mode == "stochastic" and self.sample_at_eval)

    @property
    def slope(self) -> float:
        """The slope :math:`m` of the hard sigmoid (annealed by the trainer's slope schedule); must
        be positive and finite."""
        return self._slope

    @slope.setter
    def slope(self, value: float) -> None:
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"slope must be a positive finite number, got {value}")
        self._slope = float(value)

    def _samples(self) -> bool:
        if self.thresholding:
            return False
        if self.training:
            return self.mode == "stochastic" or self.estimator == "reinforce"
        return self.mode == "stochastic" and self.sample_at_eval

    def forward(self, x: Tensor) -> Tensor:
        # Probabilities, samples and log-probabilities in (at least) fp32: in bfloat16, 1 - eps
        # rounds to 1 and log(1 - p) of a saturated unit becomes -inf.
        p = hard_sigmoid(self._slope * x.float())
        if self._samples():
            b = (torch.rand_like(p) < p.detach()).to(p.dtype)
        else:
            b = (p.detach() >= 0.5).to(p.dtype)
        if self.estimator == "reinforce":
            if self.training and torch.is_grad_enabled():
                p = p.clamp(self.eps, 1.0 - self.eps)
                log_p = b * torch.log(p) + (1.0 - b) * torch.log1p(-p)
                self.recorded_log_probs.append(log_p.reshape(log_p.shape[0], -1).sum(dim=1))
            return b.to(x.dtype)
        ax = self._slope * x.detach()
        scale = (0.5 * self._slope) * (ax.abs() < 1.0).to(x.dtype)
        return _straight_through(x, b, scale)

    def extra_repr(self) -> str:
        s = f"mode={self.mode!r}, estimator={self.estimator!r}, slope={self._slope:g}"
        if self.sample_at_eval:
            s += ", sample_at_eval=True"
        return s


def names() -> list[str]:
    """Names :func:`get` accepts."""
    return sorted(_REGISTRY)


def get(name: str | nn.Module | None, **kwargs: Any) -> nn.Module | None:
    """Resolve a quantizer named in a config.

    Args:
        name: a registry name (see :func:`names`), an ``nn.Module`` (returned as is), or
            ``None`` (no quantization; returns ``None``).
        **kwargs: passed to the quantizer's constructor over the defaults the name was
            registered with, e.g. ``get("binary-neuron", mode="stochastic", estimator="reinforce")``.

    Returns:
        A new module (its ``name`` set to ``name``), the module passed, or ``None``.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if name is None or isinstance(name, nn.Module):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a quantizer name")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; valid names: {', '.join(names())}")
    cls, defaults = _REGISTRY[name]
    module = cls(**{**defaults, **kwargs})
    module.name = name
    return module
