"""Training speed of experiment rows: CPU time per optimizer step in fp32 eager mode and in the
row's configured mode (e.g. ``precision="bf16"`` + ``compile=True``), side by side in one
process on the same real batches, and the CPU minutes per epoch of the configured mode
(training steps extrapolated to a full epoch, plus one validation pass) and the CPU hours of a
whole run at the row's epochs (compilation and the final test pass not included): what a run
costs on this machine before you start it. A row that distills a teacher runs the teacher's
forward pass on every step, as its training does: a model of the teacher's architecture,
untrained (its weights do not change the cost), so the teacher need not be trained first.

    ONEBIT_DATA=../shared/datasets python benchmarks/bench_training.py mnist-mlp bnn
    ONEBIT_DATA=../shared/datasets python benchmarks/bench_training.py cifar10        # every row
    python benchmarks/bench_training.py mnist-cnn none --steps 50 --threads 2
    python benchmarks/bench_training.py omniglot float --set precision=bf16 --set compile=true

Times are CPU time of this process (``time.process_time``), so other processes on the machine
inflate them less than wall time; the first steps of each mode (compilation) are not timed.
"""

from __future__ import annotations

import argparse
import time

import torch

from onebit.experiments import registry, runner, runs
from onebit.training import TrainConfig, Trainer

WARMUP_STEPS = 3


def _teacher(experiment, reference: str) -> torch.nn.Module:
    """An untrained model of the architecture of the distillation teacher ``reference`` names: a row
    of ``experiment`` (``float``, ``float/seed0``) or a run directory."""
    row = reference.split("/")[0]
    if row in {r.name for r in experiment.rows}:
        config = runner.run_configs(experiment, rows=[row], seeds=1, device="cpu")[0]
    else:
        config = runs.run_config(runs.find_run_dir(reference))
    return runs.build_model(config)


def _trainer(experiment, row: str, overrides: dict, data: str | None) -> Trainer:
    config = runner.run_configs(experiment, rows=[row], seeds=1, device="cpu", overrides=overrides)[0]
    train = TrainConfig.from_dict({**config["train"], "progress": False})
    task = experiment.task_of(config, data)
    torch.manual_seed(0)
    if "distill" in config:
        teacher = _teacher(experiment, str(config["distill"]["teacher"]))
        task = runner.distillation(task, config["distill"], teacher, torch.device("cpu"), compile=train.compile)
    return Trainer(runs.build_model(config), task, train, "/nonexistent/benchmark-run")


def _cpu_seconds_per_step(trainer: Trainer, steps: int) -> float:
    net = trainer.training_module()
    net.train()
    batches = trainer.task.train_batches(torch.Generator().manual_seed(0))
    for _ in range(WARMUP_STEPS):
        trainer.train_step(net, next(batches))
    start = time.process_time()
    for _ in range(steps):
        trainer.train_step(net, next(batches))
    return (time.process_time() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("rows", nargs="*", help="rows to measure (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (experiments train with 1 per run)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: $ONEBIT_DATA or the cache)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="training option of the configured mode, as in `onebit run --set`")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    experiment = registry.get(args.experiment)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} timed steps per mode")
    print(f"{'row':28s} {'fp32 eager':>12s} {'configured':>12s} {'speed-up':>9s} {'CPU-min/epoch':>14s} "
          f"{'CPU-h/run':>10s}  configured mode")
    overrides = runner.parse_overrides(args.set)
    for row in args.rows or [r.name for r in experiment.rows]:
        configured = _trainer(experiment, row, overrides, args.data_root)
        mode = f"precision={configured.precision} compile={configured.config.compile}"
        eager = _trainer(experiment, row, {**overrides, "precision": "fp32", "compile": False}, args.data_root)
        eager_step = _cpu_seconds_per_step(eager, args.steps)
        step = _cpu_seconds_per_step(configured, args.steps)
        start = time.process_time()
        configured.evaluate("val")
        epoch_minutes = (step * configured.task.num_train_batches() + time.process_time() - start) / 60
        run_hours = epoch_minutes * configured.config.epochs / 60
        print(f"{row:28s} {eager_step * 1e3:9.1f} ms {step * 1e3:9.1f} ms {eager_step / step:8.2f}x "
              f"{epoch_minutes:14.2f} {run_hours:10.2f}  {mode}", flush=True)


if __name__ == "__main__":
    main()
