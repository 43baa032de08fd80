"""A run on disk: its directory, its checkpoint, its data and its trained model.

A run is one ``(experiment, row, seed)``; its directory ``<out>/<experiment>/<row>/seed<k>/``
holds ``config.json`` (the run config: model spec, training options, data), and the trainer's
records. Everything that reads a run back (the runner, reports, packed evaluations, ``onebit
export``, ``summary`` and ``bench``) finds and rebuilds it through this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..data import DataInfo
from ..training import TrainConfig, load_checkpoint, save_checkpoint
from . import registry

__all__ = ["build_model", "checkpoint_path", "find_run_dir", "run_dir_of", "data_info", "load_trained",
           "run_config", "save_weights", "source_run", "train_options", "same_run", "weights_digest", "CHECKPOINTS_ENV",
           "DATA_FILE", "SOURCES_FILE", "WEIGHTS_FILE"]

#: Environment variable naming a directory for checkpoints outside the run directories.
CHECKPOINTS_ENV = "ONEBIT_CHECKPOINTS"
#: The file of a run directory that describes the data the run trained on (classes, input size,
#: normalization, source, splits), so that exports and reports need no dataset.
DATA_FILE = "data.json"
#: The file of a run directory that holds the run's best-validation weights alone (a state dict,
#: written by :func:`save_weights`): what a run ships, in place of its checkpoint (which also
#: holds the optimizer's state and may be kept outside the run directory), when other rows
#: distill it or start from it, so that they train on a machine its checkpoint never reached.
WEIGHTS_FILE = "weights.pt"
#: The file of a run directory that names the trained runs it learns from (``distill.teacher``,
#: ``init_from``) with the :func:`weights_digest` of the weights it loaded from each: a student's
#: record says exactly which teacher it learned from, and ``--resume`` refuses a checkpoint whose
#: teacher has changed since.
SOURCES_FILE = "sources.json"


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Build the (untrained) model a run config describes."""
    spec = dict(config["model"])
    return models.build(spec.pop("name"), **spec)


def run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The config of the run in ``run_dir``: its ``config.json``."""
    return json.loads((Path(run_dir) / "config.json").read_text())


def train_options(train: TrainConfig) -> dict[str, Any]:
    """The training options a run config records: ``train`` without its display options."""
    options = asdict(train)
    del options["progress"]  # display only: not part of what a run is
    return options


def same_run(stored: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a stored ``config.json`` describes the run ``config`` describes. Training options
    added to :class:`TrainConfig` after the run was stored take their defaults, so runs made by
    an older onebit stay resumable."""
    try:
        train = train_options(TrainConfig.from_dict(stored.get("train", {})))
    except (TypeError, ValueError):
        return False
    return {**stored, "train": train} == config


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of the run in ``run_dir``: ``run_dir/checkpoint.pt``, or, when
    ``$ONEBIT_CHECKPOINTS`` names a directory, ``<it>/<experiment>/<row>/seed<k>-<hash>/checkpoint.pt``
    with the hash of the run's ``config.json``, its training options reduced to those that differ
    from :class:`TrainConfig`'s defaults (so an option added to onebit later, at its default,
    changes no run's checkpoint). Keeping checkpoints there lets runs recorded in a work tree
    that gets recreated (``--out results``) resume on a machine that is kept, and a changed
    configuration never resumes a stale one."""
    run_dir = Path(run_dir)
    root = os.environ.get(CHECKPOINTS_ENV)
    if not root:
        return run_dir / "checkpoint.pt"
    config = run_config(run_dir)
    defaults = train_options(TrainConfig())
    train = {k: v for k, v in train_options(TrainConfig.from_dict(config["train"])).items() if v != defaults[k]}
    digest = hashlib.sha256(json.dumps({**config, "train": train}, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / config["experiment"] / config["row"] / f"seed{config['seed']}-{digest}" / "checkpoint.pt"


def find_run_dir(path: str | os.PathLike) -> Path:
    """``path`` if it is a run directory (it holds ``config.json``), else the first run directory
    below it: ``runs/mnist-mlp/bnn`` gives ``runs/mnist-mlp/bnn/seed0``."""
    path = Path(path)
    candidates = [path / "config.json"] if (path / "config.json").exists() else sorted(path.glob("**/config.json"))
    if not candidates:
        raise FileNotFoundError(f"no run (config.json) found under {path}")
    return candidates[0].parent


def source_run(reference: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """The finished run a row's distillation teacher or ``init_from`` names, for the run in
    ``run_dir``: another row of the same experiment under the same run root, by name (its run of
    the same seed) or as ``<row>/seed<k>`` (that seed); else a path to a run directory (a row
    directory gives its first seed).

    Raises:
        FileNotFoundError: no such run, or it has not finished (no ``final.json``): a first
            step or teacher that is still training is no source.
    """
    run_dir = Path(run_dir)
    sibling = run_dir.parent.parent / str(reference)
    if (sibling / "config.json").exists():
        source = sibling
    else:
        source = sibling / run_dir.name if sibling.is_dir() else find_run_dir(reference)
    if not (source / "final.json").exists():
        raise FileNotFoundError(f"{source}: no finished run there (no final.json)")
    return source


def weights_digest(model: torch.nn.Module) -> str:
    """The SHA-256 of ``model``'s state dict: every tensor's name, dtype, shape and bytes, in name
    order. The same weights give the same digest whether they come from a checkpoint or a
    :data:`WEIGHTS_FILE`."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_dir_of(out: Path, config: dict[str, Any]) -> Path:
    """The directory of the run ``config`` describes under the run root ``out``."""
    return Path(out) / config["experiment"] / config["row"] / f"seed{config['seed']}"


def data_info(run_dir: str | os.PathLike, config: dict[str, Any] | None = None) -> DataInfo:
    """What the run in ``run_dir`` knows of its data: its :data:`DATA_FILE`, else (runs recorded
    before it, or few-shot runs) what the dataset's name says, without loading it."""
    run_dir = Path(run_dir)
    if (run_dir / DATA_FILE).exists():
        return DataInfo.from_json(json.loads((run_dir / DATA_FILE).read_text()))
    config = config or run_config(run_dir)
    return registry.of_run(config).dataset_of(config).info


def load_trained(run_dir: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best-validation model of a run directory (``runs/<exp>/<row>/seed<k>``), in
    eval mode, and the run's config; the weights come from the run's checkpoint, else from its
    :data:`WEIGHTS_FILE`."""
    config = run_config(run_dir)
    model = build_model(config)
    model.load_state_dict(_best_weights(run_dir))
    return model.eval(), config


def _best_weights(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The best-validation state dict of a run: from its checkpoint, else from its :data:`WEIGHTS_FILE`."""
    checkpoint = checkpoint_path(run_dir)
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        return state["best_model"] or state["model"]
    weights = Path(run_dir) / WEIGHTS_FILE
    if weights.exists():
        return load_checkpoint(weights)
    raise FileNotFoundError(f"{run_dir} has no checkpoint ({checkpoint} is missing) and no {WEIGHTS_FILE}: train it "
                            f"with `onebit run`, or set ${CHECKPOINTS_ENV} to where its checkpoints are kept")


def save_weights(run_dir: str | os.PathLike) -> Path:
    """Write the best-validation weights of the run in ``run_dir``, from its checkpoint, to its
    :data:`WEIGHTS_FILE`; return that path. :func:`load_trained` reads them when the checkpoint
    is not at hand."""
    path = Path(run_dir) / WEIGHTS_FILE
    save_checkpoint(_best_weights(run_dir), path)
    return path
