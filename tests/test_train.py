"""`onebit train` on a folder of drawn shapes, then every command that takes its run; `onebit run
--data`; `onebit infer --images`."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from onebit import models
from onebit.cli import _CLASSIFIERS, main
from onebit.deploy import load


@pytest.fixture
def shapes(tmp_path, draw_shapes):
    """An image folder: 3 classes of 24x24 grayscale shapes, PNG in train/, JPEG in test/."""
    root = draw_shapes(tmp_path / "shapes", {"train": 20})
    draw_shapes(root, {"test": 6}, suffix="jpg", seed=1)
    return root


def _train(shapes, out, *extra):
    return main(["train", "--data", str(shapes), "--model", "small_cnn", "--recipe", "bnn", "--out", str(out),
                 "--epochs", "1", "--batch-size", "16", "--no-progress", *extra])


@pytest.mark.slow
def test_train_export_infer_report_summary_bench(shapes, tmp_path, capsys, one_thread):
    out = tmp_path / "runs" / "shapes"
    assert _train(shapes, out) == 0
    printed = capsys.readouterr().out
    assert "3 classes (circle, square, triangle); 24x24 grayscale; 54 train / 6 validation" in printed
    assert "/ 18 test images" in printed and "test accuracy " in printed
    run = out / "small_cnn-bnn" / "seed0"
    assert {"config.json", "data.json", "metrics.jsonl", "final.json", "checkpoint.pt", "tensorboard",
            "model.onebit", "packed.json"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["experiment"] == "train" and config["data"] == {"name": str(shapes)}
    assert config["model"] == {"name": "small_cnn", "recipe": "bnn", "in_channels": 1, "num_classes": 3,
                               "image_size": 24}
    assert config["train"]["epochs"] == 1 and config["train"]["optimizer"] == "adam"

    # the report: which data, the packed model beside PyTorch
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == "train" and results["data"]["classes"] == ["circle", "square", "triangle"]
    markdown = (out / "results.md").read_text()
    assert f"Data: {shapes} (image folder, 78 images): 3 classes" in markdown and "| small_cnn-bnn |" in markdown
    assert results["rows"][0]["packed"]["accuracy"]["test"]["packed"] == results["rows"][0]["test_acc"][0]
    (out / "results.md").unlink()
    assert main(["report", str(out), "--stored-packed"]) == 0 and (out / "results.md").read_text() == markdown
    assert main(["report", str(out)]) == 0  # measures the packed model again
    assert main(["summary", str(out)]) == 0 and "BinaryConv2d" in capsys.readouterr().out

    # export (the file infer runs), C export, infer on the test set and on image files
    exported = tmp_path / "shapes.onebit"
    assert main(["export", str(out), "-o", str(exported)]) == 0
    assert exported.read_bytes() == (run / "model.onebit").read_bytes()
    meta = load(exported).meta
    assert meta["classes"] == ["circle", "square", "triangle"]
    assert meta["preprocess"] == {"mode": "L", "size": [24, 24], "resample": "bilinear", "invert": False}
    assert main(["export", str(exported), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["infer", str(exported)]) == 0
    assert f"on {shapes} test (18 images, uint8 input): accuracy" in capsys.readouterr().out

    assert main(["infer", str(exported), "--images", str(shapes / "test")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "path,class,score" and len(lines) == 1 + 18
    path, predicted, score = lines[1].split(",")
    assert path == str(shapes / "test" / "circle" / "000.jpg") and predicted in meta["classes"]
    assert 1 / 3 <= float(score) <= 1
    final = json.loads((run / "final.json").read_text())
    accuracy = float(captured.err.split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(final["test_acc"], abs=1e-4)  # decoded exactly as in training
    assert "(of 18 images in the class folders" not in captured.err and "of 18 images" in captured.err
    # the same predictions in a process that never imports torch: decoding needs numpy and Pillow only
    code = ("import sys\nfrom onebit.cli import main\n"
            f"code = main(['infer', {str(exported)!r}, '--images', {str(shapes / 'test')!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n")
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout == captured.out

    assert main(["infer", str(exported), "--images", str(shapes / "test" / "square" / "001.jpg")]) == 0
    one = capsys.readouterr()
    assert len(one.out.splitlines()) == 2 and one.err == ""  # a single file has no label
    big = tmp_path / "photos" / "big.png"
    big.parent.mkdir()
    Image.new("RGB", (200, 120), "white").save(big)  # resized and converted like the training images
    assert main(["infer", str(exported), "--images", str(tmp_path / "photos" / "*.png")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{big},")

    assert main(["bench", "--run-dir", str(out), "--quick", "--threads", "1"]) == 0
    assert "end to end: train/small_cnn-bnn" in capsys.readouterr().out

    # the same command again: the finished run is kept; another model adds a row
    assert _train(shapes, out) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert _train(shapes, out, "--model", "mlp", "--recipe", "xnor", "--model-arg", "hidden=[32]") == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["mlp-xnor", "small_cnn-bnn"]


@pytest.mark.slow
def test_train_without_a_test_split_reports_validation(tmp_path, draw_shapes, capsys, one_thread):
    shapes = draw_shapes(tmp_path / "shapes", {"train": 10, "val": 4})
    out = tmp_path / "runs"
    assert _train(shapes, out, "--quick", "--model", "mlp", "--model-arg", "hidden=[16]") == 0
    printed = capsys.readouterr().out
    assert "no test split (no test/ folder): the run reports its validation accuracy only" in printed
    assert "validation accuracy " in printed
    final = json.loads((out / "mlp-bnn" / "seed0" / "final.json").read_text())
    assert "test_acc" not in final
    markdown = (out / "results.md").read_text()
    assert f"| {100 * final['val_acc']:.2f}" in markdown
    assert "| row | validation acc (%) |" in markdown and "no test split" in markdown
    assert "| mlp-bnn | val: " in markdown  # the packed model is evaluated on validation too
    capsys.readouterr()
    assert main(["infer", str(out / "mlp-bnn" / "seed0" / "model.onebit")]) == 0
    assert "validation (12 images, uint8 input)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "matching_net"], "a few-shot model: onebit train trains the image classifiers"),
    (["--model", "resnet50"], "not a model"),
    (["--model-arg", "in_channels=3"], "--model-arg cannot set in_channels"),
    (["--model-arg", "depth=3"], "does not build"),
    (["--recipe", "ternary"], "unknown recipe"),
    (["--set", "learning_rate=1"], "unknown training options"),
    (["--model-arg", "width"], "--model-arg expects KEY=VALUE"),
    (["--task-option", "mixup=0.2"], "unknown task option(s) mixup; valid: shift, flip, cutout, label_smoothing"),
    (["--image-size", "30"], "multiple of 8"),
])
def test_train_refuses_bad_arguments_before_writing_anything(shapes, tmp_path, capsys, args, message):
    out = tmp_path / "runs"
    argv = ["train", "--data", str(shapes), "--model", "vgg_small", "--recipe", "bnn", "--out", str(out), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "train" / "circle" / "x.png").write_bytes(b"broken"), "cannot read"),
    (lambda root: (root / "train" / "hexagon").mkdir(), "holds no images"),
    (lambda root: (root / "test").mkdir() or [p.unlink() for p in (root / "test").rglob("*.*")], "holds no images"),
])
def test_bad_folders_fail_before_writing_anything(tmp_path, draw_shapes, capsys, break_it, message):
    root = draw_shapes(tmp_path / "shapes", {"train": 3})
    break_it(root)
    out = tmp_path / "runs"
    assert _train(root, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("onebit train: error: ") and message in err
    assert not out.exists() and not (root / ".onebit-cache").exists()


@pytest.mark.slow
def test_mixed_sizes_ask_for_an_image_size(tmp_path, draw_shapes, capsys, one_thread):
    root = draw_shapes(tmp_path / "shapes", {"train": 8})
    draw_shapes(root, {"train": 8}, size=(32, 32), classes=("triangle",), seed=2)
    out = tmp_path / "runs"
    assert _train(root, out, "--quick") == 2
    assert "pass --image-size" in capsys.readouterr().err and not out.exists()
    assert _train(root, out, "--quick", "--image-size", "16") == 0
    config = json.loads((out / "small_cnn-bnn" / "seed0" / "config.json").read_text())
    assert config["data"]["image_size"] == [16, 16] and config["model"]["image_size"] == 16


@pytest.mark.slow
def test_task_options_augment_the_training_images_and_are_recorded(shapes, tmp_path, one_thread):
    from onebit.experiments import registry
    from onebit.experiments.runs import run_config

    out = tmp_path / "runs"
    options = ["--task-option", "shift=2", "--task-option", "flip=true", "--task-option", "cutout=6",
               "--task-option", "label_smoothing=0.1"]
    assert _train(shapes, out, "--quick", *options) == 0
    config = run_config(out / "small_cnn-bnn" / "seed0")
    assert config["task"] == {"shift": 2, "flip": True, "cutout": 6, "label_smoothing": 0.1}
    task = registry.of_run(config).task_of(config)
    assert task.augment.keywords == {"padding": 2, "flip": True, "cutout": 6} and task.label_smoothing == 0.1


@pytest.mark.slow
def test_one_directory_holds_one_dataset(shapes, tmp_path, draw_shapes, capsys, one_thread):
    out = tmp_path / "runs"
    assert _train(shapes, out, "--quick") == 0
    other = draw_shapes(tmp_path / "other", {"train": 4})
    assert _train(other, out, "--quick", "--name", "again") == 2
    assert "one directory holds runs on one dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_run_an_experiment_on_another_dataset(tmp_path, draw_shapes, capsys, one_thread):
    """`onebit run mnist-mlp --data DIR`: the grid on other 1x28x28 images, its report names them."""
    shapes = draw_shapes(tmp_path / "shapes28", {"train": 12, "test": 4}, size=(28, 28))
    out = tmp_path / "runs"
    args = ["run", "mnist-mlp", "--quick", "--rows", "bnn", "--out", str(out), "--no-progress", "--data", str(shapes)]
    assert main(args) == 0
    run = out / "mnist-mlp" / "bnn" / "seed0"
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == {"name": str(shapes)} and config["model"]["num_classes"] == 3
    assert f"Data: {shapes} (image folder, 48 images)" in (out / "mnist-mlp" / "results.md").read_text()
    assert load(run / "model.onebit").meta["classes"] == ["circle", "square", "triangle"]
    capsys.readouterr()
    assert main([*args[:-2], "--set", "lr=0.01"]) == 2  # MNIST into the directory of the folder's runs
    assert "one directory holds runs on one dataset" in capsys.readouterr().err
    cifar_sized = draw_shapes(tmp_path / "shapes32", {"train": 4}, size=(32, 32), mode="RGB")
    assert main([*args[:-1], str(cifar_sized)]) == 2
    assert "trains on 1x28x28 images (channels x height x width); " in capsys.readouterr().err


@pytest.mark.slow
def test_infer_images_refuses_what_it_cannot_label(shapes, tmp_path, capsys, one_thread):
    out = tmp_path / "runs"
    assert _train(shapes, out, "--quick") == 0
    model = out / "small_cnn-bnn" / "seed0" / "model.onebit"
    capsys.readouterr()
    assert main(["infer", str(model), "--images", str(shapes)]) == 0  # train/ and test/ are not classes: no labels
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 78 and captured.err == ""
    misc = shapes / "test" / "misc"
    misc.mkdir()
    Image.new("L", (24, 24)).save(misc / "blank.png")
    assert main(["infer", str(model), "--images", str(shapes / "test")]) == 2
    assert "and folders that are not classes of the model (misc/; its classes: circle, square, triangle)" in \
        capsys.readouterr().err
    (misc / "blank.png").unlink()
    assert main(["infer", str(model), "--images", str(tmp_path / "nothing")]) == 2
    assert "no such image, folder or glob" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["infer", str(model), "--images", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    bad = shapes / "test" / "circle" / "bad.png"
    bad.write_text("no image")
    assert main(["infer", str(model), "--images", str(shapes / "test")]) == 2
    assert f"cannot read {bad}" in capsys.readouterr().err


def test_the_cli_lists_the_classifiers():
    assert _CLASSIFIERS == models.CLASSIFIERS


@pytest.mark.slow
def test_a_registered_experiment_on_other_data_reports_its_packed_models(tmp_path, draw_shapes, one_thread):
    """An Experiment registered on a dataset the package does not ship trains, packs and reports."""
    from onebit.experiments import Experiment, Row, register, run_experiment

    shapes = draw_shapes(tmp_path / "shapes", {"train": 12, "test": 4}, size=(28, 28))
    experiment = Experiment("shapes-mlp", "an MLP on drawn shapes",
                            (Row("bnn", {"name": "mlp", "recipe": "bnn", "hidden": [32], "num_classes": 3}),),
                            {"epochs": 1, "batch_size": 8}, str(shapes))
    register(experiment)
    exp_dir = run_experiment("shapes-mlp", out=tmp_path / "runs", progress=False)
    row, = json.loads((exp_dir / "results.json").read_text())["rows"]
    assert "error" not in row["packed"] and row["packed"]["accuracy"]["test"]["packed"] == row["test_acc"][0]
    assert "Data:" not in (exp_dir / "results.md").read_text()  # the experiment's own data
