"""Named experiments: a grid of rows (model + training overrides) on one dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..training import Task

__all__ = ["Row", "Experiment", "McuBenchmark", "register", "get", "names"]


@dataclass(frozen=True)
class Row:
    """One line of an experiment's results table.

    Attributes:
        name: row name used in ``results.json`` and as the run directory.
        model: ``{"name": <model registry name>, **constructor kwargs}``.
        train: overrides of the experiment's :class:`~onebit.training.TrainConfig` defaults.
        task: keyword arguments of the experiment's ``make_task`` for this row's runs (e.g. the
            training episodes' shot); part of the run's ``config.json`` when not empty.
    """

    name: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class McuBenchmark:
    """Seed 0's model of every row exported to C and run on an emulated Cortex-M4
    (:func:`onebit.experiments.mcu.evaluate_mcu`).

    Attributes:
        images: the first this many test images run under emulation.
        anchors: published microcontroller results printed beside the rows, each
            ``(reference, accuracy, size and precision)``.
    """

    images: int = 1000
    anchors: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Experiment:
    """A named grid of runs.

    Attributes:
        name: experiment name (``onebit run NAME``).
        description: one line for ``onebit list`` and the report.
        rows: the runs of the table.
        train: default training options.
        make_task: ``fn(data_root, quick, batch_size, **row.task) -> Task``; ``quick`` selects a
            tiny subset.
        input_size: shape of one example (for summaries and export).
        published: row name -> published figure to print beside ours in the report.
        notes: paragraphs for the report (how the setting differs from the studies).
        quick_model: model constructor overrides for ``--quick`` runs (e.g. a narrow ``width``),
            so that smoke runs of large models stay fast.
        targets: row name -> test accuracy (fraction) the row should reach; the report says
            whether it did.
        dataset: name of the test set a packed model of this experiment is evaluated on
            (see :mod:`onebit.experiments.datasets`).
        mcu: if set, seed 0's packed model is also exported to C and run on an emulated
            Cortex-M4; the report adds its size, RAM, stack and instruction count.
    """

    name: str
    description: str
    rows: tuple[Row, ...]
    train: dict[str, Any]
    make_task: Callable[..., Task]
    input_size: tuple[int, ...]
    published: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    quick_model: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    targets: dict[str, float] = field(default_factory=dict)
    mcu: McuBenchmark | None = None

    def task_of(self, config: dict[str, Any], data: str | None = None) -> Task:
        """The task a run config (``config.json``) trains and is evaluated on."""
        return self.make_task(data, config["quick"], config["train"]["batch_size"], **config.get("task", {}))

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise ValueError(f"experiment {self.name!r} has no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def names() -> list[str]:
    _load_builtin()
    return list(_EXPERIMENTS)


def get(name: str) -> Experiment:
    _load_builtin()
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid experiments: {', '.join(_EXPERIMENTS)}")
    return _EXPERIMENTS[name]


def _load_builtin() -> None:
    # The import order is the order names() lists the experiments in.
    # isort: off
    from . import mnist  # noqa: F401  (registers mnist-mlp, mnist-cnn)
    from . import omniglot  # noqa: F401  (registers omniglot)
    from . import cifar10  # noqa: F401  (registers cifar10)
    from . import mnist_mcu  # noqa: F401  (registers mnist-mcu)
    # isort: on
