"""Named experiments: a grid of rows (model + training overrides) on one dataset.

An experiment is data: one :class:`Experiment` entry names its dataset (a name
:func:`onebit.data.dataset` takes), its rows and their training options, and is registered
with :func:`register` (``onebit.experiments`` registers the built-in ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Dataset
from ..data.datasets import from_spec
from ..training import Task, TrainConfig
from .tasks import classification_task

__all__ = ["Row", "Experiment", "McuBenchmark", "TRAIN", "register", "get", "names", "of_run", "trained"]


@dataclass(frozen=True)
class Row:
    """One line of an experiment's results table.

    Attributes:
        name: row name used in ``results.json`` and as the run directory.
        model: ``{"name": <model registry name>, **constructor kwargs}``.
        train: overrides of the experiment's :class:`~onebit.training.TrainConfig` defaults.
        task: task options of this row's runs (e.g. the training episodes' shot), over the
            experiment's ``task``; part of the run's ``config.json`` when not empty.
        distill: knowledge distillation of this row's runs (part of ``config.json`` when not
            empty): ``{"teacher": <a trained run: another row of the experiment, by name (its
            run of the same seed) or as <row>/seed<k>, or a run directory's path>,
            "weight": w, "temperature": T}`` (weight and temperature default to 1); training
            then minimizes :class:`~onebit.training.DistillationTask`'s loss against that run's
            best-validation model.
        description: what sets the row apart, for the table's column the experiment names
            (:attr:`Experiment.row_column`, e.g. the estimator); not part of the run's config.
        init_from: two-step training: a trained run (a run directory, or the name of another
            row of the same experiment, trained first; see :func:`~onebit.experiments.runs.source_run`)
            whose best-validation model initializes every parameter and buffer of this row's model
            that has the same name and shape (for example a ``binary-activations`` network
            initializing the same network under ``xnor``). Part of ``config.json`` when set.
    """

    name: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    init_from: str | None = None


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
        dataset: the data every row trains on: a name :func:`onebit.data.dataset` takes
            (``onebit run NAME --data OTHER`` trains the grid on other data of the same input size).
        make_task: ``fn(dataset, quick, batch_size, **options) -> Task``: ``dataset`` is an
            :class:`onebit.data.Dataset`, ``quick`` selects a tiny subset, ``options`` are the
            experiment's ``task`` updated with the row's. Image classification by default
            (:func:`~onebit.experiments.tasks.classification_task`).
        task: task options of every row (e.g. ``{"shift": 4, "flip": True}``).
        published: row name -> published figure to print beside ours in the report.
        notes: paragraphs for the report (how the setting differs from the studies).
        quick_model: model constructor overrides for ``--quick`` runs (e.g. a narrow ``width``),
            so that smoke runs of large models stay fast.
        targets: row name -> test accuracy (fraction) the row should reach; the report says
            whether it did.
        mcu: if set, seed 0's packed model is also exported to C and run on an emulated
            Cortex-M4; the report adds its size, RAM, stack and instruction count.
        row_column: if set, the results table's column (e.g. ``"estimator"``) holding each
            row's :attr:`Row.description`.
    """

    name: str
    description: str
    rows: tuple[Row, ...]
    train: dict[str, Any]
    dataset: str
    make_task: Callable[..., Task] = classification_task
    task: dict[str, Any] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    quick_model: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    mcu: McuBenchmark | None = None
    row_column: str = ""

    @property
    def input_size(self) -> tuple[int, ...]:
        """Shape of one example of the experiment's dataset."""
        return from_spec({"name": self.dataset}).info.input_size

    @property
    def classifies(self) -> bool:
        """Whether the rows are image classifiers (which train on any dataset of their input size)."""
        return self.make_task is classification_task

    def dataset_of(self, config: dict[str, Any], root: str | None = None) -> Dataset:
        """The dataset a run config trains on: its ``data`` entry, else the experiment's."""
        return from_spec(config.get("data") or {"name": self.dataset}, root)

    def build_task(self, root: str | None = None, *, quick: bool = False, batch_size: int | None = None,
                   data: dict[str, Any] | None = None, **options: Any) -> Task:
        """The task of a run: ``data`` is a dataset spec (default: the experiment's dataset),
        ``options`` the row's task options; ``batch_size`` defaults to the experiment's."""
        dataset = from_spec(data or {"name": self.dataset}, root)
        if batch_size is None:
            batch_size = self.train.get("batch_size", TrainConfig.batch_size)
        return self.make_task(dataset, quick, batch_size, **{**self.task, **options})

    def task_of(self, config: dict[str, Any], root: str | None = None) -> Task:
        """The task a run config (``config.json``) trains and is evaluated on."""
        return self.build_task(root, quick=config["quick"], batch_size=config["train"]["batch_size"],
                               data=config.get("data"), **config.get("task", {}))

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise ValueError(f"experiment {self.name!r} has no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


#: The experiment name in the records of ``onebit train``: one row per model, on the data given.
TRAIN = "train"

_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Make ``experiment`` known to :func:`get` (``onebit run``, ``onebit report``, ...)."""
    known = _EXPERIMENTS.get(experiment.name)
    if experiment.name == TRAIN or (known is not None and known is not experiment):
        raise ValueError(f"an experiment named {experiment.name!r} is already registered; choose another name")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def names() -> list[str]:
    """The registered experiment names, in registration order."""
    return list(_EXPERIMENTS)


def get(name: str) -> Experiment:
    """The experiment registered as ``name``."""
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid experiments: {', '.join(_EXPERIMENTS)}")
    return _EXPERIMENTS[name]


def trained(configs: list[dict[str, Any]]) -> Experiment:
    """The experiment of the runs ``onebit train`` made into one directory (their configs): a row
    per run name, in sorted order, on their data."""
    rows = {c["row"]: Row(c["row"], c["model"]) for c in sorted(configs, key=lambda c: c["row"])}
    models = ", ".join(f"{r.model['name']} ({r.model.get('recipe', 'float')})" for r in rows.values())
    data = configs[0]["data"]["name"]
    return Experiment(TRAIN, f"{models} on {Path(data).name}", tuple(rows.values()), {}, data)


def of_run(config: dict[str, Any]) -> Experiment:
    """The experiment a run config belongs to: a registered one, or, for a run of ``onebit train``,
    the one-row experiment of :func:`trained`."""
    return trained([config]) if config["experiment"] == TRAIN else get(config["experiment"])
