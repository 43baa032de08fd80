"""Tasks: what the trainer iterates over and how a batch becomes a per-sample loss.

The :class:`~onebit.training.Trainer` loop is the same for every experiment; a task supplies
the batches (plain mini-batches, few-shot episodes, ...) and the loss of one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchResult", "Task", "ClassificationTask", "DistillationTask"]


@dataclass
class BatchResult:
    """Outcome of one batch: ``per_sample_loss`` of shape ``(N,)`` (with autograd graph when
    training) and the number of correct predictions among the ``N`` samples."""

    per_sample_loss: Tensor
    correct: int


class Task(Protocol):
    """What the trainer needs from an experiment's data.

    A task may also define, and the trainer then uses:

    - ``final_split`` (a property): the split the best model is evaluated on once, ``"test"``
      (the default) or ``"val"``;
    - ``final_evaluation(model) -> dict``: further evaluations of the best model, stored under
      ``"evaluations"`` in ``final.json``;
    - ``repeat(batch, times) -> batch``: each sample ``times`` times in a row, which
      ``reinforce_samples > 1`` needs.
    """

    def train_batches(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator:
        """The batches of one training epoch, shuffled by ``generator``; with several
        processes, this process's share."""

    def eval_batches(self, split: str) -> Iterator:
        """The batches of ``split`` ("val" or "test"), in a fixed order, the same in every process
        (under ``torchrun`` each process evaluates every ``world_size``-th batch), independent of
        the global random state."""

    def num_train_batches(self, world_size: int = 1) -> int:
        """The number of batches in one epoch of :meth:`train_batches` for each of ``world_size``
        processes."""

    def step(self, model: nn.Module, batch: tuple[Tensor, ...]) -> BatchResult:
        """Run ``model`` on ``batch``; return per-sample losses and the number correct."""


class ClassificationTask:
    r"""Supervised classification over in-memory image tensors.

    Batches are made by indexing whole tensors (no per-sample Python): each epoch draws one
    permutation from the trainer's generator.

    Args:
        splits: ``{"train": ..., "val": ..., "test": ...}``, each with ``images`` (uint8
            ``(N, C, H, W)``) and ``labels`` (int64 ``(N,)``), e.g. :class:`onebit.data.ImageSet`.
            Without ``"test"`` the trained model is evaluated on ``"val"`` (:attr:`final_split`).
        batch_size: training batch size.
        mean, std: per-channel normalization in [0, 1] pixel units.
        augment: optional ``fn(uint8 images (B, C, H, W), generator) -> images`` for training.
        label_smoothing: :math:`\varepsilon` in [0, 1): training steps minimize the
            cross-entropy to the label smoothed over the :math:`K` classes (Szegedy et al. 2016),
            :math:`q_k = (1 - \varepsilon)\,[k = y] + \varepsilon / K`; evaluation reports the
            plain cross-entropy.
        eval_batch_size: batch size for evaluation.
    """

    def __init__(
        self,
        splits: dict,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        label_smoothing: float = 0.0,
        eval_batch_size: int = 1000,
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        missing = {"train", "val"} - set(splits)
        if missing:
            raise ValueError(f"ClassificationTask needs train and val splits (and optionally test); "
                             f"missing {sorted(missing)}")
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        channels = splits["train"].images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1) * 255
        self.augment = augment
        self.label_smoothing = label_smoothing

    def _normalize(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std

    @property
    def final_split(self) -> str:
        """The split the trained model is evaluated on once: ``"test"``, or ``"val"`` without one."""
        return "test" if "test" in self.splits else "val"

    def num_train_batches(self, world_size: int = 1) -> int:
        n = len(self.splits["train"].labels)
        return n // (self.batch_size * world_size) if n >= self.batch_size * world_size else 1

    def train_batches(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator:
        data = self.splits["train"]
        order = torch.randperm(len(data.labels), generator=generator)
        global_batch = self.batch_size * world_size
        for b in range(self.num_train_batches(world_size)):
            idx = order[b * global_batch : (b + 1) * global_batch][rank::world_size]
            images = data.images[idx]
            if self.augment is not None:
                images = self.augment(images, generator)
            yield self._normalize(images), data.labels[idx]

    def eval_batches(self, split: str) -> Iterator:
        data = self.splits[split]
        for start in range(0, len(data.labels), self.eval_batch_size):
            stop = start + self.eval_batch_size
            yield self._normalize(data.images[start:stop]), data.labels[start:stop]

    @staticmethod
    def repeat(batch: tuple[Tensor, ...], times: int) -> tuple[Tensor, ...]:
        """Each sample ``times`` times in a row (several bit samples per input for REINFORCE)."""
        return tuple(t.repeat_interleave(times, dim=0) for t in batch)

    def step(self, model: nn.Module, batch: tuple[Tensor, ...]) -> BatchResult:
        x, y = batch
        logits = model(x)
        smoothing = self.label_smoothing if model.training else 0.0
        loss = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        return BatchResult(loss, int((logits.argmax(1) == y).sum()))


class DistillationTask:
    r"""A classification task whose training loss also matches a teacher's predictions
    (knowledge distillation, Hinton et al. 2015; the distributional loss of ReActNet, Liu et
    al. 2020, is ``weight=1, temperature=1``).

    In training (``model.training``), per sample with student logits :math:`z`, teacher logits
    :math:`t` (no gradient), label :math:`y`, weight :math:`w` and temperature :math:`T`:

    .. math::
        \ell = (1 - w)\,\mathrm{CE}(z, y) + w\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t / T)
        \,\|\, \mathrm{softmax}(z / T)\big)

    (:math:`T^2` keeps the gradient's scale independent of :math:`T`). Evaluation steps report
    the plain cross-entropy of ``task``, so validation and test losses compare across rows.
    Batches, splits and everything else come from ``task``, whose batches are ``(x, y)``.

    Args:
        task: a classification task (:class:`ClassificationTask`).
        teacher: the teacher network; kept in eval mode, run under ``torch.no_grad``.
        weight: :math:`w` in [0, 1].
        temperature: :math:`T > 0`.
    """

    def __init__(self, task: ClassificationTask, teacher: nn.Module, weight: float = 1.0,
                 temperature: float = 1.0) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight must be in [0, 1], got {weight}")
        if not temperature > 0:
            raise ValueError(f"distillation temperature must be positive, got {temperature}")
        self.task = task
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight
        self.temperature = temperature

    @property
    def final_split(self) -> str:
        return self.task.final_split

    def num_train_batches(self, world_size: int = 1) -> int:
        return self.task.num_train_batches(world_size)

    def train_batches(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator:
        return self.task.train_batches(generator, rank, world_size)

    def eval_batches(self, split: str) -> Iterator:
        return self.task.eval_batches(split)

    def repeat(self, batch: tuple[Tensor, ...], times: int) -> tuple[Tensor, ...]:
        """:meth:`ClassificationTask.repeat` of the wrapped task."""
        return self.task.repeat(batch, times)

    def step(self, model: nn.Module, batch: tuple[Tensor, ...]) -> BatchResult:
        if not model.training:
            return self.task.step(model, batch)
        x, y = batch
        logits = model(x)
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x).float() / self.temperature, dim=1)
        log_p = F.log_softmax(logits.float() / self.temperature, dim=1)
        kl = (target.exp() * (target - log_p)).sum(dim=1) * self.temperature**2
        smoothing = getattr(self.task, "label_smoothing", 0.0)
        ce = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
        loss = (1 - self.weight) * ce + self.weight * kl
        return BatchResult(loss, int((logits.argmax(1) == y).sum()))
