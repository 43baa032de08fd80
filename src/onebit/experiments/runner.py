"""Run an experiment's grid of (row, seed) runs, resumably, optionally in parallel processes."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..data import Dataset
from ..training import (
    ClassificationTask,
    DistillationTask,
    TrainConfig,
    Trainer,
    final_accuracy,
    resolve_device,
    run_dir_lock,
    write_json,
)
from ..training.runlock import LOCK_NAME
from . import registry
from .report import write_report
from .runs import (
    DATA_FILE,
    SOURCES_FILE,
    WEIGHTS_FILE,
    build_model,
    checkpoint_path,
    load_trained,
    run_dir_of,
    same_run,
    save_weights,
    source_run,
    train_options,
    weights_digest,
)
from .tasks import check_task_options

__all__ = ["run_configs", "run_experiment", "train_run", "parse_overrides"]


def run_configs(
    experiment: registry.Experiment,
    *,
    quick: bool = False,
    epochs: int | None = None,
    seeds: int = 3,
    first_seed: int = 0,
    rows: Iterable[str] | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    data: Dataset | None = None,
) -> list[dict[str, Any]]:
    """The JSON config of every run of ``experiment`` (what ``config.json`` holds), seeds
    ``first_seed`` .. ``first_seed + seeds - 1`` of each row.
    ``overrides`` replace training options of every row (``onebit run --set KEY=VALUE``);
    keys ``model.NAME`` replace the model's constructor argument ``NAME`` instead, and keys
    ``task.NAME`` the task option ``NAME`` (e.g. ``task.cutout=16``), and keys ``distill.NAME``
    the distillation option ``NAME`` (:attr:`registry.Row.distill`, e.g.
    ``distill.teacher=runs/cifar10/float/seed0``: every selected row then distills that run).
    ``data`` trains the grid on another dataset of the experiment's input size (recorded as the
    config's ``data``; models get its number of classes)."""
    selected = [experiment.row(r) for r in rows] if rows else list(experiment.rows)
    train_overrides, model_overrides, task_overrides, distill_overrides = {}, {}, {}, {}
    for key, value in (overrides or {}).items():
        if key.startswith(MODEL_PREFIX):
            model_overrides[key.removeprefix(MODEL_PREFIX)] = value
        elif key.startswith(TASK_PREFIX):
            task_overrides[key.removeprefix(TASK_PREFIX)] = value
        elif key.startswith(DISTILL_PREFIX):
            distill_overrides[key.removeprefix(DISTILL_PREFIX)] = value
        else:
            train_overrides[key] = value
    data_spec = _other_data(experiment, data, model_overrides)
    configs = []
    for row in selected:
        distill = {**row.distill, **distill_overrides}
        _check_distill(distill)
        for seed in range(first_seed, first_seed + seeds):
            options = {**experiment.train, **row.train, **train_overrides, "seed": seed, "device": device}
            train = TrainConfig.from_dict(options)
            if epochs is not None:
                train.epochs = epochs
            if quick:
                train.epochs = 1
                train.compile = False  # compiling takes longer than a smoke run trains
            model = {**row.model, **(experiment.quick_model if quick else {}), **model_overrides}
            config = {"experiment": experiment.name, "row": row.name, "seed": seed, "quick": quick,
                      **({"data": data_spec} if data_spec else {}), "model": model, "train": train_options(train)}
            task = {**row.task, **task_overrides}
            configs.append({**config, **({"task": task} if task else {}),
                            **({"distill": dict(distill)} if distill else {}),
                            **({"init_from": row.init_from} if row.init_from else {})})
        if model_overrides:
            _check_model(configs[-1], model_overrides)
    if task_overrides:
        _check_task(experiment, task_overrides)
    return configs


def _other_data(experiment: registry.Experiment, data: Dataset | None, model_overrides: dict[str, Any]) -> dict | None:
    """The spec of ``data`` when it is not the experiment's own dataset (checking that the grid can
    train on it), else None; adds the data's class count to ``model_overrides`` when it differs."""
    if data is None or data.spec == experiment.dataset_of({}).spec:
        return None
    if not experiment.classifies:
        raise ValueError(f"experiment {experiment.name!r} trains on its own task on {experiment.dataset}; --data "
                         f"takes another dataset for image-classification experiments only")
    own, other = experiment.dataset_of({}).info, data.load().info
    if other.input_size != own.input_size:
        shape = "x".join(map(str, other.input_size))
        raise ValueError(f"experiment {experiment.name!r} trains on {'x'.join(map(str, own.input_size))} images "
                         f"(channels x height x width); {data.name} has {shape}. Choose data of that size (an image "
                         f"folder takes --image-size), or train a model on it with `onebit train`")
    if len(other.classes) != len(own.classes):
        model_overrides.setdefault("num_classes", len(other.classes))
    return data.spec


def _check_model(config: dict[str, Any], model_overrides: dict[str, Any]) -> None:
    """Build a run's model once, so that a ``--set model.X`` the row's model does not take fails
    before any training, naming the row."""
    try:
        build_model(config)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{MODEL_PREFIX}{k}={v!r}" for k, v in model_overrides.items())
        raise ValueError(f"row {config['row']!r} ({config['model']['name']}) rejects {given}: {err}") from err


def _check_task(experiment: registry.Experiment, task_overrides: dict[str, Any]) -> None:
    """Fail before any training when the experiment's task takes no such option."""
    try:
        check_task_options(experiment.make_task, task_overrides)
    except ValueError as err:
        raise ValueError(f"experiment {experiment.name!r}: {err}") from None


#: Prefix of ``--set`` keys that replace a model constructor argument (``model.width=0.75``).
MODEL_PREFIX = "model."
#: Prefix of ``--set`` keys that replace a task option (``task.cutout=16``).
TASK_PREFIX = "task."
#: Prefix of ``--set`` keys that replace a distillation option (``distill.teacher=PATH``).
DISTILL_PREFIX = "distill."


def parse_overrides(pairs: list[str] | None, option: str | None = None) -> dict[str, Any]:
    """``["lr=0.01", "model.width=0.75"]`` -> ``{"lr": 0.01, "model.width": 0.75}``: the values
    of ``onebit run --set KEY=VALUE`` (JSON values, else strings). With ``option`` (e.g.
    ``"--model-arg"``), plain ``KEY=VALUE`` pairs of that option, without ``model.`` keys."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if option is not None and (not sep or not key or key.startswith(MODEL_PREFIX)):
            raise ValueError(f"{option} expects KEY=VALUE, got {pair!r}")
        if not sep or not key or key in (MODEL_PREFIX, "model.name"):
            raise ValueError(f"--set expects KEY=VALUE or model.ARGUMENT=VALUE (not the model's name), got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def train_run(config: dict[str, Any], run_dir: str | os.PathLike, root: str | None, resume: bool,
              progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Train one run (datasets under the data ``root``); returns its final metrics. Safe to call in
    a worker process."""
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    experiment = registry.of_run(config)
    train = TrainConfig.from_dict({**config["train"], "progress": progress})
    task = experiment.task_of(config, root)
    if isinstance(task, ClassificationTask):
        write_json(experiment.dataset_of(config, root).load().record(), run_dir / DATA_FILE)
    sources = trained_sources(config, run_dir)
    record_sources(sources, run_dir, resume)
    if "distill" in config:
        teacher = sources["distill.teacher"].model
        task = distillation(task, config["distill"], teacher, resolve_device(train.device), compile=train.compile)
    torch.manual_seed(train.seed)
    model = build_model(config)
    if "init_from" in config:
        initialize(model, *sources.pop("init_from"))  # popped: the source model is not kept through training
    return Trainer(model, task, train, run_dir, checkpoint_path(run_dir)).fit(resume=resume)


_DISTILL_KEYS = {"teacher", "weight", "temperature"}


def _trained_source(reference: str, run_dir: Path, role: str) -> torch.nn.Module:
    """The best model of the trained run ``reference`` names (see :func:`runs.source_run`)."""
    try:
        model, _ = load_trained(source_run(reference, run_dir))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{role} {reference}: {error}. Train its row first (earlier in the same "
                                "`onebit run` without --jobs, or its own run)") from None
    return model


#: The runs a config learns from, as (its key in :data:`~runs.SOURCES_FILE`, the role named in errors).
_SOURCE_ROLES = (("distill.teacher", "distillation teacher"), ("init_from", "init_from"))


class Source(NamedTuple):
    """A trained run another run learns from: the reference its config gives, and its best model."""

    run: str
    model: torch.nn.Module


def trained_sources(config: dict[str, Any], run_dir: Path) -> dict[str, Source]:
    """The runs the config of the run in ``run_dir`` learns from (its distillation teacher, its
    ``init_from`` run), each loaded once, by their key in :data:`~runs.SOURCES_FILE`; empty for a
    run that learns from none.

    Raises:
        FileNotFoundError: a source run has not finished.
    """
    references = {"distill.teacher": config.get("distill", {}).get("teacher"), "init_from": config.get("init_from")}
    return {key: Source(str(references[key]), _trained_source(references[key], run_dir, role))
            for key, role in _SOURCE_ROLES if references[key] is not None}


def record_sources(sources: dict[str, Source], run_dir: Path, resume: bool) -> None:
    """Write the :data:`~runs.SOURCES_FILE` of the run in ``run_dir``: for each of its
    :func:`trained_sources`, the reference its config gives and the :func:`~runs.weights_digest` of
    that run's best model. A run that learns from none writes no such file.

    Raises:
        ValueError: ``resume`` would continue a checkpoint whose recorded source now has other
            weights (the teacher was retrained since the checkpoint started).
    """
    digests = {key: {"run": source.run, "weights_sha256": weights_digest(source.model)}
               for key, source in sources.items()}
    path = run_dir / SOURCES_FILE
    if resume and path.exists() and checkpoint_path(run_dir).exists():
        stored = json.loads(path.read_text())
        changed = [key for key, digest in digests.items()
                   if key in stored and stored[key]["weights_sha256"] != digest["weights_sha256"]]
        if changed:
            named = " and ".join(f"{key} ({digests[key]['run']})" for key in changed)
            raise ValueError(f"{run_dir}: the weights of its {named} changed since its checkpoint started learning "
                             f"from them ({SOURCES_FILE}); run without --resume to train it again from the start")
    if digests:
        write_json(digests, path)


def _check_distill(options: dict[str, Any]) -> None:
    """Fail unless ``options`` are distillation options (:attr:`registry.Row.distill`) naming a teacher."""
    unknown = set(options) - _DISTILL_KEYS
    if unknown or (options and "teacher" not in options):
        raise ValueError(f"distillation options are {', '.join(sorted(_DISTILL_KEYS))} (teacher required, e.g. "
                         f"--set distill.teacher=runs/cifar10/float/seed0), got {', '.join(sorted(options))}")


def distillation(task: ClassificationTask, options: dict[str, Any], teacher: torch.nn.Module, device: torch.device,
                 compile: bool = False) -> DistillationTask:
    """``task`` distilling ``teacher``, the best model of the run ``options["teacher"]`` names
    (:func:`trained_sources`; the options are :attr:`registry.Row.distill`'s). With ``compile`` (the
    student's ``TrainConfig.compile``) the teacher's forward pass runs through :func:`torch.compile`
    too: it runs on every training batch."""
    _check_distill(options)
    teacher = teacher.to(device).eval()
    if compile:
        teacher = torch.compile(teacher)
    return DistillationTask(task, teacher, options.get("weight", 1.0), options.get("temperature", 1.0))


def initialize(model: torch.nn.Module, reference: str, source: torch.nn.Module) -> None:
    """Copy into ``model`` every parameter and buffer of ``source``, the best model of the run
    ``reference`` names (see :attr:`registry.Row.init_from` and :func:`trained_sources`), that has the
    same name and shape; print what stays at its fresh initialization.

    Raises:
        ValueError: nothing matches (a run of another architecture).
    """
    weights = source.state_dict()
    target = model.state_dict()
    shared = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    if not shared:
        raise ValueError(f"init_from {reference}: its model shares no parameter (same name and shape) with this "
                         f"row's {type(model).__name__}")
    model.load_state_dict(shared, strict=False)
    fresh = sorted(set(target) - set(shared))
    if fresh:
        print(f"init_from {reference}: {len(shared)} of {len(target)} tensors copied; fresh: {', '.join(fresh)}")


def _prepare(run_dir: Path, config: dict[str, Any], resume: bool) -> bool:
    """Check the run directory against ``config``; return True if the run still has to train."""
    with run_dir_lock(run_dir):
        return _prepare_locked(run_dir, config, resume)


def _prepare_locked(run_dir: Path, config: dict[str, Any], resume: bool) -> bool:
    config_path = run_dir / "config.json"
    if config_path.exists():
        if not same_run(json.loads(config_path.read_text()), config):
            raise ValueError(
                f"{run_dir} holds a run with a different configuration; choose another --out "
                f"directory or delete {run_dir} to train this one"
            )
        if (run_dir / "final.json").exists():
            return False
        checkpoint = checkpoint_path(run_dir)
        if not resume and checkpoint.exists():
            print(f"{run_dir}: interrupted run found, starting over (pass --resume to continue it)")
            checkpoint.unlink()
            for path in run_dir.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != LOCK_NAME:
                    path.unlink()
    write_json(config, config_path)
    return True


def run_experiment(
    name: str,
    *,
    out: str | os.PathLike = "runs",
    data: Dataset | None = None,
    root: str | None = None,
    quick: bool = False,
    epochs: int | None = None,
    seeds: int | None = None,
    first_seed: int = 0,
    rows: Iterable[str] | None = None,
    jobs: int = 1,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    command: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train every (row, seed) of experiment ``name`` that has not finished, then write the
    report. Finished runs (``final.json`` present, same config) are reused.

    Args:
        name: experiment name (see :func:`onebit.experiments.names`).
        out: root of the run directories; runs go to ``out/<experiment>/<row>/seed<k>/``.
        data: train on this dataset instead of the experiment's (same input size; see
            :func:`onebit.data.dataset`); the report says which data the runs used.
        root: data root of the built-in datasets (default: ``$ONEBIT_DATA`` or the per-user cache).
        quick: smoke version: tiny data subset, one epoch.
        epochs: override the experiment's epoch count.
        seeds: seeds per row (default 3; 1 with ``quick``).
        first_seed: the first of them: seeds ``first_seed .. first_seed + seeds - 1`` train (say,
            seeds 1-2 in a second process while seed 0 trains in the first).
        rows: only these rows.
        jobs: runs trained in parallel processes (threads are split between them).
        resume: continue interrupted runs from their checkpoints.
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: show progress bars.
        command: the command line, recorded in the report.
        overrides: training options replacing the experiment's for every row, e.g.
            ``{"reinforce_baseline": "self-critical"}``; use a separate ``out`` directory.

    Returns:
        The experiment directory ``out/<experiment>``.
    """
    experiment = registry.get(name)
    if seeds is None:
        seeds = 1 if quick else 3
    if seeds < 1 or jobs < 1:
        raise ValueError("--seeds and --jobs must be at least 1")
    if first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {first_seed}")
    exp_dir = Path(out) / name
    configs = run_configs(experiment, quick=quick, epochs=epochs, seeds=seeds, first_seed=first_seed, rows=rows,
                          device=device, overrides=overrides, data=data)
    data_spec = configs[0].get("data") if configs else None
    check_directory(exp_dir / "experiment.json", name, data_spec)
    distributed = _init_distributed(device)
    main_process = not distributed or torch.distributed.get_rank() == 0
    todo = None
    if main_process:
        todo = [(c, run_dir_of(Path(out), c)) for c in configs]
        todo = [(c, d) for c, d in todo if _prepare(d, c, resume)]
        exp_dir.mkdir(parents=True, exist_ok=True)
        _record_command(exp_dir / "experiment.json", name, command or f"onebit run {name}", data_spec)
        print(f"{name}: {len(configs)} runs, {len(configs) - len(todo)} already finished, {len(todo)} to train")
    if distributed:
        if jobs != 1:
            raise ValueError("--jobs cannot be combined with torchrun: each process already trains every run")
        shared = [todo]
        torch.distributed.broadcast_object_list(shared, src=0)
        todo = shared[0]
    if jobs == 1:
        for i, (config, run_dir) in enumerate(todo, 1):
            if main_process:
                print(f"[{i}/{len(todo)}] {config['row']} seed {config['seed']}")
            final = train_run(config, run_dir, root, resume, progress and main_process)
            if main_process:
                split, accuracy = final_accuracy(final)
                print(f"    {split} acc {accuracy:.4f}  ({final['train_seconds']:.0f} s)")
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(train_run, c, d, root, resume, False, threads): c for c, d in todo}
            for future in futures:
                config, final = futures[future], future.result()
                split, accuracy = final_accuracy(final)
                print(f"{config['row']} seed {config['seed']}: {split} acc {accuracy:.4f}")
    if main_process:
        _ship_weights(experiment, configs, Path(out))
        # new runs get their packed evaluation; stored ones are kept (`onebit report` re-times)
        write_report(exp_dir, root=root, packed="stored")
    return exp_dir


def source_rows(experiment: registry.Experiment) -> set[str]:
    """The rows of ``experiment`` that another of its rows distills or starts from (a
    :attr:`~registry.Row.distill` teacher or :attr:`~registry.Row.init_from` that names a row,
    as ``<row>`` or ``<row>/seed<k>``)."""
    names = {row.name for row in experiment.rows}
    references = [row.init_from for row in experiment.rows] + [row.distill.get("teacher") for row in experiment.rows]
    parts = [str(reference).split("/") for reference in references if reference]
    return {p[0] for p in parts if p[0] in names and len(p) <= 2}


def _ship_weights(experiment: registry.Experiment, configs: list[dict[str, Any]], out: Path) -> None:
    """Give every finished run of a source row (:func:`source_rows`) its :data:`~runs.WEIGHTS_FILE`,
    so that a copy of the run directories (``--out results``, committed) trains the rows that
    depend on it without the checkpoint."""
    sources = source_rows(experiment)
    for config in configs:
        run_dir = run_dir_of(out, config)
        if (config["row"] in sources and (run_dir / "final.json").exists()
                and not (run_dir / WEIGHTS_FILE).exists() and checkpoint_path(run_dir).exists()):
            print(f"{config['row']} seed {config['seed']}: weights for the rows that depend on it -> "
                  f"{save_weights(run_dir)}")


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker soon after the runner that started it dies. A killed
    ``onebit run --jobs N`` must not leave its runs training on, unseen, into run directories
    that the next ``onebit run --resume`` trains too."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def check_directory(path: Path, name: str, data: dict[str, Any] | None) -> None:
    """Refuse to add runs of ``name`` on ``data`` (a dataset spec, None: the experiment's own) to an
    experiment directory whose ``experiment.json`` records another experiment or other data: one
    report covers one experiment on one dataset."""
    if not path.exists():
        return
    info = json.loads(path.read_text())
    if info["experiment"] != name:
        raise ValueError(f"{path.parent} holds runs of {info['experiment']!r}, not {name!r}: choose another --out")
    if info.get("data") != data:
        def named(spec: dict[str, Any] | None) -> str:
            return spec["name"] if spec else "the experiment's own data"

        raise ValueError(f"{path.parent} holds runs on {named(info.get('data'))}, not on {named(data)}: one "
                         "directory holds runs on one dataset; choose another --out")


def _record_command(path: Path, name: str, command: str, data: dict[str, Any] | None = None) -> None:
    """Write ``experiment.json``: the experiment, the data when it is not the experiment's own (a
    dataset spec), the latest command and every distinct command that ran in this directory
    (runs of one directory may come from several)."""
    check_directory(path, name, data)
    info = json.loads(path.read_text()) if path.exists() else {}
    commands = info.get("commands", [])
    write_json({"experiment": name, **({"data": data} if data else {}), "command": command,
                "commands": commands + ([command] if command not in commands else [])}, path)


def _init_distributed(device: str) -> bool:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU,
    nccl on GPU. Returns whether this is a multi-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if gpu else "gloo")
    return True
