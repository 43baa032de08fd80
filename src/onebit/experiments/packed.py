"""Trained runs as packed models: what ``onebit export`` writes and what reports evaluate.

:func:`pack_run` converts a run's best-validation model exactly as ``onebit export`` does;
:func:`evaluate_packed` runs it beside the PyTorch model on the run's test data
(accuracy, agreement, output error, throughput, file size).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..training import ClassificationTask
from . import registry
from .runs import data_info, load_trained, run_config

if TYPE_CHECKING:
    from ..deploy import PackedModel

__all__ = ["pack_run", "evaluate_packed", "float32_state_bytes", "MODEL_FILE"]

#: The packed model :func:`evaluate_packed` writes into the run directory it evaluates.
MODEL_FILE = "model.onebit"


def pack_run(run_dir: str | Path) -> tuple[nn.Module, PackedModel]:
    """``(model, packed)``: the run's trained PyTorch model and its
    :class:`~onebit.deploy.PackedModel`, which also takes raw uint8 images (it records the
    data's normalization). Its ``meta`` names the run, the data (``dataset``, and ``data``: the
    spec :func:`onebit.data.datasets.from_spec` takes), the class names (classifiers) and how
    image files become inputs (``preprocess``, for ``onebit infer --images``). Raises
    :class:`~onebit.deploy.UnsupportedModelError` for models the packed runtime cannot reproduce."""
    from ..deploy import convert

    model, config = load_trained(run_dir)
    info = data_info(run_dir, config)
    packed = convert(model, torch.zeros(2, *info.input_size), input_normalization=info.normalization)
    spec = registry.of_run(config).dataset_of(config).spec
    packed.meta.update(experiment=config["experiment"], row=config["row"], seed=config["seed"], dataset=info.name,
                       data=spec, preprocess=info.preprocess.to_json())
    if info.classes:
        packed.meta["classes"] = list(info.classes)
    return model, packed


def float32_state_bytes(model: nn.Module) -> int:
    """Bytes of the model's floating-point state dict stored as float32: what packing is compared with."""
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def _timed(fn, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    fn(images[:batch_size])  # warm-up: numba compilation, allocator, caches
    start = time.perf_counter()
    out = np.concatenate([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    return out, time.perf_counter() - start


class _Comparison(NamedTuple):
    accuracy: dict[str, dict[str, float]]  # {key: {"torch": ..., "packed": ...}}
    agreement: float
    reference: np.ndarray  # PyTorch outputs
    outputs: np.ndarray  # packed outputs
    torch_seconds: float
    packed_seconds: float


class _PackedEncoder(nn.Module):
    """A packed encoder in a PyTorch model's place (inference only)."""

    def __init__(self, packed) -> None:
        super().__init__()
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.packed(x.cpu().numpy()))


def _compare_classifiers(model, packed, dataset: Dataset, batch_size: int, max_images: int | None) -> _Comparison:
    """Accuracy of both models on the data's test split (validation without one), or on a seeded
    random subset of ``max_images`` of it (image folders list their images class by class, so a
    prefix would hold one class); outputs are logits."""
    data = dataset.load()
    images, labels = data.test_arrays()
    codes = data.test_arrays(raw=True)[0] if "input_quantization" in packed.meta else images
    if max_images is not None and max_images < len(labels):
        keep = np.sort(np.random.default_rng(0).choice(len(labels), max_images, replace=False))
        images, codes, labels = images[keep], codes[keep], labels[keep]
    with torch.no_grad():
        reference, torch_seconds = _timed(lambda x: model(torch.from_numpy(x)).numpy(), images, batch_size)
    outputs, packed_seconds = _timed(packed, codes, batch_size)
    accuracy = {data.eval_split: {"torch": float((reference.argmax(1) == labels).mean()),
                                  "packed": float((outputs.argmax(1) == labels).mean())}}
    agreement = float((reference.argmax(1) == outputs.argmax(1)).mean())
    return _Comparison(accuracy, agreement, reference, outputs, torch_seconds, packed_seconds)


def _compare_encoders(model, packed, task, batch_size: int) -> _Comparison:
    """Few-shot accuracy of every evaluation protocol with the PyTorch encoder and with the
    packed one (the same episodes and head); outputs are the test images' embeddings."""
    images = task.pool_images("test").numpy()
    with torch.no_grad():
        reference, torch_seconds = _timed(lambda x: model.embed(torch.from_numpy(x)).numpy(), images, batch_size)
    outputs, packed_seconds = _timed(packed, images, batch_size)
    with_packed = copy.deepcopy(model)
    with_packed.encoder = _PackedEncoder(packed)
    ours, theirs = task.final_evaluation(model), task.final_evaluation(with_packed)
    accuracy = {key: {"torch": ours[key]["acc"], "packed": theirs[key]["acc"]} for key in ours}
    agreement = float((reference == outputs).all(axis=1).mean())
    return _Comparison(accuracy, agreement, reference, outputs, torch_seconds, packed_seconds)


def evaluate_packed(run_dir: str | Path, root: str | None = None, *, batch_size: int = 256,
                    max_images: int | None = None) -> dict[str, Any]:
    """Convert the run, save it as :data:`MODEL_FILE` in ``run_dir`` (what ``onebit infer`` runs),
    reload it from there, and evaluate it beside the PyTorch model.

    Classifiers (runs of a :class:`~onebit.training.ClassificationTask`) run on the test set of
    the run's data (its validation set when it has none): PyTorch on float32 images normalized
    as in training, the packed model on the raw uint8 pixels where it takes them (``max_images``
    limits the set). Few-shot models (runs of an episodic task) convert their encoder, which
    replaces the PyTorch one under the same head and evaluation episodes
    (:meth:`~onebit.training.fewshot.EpisodicTask.final_evaluation`); throughput is that of
    embedding the test pool. Both models run in this process, batch by batch, with torch's
    current number of threads (the packed kernels get as many for the comparison).

    Returns:
        ``accuracy`` (``{key: {"torch", "packed"}}``: ``"test"`` (or ``"val"``) for classifiers, one entry
        per evaluation protocol for few-shot models), ``agreement`` (fraction of inputs with
        the same predicted class, or the identical embedding), ``max_output_diff`` (largest
        absolute logit or embedding difference), ``torch_images_per_s``,
        ``packed_images_per_s``, ``speedup``, ``file_bytes``, ``float32_bytes``,
        ``size_ratio``, ``images``, ``batch_size``, ``torch_threads``, ``packed_threads``; or
        ``{"error": reason}`` if the model does not convert.
    """
    from ..deploy import UnsupportedModelError, kernels, load

    try:
        model, packed = pack_run(run_dir)
    except UnsupportedModelError as err:
        return {"error": str(err)}
    path = Path(run_dir) / MODEL_FILE
    packed.save(path)
    file_bytes = path.stat().st_size
    packed = load(path)  # evaluate what a user would deploy: the file, not the in-memory object

    config = run_config(run_dir)
    experiment = registry.of_run(config)
    task = experiment.task_of(config, root)
    if not isinstance(task, ClassificationTask) and not hasattr(task, "pool_images"):
        return {"error": f"no packed evaluation for runs of a {type(task).__name__}"}
    threads = kernels.get_num_threads()
    kernels.set_num_threads(torch.get_num_threads())
    try:
        if isinstance(task, ClassificationTask):
            c = _compare_classifiers(model, packed, experiment.dataset_of(config, root), batch_size, max_images)
        else:
            c = _compare_encoders(model, packed, task, batch_size)
    finally:
        kernels.set_num_threads(threads)
    float_bytes = float32_state_bytes(model)
    return {
        "accuracy": c.accuracy,
        "agreement": c.agreement,
        "max_output_diff": float(np.abs(c.outputs - c.reference).max()),
        "torch_images_per_s": len(c.reference) / c.torch_seconds,
        "packed_images_per_s": len(c.reference) / c.packed_seconds,
        "speedup": c.torch_seconds / c.packed_seconds,
        "file_bytes": file_bytes,
        "float32_bytes": float_bytes,
        "size_ratio": float_bytes / file_bytes,
        "images": len(c.reference),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "packed_threads": torch.get_num_threads(),
    }
