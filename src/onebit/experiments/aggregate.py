"""Aggregation: the rows of a report (mean and std over seeds) from the run records of an
experiment directory (``config.json``, ``final.json``, ``metrics.jsonl`` of every finished run)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .._summary import summary as model_summary
from . import registry
from .runs import DATA_FILE, build_model, data_info, run_config

__all__ = ["collect_rows", "aggregate_evaluations", "accuracy_key", "data_record"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate_evaluations(finals: list[dict]) -> dict[str, dict[str, Any]]:
    """Aggregate the ``"evaluations"`` of several runs' ``final.json`` (see
    :meth:`onebit.training.Trainer`), keeping the settings every run has, in order.

    Each run holds ``{key: {"acc": ..., "ci95": ..., **description}}``; the result is ``{key:
    {"acc": [per run], "acc_mean", "acc_std", "ci95", **description}}`` where ``acc_std`` is
    the spread over runs (seeds) and ``ci95`` the mean over runs of each run's 95% confidence
    half-width over its evaluation episodes.
    """
    if not finals or any("evaluations" not in f for f in finals):
        return {}
    keys = [k for k in finals[0]["evaluations"] if all(k in f["evaluations"] for f in finals)]
    out = {}
    for key in keys:
        runs = [f["evaluations"][key] for f in finals]
        acc = [r["acc"] for r in runs]
        mean, std = _mean_std(acc)
        entry = {k: v for k, v in runs[0].items() if k not in ("acc", "ci95")}
        out[key] = {"acc": acc, "acc_mean": mean, "acc_std": std,
                    "ci95": statistics.fmean(r["ci95"] for r in runs), **entry}
    return out


def _runs(exp_dir: Path, row: str) -> list[tuple[dict, dict, list[dict]]]:
    """(config, final, metrics) of every finished seed of ``row``, lowest seed first."""
    runs = []
    seed_dirs = {d.name.removeprefix("seed"): d for d in (exp_dir / row).glob("seed*")}
    for _, seed_dir in sorted((int(k), d) for k, d in seed_dirs.items() if k.isdigit()):
        final_path = seed_dir / "final.json"
        if not final_path.exists():
            continue
        metrics = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines() if line]
        runs.append((run_config(seed_dir), json.loads(final_path.read_text()), metrics))
    return runs


def _experiment(exp_dir: Path, name: str) -> registry.Experiment:
    """The registered experiment ``name``, or the experiment of the runs ``onebit train`` made here."""
    if name != registry.TRAIN:
        return registry.get(name)
    configs = [json.loads(p.read_text()) for p in sorted(exp_dir.glob("*/seed*/config.json"))]
    if not configs:
        raise ValueError(f"{exp_dir} has no runs of `onebit train` yet")
    return registry.trained(configs)


def accuracy_key(row: dict) -> str:
    """``"test_acc"``, or ``"val_acc"`` for rows trained on data without a test split."""
    return "test_acc" if "test_acc" in row else "val_acc"


def collect_rows(exp_dir: Path) -> tuple[registry.Experiment, list[dict[str, Any]]]:
    """Aggregate finished runs of every row (mean and std over seeds)."""
    info = json.loads((exp_dir / "experiment.json").read_text())
    experiment = _experiment(exp_dir, info["experiment"])
    rows = []
    for row in experiment.rows:
        runs = _runs(exp_dir, row.name)
        if not runs:
            continue
        config = runs[0][0]
        input_size = data_info(exp_dir / row.name / f"seed{config['seed']}", config).input_size
        stats = model_summary(build_model(config), input_size)
        out: dict[str, Any] = {"name": row.name, "seeds": [c["seed"] for c, _, _ in runs]}
        split = "test" if all("test_acc" in f for _, f, _ in runs) else "val"
        for key in (f"{split}_acc", f"{split}_loss", "train_seconds", "best_epoch"):
            values = [f[key] for _, f, _ in runs]
            out[key] = values
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        out["threads"] = [f["threads"] for _, f, _ in runs]
        out["precision"] = sorted({f["precision"] for _, f, _ in runs})
        out["cpu"] = sorted({f["cpu"] for _, f, _ in runs if "cpu" in f})  # some committed runs did not record it
        out["train_cpu_seconds_mean"] = statistics.fmean(f["train_cpu_seconds"] for _, f, _ in runs)
        out.update(epochs=config["train"]["epochs"], quick=config["quick"],
                   binary_params=stats.binary_params, float_params=stats.float_params,
                   packed_bytes=stats.packed_bytes, float32_bytes=stats.float32_bytes,
                   published=experiment.published.get(row.name), target=experiment.targets.get(row.name))
        evaluations = aggregate_evaluations([f for _, f, _ in runs])
        if evaluations:
            out.update(evaluations)
            out["evaluations"] = list(evaluations)
        out["curves"] = {
            key: [statistics.fmean(m[e][key] for _, _, m in runs) for e in range(min(len(m) for _, _, m in runs))]
            for key in ("train_loss", "val_acc")
        }
        rows.append(out)
    return experiment, rows


def data_record(exp_dir: Path, rows: list[dict]) -> dict | None:
    """The data of the runs (the first row's first seed's :data:`~onebit.experiments.runs.DATA_FILE`,
    else its spec) when they trained on data other than their experiment's; else None."""
    seed_dir = exp_dir / rows[0]["name"] / f"seed{rows[0]['seeds'][0]}"
    spec = run_config(seed_dir).get("data")
    if spec is None:
        return None
    return json.loads((seed_dir / DATA_FILE).read_text()) if (seed_dir / DATA_FILE).exists() else dict(spec)
