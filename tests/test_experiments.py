"""End-to-end: the CLI on real MNIST (tiny subsets, one epoch)."""

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from onebit.cli import main
from onebit.experiments import get


@pytest.mark.slow
@pytest.mark.parametrize("experiment,rows", [
    ("mnist-mlp", ["float", "bnn"]),
    ("mnist-cnn", ["none", "deterministic-st-both", "stochastic-reinforce-last"]),
])
def test_quick_run_and_report(shared_datasets, tmp_path, experiment, rows, capsys):
    out = tmp_path / "runs"
    assert main(["run", experiment, "--quick", "--rows", *rows, "--out", str(out), "--no-progress"]) == 0
    exp_dir = out / experiment
    for row in rows:
        run = exp_dir / row / "seed0"
        assert {"config.json", "metrics.jsonl", "final.json", "checkpoint.pt", "tensorboard"} <= {
            p.name for p in run.iterdir()}
    results = json.loads((exp_dir / "results.json").read_text())
    assert results["experiment"] == experiment
    assert sorted(r["name"] for r in results["rows"]) == sorted(rows)  # in the experiment's row order
    for r in results["rows"]:  # one seed: the row's mean is its run's figure
        final = json.loads((exp_dir / r["name"] / "seed0" / "final.json").read_text())
        assert r["test_acc_mean"] == final["test_acc"] and r["epochs"] == final["epochs"] == 1
    assert (exp_dir / "curves.png").stat().st_size > 0
    heatmaps = sorted((exp_dir / "heatmaps").glob("*.png"))
    assert heatmaps  # every row here but the float ones has binary activations
    report = (exp_dir / "results.md").read_text()
    assert "| row |" in report
    pending = [r.name for r in get(experiment).rows if r.name not in rows]
    assert f"Not run yet: {', '.join(pending)} (`onebit run {experiment} --resume --rows {' '.join(pending)}`" in report
    # rows with binary weights: the packed model of seed 0 evaluated beside PyTorch
    packed = {r["name"]: r["packed"] for r in results["rows"] if "packed" in r}
    assert set(packed) == ({"bnn"} if experiment == "mnist-mlp" else set())  # study B's CNN has float weights
    for p in packed.values():
        assert p["images"] == 500 and p["agreement"] >= 0.998  # one image of 500 may differ
        assert abs(p["accuracy"]["test"]["packed"] - p["accuracy"]["test"]["torch"]) <= 0.002
        assert p["size_ratio"] > 20 and p["file_bytes"] > 0
        assert p["packed_threads"] == p["torch_threads"]  # compared at equal thread counts
    for row in packed:  # the evaluated file is kept beside packed.json, as committed results ship it
        assert (exp_dir / row / "seed0" / "model.onebit").stat().st_size == packed[row]["file_bytes"]
    if packed:
        assert " each)" in (exp_dir / "results.md").read_text()

    # a second run reuses the finished runs and the packed evaluations stored with them (it measures
    # only runs without one); `onebit report` measures again unless told --stored-packed
    def packed_speeds() -> list[float]:
        rows_ = json.loads((exp_dir / "results.json").read_text())["rows"]
        return [r["packed"]["packed_images_per_s"] for r in rows_ if "packed" in r]

    for row in packed:
        stored = exp_dir / row / "seed0" / "packed.json"
        stored.write_text(json.dumps({**json.loads(stored.read_text()), "packed_images_per_s": -1.0}))
    assert main(["run", experiment, "--quick", "--rows", *rows, "--out", str(out), "--no-progress"]) == 0
    assert f"{len(rows)} already finished" in capsys.readouterr().out
    assert packed_speeds() == [-1.0] * len(packed)
    (exp_dir / "results.md").unlink()
    assert main(["report", str(exp_dir), "--stored-packed"]) == 0
    assert (exp_dir / "results.md").exists() and packed_speeds() == [-1.0] * len(packed)
    assert main(["report", str(exp_dir)]) == 0
    assert len(packed_speeds()) == len(packed) and all(speed > 0 for speed in packed_speeds())
    for row in packed:  # --stored-packed measures a run that has none stored
        (exp_dir / row / "seed0" / "packed.json").unlink()
    assert main(["report", str(exp_dir), "--stored-packed"]) == 0
    assert all((exp_dir / row / "seed0" / "packed.json").exists() for row in packed)
    assert len(packed_speeds()) == len(packed) and all(speed > 0 for speed in packed_speeds())
    assert main(["report", str(exp_dir), "--no-packed"]) == 0
    assert packed_speeds() == [] and "Packed inference" not in (exp_dir / "results.md").read_text()
    assert main(["report", str(exp_dir), "--stored-packed"]) == 0

    # committed records (a fresh clone: no checkpoints, no TensorBoard logs) still make the report,
    # keeping the heatmaps and packed evaluations computed while the checkpoints were there
    results = json.loads((exp_dir / "results.json").read_text())
    packed = {r["name"]: r["packed"] for r in results["rows"] if "packed" in r}
    for row in rows:
        (exp_dir / row / "seed0" / "checkpoint.pt").unlink()
        shutil.rmtree(exp_dir / row / "seed0" / "tensorboard")
    assert main(["report", str(exp_dir)]) == 0
    again = json.loads((exp_dir / "results.json").read_text())
    assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in results["rows"]]
    assert {r["name"]: r["packed"] for r in again["rows"] if "packed" in r} == packed
    assert sorted((exp_dir / "heatmaps").glob("*.png")) == heatmaps
    assert all(h.name in (exp_dir / "results.md").read_text() for h in heatmaps)
    assert main(["run", experiment, "--quick", "--rows", *rows, "--out", str(out), "--no-progress"]) == 0
    assert f"{len(rows)} already finished" in capsys.readouterr().out

    # a row whose records are gone altogether leaves the table: a report holds only what its records say
    lost = rows[-1]
    shutil.rmtree(exp_dir / lost)
    assert main(["report", str(exp_dir)]) == 0
    assert [r["name"] for r in json.loads((exp_dir / "results.json").read_text())["rows"]] == rows[:-1]
    markdown = (exp_dir / "results.md").read_text()
    assert f"| {lost} |" not in markdown and lost in markdown.split("Not run yet: ")[1].split(" (")[0].split(", ")


def test_experiment_notes_are_fixed_text():
    """A note states the protocol: plain text, the same whether or not data or runs are at hand."""
    from onebit.experiments import names

    for name in names():
        assert all(type(note) is str for note in get(name).notes), name


def test_unknown_experiment_and_row(capsys):
    assert main(["run", "mnist-resnet", "--quick"]) == 2
    assert "valid experiments" in capsys.readouterr().err
    assert main(["run", "mnist-cnn", "--quick", "--rows", "nonsense"]) == 2
    assert "has no row" in capsys.readouterr().err


def test_missing_data_says_how_to_fix(tmp_path, capsys):
    code = main(["run", "mnist-cnn", "--quick", "--rows", "none", "--out", str(tmp_path / "runs"),
                 "--data-root", str(tmp_path / "empty"), "--no-progress"])
    assert code == 2
    assert "ONEBIT_DATA" in capsys.readouterr().err


def test_data_means_a_dataset_and_a_root_is_named_as_such(tmp_path, capsys):
    """`--data` names a dataset or an image folder; a dataset root passed there says where it goes."""
    root = tmp_path / "datasets"
    (root / "mnist").mkdir(parents=True)
    args = ["run", "mnist-cnn", "--quick", "--rows", "none", "--out", str(tmp_path / "runs"), "--no-progress"]
    assert main([*args, "--data", str(root)]) == 2
    assert f"--data-root {root}" in capsys.readouterr().err
    assert main([*args, "--data", "imagenet"]) == 2
    assert "neither a built-in dataset (mnist, fashion-mnist, cifar10, omniglot) nor an image folder" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_two_process_gloo_run(shared_datasets, tmp_path):
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "onebit.cli", "run", "mnist-cnn", "--quick", "--rows", "deterministic-st-first",
           "--out", str(out), "--no-progress", "--device", "cpu", "--set", "task.eval_batch_size=300"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from onebit.experiments.runs import load_trained

    run_dir = out / "mnist-cnn" / "deterministic-st-first" / "seed0"
    final = json.loads((run_dir / "final.json").read_text())
    assert final["processes"] == 2
    # the two processes shared the test batches (300, 300, 300 and 100 images: two each); one process
    # evaluating them all agrees
    model, config = load_trained(run_dir)
    task = get("mnist-cnn").task_of(config)
    with torch.no_grad():
        correct = sum(task.step(model, batch).correct for batch in task.eval_batches("test"))
    assert final["test_acc"] == correct / len(task.splits["test"].labels)
    assert (out / "mnist-cnn" / "results.md").exists()


@pytest.mark.slow
def test_set_overrides_training_options(shared_datasets, tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "mnist-cnn", "--quick", "--rows", "stochastic-reinforce-first", "--out", str(out),
                 "--no-progress", "--set", "reinforce_baseline=self-critical", "--set", "lr=0.002"]) == 0
    config = json.loads((out / "mnist-cnn" / "stochastic-reinforce-first" / "seed0" / "config.json").read_text())
    assert config["train"]["reinforce_baseline"] == "self-critical" and config["train"]["lr"] == 0.002
    assert main(["run", "mnist-cnn", "--quick", "--set", "learning_rate=1", "--out", str(out)]) == 2
    assert main(["run", "mnist-cnn", "--quick", "--set", "lr", "--out", str(out)]) == 2


def test_set_model_overrides_replace_constructor_arguments():
    from onebit.experiments import registry
    from onebit.experiments.runner import parse_overrides, run_configs

    cifar = registry.get("cifar10")
    overrides = parse_overrides(["model.width=0.75", "lr=0.002"])
    config, = run_configs(cifar, seeds=1, rows=["bnn"], overrides=overrides)
    assert config["model"] == {"name": "vgg_small", "recipe": "bnn", "width": 0.75}
    assert config["train"]["lr"] == 0.002 and "model.width" not in config["train"]
    quick, = run_configs(cifar, quick=True, seeds=1, rows=["bnn"], overrides=overrides)
    assert quick["model"]["width"] == 0.75  # an explicit override beats the quick width
    with pytest.raises(ValueError, match="row 'bnn' .*model.depth=3"):
        run_configs(cifar, seeds=1, rows=["bnn"], overrides={"model.depth": 3})
    with pytest.raises(ValueError, match="row .float. .*width multiplier must be positive"):
        run_configs(cifar, seeds=1, rows=["float"], overrides={"model.width": -1})
    for bad in ("model.name=mlp", "model.=1"):
        with pytest.raises(ValueError, match="model.ARGUMENT=VALUE"):
            parse_overrides([bad])


def test_set_task_overrides_replace_task_options(shared_datasets):
    from onebit.experiments import registry
    from onebit.experiments.runner import parse_overrides, run_configs

    cifar, mnist = registry.get("cifar10"), registry.get("mnist-mlp")
    config, = run_configs(cifar, seeds=1, rows=["float"], overrides=parse_overrides(["task.cutout=8"]))
    # the row's own task options stay unless replaced
    assert config["task"] == {"cutout": 8, "label_smoothing": 0.1} and "task.cutout" not in config["train"]
    config, = run_configs(mnist, quick=True, seeds=1, rows=["bnn"],
                          overrides=parse_overrides(["task.shift=2", "task.label_smoothing=0.1"]))
    task = mnist.task_of(config)
    assert task.augment.keywords == {"padding": 2, "flip": False, "cutout": 0} and task.label_smoothing == 0.1
    with pytest.raises(ValueError, match="experiment 'cifar10': unknown task option.s. mixup; valid: shift, flip"):
        run_configs(cifar, seeds=1, rows=["float"], overrides={"task.mixup": 0.2})


@pytest.mark.slow
def test_runs_stored_before_a_new_training_option_stay_resumable(shared_datasets, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["run", "mnist-cnn", "--quick", "--rows", "none", "--seeds", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    config_path = out / "mnist-cnn" / "none" / "seed0" / "config.json"
    config = json.loads(config_path.read_text())
    del config["train"]["reinforce_samples"]  # as written by a onebit without that option
    config_path.write_text(json.dumps(config))
    assert main(args) == 0  # recognised as the same, finished run
    config["train"]["lr"] = 0.5
    config_path.write_text(json.dumps(config))
    assert main(args) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("mnist", (10000, 1, 28, 28)), ("cifar10", (10000, 3, 32, 32))])
def test_test_arrays_match_the_training_normalization(shared_datasets, name, shape):
    """`onebit infer` feeds packed models the test set normalized exactly as training did."""
    import numpy as np

    from onebit.data import dataset
    from onebit.experiments import get

    images, labels = dataset(name).test_arrays()
    assert images.shape == shape and images.dtype == np.float32 and labels.shape == (shape[0],)
    experiment = {"mnist": "mnist-cnn", "cifar10": "cifar10"}[name]
    task = get(experiment).build_task(batch_size=64)
    first, first_labels = next(task.eval_batches("test"))
    np.testing.assert_allclose(images[: len(first)], first.numpy(), rtol=1e-6, atol=1e-6)
    assert np.array_equal(labels[: len(first)], first_labels.numpy())


@pytest.fixture(scope="module")
def trained_bnn(shared_datasets_dir, tmp_path_factory):
    """``(run_dir, checkpoints)``: a quick mnist-mlp bnn run (one epoch on a tiny subset) trained with
    ``$ONEBIT_CHECKPOINTS=checkpoints``, so its checkpoint is kept outside its run directory."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONEBIT_CHECKPOINTS", str(root / "checkpoints"))
        assert main(["run", "mnist-mlp", "--quick", "--rows", "bnn", "--out", str(root / "runs"),
                     "--data-root", str(shared_datasets_dir), "--no-progress"]) == 0
    return root / "runs" / "mnist-mlp" / "bnn" / "seed0", root / "checkpoints"


@pytest.mark.slow
def test_export_and_infer_a_trained_run(trained_bnn, shared_datasets, tmp_path, monkeypatch, capsys):
    run, checkpoints = trained_bnn
    monkeypatch.setenv("ONEBIT_CHECKPOINTS", str(checkpoints))
    final = json.loads((run / "final.json").read_text())
    packed = tmp_path / "bnn.onebit"
    assert main(["export", str(run.parent), "-o", str(packed)]) == 0
    assert packed.read_bytes() == (run / "model.onebit").read_bytes()  # what the run's report shipped
    capsys.readouterr()
    assert main(["infer", str(run / "model.onebit")]) == 0  # the dataset comes from the file's metadata
    printed = capsys.readouterr().out
    assert "on mnist test (10,000 images, uint8 input)" in printed  # exported with the input normalization
    accuracy = float(printed.split("accuracy ")[1].split()[0])
    assert accuracy > 0.5 and abs(accuracy - final["test_acc"]) < 0.05  # quick runs test on 1,000 images
    from onebit.data import dataset
    from onebit.deploy import load

    model = load(packed)
    (normalized, _), (codes, _) = dataset("mnist").test_arrays(), dataset("mnist").test_arrays(raw=True)
    assert codes.dtype == np.uint8 and normalized.dtype == np.float32
    assert (model.predict(codes) == model.predict(normalized)).mean() >= 0.999


@pytest.mark.slow
def test_summary_of_a_trained_run(trained_bnn, capsys):
    run, _ = trained_bnn
    printed = []
    for path in (run, run.parent, run.parent.parent):  # a run, a row, an experiment directory
        assert main(["summary", str(path)]) == 0
        printed.append(capsys.readouterr().out)
    assert "BinaryLinear" in printed[0] and "Compression ratio" in printed[0]
    assert printed[1] == printed[2] == printed[0]


@pytest.mark.slow
def test_bench_reads_a_trained_runs_checkpoint_where_it_is_kept(trained_bnn, monkeypatch, capsys):
    run, checkpoints = trained_bnn
    assert main(["bench", "--run-dir", str(run.parent), "--quick", "--threads", "1"]) == 2
    assert "ONEBIT_CHECKPOINTS" in capsys.readouterr().err  # nothing beside the run: it says where to look
    monkeypatch.setenv("ONEBIT_CHECKPOINTS", str(checkpoints))
    assert main(["bench", "--run-dir", str(run.parent), "--quick", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "binary GEMM vs torch" in printed and "end to end: mnist-mlp/bnn;" in printed
    end_to_end, layers = printed.split("end to end:")[1].split("packed model per layer at batch 256")
    assert [line.split()[0] for line in end_to_end.splitlines()[6:]] == ["1", "256"]  # one line per batch size
    rows = [line.split() for line in layers.splitlines()[2:]]
    assert [row[1] for row in rows[:-2]] == ["flatten", "binary_dense", "binary_dense", "binary_dense"]
    float_total, u8_total = (float(v) for v in rows[-1][1:])
    assert rows[-2][:2] == ["sum", "of"] and 0 < float(rows[-2][3]) <= 1.5 * float_total and u8_total > 0


@pytest.mark.slow
def test_training_benchmark_compares_eager_with_the_configured_mode(shared_datasets):
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_training.py")
    result = subprocess.run([sys.executable, script, "mnist-cnn", "none", "--steps", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("none "))
    eager_ms, configured_ms = (float(v) for v in row.split()[1:5:2])
    assert eager_ms > 0 and configured_ms > 0 and "precision=fp32 compile=False" in row
    epoch_minutes, run_hours = (float(v) for v in row.split()[6:8])
    assert abs(run_hours - epoch_minutes * 10 / 60) < 0.01  # mnist-cnn trains 10 epochs


def test_report_train_time_names_cpu_time_precision_and_the_machines_recorded():
    from onebit.experiments.render import _train_time

    row = {"train_seconds_mean": 1200.0, "train_cpu_seconds_mean": 900.0, "precision": ["bf16"], "cpu": []}
    assert _train_time(row) == "1200 s (15.0 CPU-min, bf16)"
    assert _train_time({**row, "precision": ["bf16", "fp32"]}) == "1200 s (15.0 CPU-min, bf16/fp32)"
    machines = ["AMD EPYC family 26 model 2 (AVX512-BF16)", "Intel Xeon 8488C (AMX)"]
    assert _train_time({**row, "cpu": machines}) == (
        "1200 s (15.0 CPU-min, bf16, on AMD EPYC family 26 model 2 (AVX512-BF16) and Intel Xeon 8488C (AMX))")


def test_packed_table_names_threads_per_row_when_evaluations_differ():
    from onebit.experiments.render import _packed_table

    def row(name, threads):
        packed = {"accuracy": {"test": {"torch": 0.8, "packed": 0.8}}, "agreement": 1.0, "max_output_diff": 0.0,
                  "torch_images_per_s": 100.0, "packed_images_per_s": 200.0, "speedup": 2.0, "file_bytes": 2048,
                  "size_ratio": 30.0, "images": 10000, "batch_size": 256, "torch_threads": threads,
                  "packed_threads": threads}
        return {"name": name, "packed": packed}

    same = "\n".join(_packed_table([row("a", 1), row("b", 1)]))
    assert "in one process (1 thread each)" in same and "200 (1 thread" not in same
    mixed = "\n".join(_packed_table([row("a", 2), row("b", 1)]))
    assert "in one process per row" in mixed
    assert "| a |" in mixed and "100 / 200 (2 threads each) |" in mixed and "100 / 200 (1 thread each) |" in mixed


@pytest.mark.slow
def test_checkpoints_kept_outside_the_run_directories(shared_datasets, tmp_path, monkeypatch, capsys):
    """$ONEBIT_CHECKPOINTS: run records in one tree (e.g. results/ in a recreated work tree),
    checkpoints in another; an interrupted run resumes from there and reports read them."""
    from onebit.experiments.runs import checkpoint_path

    monkeypatch.setenv("ONEBIT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    out, row = tmp_path / "results", "deterministic-st-first"
    args = ["run", "mnist-cnn", "--quick", "--rows", row, "--out", str(out), "--no-progress"]
    assert main(args) == 0
    run = out / "mnist-cnn" / row / "seed0"
    checkpoint = checkpoint_path(run)
    assert checkpoint.is_relative_to(tmp_path / "checkpoints") and checkpoint.exists()
    assert not (run / "checkpoint.pt").exists()
    assert (out / "mnist-cnn" / "heatmaps" / f"{row}__features.3.png").exists()  # read the external checkpoint

    # another configuration of the same run gets another checkpoint; a training option that a later
    # onebit adds, at its default, keeps it
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "train": {**config["train"], "lr": 0.5}}))
    assert checkpoint_path(run) != checkpoint
    (run / "config.json").write_text(json.dumps(config))
    from dataclasses import dataclass

    from onebit.experiments import runs

    @dataclass
    class Later(runs.TrainConfig):
        new_option: float = 0.5

    with monkeypatch.context() as later:
        later.setattr(runs, "TrainConfig", Later)
        assert checkpoint_path(run) == checkpoint

    # a run killed after its last checkpoint (no final.json) resumes from the external file, also
    # in a recreated run directory (a fresh checkout keeps only config.json): the epochs come back
    final = json.loads((run / "final.json").read_text())
    metrics = (run / "metrics.jsonl").read_text()
    (run / "final.json").unlink()
    (run / "metrics.jsonl").unlink()
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((run / "final.json").read_text())
    assert resumed["test_acc"] == final["test_acc"] and resumed["train_seconds"] == final["train_seconds"]
    assert (run / "metrics.jsonl").read_text() == metrics
    # without --resume it starts over, removing the stale checkpoint first
    (run / "final.json").unlink()
    assert main(args) == 0
    assert "starting over" in capsys.readouterr().out and checkpoint.exists()

    # the same configuration in another --out shares the checkpoint: it waits for no one, it fails
    from onebit.training import run_dir_lock

    with run_dir_lock(checkpoint.parent):  # as a process training that checkpoint holds it
        assert main([*args[:5], "--out", str(tmp_path / "elsewhere"), "--no-progress", "--resume"]) == 2
    assert f"{checkpoint.parent} is in use" in capsys.readouterr().err


def test_experiment_json_keeps_every_command_that_ran_there(tmp_path):
    from onebit.experiments.runner import _record_command

    path = tmp_path / "experiment.json"
    for command in ("onebit run mnist-mlp", "onebit run mnist-mlp --rows xnor", "onebit run mnist-mlp --rows xnor"):
        _record_command(path, "mnist-mlp", command)
    info = json.loads(path.read_text())
    assert info["command"] == "onebit run mnist-mlp --rows xnor"
    assert info["commands"] == ["onebit run mnist-mlp", "onebit run mnist-mlp --rows xnor"]


def test_run_refuses_a_run_directory_another_process_trains(tmp_path, capsys):
    from onebit.training import run_dir_lock

    out = tmp_path / "runs"
    with run_dir_lock(out / "mnist-cnn" / "none" / "seed0"):
        assert main(["run", "mnist-cnn", "--quick", "--rows", "none", "--out", str(out), "--no-progress"]) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err


_ORPHAN_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from onebit.experiments.runner import _exit_with_parent
from onebit.training import run_dir_lock

def hold(run_dir):
    with run_dir_lock(run_dir):
        time.sleep(120)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))
    pool.submit(hold, sys.argv[1])
    time.sleep(120)
"""


def test_workers_of_a_killed_runner_stop(tmp_path):
    """`onebit run --jobs N` killed (SIGKILL, no clean-up) must not leave its workers training."""
    import time

    from onebit.training import RunDirBusy, run_dir_lock

    script, run = tmp_path / "runner.py", tmp_path / "run"
    script.write_text(_ORPHAN_SCRIPT)
    runner = subprocess.Popen([sys.executable, str(script), str(run)])
    try:
        deadline = time.monotonic() + 60
        while not (run / ".lock").exists() or not (run / ".lock").read_text():  # the worker holds the run
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.2)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with run_dir_lock(run):
                break
        except RunDirBusy:
            assert time.monotonic() < deadline, "the orphaned worker still holds the run directory"
            time.sleep(0.2)


@pytest.mark.parametrize("args, minimum", [
    (["run", "mnist-mlp", "--seeds", "0"], 1), (["run", "mnist-mlp", "--jobs", "-1"], 1),
    (["run", "mnist-mlp", "--epochs", "x"], 1), (["run", "mnist-mlp", "--first-seed", "-1"], 0),
    (["bench", "--threads", "0"], 1), (["infer", "model.onebit", "--batch-size", "0"], 1),
])
def test_cli_rejects_counts_below_their_minimum(args, minimum, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and f"expected an integer >= {minimum}" in capsys.readouterr().err


def test_first_seed_numbers_the_runs_from_there(tmp_path):
    from onebit.experiments import registry, run_experiment
    from onebit.experiments.runner import run_configs
    from onebit.experiments.runs import run_dir_of

    configs = run_configs(registry.get("mnist-mlp"), seeds=2, first_seed=1, rows=["float"])
    assert [(c["seed"], c["train"]["seed"]) for c in configs] == [(1, 1), (2, 2)]
    assert [run_dir_of(tmp_path, c).name for c in configs] == ["seed1", "seed2"]
    with pytest.raises(ValueError, match="--first-seed must be at least 0"):
        run_experiment("mnist-mlp", out=tmp_path, first_seed=-1)


def test_report_orders_seeds_by_number(tmp_path):
    from onebit.experiments.aggregate import _runs

    for seed in (10, 2, 1):
        run = tmp_path / "float" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        (run / "final.json").write_text(json.dumps({"test_acc": seed / 100}))
        (run / "metrics.jsonl").write_text("")
    (tmp_path / "float" / "seed3").mkdir()  # unfinished: left out
    (tmp_path / "float" / "seed-notes").mkdir()  # not a seed directory
    assert [config["seed"] for config, _, _ in _runs(tmp_path, "float")] == [1, 2, 10]


def test_report_rejects_unknown_packed_mode(tmp_path):
    from onebit.experiments import write_report

    with pytest.raises(ValueError, match="one of \\('measure', 'stored', 'skip'\\)"):
        write_report(tmp_path, packed="yes")


def test_curves_of_large_experiments_are_split_into_panels_of_nameable_rows():
    from onebit.experiments.plots import _ROWS_PER_PANEL, curve_groups

    names = [r.name for r in get("mnist-cnn").rows]
    panels = curve_groups(names)
    assert sorted(n for panel in panels for n in panel) == sorted(names)  # every row once
    assert len(panels) > 1 and all(len(panel) <= _ROWS_PER_PANEL for panel in panels)
    assert all(len({n.split("-")[1] for n in panel if "-" in n}) == 1 for panel in panels)  # one estimator each
    assert curve_groups(["float", "bnn", "xnor"]) == [["float", "bnn", "xnor"]]


def test_committed_runs_keep_their_configuration():
    """Every committed run's config.json is the run `onebit run --out results` would train now, so it is reused."""
    from pathlib import Path

    from onebit.experiments.runner import run_configs
    from onebit.experiments.runs import same_run

    results = Path(__file__).parents[1] / "results"
    stored = [json.loads(p.read_text()) for p in sorted(results.glob("*/*/seed*/config.json"))]
    assert stored
    for config in stored:
        expected, = run_configs(get(config["experiment"]), seeds=1, first_seed=config["seed"], rows=[config["row"]],
                                quick=config["quick"])
        assert same_run(config, expected), f"{config['experiment']}/{config['row']}/seed{config['seed']}"


def test_experiments_are_registered_explicitly():
    """The built-in experiments are data registered by the package; another one is one `register` call."""
    from onebit.experiments import BUILTIN, Experiment, Row, names, register

    assert names()[:len(BUILTIN)] == [e.name for e in BUILTIN]
    custom = Experiment("tiny-mlp", "a registered experiment", (Row("bnn", {"name": "mlp", "recipe": "bnn",
                                                                            "hidden": [16]}),), {}, "fashion-mnist")
    assert register(custom) is custom and get("tiny-mlp") is custom and register(custom) is custom
    with pytest.raises(ValueError, match="already registered"):
        register(Experiment("tiny-mlp", "", (), {}, "mnist"))
    assert custom.input_size == (1, 28, 28) and custom.classifies
    with pytest.raises(ValueError, match="already registered"):
        register(Experiment("train", "", (), {}, "mnist"))  # the name of `onebit train`'s records


def test_mnist_cnn_table_names_each_rows_estimator():
    from onebit.experiments.render import markdown

    experiment = get("mnist-cnn")
    rows = {r.name: r.description for r in experiment.rows}
    assert rows["deterministic-st-both"] == "straight-through"
    assert rows["stochastic-reinforce-last-loo-annealed"] == (
        "REINFORCE, leave-one-out baseline over 4 samples, slope annealed")
    assert rows["stochastic-reinforce-first"] == "REINFORCE, moving-average baseline"
    row = {"name": "stochastic-reinforce-last", "test_acc": [0.9], "test_acc_mean": 0.9, "test_acc_std": 0.0,
           "target": 0.97, "test_loss_mean": 0.3, "seeds": [0], "epochs": 10, "binary_params": 0, "float_params": 1,
           "packed_bytes": 4, "train_seconds_mean": 1.0, "train_cpu_seconds_mean": 1.0, "precision": ["fp32"],
           "cpu": [], "threads": [1], "published": "", "quick": False}
    table = markdown(experiment, ["onebit run mnist-cnn"], [row], [], False)
    assert "| row | estimator | test acc (%) |" in table
    assert "| stochastic-reinforce-last | REINFORCE, moving-average baseline | 90.00 +- 0.00 |" in table


def test_a_row_distils_a_trained_teacher_run(shared_datasets_dir, tmp_path, monkeypatch, capsys):
    """A row's ``distill`` names a teacher run: its config records it, and the runner trains the
    student against that run's best model (a missing teacher run fails before any training)."""
    from onebit.experiments import Experiment, Row, register
    from onebit.experiments.runner import distillation, record_sources, run_configs, trained_sources
    from onebit.experiments.runs import SOURCES_FILE, WEIGHTS_FILE, checkpoint_path, load_trained, weights_digest

    teacher_dir = tmp_path / "runs" / "tiny-distill" / "teacher"
    distill = {"teacher": str(teacher_dir), "weight": 0.5, "temperature": 2.0}
    experiment = register(Experiment("tiny-distill", "distillation", (
        Row("teacher", {"name": "mlp", "recipe": "float", "hidden": [32]}),
        Row("student", {"name": "mlp", "recipe": "bnn", "hidden": [32]}, distill=distill)), {}, "mnist"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "tiny-distill", "--quick", "--out", "runs", "--data-root", str(shared_datasets_dir), "--no-progress"]
    teacher, student = run_configs(experiment, seeds=1, quick=True)
    assert "distill" not in teacher and student["distill"] == distill
    assert main(args + ["--rows", "student"]) == 2  # no teacher run yet
    assert "Train its row first" in capsys.readouterr().err
    assert main(args) == 0
    stored = json.loads((tmp_path / "runs" / "tiny-distill" / "student" / "seed0" / "config.json").read_text())
    assert stored["distill"] == distill
    assert json.loads((tmp_path / "runs" / "tiny-distill" / "student" / "seed0" / "final.json").read_text())[
        "test_acc"] > 0.5
    # the student's record names its teacher's weights, the same digest from checkpoint or weights.pt
    student_dir = tmp_path / "runs" / "tiny-distill" / "student" / "seed0"
    teacher_model, _ = load_trained(teacher_dir / "seed0")
    sources = json.loads((student_dir / SOURCES_FILE).read_text())
    assert sources == {"distill.teacher": {"run": str(teacher_dir),
                                           "weights_sha256": weights_digest(teacher_model)}}
    assert not (teacher_dir / "seed0" / SOURCES_FILE).exists()  # a run that learns from none
    # with compile (the student's TrainConfig.compile), the teacher runs compiled, to the same logits
    loaded = trained_sources(run_configs(experiment, seeds=1, quick=True)[1], student_dir)
    assert set(loaded) == {"distill.teacher"} and loaded["distill.teacher"].run == str(teacher_dir)
    assert weights_digest(loaded["distill.teacher"].model) == weights_digest(teacher_model)
    plain, compiled = (distillation(None, distill, loaded["distill.teacher"].model, torch.device("cpu"),
                                    compile=c).teacher for c in (False, True))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and not compiled.training
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x))

    # --resume continues a student's checkpoint only while its teacher keeps the weights it recorded
    student = run_configs(experiment, seeds=1, quick=True)[1]
    (student_dir / "final.json").unlink()  # the student interrupted, its checkpoint kept
    record_sources(trained_sources(student, student_dir), student_dir, resume=True)  # same teacher: resumes
    assert json.loads((student_dir / SOURCES_FILE).read_text()) == sources
    with torch.no_grad():
        next(teacher_model.parameters()).add_(1.0)  # a retrained teacher
    torch.save(teacher_model.state_dict(), teacher_dir / "seed0" / WEIGHTS_FILE)
    checkpoint_path(teacher_dir / "seed0").unlink()
    with pytest.raises(ValueError, match="distill.teacher .* changed since its checkpoint .* without --resume"):
        record_sources(trained_sources(student, student_dir), student_dir, resume=True)
    # a fresh start records the new teacher
    record_sources(trained_sources(student, student_dir), student_dir, resume=False)
    assert json.loads((student_dir / SOURCES_FILE).read_text())["distill.teacher"]["weights_sha256"] == (
        weights_digest(teacher_model))


def test_a_row_starts_from_another_rows_trained_model(shared_datasets_dir, tmp_path, monkeypatch, capsys):
    """Two-step training: a row's ``init_from`` names another row of the experiment; each of its
    runs starts from the same seed's best model of that row (every tensor of the same name and
    shape), and the config records it."""
    from onebit.experiments import Experiment, Row, register
    from onebit.experiments.runner import initialize, run_configs, trained_sources
    from onebit.experiments.runs import SOURCES_FILE, WEIGHTS_FILE, build_model, load_trained, weights_digest

    mlp = {"name": "mlp", "hidden": [32]}
    experiment = register(Experiment("tiny-two-step", "two-step training", (
        Row("step1", {**mlp, "recipe": "binary-activations"}),
        Row("step2", {**mlp, "recipe": "xnor"}, init_from="step1")), {}, "mnist"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "tiny-two-step", "--quick", "--out", "runs", "--data-root", str(shared_datasets_dir),
            "--no-progress"]
    runs = tmp_path / "runs" / "tiny-two-step"
    step1, step2 = run_configs(experiment, seeds=1, quick=True)
    assert "init_from" not in step1 and step2["init_from"] == "step1"
    assert main(args + ["--rows", "step2"]) == 2  # step 1 not trained yet
    assert "Train its row first" in capsys.readouterr().err
    assert main(args) == 0
    assert json.loads((runs / "step2" / "seed0" / "config.json").read_text())["init_from"] == "step1"
    # the first step's run ships its best weights for the rows that depend on it; the second's does not
    assert (runs / "step1" / "seed0" / WEIGHTS_FILE).exists()
    assert not (runs / "step2" / "seed0" / WEIGHTS_FILE).exists()
    assert json.loads((runs / "step2" / "seed0" / "final.json").read_text())["test_acc"] > 0.5
    assert json.loads((runs / "step2" / "seed0" / SOURCES_FILE).read_text()) == {
        "init_from": {"run": "step1", "weights_sha256": weights_digest(load_trained(runs / "step1" / "seed0")[0])}}

    trained, _ = load_trained(runs / "step1" / "seed0")
    fresh = build_model(step2)
    initialize(fresh, "step1", trained)
    source, target = trained.state_dict(), fresh.state_dict()
    assert set(source) == set(target)  # the same MLP: binary-activations and xnor share every tensor
    for name, tensor in source.items():
        torch.testing.assert_close(target[name], tensor, rtol=0, atol=0)
    (runs / "step1" / "seed0" / "checkpoint.pt").unlink()  # a copy of the runs without the checkpoint
    reloaded = trained_sources(step2, runs / "step2" / "seed0")["init_from"]
    assert reloaded.run == "step1"
    for name, tensor in source.items():
        torch.testing.assert_close(reloaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shares no parameter"):
        initialize(build_model({"model": {"name": "small_cnn"}}), "step1", trained)
    with pytest.raises(FileNotFoundError, match="step1/seed1: no finished run"):  # no silent other seed
        trained_sources(step2, runs / "step2" / "seed1")
    assert trained_sources({**step2, "init_from": "step1/seed0"}, runs / "step2" / "seed1")  # one seed for all
    (runs / "step1" / "seed0" / "final.json").unlink()  # an interrupted first step is no start
    with pytest.raises(FileNotFoundError, match="no finished run"):
        trained_sources(step2, runs / "step2" / "seed0")


def test_weights_digest_changes_with_any_tensor_its_name_or_its_dtype():
    from onebit.experiments.runs import weights_digest

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    digest = weights_digest(model)
    assert len(digest) == 64 and weights_digest(copy.deepcopy(model)) == digest
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged[0].weight[1, 2] = torch.nextafter(nudged[0].weight[1, 2], torch.tensor(2.0))  # one ulp
    assert weights_digest(nudged) != digest
    counted = copy.deepcopy(model)
    counted[1].num_batches_tracked += 1  # a buffer counts as much as a parameter
    assert weights_digest(counted) != digest
    assert weights_digest(copy.deepcopy(model).to(torch.bfloat16)) != digest  # bf16 tensors digest too
    renamed = torch.nn.Sequential()
    renamed.add_module("first", copy.deepcopy(model[0]))
    renamed.add_module("1", copy.deepcopy(model[1]))
    assert weights_digest(renamed) != digest


def test_source_rows_are_the_rows_another_row_distills_or_starts_from():
    from onebit.experiments import Experiment, Row
    from onebit.experiments.runner import source_rows

    mlp = {"name": "mlp"}
    experiment = Experiment("sources", "", (
        Row("float", mlp), Row("step1", mlp), Row("other", mlp),
        Row("step2", mlp, init_from="step1/seed0", distill={"teacher": "float"}),
        Row("elsewhere", mlp, init_from="runs/sources/other/seed0", distill={"teacher": "missing"})), {}, "mnist")
    assert source_rows(experiment) == {"float", "step1"}


def test_packed_comparison_on_part_of_the_test_set_draws_from_every_class():
    """Image folders list the test set class by class: a limited packed comparison (quick runs)
    takes a seeded random subset, not a prefix holding one class, and scores both models on it."""
    from types import SimpleNamespace

    from onebit.experiments.packed import _compare_classifiers

    labels = np.repeat(np.arange(4), 50)
    index = np.arange(200)
    images = np.concatenate([np.eye(4, dtype=np.float32)[labels], index[:, None].astype(np.float32)], axis=1)
    data = SimpleNamespace(test_arrays=lambda raw=False: (images, labels), eval_split="test")

    seen = []

    def reference(x):  # logits of the label: always right
        seen.append(x[:, 4])
        return x[:, :4]

    def packed_logits(x):  # wrong (the next class) on every tenth image
        wrong = x[:, 4] % 10 == 0
        return np.where(wrong[:, None], np.roll(x[:, :4], 1, axis=1), x[:, :4])

    packed = type("Packed", (), {"meta": {}, "__call__": lambda self, x: packed_logits(x)})()
    comparison = _compare_classifiers(reference, packed, SimpleNamespace(load=lambda: data), 16, 60)
    kept = np.unique(torch.cat(seen).int().numpy())  # the subset's image indices (a warm-up batch repeats some)
    assert len(kept) == len(comparison.reference) == 60
    assert set(labels[kept]) == {0, 1, 2, 3}  # a prefix of 60 would hold classes 0 and 1 only
    right = float(np.mean(kept % 10 != 0))
    assert 0 < right < 1 and comparison.agreement == right
    assert comparison.accuracy["test"] == {"torch": 1.0, "packed": right}


def test_mnist_cnn_targets_are_study_b_for_reinforce_rows_and_97_for_leave_one_out():
    from onebit.experiments import get
    from onebit.experiments.render import _target

    targets = get("mnist-cnn").targets
    assert targets["stochastic-reinforce-last"] == 0.8895 and targets["deterministic-reinforce-both"] == 0.934
    assert targets["stochastic-reinforce-both-loo-annealed"] == 0.97 and targets["stochastic-st-both"] == 0.985
    row = {"target": 0.8895, "test_acc_mean": 0.9, "test_acc": [0.9], "quick": False}
    assert _target(row) == ">= 88.95: met"  # a target between tenths keeps its digits
    assert _target({**row, "target": 0.985}) == ">= 98.5: **not met**"


def test_set_distill_overrides_make_every_row_distill(tmp_path):
    from onebit.experiments import registry
    from onebit.experiments.runner import parse_overrides, run_configs

    cifar = registry.get("cifar10")
    teacher = str(tmp_path / "float" / "seed0")
    configs = run_configs(cifar, seeds=1, rows=["bnn", "xnor"],
                          overrides=parse_overrides([f"distill.teacher={teacher}", "distill.temperature=2"]))
    assert [c["distill"] for c in configs] == [{"teacher": teacher, "temperature": 2}] * 2
    assert all("distill.teacher" not in c["train"] for c in configs)
    config, = run_configs(cifar, seeds=1, rows=["bnn"])
    assert "distill" not in config
    with pytest.raises(ValueError, match="teacher required, e.g. --set distill.teacher="):
        run_configs(cifar, seeds=1, rows=["bnn"], overrides={"distill.weight": 0.5})
    with pytest.raises(ValueError, match="distillation options are teacher, temperature, weight .*got alpha"):
        run_configs(cifar, seeds=1, rows=["bnn"], overrides={"distill.teacher": teacher, "distill.alpha": 1})
