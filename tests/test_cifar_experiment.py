"""The cifar10 experiment: its grid, its task on the real archive, and `onebit run cifar10 --quick`."""

import json
import re

import pytest
import torch

from onebit.cli import main
from onebit.data import dataset
from onebit.experiments import Experiment, Row, get
from onebit.experiments import cifar10 as exp
from onebit.experiments.runner import run_configs, source_rows
from onebit.experiments.runs import build_model, load_trained
from onebit.inspect import binary_activations

ROWS = ("float", "binaryconnect", "bnn", "xnor", "bireal", "float-bireal", "react")


def test_grid_and_quick_width():
    experiment = get("cifar10")
    assert tuple(r.name for r in experiment.rows) == ROWS
    full = {c["row"]: c for c in run_configs(experiment, seeds=1)}
    quick = {c["row"]: c for c in run_configs(experiment, seeds=1, quick=True)}
    for row in ROWS:
        assert full[row]["model"]["width"] == 0.5
        assert quick[row]["model"] == {**full[row]["model"], "width": exp.QUICK_WIDTH}
        assert quick[row]["train"]["epochs"] == 1
    assert full["bireal"]["model"]["activation_quantizer"] == "approx-sign"
    assert full["react"]["distill"] == {"teacher": "float"} and full["react"]["model"]["react"]
    assert source_rows(experiment) == {"float"}  # the float row ships its weights for react
    assert full["bnn"]["train"]["optimizer"] == "adam" and full["float"]["train"]["optimizer"] == "sgd"
    assert build_model(quick["bnn"]).width == exp.QUICK_WIDTH
    # experiments without quick_model keep their models in quick runs
    plain = Experiment("plain", "", (Row("a", {"name": "mlp", "hidden": [8]}),), {}, "cifar10")
    assert run_configs(plain, seeds=1, quick=True)[0]["model"] == {"name": "mlp", "hidden": [8]}


def test_quick_task_on_the_real_archive(shared_datasets):
    task = get("cifar10").build_task(quick=True, batch_size=50)
    assert {k: len(v) for k, v in task.splits.items()} == exp.QUICK_SIZES
    for split in task.splits.values():
        assert len(split.labels.unique()) == 10  # a random subset, not a class-sorted prefix
    assert "JPEG" in task.splits["test"].source  # the shared copy is the lossy re-encode
    full = dataset("cifar10").load()  # validation is carved out of the 50k training images
    assert full.sizes() == {"train": 45_000, "val": 5_000, "test": 10_000}

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    (x1, y1), (x2, y2) = next(task.train_batches(g1)), next(task.train_batches(g2))
    assert x1.shape == (50, 3, 32, 32) and x1.dtype == torch.float32 and torch.equal(x1, x2) and torch.equal(y1, y2)
    x_eval, _ = next(task.eval_batches("val"))
    assert abs(float(x_eval.mean())) < 0.5  # normalized with the CIFAR-10 mean and std
    # random crop + flip on training batches only
    assert task.augment.keywords == {"padding": 4, "flip": True, "cutout": 0}


@pytest.mark.slow
def test_quick_run_end_to_end(shared_datasets, tmp_path, capsys, one_thread):
    out = tmp_path / "runs"
    rows = list(ROWS)
    argv = ["run", "cifar10", "--quick", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    exp_dir = out / "cifar10"
    for row in rows:
        run = exp_dir / row / "seed0"
        assert {"config.json", "metrics.jsonl", "final.json", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
        assert json.loads((run / "config.json").read_text())["model"]["width"] == exp.QUICK_WIDTH
    results = json.loads((exp_dir / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == rows
    assert all(0 <= r["test_acc_mean"] <= 1 and r["epochs"] == 1 for r in results["rows"])
    by_name = {r["name"]: r for r in results["rows"]}
    assert by_name["float"]["binary_params"] == 0 and by_name["bnn"]["binary_params"] > 0
    markdown = (exp_dir / "results.md").read_text()
    assert "Quick (smoke) runs" in markdown
    assert any("bireal__" in p.name for p in (exp_dir / "heatmaps").glob("*.png"))
    # react distilled the float run, which ships its weights for it
    assert json.loads((exp_dir / "react" / "seed0" / "config.json").read_text())["distill"] == {"teacher": "float"}
    assert (exp_dir / "float" / "seed0" / "weights.pt").exists()
    # every binary row converts; its packed model predicts what the PyTorch one does
    assert {name for name, r in by_name.items() if "packed" in r} == {"binaryconnect", "bnn", "xnor", "bireal", "react"}
    for r in by_name.values():
        if "packed" in r:
            assert "error" not in r["packed"] and r["packed"]["agreement"] >= 0.998, r["packed"]
            assert (exp_dir / r["name"] / "seed0" / "model.onebit").exists()
    assert "Packed inference" in markdown

    assert main(argv) == 0  # finished runs are reused
    assert f"{len(rows)} already finished" in capsys.readouterr().out

    # heatmaps follow the network (features.10 after features.2), with or without the checkpoints
    bnn_layers = list(binary_activations(load_trained(exp_dir / "bnn" / "seed0")[0]))
    assert len(bnn_layers) > 3 and "features.10.input" in bnn_layers
    order = re.findall(r"!\[(heatmaps/bnn__[^\]]+)\]", markdown)
    assert order == [f"heatmaps/bnn__{layer}.png" for layer in bnn_layers]
    for row in rows:
        (exp_dir / row / "seed0" / "checkpoint.pt").unlink()
    assert main(["report", str(exp_dir)]) == 0
    assert re.findall(r"!\[(heatmaps/bnn__[^\]]+)\]", (exp_dir / "results.md").read_text()) == order
