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

__all__ = ["BatchResult", "Task", "ClassificationTask"]


@dataclass
class BatchResult:
    """Outcome of one batch: ``per_sample_loss`` of shape ``(N,)`` (with autograd graph when
    training) and the number of correct predictions among the ``N`` samples."""

    per_sample_loss: Tensor
    correct: int


class Task(Protocol):
    """What the trainer needs from an experiment's data."""

    def train_batches(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator:
        """The batches of one training epoch, shuffled by ``generator``; with several
        processes, this process's share."""

    def eval_batches(self, split: str) -> Iterator:
        """The batches of ``split`` ("val" or "test"), in a fixed order."""

    def num_train_batches(self, world_size: int = 1) -> int: ...

    def step(self, model: nn.Module, batch) -> BatchResult:
        """Run ``model`` on ``batch``; return per-sample losses and the number correct."""


class ClassificationTask:
    """Supervised classification over in-memory image tensors.

    Batches are made by indexing whole tensors (no per-sample Python): each epoch draws one
    permutation from the trainer's generator.

    Args:
        splits: ``{"train": ..., "val": ..., "test": ...}``, each with ``images`` (uint8
            ``(N, C, H, W)``) and ``labels`` (int64 ``(N,)``), e.g. :class:`onebit.data.ImageSet`.
            Without ``"test"`` the trained model is evaluated on ``"val"`` (:attr:`final_split`).
        batch_size: training batch size.
        mean, std: per-channel normalization in [0, 1] pixel units.
        augment: optional ``fn(uint8 images (B, C, H, W), generator) -> images`` for training.
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
        eval_batch_size: int = 1000,
    ) -> None:
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
    def repeat(batch, times: int):
        """Each sample ``times`` times in a row (several bit samples per input for REINFORCE)."""
        return tuple(t.repeat_interleave(times, dim=0) for t in batch)

    def step(self, model: nn.Module, batch) -> BatchResult:
        x, y = batch
        logits = model(x)
        return BatchResult(F.cross_entropy(logits, y, reduction="none"), int((logits.argmax(1) == y).sum()))
