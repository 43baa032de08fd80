r"""Optimizers for binary weights.

:class:`Bop` flips binary weights directly instead of moving latent real values (Helwegen et
al. 2019); the real-valued parameters of the same network (batch norm, real layers) train with
Adam inside the same optimizer, so one object steps, schedules and checkpoints them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Bop"]


class Bop(torch.optim.Adam):
    r"""The binary optimizer Bop (Helwegen et al. 2019) for binary weights, Adam for the rest.

    Parameter groups with ``bop=True`` hold binary weights (the latent weights of
    :class:`~onebit.nn.BinaryLinear` / :class:`~onebit.nn.BinaryConv2d`, whose forward pass
    uses their sign). For each of them, with gradient :math:`g_t`, adaptivity rate
    :math:`\gamma` (the group's ``lr``, so learning-rate schedules scale it) and threshold
    :math:`\tau`, every step computes

    .. math::
        m_t = (1 - \gamma)\, m_{t-1} + \gamma\, g_t, \qquad
        w_t = \begin{cases} -w_{t-1} & |m_t| > \tau \text{ and } \operatorname{sign}(m_t)
        = \operatorname{sign}(w_{t-1}) \\ w_{t-1} & \text{otherwise} \end{cases}

    (:math:`m_0 = 0`): a weight flips when the gradient has pointed against its sign
    consistently and strongly enough. Only the sign of :math:`w` changes, never its magnitude,
    so latent weights need no clipping and a per-channel scale (XNOR-Net's mean :math:`|W|`)
    keeps its initial value. The other groups take :class:`torch.optim.Adam`'s update with
    ``betas``, ``eps`` and ``weight_decay``; a binary weight's gradient is consumed by the flip
    and set to ``None`` before Adam's step, so Adam keeps no state for it.

    Args:
        params: parameter groups (dicts); those with ``bop=True`` are binary weights and may
            set ``threshold``.
        lr: Adam's learning rate, and :math:`\gamma` of the binary groups unless they set
            their own ``lr``.
        threshold: :math:`\tau`, the default of the binary groups.
        betas, eps, weight_decay: Adam's, for the real-valued groups.

    References:
        - Helwegen, Widdicombe, Geiger, Liu, Cheng & Nusselder (2019). `Latent Weights Do Not
          Exist: Rethinking Binarized Neural Network Optimization
          <https://arxiv.org/abs/1906.02107>`_. NeurIPS 2019.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, *, threshold: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if not threshold >= 0:
            raise ValueError(f"Bop threshold must be >= 0, got {threshold}")
        groups = [dict(g, bop=g.get("bop", False)) for g in params]
        for group in groups:
            if group["bop"]:
                group.setdefault("threshold", threshold)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for group in self.param_groups:
            if group["bop"] and not 0 < group["lr"] <= 1:
                raise ValueError(f"Bop's adaptivity rate (a binary group's lr) must be in (0, 1], got {group['lr']}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every group: Bop's flips for the binary groups, Adam for the rest.
        Returns the loss ``closure`` re-evaluates, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if not group.get("bop", False):  # a group added later by add_param_group is an Adam one
                continue
            gamma, threshold = group["lr"], group["threshold"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "bop_momentum" not in state:  # "step" too, which Adam's load_state_dict expects of every state
                    state.update(step=torch.tensor(0.0), bop_momentum=torch.zeros_like(w))
                state["step"] += 1
                m = state["bop_momentum"]
                m.mul_(1 - gamma).add_(w.grad, alpha=gamma)
                flip = (m.abs() > threshold) & ((m > 0) == (w >= 0))
                w.copy_(torch.where(flip, -w, w))
                w.grad = None  # consumed: Adam skips parameters without a gradient
        super().step()
        return loss
