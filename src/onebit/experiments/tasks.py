"""The task of an image-classification experiment, built from its dataset and task options."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial

import torch

from ..data import Dataset, ImageSet
from ..data.augmentation import augment
from ..training import ClassificationTask

__all__ = ["QUICK_SIZES", "check_task_options", "classification_task"]

#: Images per split that ``--quick`` runs keep (a seeded random subset of each).
QUICK_SIZES = {"train": 2000, "val": 500, "test": 1000}


def check_task_options(make_task: Callable[..., object], options: Iterable[str]) -> None:
    """Fail unless ``make_task`` (an experiment's task builder) takes every one of ``options``
    as a keyword option.

    Raises:
        ValueError: an option it does not take, naming those it does.
    """
    parameters = inspect.signature(make_task).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown task option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def _quick_subset(data: ImageSet, size: int, seed: int) -> ImageSet:
    """A seeded random subset: image folders are sorted by class, so a prefix would hold a single class."""
    generator = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=generator)[:size])


def classification_task(dataset: Dataset, quick: bool, batch_size: int, *, shift: int = 0, flip: bool = False,
                        cutout: int = 0, label_smoothing: float = 0.0, eval_batch_size: int = 1000,
                        quick_sizes: dict[str, int] | None = None) -> ClassificationTask:
    """Train / validation / test (when the data has it) of ``dataset``, normalized with its mean and std.

    Args:
        dataset: the experiment's (or the run's) dataset.
        quick: keep a seeded random subset of each split (``quick_sizes``, default
            :data:`QUICK_SIZES`).
        batch_size: training batch size.
        shift: move each training image by up to this many pixels (zero padding).
        flip: flip each training image left-right with probability 1/2.
        cutout: zero a random square of this side in each training image (see
            :func:`~onebit.data.augmentation.augment`).
        label_smoothing: the training loss's label smoothing (see
            :class:`~onebit.training.ClassificationTask`).
        eval_batch_size: images per evaluation batch (speed only).
    """
    data = dataset.load()
    splits = dict(data.splits)
    if quick:
        sizes = quick_sizes or QUICK_SIZES
        splits = {k: _quick_subset(v, sizes[k], seed=i) for i, (k, v) in enumerate(splits.items())}
    augmentation = partial(augment, padding=shift, flip=flip, cutout=cutout) if shift or flip or cutout else None
    return ClassificationTask(splits, batch_size, data.info.mean, data.info.std, augment=augmentation,
                              label_smoothing=label_smoothing, eval_batch_size=eval_batch_size)
