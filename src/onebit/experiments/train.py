"""``onebit train``: one model on any dataset, recorded the way ``onebit run`` records runs.

``train(dataset, "small_cnn", "bnn", "runs/photos")`` trains into
``runs/photos/small_cnn-bnn/seed0/`` (``config.json``, ``data.json``, ``metrics.jsonl``,
``final.json``, checkpoint, TensorBoard logs) and writes the report of ``runs/photos``, whose
``experiment.json`` names the experiment :data:`~onebit.experiments.registry.TRAIN` and the data.
Each further model trained into the same directory (on the same data) adds a row; the input size
and class count come from the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import models
from ..data import Dataset
from ..training import TrainConfig
from . import registry
from .report import write_report
from .runner import _prepare, _record_command, check_directory, train_run
from .runs import build_model, train_options
from .tasks import check_task_options, classification_task

__all__ = ["DEFAULTS", "train_config", "train"]

#: Training options of ``onebit train`` over :class:`~onebit.training.TrainConfig`'s defaults:
#: Adam with cosine learning-rate decay, bfloat16 where the CPU computes it natively.
DEFAULTS = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "lr_schedule": "cosine",
            "precision": "auto"}
#: Model arguments that come from the data and the command, not from ``--model-arg``.
_FROM_DATA = ("name", "recipe", "in_channels", "num_classes", "image_size")


def train_config(dataset: Dataset, model: str, recipe: str, *, name: str | None = None, seed: int = 0,
                 quick: bool = False, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, overrides: dict[str, Any] | None = None,
                 model_args: dict[str, Any] | None = None, task: dict[str, Any] | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """The ``config.json`` of a run of ``model`` under ``recipe`` on ``dataset`` (loaded here: its
    input size and classes size the model). ``overrides`` are training options
    (:class:`~onebit.training.TrainConfig`) over :data:`DEFAULTS` and the explicit ones; ``task``
    are options of the image-classification task (the keyword options of
    :func:`~onebit.experiments.tasks.classification_task`: augmentation, label smoothing);
    ``quick`` trains one epoch on a small subset.

    Raises:
        ValueError: the model is not an image classifier or rejects an argument, or an option is unknown.
    """
    if model not in models.CLASSIFIERS:
        kind = "a few-shot model" if model in models.names() else "not a model"
        raise ValueError(f"{model!r} is {kind}: onebit train trains the image classifiers "
                         f"{', '.join(models.CLASSIFIERS)}")
    check_task_options(classification_task, task or {})
    model_args = dict(model_args or {})
    fixed = sorted(set(model_args) & set(_FROM_DATA))
    if fixed:
        raise ValueError(f"--model-arg cannot set {', '.join(fixed)}: the model is --model, its recipe --recipe, "
                         "and the input size and class count come from the data")
    info = dataset.load().info
    channels, height, width = info.input_size
    spec = {"name": model, "recipe": recipe, **model_args, "in_channels": channels, "num_classes": len(info.classes),
            "image_size": height if height == width else [height, width]}
    explicit = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    train = TrainConfig.from_dict({**DEFAULTS, **explicit, **(overrides or {}), "seed": seed, "device": device})
    if quick:
        train.epochs = 1
        train.compile = False
    config = {"experiment": registry.TRAIN, "row": name or f"{model}-{recipe}", "seed": seed, "quick": quick,
              "data": dataset.spec, "model": spec, "train": train_options(train),
              **({"task": dict(task)} if task else {})}
    try:
        build_model(config)  # an argument the model does not take fails now, not after loading the data
    except (TypeError, ValueError) as err:
        given = "".join(f" --model-arg {k}={json.dumps(v)}" for k, v in model_args.items())
        raise ValueError(f"{model} --recipe {recipe}{given} does not build: {err}") from err
    return config


def train(config: dict[str, Any], out: str | os.PathLike, *, root: str | None = None, resume: bool = False,
          progress: bool = True, command: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Train the run ``config`` (:func:`train_config`) into ``out/<row>/seed<k>/`` unless it has
    finished there, then write the report of ``out``. Returns the run directory and its
    ``final.json``."""
    out = Path(out)
    check_directory(out / "experiment.json", registry.TRAIN, config["data"])
    run_dir = out / config["row"] / f"seed{config['seed']}"
    todo = _prepare(run_dir, config, resume)
    _record_command(out / "experiment.json", registry.TRAIN, command or "onebit train", config["data"])
    if todo:
        train_run(config, run_dir, root, resume, progress)
    else:
        print(f"{run_dir}: finished earlier with this configuration (kept)")
    write_report(out, root=root, packed="stored")
    return run_dir, json.loads((run_dir / "final.json").read_text())
