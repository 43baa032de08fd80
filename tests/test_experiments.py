"""End-to-end: the CLI on real MNIST (tiny subsets, one epoch)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from onebit.cli import main


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
    assert all(0 <= r["test_acc_mean"] <= 1 for r in results["rows"])
    assert (exp_dir / "curves.png").stat().st_size > 0
    heatmaps = sorted((exp_dir / "heatmaps").glob("*.png"))
    assert heatmaps  # every row here but the float ones has binary activations
    assert "| row |" in (exp_dir / "results.md").read_text()

    # a second run reuses the finished runs; report rewrites the outputs
    assert main(["run", experiment, "--quick", "--rows", *rows, "--out", str(out), "--no-progress"]) == 0
    assert f"{len(rows)} already finished" in capsys.readouterr().out
    (exp_dir / "results.md").unlink()
    assert main(["report", str(exp_dir)]) == 0
    assert (exp_dir / "results.md").exists()


def test_unknown_experiment_and_row(capsys):
    assert main(["run", "mnist-resnet", "--quick"]) == 2
    assert "valid experiments" in capsys.readouterr().err
    assert main(["run", "mnist-cnn", "--quick", "--rows", "nonsense"]) == 2
    assert "has no row" in capsys.readouterr().err


def test_missing_data_says_how_to_fix(tmp_path, capsys):
    code = main(["run", "mnist-cnn", "--quick", "--rows", "none", "--out", str(tmp_path / "runs"),
                 "--data", str(tmp_path / "empty"), "--no-progress"])
    assert code == 2
    assert "ONEBIT_DATA" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_gloo_run(shared_datasets, tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "onebit.cli", "run", "mnist-cnn", "--quick", "--rows", "deterministic-st-first",
           "--out", str(out), "--no-progress", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "mnist-cnn" / "deterministic-st-first" / "seed0" / "final.json").read_text())
    assert 0 < final["test_acc"] <= 1
    assert (out / "mnist-cnn" / "results.md").exists()


def test_set_overrides_training_options(shared_datasets, tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "mnist-cnn", "--quick", "--rows", "stochastic-reinforce-first", "--out", str(out),
                 "--no-progress", "--set", "reinforce_baseline=self-critical", "--set", "lr=0.002"]) == 0
    config = json.loads((out / "mnist-cnn" / "stochastic-reinforce-first" / "seed0" / "config.json").read_text())
    assert config["train"]["reinforce_baseline"] == "self-critical" and config["train"]["lr"] == 0.002
    assert main(["run", "mnist-cnn", "--quick", "--set", "learning_rate=1", "--out", str(out)]) == 2
    assert main(["run", "mnist-cnn", "--quick", "--set", "lr", "--out", str(out)]) == 2
