"""Per-epoch schedules: hard-sigmoid slope annealing and learning rates."""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantizers import BinaryNeuron

__all__ = ["SLOPE_SCHEDULES", "LR_SCHEDULES", "slope_at", "set_slope", "lr_factor", "set_lr"]

SLOPE_SCHEDULES = ("constant", "exponential", "linear")
LR_SCHEDULES = ("constant", "exponential", "cosine")


def slope_at(schedule: str, epoch: int) -> float:
    r"""Hard-sigmoid slope for (0-based) ``epoch``.

    - ``constant``: :math:`a = 1`.
    - ``exponential``: :math:`a = 1.005^{\,e}`, study B's code (1.005^(epoch-1) with 1-based
      epochs; nearly constant over 10 epochs).
    - ``linear``: :math:`a = \min(5, 1 + 0.04\,e)`, the schedule of Chung, Ahn & Bengio (2016).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "exponential":
        return 1.005**epoch
    if schedule == "linear":
        return min(5.0, 1.0 + 0.04 * epoch)
    raise ValueError(f"unknown slope schedule {schedule!r}; choose one of {', '.join(SLOPE_SCHEDULES)}")


def set_slope(model: nn.Module, slope: float) -> None:
    """Set the slope of every :class:`BinaryNeuron` in ``model`` (float activations keep theirs)."""
    for module in model.modules():
        if isinstance(module, BinaryNeuron):
            module.slope = slope


def lr_factor(schedule: str, epoch: int, epochs: int, final_ratio: float = 0.01) -> float:
    r"""Multiplier of the base learning rate at (0-based) ``epoch`` of ``epochs``.

    - ``constant``: 1.
    - ``exponential``: :math:`r^{e / (E - 1)}`, decaying from 1 to ``final_ratio`` :math:`r` over
      the run (the BNN paper's exponential decay).
    - ``cosine``: :math:`\tfrac12 (1 + \cos(\pi e / E))`.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "exponential":
        return final_ratio ** (epoch / max(1, epochs - 1))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` times the group's ``lr_scale`` (1 if absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
