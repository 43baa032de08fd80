"""The benchmark scripts run and print their tables (their figures are measurements, checked by
nobody here; that the C builds they time compute what the runtime computes is checked by the
scripts themselves, which exit with an error otherwise). ``onebit bench`` covers
``bench_kernels.py`` and ``bench_end_to_end.py``, the thin wrappers of its two tables."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"[0-9][0-9,.]*"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_c_times_c_builds_equal_to_the_runtime(require_tools):
    require_tools("cc")
    out = run("bench_c.py", "--quick")
    for label in ("BNN MLP 784-2048x3-10", "VGG-small bnn, width 0.5"):
        assert re.search(rf"^\| {re.escape(label)} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$", out, re.M), out


def test_bench_mcu_measures_a_model_on_the_emulated_board(require_tools):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    out = run("bench_mcu.py", "--only", "784-256-256", "--images", "1", "--zeros")
    rows = [line for line in out.splitlines() if line.startswith("| BNN MLP")]
    assert len(rows) == 1, out
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[0] == "BNN MLP 784-256-256-10" and all(re.fullmatch(NUMBER, c) for c in cells[1:]), rows
    assert "\n- " not in out, out  # no notes: the model built, fitted and ran


def test_bench_training_prices_an_experiment_row(shared_datasets):
    out = run("bench_training.py", "mnist-mlp", "bnn", "--steps", "2", "--set", "compile=false")
    row = next(line for line in out.splitlines() if line.startswith("bnn "))
    assert re.fullmatch(rf"bnn +{NUMBER} ms +{NUMBER} ms +{NUMBER}x +{NUMBER} +{NUMBER}  precision=\w+ "
                        r"compile=False", row), row


def _bench_training():
    spec = importlib.util.spec_from_file_location("bench_training", BENCHMARKS / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes(model) -> dict:
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def test_bench_training_prices_a_distilling_row_with_its_teachers_forward_pass(shared_datasets):
    from onebit.experiments import registry, runner, runs
    from onebit.training.tasks import DistillationTask

    bench, experiment = _bench_training(), registry.get("cifar10")
    trainer = bench._trainer(experiment, "react", {"compile": False}, None)
    assert isinstance(trainer.task, DistillationTask)
    float_row = runs.build_model(runner.run_configs(experiment, rows=["float"], seeds=1)[0])
    assert shapes(trainer.task.teacher) == shapes(float_row)
    run_dir = BENCHMARKS.parent / "results" / "cifar10" / "float" / "seed0"  # a teacher named by its run directory
    assert shapes(bench._teacher(experiment, str(run_dir))) == shapes(float_row)
    assert not isinstance(bench._trainer(experiment, "bireal", {"compile": False}, None).task, DistillationTask)
