"""``onebit report``: :func:`write_report` turns an experiment directory's finished runs into
``results.json``, ``results.md``, ``curves.png`` and heatmaps, and evaluates each row's first seed
as a packed model (and on a Cortex-M4, for experiments with a microcontroller benchmark).
Aggregation lives in :mod:`.aggregate`, rendering in :mod:`.render`, plots in :mod:`.plots`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import torch

from ..inspect import binary_activations, firing_rates
from ..training import write_json
from . import registry
from .aggregate import collect_rows, data_record
from .mcu import evaluate_mcu
from .packed import evaluate_packed
from .plots import plot_curves, plot_heatmap
from .render import NOTES_FILE, markdown
from .runs import checkpoint_path, load_trained

__all__ = ["write_report"]


#: A run's heatmap files in network order, kept beside its records for reports made without the checkpoint.
_HEATMAP_LIST = "heatmaps.json"


def _heatmaps(exp_dir: Path, experiment: registry.Experiment, rows: list[dict], root: str | None) -> list[str]:
    """Plot the first seed's firing rates of every row with binary activations into ``heatmaps/``; a row
    whose checkpoint is not kept (a committed record) keeps the heatmaps plotted earlier."""
    written = []
    images = None
    for r in rows:
        seed_dir = exp_dir / r["name"] / f"seed{r['seeds'][0]}"
        if not checkpoint_path(seed_dir).exists():
            written += _kept_heatmaps(exp_dir, seed_dir / _HEATMAP_LIST)
            continue
        model, config = load_trained(seed_dir)
        if not binary_activations(model):
            continue
        if images is None:
            task = experiment.task_of(config, root)
            split = getattr(task, "final_split", "test")
            images = torch.cat([batch[0] for batch in task.eval_batches(split)])[:1000]  # inputs first
        names = []
        for layer, rate in firing_rates(model, images).items():
            name = f"heatmaps/{r['name']}__{layer}.png"
            plot_heatmap(rate, f"{experiment.name} {r['name']}: {layer} (mean {rate.mean():.2f})", exp_dir / name)
            names.append(name)
        write_json(names, seed_dir / _HEATMAP_LIST)
        written += names
    return written


def _kept_heatmaps(exp_dir: Path, listed: Path) -> list[str]:
    """The heatmaps plotted earlier for a run, in the network order ``listed`` keeps (none for a run
    without binary activations)."""
    if not listed.exists():
        return []
    return [name for name in json.loads(listed.read_text()) if (exp_dir / name).exists()]


_QUICK_PACKED_IMAGES = 500  # quick (smoke) runs evaluate their packed models on this many test images
_QUICK_MCU_IMAGES = 20  # and run this many under emulation


def _evaluate_first_seeds(exp_dir: Path, rows: list[dict], key: str, evaluate, remeasure: bool) -> None:
    """Add ``row[key] = evaluate(seed_dir, row)`` for the first seed of every row with binary
    weights, and keep it as ``<key>.json`` in that run's directory: a row whose checkpoint is not
    kept (a committed record), or any row with a stored evaluation unless ``remeasure``, reports
    the evaluation stored there."""
    for r in rows:
        if not r["binary_params"]:
            continue
        seed_dir = exp_dir / r["name"] / f"seed{r['seeds'][0]}"
        stored = seed_dir / f"{key}.json"
        if checkpoint_path(seed_dir).exists() and (remeasure or not stored.exists()):
            r[key] = evaluate(seed_dir, r)
            write_json(r[key], stored)
        elif stored.exists():
            r[key] = json.loads(stored.read_text())


def _evaluate_deployed(exp_dir: Path, experiment: registry.Experiment, rows: list[dict], root: str | None,
                       remeasure: bool) -> None:
    """``row["packed"]`` (:func:`~onebit.experiments.packed.evaluate_packed`) and, for experiments
    with a microcontroller benchmark, ``row["mcu"]`` (:func:`~onebit.experiments.mcu.evaluate_mcu`)."""
    _evaluate_first_seeds(exp_dir, rows, "packed", lambda seed_dir, r: evaluate_packed(
        seed_dir, root, max_images=_QUICK_PACKED_IMAGES if r["quick"] else None), remeasure)
    if experiment.mcu is not None:
        _evaluate_first_seeds(exp_dir, rows, "mcu", lambda seed_dir, r: evaluate_mcu(
            seed_dir, root, images=_QUICK_MCU_IMAGES if r["quick"] else experiment.mcu.images), remeasure)


PackedMode = Literal["measure", "stored", "skip"]


def write_report(exp_dir: str | Path, root: str | None = None, heatmaps: bool = True,
                 packed: PackedMode = "measure") -> Path:
    """Write ``results.json``, ``results.md``, ``curves.png`` and ``heatmaps/*.png`` into
    ``exp_dir`` (``runs/<experiment>``) from its finished runs (``root``: the data root, for
    heatmaps and packed evaluations of runs with a checkpoint). ``packed`` says what the packed
    table reports for each binary row: ``"measure"`` converts seed 0's model and evaluates it
    beside PyTorch (reading the stored ``packed.json`` of runs without a checkpoint),
    ``"stored"`` reads every stored ``packed.json`` and measures only runs with a checkpoint and
    none stored (what ``onebit run`` does), ``"skip"`` evaluates nothing. Returns the results.md path."""
    if packed not in get_args(PackedMode):
        raise ValueError(f"packed must be one of {get_args(PackedMode)}, got {packed!r}")
    exp_dir = Path(exp_dir)
    if not (exp_dir / "experiment.json").exists():
        raise FileNotFoundError(f"{exp_dir} is not an experiment directory (no experiment.json); "
                                "pass runs/<experiment> as written by `onebit run`")
    info = json.loads((exp_dir / "experiment.json").read_text())
    commands = info["commands"]
    experiment, rows = collect_rows(exp_dir)
    if not rows:
        raise ValueError(f"{exp_dir} has no finished runs yet")
    (exp_dir / "heatmaps").mkdir(exist_ok=True)
    plot_curves(rows, exp_dir / "curves.png")
    maps = _heatmaps(exp_dir, experiment, rows, root) if heatmaps else []
    if packed != "skip":
        _evaluate_deployed(exp_dir, experiment, rows, root, remeasure=packed == "measure")
    data = data_record(exp_dir, rows)
    results = {"experiment": experiment.name, "command": info["command"], "commands": commands,
               **({"data": data} if data is not None else {}), "rows": rows}
    write_json(results, exp_dir / "results.json")
    path = exp_dir / "results.md"
    path.write_text(markdown(experiment, commands, rows, maps, (exp_dir / NOTES_FILE).exists(), data))
    return path
