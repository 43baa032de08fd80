"""The training loop every experiment uses."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .. import reinforce, schedules
from .._cpu import cpu_label
from ..nn import QuantizedLayer, clip_latent_weights
from ..optim import Bop
from ..quantizers import StochasticSign
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .runlock import run_dir_lock
from .tasks import BatchResult, Task

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "final_accuracy", "resolve_device"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class TrainConfig:
    r"""Hyper-parameters of one training run (all JSON-serializable).

    Attributes:
        epochs: number of passes over the training data.
        batch_size: training batch size (read by the experiment's task).
        optimizer: ``"adam"``, ``"sgd"`` (with ``momentum``), or ``"bop"``: binary weights flip
            by :class:`onebit.optim.Bop` (adaptivity rate ``bop_gamma``, scaled by ``lr_schedule``
            like the learning rate; threshold ``bop_threshold``, constant) while the other
            parameters train with Adam at ``lr``.
        lr: base learning rate; ``lr_schedule`` scales it per epoch (see
            :func:`onebit.schedules.lr_factor`), decaying to ``lr * lr_final_ratio``.
        weight_decay: L2 penalty (applied by the optimizer).
        clip_latent: bound for latent binary weights after every step (``None``: no clipping).
        latent_lr_scale: ``None``, or ``"glorot"``: the learning rate of every latent binary
            weight is multiplied by :math:`1/H`, :math:`H = \sqrt{1.5 / (\text{fan\_in} +
            \text{fan\_out})}` (BinaryConnect's and BNN's ``W_LR_scale``, Courbariaux et al.
            2015/2016), so latent weights initialized at PyTorch's small scale reach the clip
            range within a few hundred steps. Stochastic binarization needs it: it samples +1
            with probability ``(w + 1) / 2``, pure noise while ``|w|`` stays near 0.
        bop_gamma: Bop's adaptivity rate :math:`\gamma` (``optimizer="bop"``).
        bop_threshold: Bop's threshold :math:`\tau` (``optimizer="bop"``).
        grad_clip: maximum gradient norm (``None``: no clipping).
        bn_recalibration_batches: before every validation, re-estimate the batch norms'
            running statistics over this many training batches of the eval-mode network
            (:meth:`Trainer.recalibrate_batch_norm`; 0: keep the statistics gathered in
            training). Needed where the eval-mode network is not the one that trained:
            stochastic binary weights or activations train on samples but evaluate (and deploy)
            their most likely values, so the statistics of training batches misplace every
            batch norm after them.
        slope_schedule: hard-sigmoid slope annealing for binary neurons.
        reinforce_baseline: ``"moving-average"`` of past batch losses; ``"self-critical"``:
            each sample's loss with the binary neurons thresholded (see
            :func:`onebit.reinforce.thresholded`; one extra forward pass per step); or
            ``"leave-one-out"``: the mean loss of the other ``reinforce_samples - 1`` samples of
            the same input (Kool et al. 2019; needs ``reinforce_samples >= 2``).
        reinforce_samples: bit samples drawn per input in each step (the batch is repeated;
            the task must provide ``repeat(batch, times)``).
        reinforce_baseline_momentum: momentum of the REINFORCE moving-average baseline.
        precision: ``"fp32"``, ``"bf16"`` to run the training forward and backward passes
            under :func:`torch.autocast` with bfloat16 (matrix products and convolutions in
            bfloat16: several times faster on CPUs with AMX or AVX512-BF16, and on GPUs; on
            other CPUs it is emulated and many times slower), or ``"auto"``: bf16 where the
            device computes it natively, else fp32 (:func:`resolve_precision`; ``final.json``
            records which). Latent weights, optimizer state and losses stay fp32, and
            validation and test always run in fp32: the reported accuracy is that of the exact
            model :mod:`onebit.deploy` converts.
        compile: train the model's forward and backward passes through
            :func:`torch.compile` (fuses the element-wise work of quantizers and batch norm;
            with ``precision="bf16"`` 1.8-4x less CPU per step for this project's binary
            networks, see ``benchmarks/bench_training.py``). The first epoch pays the
            compilation; on CPU it needs a C++ compiler.
        seed: seeds the data order and every random draw of the run.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        progress: show tqdm progress bars.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_final_ratio: float = 0.01
    clip_latent: float | None = 1.0
    latent_lr_scale: str | None = None
    bop_gamma: float = 1e-4
    bop_threshold: float = 1e-8
    grad_clip: float | None = None
    bn_recalibration_batches: int = 0
    slope_schedule: str = "constant"
    reinforce_baseline: str = "moving-average"
    reinforce_samples: int = 1
    reinforce_baseline_momentum: float = 0.9
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config with the options in ``d`` (a run's ``config.json`` ``train`` section) and the
        defaults for the rest.

        Raises:
            ValueError: ``d`` names an option the config does not have.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


def final_accuracy(final: dict[str, Any]) -> tuple[str, float]:
    """``(split, accuracy)`` of a run's ``final.json``: ``("test", ...)``, or ``("validation", ...)``
    for a run whose data has no test split."""
    if "test_acc" in final:
        return "test", final["test_acc"]
    return "validation", final["val_acc"]


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``"cpu"``, ``"cuda"`` or ``"auto"``: CUDA when available) selects.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for the precision option ``name`` on ``device``: ``"auto"``
    is bf16 where the device has native bfloat16 matrix products (a GPU that supports it; a
    CPU on which oneDNN runs bf16 natively: AVX512-BF16 or AMX), else fp32."""
    if name != "auto":
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; choose one of auto, {', '.join(PRECISIONS)}")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _param_groups(model: nn.Module, latent_lr_scale: str | None) -> list[dict[str, Any]]:
    """Optimizer parameter groups, each with an ``lr_scale`` (see :func:`onebit.schedules.set_lr`)."""
    if latent_lr_scale is None:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if latent_lr_scale != "glorot":
        raise ValueError(f"unknown latent_lr_scale {latent_lr_scale!r}; choose glorot or None")
    groups, latent = [], set()
    for module in model.modules():
        if isinstance(module, QuantizedLayer) and module.has_binary_weight:
            shape = module.weight.shape
            receptive = math.prod(shape[2:])
            glorot = math.sqrt(1.5 / ((shape[0] + shape[1]) * receptive))
            groups.append({"params": [module.weight], "lr_scale": 1.0 / glorot})
            latent.add(id(module.weight))
    groups.append({"params": [p for p in model.parameters() if id(p) not in latent], "lr_scale": 1.0})
    return groups


def _bop_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The latent binary weights as one Bop group (its lr, Bop's gamma, scaled by schedules like
    the learning rate), every other parameter in an Adam group."""
    if config.latent_lr_scale is not None:
        raise ValueError("optimizer='bop' flips binary weights and has no latent learning rate: "
                         "drop latent_lr_scale")
    if not (config.lr > 0 and 0 < config.bop_gamma <= 1):
        raise ValueError(f"optimizer='bop' needs lr > 0 and bop_gamma in (0, 1], got lr={config.lr}, "
                         f"bop_gamma={config.bop_gamma}")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer) and m.has_binary_weight]
    if not layers:
        raise ValueError("optimizer='bop' needs binary weights; this model has none (use adam)")
    if any(not m.weight_quantizer.packs or isinstance(m.weight_quantizer, StochasticSign) for m in layers):
        raise ValueError("optimizer='bop' flips the signs of binary weights; it needs deterministic sign weights "
                         "(bnn, xnor, binaryconnect), not stochastic ones")
    binary = [m.weight for m in layers]
    ids = {id(w) for w in binary}
    return [{"params": binary, "bop": True, "lr_scale": config.bop_gamma / config.lr},
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0}]


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "bop":
        groups = _bop_groups(model, config)
        for group in groups:
            group["lr"] = config.lr * group["lr_scale"]
        return Bop(groups, lr=config.lr, threshold=config.bop_threshold, weight_decay=config.weight_decay)
    params = _param_groups(model, config.latent_lr_scale)
    if config.optimizer == "adam":
        # fused: one kernel per step for all parameters instead of a dozen passes over them
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam, sgd or bop")


def _to(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


@dataclass
class _State:
    """Everything a resumed run needs besides model and optimizer."""

    epoch: int = 0  # epochs completed
    best_val_acc: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    # CPU time of this process (all its threads; not inductor's compile workers) while training
    train_cpu_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``task`` with ``config``, writing into ``run_dir``:

    - ``metrics.jsonl``: one JSON line per epoch (train/val loss and accuracy, lr, slope, time);
    - ``checkpoint.pt`` (or ``checkpoint_path``): model, optimizer, RNG and loop state, written atomically every epoch,
      plus the best-validation model (``best_model``);
    - ``final.json``: test metrics of the best-validation model (``test_acc``, ``test_loss``; or
      ``val_acc``, ``val_loss`` for a task whose ``final_split`` is ``"val"``, without test data),
      training wall time, CPU time (of every process, summed), threads per process and processes;
    - TensorBoard events under ``tensorboard/``.

    The test split is evaluated once, at the end, with the weights of the epoch of best
    validation accuracy. ``fit(resume=True)`` continues from ``checkpoint.pt``; a resumed run
    ends with the same metrics as an uninterrupted one.

    A task may define ``final_evaluation(model) -> dict`` (e.g. several few-shot protocols with
    confidence intervals); it is called once with the best-validation model and its result is
    stored under ``"evaluations"`` in ``final.json``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel
    (gloo on CPU, nccl on GPU), each process takes its share of every batch, evaluation is
    shared as :meth:`evaluate` says, and rank 0 writes the files.
    """

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, run_dir: str | os.PathLike,
                 checkpoint_path: str | os.PathLike | None = None) -> None:
        self.config = config
        self.task = task
        self.run_dir = Path(run_dir)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else self.run_dir / "checkpoint.pt"
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.optimizer = _make_optimizer(config, self.model)
        self.baseline = reinforce.MovingAverageBaseline(config.reinforce_baseline_momentum)
        self.uses_reinforce = reinforce.has_reinforce_neurons(model)
        if config.reinforce_baseline not in reinforce.BASELINES:
            raise ValueError(f"unknown reinforce_baseline {config.reinforce_baseline!r}; choose one of "
                             f"{', '.join(reinforce.BASELINES)}")
        self.precision = resolve_precision(config.precision, self.device)
        if config.reinforce_samples < 1 or (config.reinforce_baseline == "leave-one-out") != (
                config.reinforce_samples > 1):
            raise ValueError("reinforce_samples >= 2 goes with reinforce_baseline='leave-one-out' (and only with it)")
        if config.bn_recalibration_batches < 0:
            raise ValueError(f"bn_recalibration_batches must be >= 0, got {config.bn_recalibration_batches}")
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world_size > 1 else 0
        self.is_main = self.rank == 0
        self.state = _State()
        self.best_model: dict[str, torch.Tensor] | None = None

    # -- persistence -------------------------------------------------------------------
    def _save(self) -> None:
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "best_model": self.best_model,
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "baseline": self.baseline.state_dict(),
                "state": asdict(self.state),
            },
            self.checkpoint_path,
        )

    def _load(self) -> None:
        ckpt = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(ckpt["model"])
        self.best_model = ckpt["best_model"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.baseline.load_state_dict(ckpt["baseline"])
        self.state = _State(**ckpt["state"])

    # -- loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (continuing a checkpoint when ``resume``), then
        evaluate the best-validation model on the test split. Returns the final metrics.

        Raises:
            RunDirBusy: another process is training into the same run directory, or into the
                same checkpoint kept outside it (two run directories of one configuration under
                ``$ONEBIT_CHECKPOINTS``).
        """
        with contextlib.ExitStack() as locks:
            if self.is_main:
                locks.enter_context(run_dir_lock(self.run_dir))
                if self.checkpoint_path.parent.resolve() != self.run_dir.resolve():
                    locks.enter_context(run_dir_lock(self.checkpoint_path.parent))
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        if resume and self.checkpoint_path.exists():
            self._load()
        else:
            torch.manual_seed(cfg.seed + self.rank)
        writer = self._tensorboard() if self.is_main else None
        net = self.training_module()
        try:
            for epoch in range(self.state.epoch, cfg.epochs):
                record = self._train_epoch(net, epoch)
                if cfg.bn_recalibration_batches:
                    self.recalibrate_batch_norm(cfg.bn_recalibration_batches, seed=cfg.seed * 100_003 + epoch)
                val_loss, val_acc = self.evaluate("val")
                record.update(val_loss=val_loss, val_acc=val_acc)
                self.state.history.append(record)
                if val_acc > self.state.best_val_acc:
                    self.state.best_val_acc, self.state.best_epoch = val_acc, epoch
                    self.best_model = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                self.state.epoch = epoch + 1
                if self.is_main:
                    self._save()
                    self._write_metrics()
                    for key, value in record.items():
                        if key != "epoch":
                            writer.add_scalar(key.replace("_", "/", 1), value, epoch)
                    writer.flush()
        finally:
            if writer is not None:
                writer.close()
        return self._finish()

    def _write_metrics(self) -> None:
        """``metrics.jsonl`` from the history (a checkpoint's too: a run directory recreated
        beside a finished external checkpoint gets its epochs back)."""
        lines = "".join(json.dumps(r) + "\n" for r in self.state.history)
        (self.run_dir / "metrics.jsonl").write_text(lines)

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def training_module(self) -> nn.Module:
        """The module training steps run: the model, wrapped in DistributedDataParallel under
        ``torchrun`` and in :func:`torch.compile` with ``config.compile``. It shares the
        model's parameters; checkpoints and evaluation use the plain model."""
        net = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        if not self.config.compile:
            return net
        # A fresh cache per run: several runs in one process (the runner's workers) would
        # otherwise exhaust dynamo's recompile limit and silently fall back to eager.
        torch._dynamo.reset()
        return torch.compile(net)

    def _train_epoch(self, net: nn.Module, epoch: int) -> dict[str, Any]:
        cfg = self.config
        lr = cfg.lr * schedules.lr_factor(cfg.lr_schedule, epoch, cfg.epochs, cfg.lr_final_ratio)
        schedules.set_lr(self.optimizer, lr)
        slope = schedules.slope_at(cfg.slope_schedule, epoch)
        schedules.set_slope(self.model, slope)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        net.train()
        total_loss, correct, count = 0.0, 0, 0
        start, cpu_start = time.perf_counter(), time.process_time()
        batches = self.task.train_batches(generator, self.rank, self.world_size)
        bar = tqdm(batches, total=self.task.num_train_batches(self.world_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        for step, batch in enumerate(bar):
            try:
                result = self.train_step(net, batch)
            except TrainingDiverged as err:
                raise TrainingDiverged(f"{err} at epoch {epoch + 1}, step {step + 1}; lower the learning rate "
                                       "or enable gradient clipping (grad_clip)") from None
            n = result.per_sample_loss.shape[0]
            total_loss += float(result.per_sample_loss.sum())
            correct += result.correct
            count += n
            bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{correct / count:.4f}", refresh=False)
        cpu_seconds = time.process_time() - cpu_start
        total_loss, correct, count, cpu_seconds = self._all_reduce(total_loss, correct, count, cpu_seconds)
        seconds = time.perf_counter() - start
        self.state.train_seconds += seconds
        self.state.train_cpu_seconds += cpu_seconds
        return {"epoch": epoch + 1, "train_loss": total_loss / count, "train_acc": correct / count,
                "lr": lr, "slope": slope, "epoch_seconds": seconds}

    def train_step(self, net: nn.Module, batch: tuple[torch.Tensor, ...]) -> BatchResult:
        """One optimizer step on ``batch`` with ``net`` (see :meth:`training_module`): forward
        (under autocast with ``precision="bf16"``), the REINFORCE surrogate if the model has
        REINFORCE neurons, backward, gradient clipping, the optimizer step and latent-weight
        clipping. Returns the batch's per-sample losses (fp32, detached) and correct count.

        Raises:
            TrainingDiverged: the loss is NaN or infinite (nothing is updated).
        """
        cfg = self.config
        batch = _to(batch, self.device)
        if self.uses_reinforce and cfg.reinforce_samples > 1:
            batch = self.task.repeat(batch, cfg.reinforce_samples)
        with self._autocast():
            result = self.task.step(net, batch)
        per_sample_loss = result.per_sample_loss.float()
        loss = per_sample_loss.mean()
        if self.uses_reinforce:
            baseline = self._baseline(net, batch, per_sample_loss)
            loss = loss + reinforce.surrogate_loss(self.model, per_sample_loss, baseline)
        if not torch.isfinite(loss):  # the REINFORCE surrogate included
            raise TrainingDiverged(f"loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if cfg.clip_latent is not None:
            clip_latent_weights(self.model, cfg.clip_latent)
        return BatchResult(per_sample_loss.detach(), result.correct)

    def _baseline(self, net: nn.Module, batch, per_sample_loss: torch.Tensor):
        kind = self.config.reinforce_baseline
        if kind == "moving-average":
            return self.baseline
        if kind == "leave-one-out":
            return reinforce.leave_one_out_baseline(per_sample_loss, self.config.reinforce_samples)
        with torch.no_grad(), reinforce.thresholded(self.model), self._autocast():
            return self.task.step(net, batch).per_sample_loss.float()

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _all_reduce(self, *values: float) -> list[float]:
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def recalibrate_batch_norm(self, batches: int, seed: int) -> None:
        r"""Replace every batch norm's running statistics by the average, over ``batches``
        training batches, of the batch mean and (unbiased) variance of its input in the
        *eval-mode* network: quantizers at their deterministic outputs, no dropout.

        The batches come from a generator seeded with ``seed`` and the global random state is
        left as it was, so training (and resuming it) is unaffected; training itself normalizes
        with batch statistics and never reads these.
        """
        norms = [m for m in self.model.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
        if not norms:
            return
        was_training = self.model.training
        self.model.eval()
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for batch in itertools.islice(self.task.train_batches(torch.Generator().manual_seed(seed)), batches):
                self.task.step(self.model, _to(batch, self.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.model.train(was_training)

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> tuple[float, float]:
        """Mean loss and accuracy of ``model`` (default: the trained model) on ``split``, in
        eval mode.

        Under ``torchrun`` it is a collective call: every process first takes the model's buffers
        (batch-norm statistics, which each process updates from its own last batch) from rank 0,
        whose model is the one checkpointed; process ``rank`` then evaluates every
        ``world_size``-th batch and the sums are all-reduced, so every process must call it and
        every process gets the whole split's figures."""
        model = self.model if model is None else model
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        was_training = model.training
        model.eval()
        total_loss, correct, count = 0.0, 0, 0
        batches = itertools.islice(self.task.eval_batches(split), self.rank, None, self.world_size)
        for batch in batches:
            result = self.task.step(model, _to(batch, self.device))
            total_loss += float(result.per_sample_loss.sum())
            correct += result.correct
            count += result.per_sample_loss.shape[0]
        model.train(was_training)
        total_loss, correct, count = self._all_reduce(total_loss, correct, count)
        return total_loss / max(count, 1), correct / max(count, 1)

    def _finish(self) -> dict[str, Any]:
        final_model = copy.deepcopy(self.model)
        if self.best_model is not None:
            final_model.load_state_dict(self.best_model)
        split = getattr(self.task, "final_split", "test")
        loss, acc = self.evaluate(split, final_model)
        final = {
            f"{split}_loss": loss,
            f"{split}_acc": acc,
            "best_epoch": self.state.best_epoch + 1,
            "best_val_acc": self.state.best_val_acc,
            "epochs": self.state.epoch,
            "train_seconds": self.state.train_seconds,
            "train_cpu_seconds": self.state.train_cpu_seconds,
            "threads": torch.get_num_threads(),
            "processes": self.world_size,
        }
        if not all(math.isfinite(v) for v in final.values()):
            raise TrainingDiverged(f"final metrics are not finite: {final}")
        final["precision"] = self.precision
        final["cpu"] = cpu_label()
        final_evaluation = getattr(self.task, "final_evaluation", None)
        if final_evaluation is not None:
            final["evaluations"] = final_evaluation(final_model)
        if self.is_main:
            self._write_metrics()
            write_json(final, self.run_dir / "final.json")
        return final
