"""The ``onebit`` command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import recipes


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _image_size(text: str) -> int | tuple[int, int]:
    """argparse type: ``32`` (square) or ``HxW`` such as ``32x48``."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 32 or 32x48 (height x width), got {text!r}")
    return sides[0] if len(sides) == 1 else sides


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _dataset(args: argparse.Namespace):
    """The dataset ``--data`` names (with ``--image-size``, ``--val-fraction``), or None."""
    from .data import dataset

    if args.data is None:
        if getattr(args, "image_size", None) or getattr(args, "val_fraction", None):
            raise ValueError("--image-size and --val-fraction go with --data DIR (an image folder)")
        return None
    return dataset(args.data, args.data_root, image_size=getattr(args, "image_size", None),
                   val_fraction=getattr(args, "val_fraction", None))


def _command() -> str:
    return "onebit " + shlex.join(sys.argv[1:])


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiments import run_experiment, runner

    exp_dir = run_experiment(
        args.experiment, out=args.out, data=_dataset(args), root=args.data_root, quick=args.quick,
        epochs=args.epochs, seeds=args.seeds, first_seed=args.first_seed, rows=args.rows, jobs=args.jobs,
        resume=args.resume, device=args.device, progress=not args.no_progress, command=_command(),
        overrides=runner.parse_overrides(args.set),
    )
    print(f"results: {exp_dir / 'results.md'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .experiments.runner import parse_overrides
    from .experiments.train import train, train_config
    from .training import final_accuracy

    data = _dataset(args)
    loaded = data.load()
    print(f"data: {loaded.describe()}")
    if "test" not in loaded.splits:
        print("no test split (no test/ folder): the run reports its validation accuracy only")
    config = train_config(data, args.model, args.recipe, name=args.name, seed=args.seed, quick=args.quick,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          overrides=parse_overrides(args.set, "--set"),
                          model_args=parse_overrides(args.model_arg, "--model-arg"),
                          task=parse_overrides(args.task_option, "--task-option"), device=args.device)
    run_dir, final = train(config, args.out, root=args.data_root, resume=args.resume, progress=not args.no_progress,
                           command=_command())
    split, accuracy = final_accuracy(final)
    images = loaded.sizes()["test" if split == "test" else "val"]
    print(f"{split} accuracy {accuracy:.4f} ({images:,} {split} images{', quick subset' if args.quick else ''})")
    print(f"run: {run_dir}; report: {Path(args.out) / 'results.md'}")
    model_file = run_dir / "model.onebit"
    if model_file.exists():
        print(f"packed model: {model_file} (onebit infer {model_file} --images PATH)")
    else:
        print(f"export it: onebit export {args.out} -o model.onebit")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .experiments import write_report

    packed = "skip" if args.no_packed else "stored" if args.stored_packed else "measure"
    path = write_report(args.run_dir, root=args.data_root, heatmaps=not args.no_heatmaps, packed=packed)
    print(f"wrote {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .experiments import get, names

    for name in names():
        experiment = get(name)
        print(f"{name}: {experiment.description}")
        print(f"    rows: {', '.join(r.name for r in experiment.rows)}")
        exp_dir = Path(args.out) / name
        finished = sorted(p.parent.relative_to(exp_dir) for p in exp_dir.glob("*/seed*/final.json"))
        if finished:
            print(f"    finished runs in {exp_dir}: {', '.join(map(str, finished))}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from ._summary import summary
    from .experiments.runs import build_model, data_info, find_run_dir, run_config

    run_dir = find_run_dir(args.run_dir)
    config = run_config(run_dir)
    print(summary(build_model(config), data_info(run_dir, config).input_size))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if source.is_file():
        from .deploy import load

        model, packed = None, load(source)
    else:
        from .experiments.packed import pack_run
        from .experiments.runs import find_run_dir

        model, packed = pack_run(find_run_dir(source))
    if args.format == "c":
        return _export_c(packed, Path(args.output), args.name, args.target)
    if args.target:
        raise ValueError("--target builds C code: use it with --format c")
    packed.save(args.output)
    size = Path(args.output).stat().st_size
    if model is None:
        print(f"{source} -> {args.output}: {size:,} bytes")
        return 0
    from .experiments.packed import float32_state_bytes

    float_bytes = float32_state_bytes(model)
    print(f"{source} -> {args.output}: {size:,} bytes (float32 state dict {float_bytes:,} bytes, "
          f"{float_bytes / size:.1f}x smaller)")
    return 0


def _export_c(packed, directory: Path, name: str, target: str | None) -> int:
    import numpy as np

    from .deploy import targets
    from .deploy.export_c import export_c

    exported = export_c(packed, directory, name)
    print(f"wrote {exported.header}, {exported.source}, {exported.main}: weights {exported.weights_bytes:,} bytes, "
          f"arena {exported.arena_bytes:,} bytes")
    try:
        if target == "host":
            print(f"built {targets.build_host(directory, name)}")
        elif target == "aarch64":
            print(f"built {targets.build_aarch64(directory, name)}")
        elif target == "cortex-m4":
            elf = targets.build_cortex_m4(directory, name)
            print(f"built {elf}")
            # one all-zero image under QEMU measures the stack and the instructions of an inference
            zero = np.zeros((1, exported.input_size), np.uint8 if exported.input_is_u8 else np.float32)
            try:
                result = targets.run_cortex_m4(elf, zero)
            except targets.MissingToolError as error:  # the ELF is built: report its sizes alone
                print(f"not measuring stack and instructions: {error}", file=sys.stderr)
                result = None
            report = targets.size_report(elf, directory, name, result=result)
            path = directory / f"{name}_cortex_m4.json"
            path.write_text(json.dumps(report, indent=2) + "\n")
            measured = " (stack and instructions: one all-zero image under QEMU mps2-an386)" if result else ""
            print(f"size report {path}{measured}:")
            print("\n".join(f"  {key}: {value:,}" for key, value in report.items() if isinstance(value, int)))
            if result:
                print("  (instructions_per_inference is QEMU's -icount instruction count, not cycles)")
    except (targets.ToolchainError, targets.HarnessError) as error:
        print(f"onebit export: error: {error}", file=sys.stderr)
        return 2
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import main as bench_main

    bench_main((["--run-dir", args.run_dir] if args.run_dir else []) + (["--quick"] if args.quick else [])
               + (["--threads", str(args.threads)] if args.threads else []))
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .deploy import load

    model = load(args.file)
    if args.images:
        return _infer_images(model, args)
    return _infer_dataset(model, args)


def _infer_dataset(model, args: argparse.Namespace) -> int:
    """Accuracy, throughput and latency on the test set of ``--data``, else of the model's data."""
    import time

    from .data.datasets import from_spec

    if args.data:
        dataset = _dataset(args)
    elif "data" in model.meta or "dataset" in model.meta:
        dataset = from_spec(model.meta.get("data") or {"name": model.meta["dataset"]}, args.data_root)
    else:
        raise ValueError(f"{args.file} does not say which dataset it was trained on; pass --data, or --images")
    data = dataset.load()
    # raw uint8 pixels where the model takes them (its first binary layer then runs on bit planes)
    images, labels = data.test_arrays(raw="input_quantization" in model.meta)
    start = time.perf_counter()
    predictions = model.predict(images, args.batch_size)
    seconds = time.perf_counter() - start
    single = images[:1]
    model(single)
    t0 = time.perf_counter()
    for _ in range(20):
        model(single)
    latency = (time.perf_counter() - t0) / 20
    split = {"test": "test", "val": "validation"}[data.eval_split]
    print(f"{args.file} on {dataset.name} {split} ({len(labels):,} images, {images.dtype} input): "
          f"accuracy {(predictions == labels).mean():.4f}")
    print(f"throughput {len(labels) / seconds:,.0f} images/s at batch {args.batch_size}; "
          f"latency {1000 * latency:.3f} ms at batch 1")
    return 0


def _infer_images(model, args: argparse.Namespace) -> int:
    """``path,class,score`` for every image of ``--images`` on stdout; the accuracy over the images of
    class folders on stderr."""
    import csv

    from .predict import find_images, model_classes, predict_files

    if args.data:
        raise ValueError("--images and --data exclude each other: --images predicts image files, --data "
                         "evaluates a dataset")
    predictions = predict_files(model, find_images(args.images, model_classes(model.meta)), args.batch_size)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["path", "class", "score"])
    for p in predictions:
        out.writerow([str(p.path), p.predicted, f"{p.score:.4f}"])
    labelled = [p for p in predictions if p.label is not None]
    if labelled:
        correct = sum(p.predicted == p.label for p in labelled)
        print(f"accuracy {correct / len(labelled):.4f} ({correct:,} of {len(labelled):,} images in the class folders "
              f"of {args.images})", file=sys.stderr)
    return 0


#: The models ``onebit train`` builds (:data:`onebit.models.CLASSIFIERS`; listed here to keep ``--help`` free of torch).
_CLASSIFIERS = ("mlp", "small_cnn", "mcu_cnn", "vgg_small", "bireal_resnet")


def _data_options(parser: argparse.ArgumentParser, folder_options: bool) -> None:
    parser.add_argument("--data-root", metavar="DIR",
                        help="root of the built-in datasets (default: $ONEBIT_DATA or ~/.cache/onebit)")
    parser.add_argument("--image-size", type=_image_size, metavar="SIZE",
                        help="with an image folder: resize its images to SIZE (32, or HxW such as 32x48; default: "
                             "the size they all have)")
    if folder_options:
        parser.add_argument("--val-fraction", type=_fraction,
                            help="with an image folder without val/: the part of train/ held out for validation "
                                 "(default 0.1, seeded)")


def build_parser() -> argparse.ArgumentParser:
    """The ``onebit`` command line: one subcommand per job (``run``, ``train``, ``export``, ...)."""
    parser = argparse.ArgumentParser(prog="onebit", description="Train, reproduce and deploy binary neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train an experiment's runs and write its report")
    run.add_argument("experiment", help="experiment name (see `onebit list`)")
    run.add_argument("--quick", action="store_true",
                     help="smoke version: tiny data subset, 1 epoch, 1 seed, no torch.compile")
    run.add_argument("--epochs", type=_positive_int, help="override the experiment's number of epochs")
    run.add_argument("--seeds", type=_positive_int, help="seeds per row (default 3; 1 with --quick)")
    run.add_argument("--first-seed", type=_non_negative_int, default=0,
                     help="number seeds from here: --first-seed 1 --seeds 2 trains seeds 1 and 2 (default 0)")
    run.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows")
    run.add_argument("--out", default="runs", help="run directory root (default: runs)")
    run.add_argument("--data", metavar="NAME_OR_DIR",
                     help="train the grid on this dataset instead of the experiment's own: mnist, fashion-mnist, "
                          "cifar10, omniglot, or an image folder DIR/train/<class>/*.png (of the experiment's input "
                          "size; use another --out)")
    _data_options(run, folder_options=False)
    run.add_argument("--jobs", type=_positive_int, default=1, help="runs trained in parallel processes")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a training option for every row, e.g. --set lr=0.01 "
                          "--set reinforce_baseline=self-critical, a model argument with model.NAME, "
                          "e.g. --set model.width=0.75, a task option with task.NAME, e.g. "
                          "--set task.cutout=16, or a distillation option with distill.NAME, e.g. "
                          "--set distill.teacher=runs/cifar10/float/seed0 (use another --out)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="write results.md, results.json and plots for runs/<experiment>")
    report.add_argument("run_dir")
    report.add_argument("--data-root", metavar="DIR",
                        help="root of the built-in datasets, for activation heatmaps and packed evaluation "
                             "(default: $ONEBIT_DATA or ~/.cache/onebit)")
    report.add_argument("--no-heatmaps", action="store_true")
    packed = report.add_mutually_exclusive_group()
    packed.add_argument("--no-packed", action="store_true",
                        help="leave the packed table out: no converting each binary row's seed-0 model and "
                             "evaluating it beside PyTorch, no stored packed.json reported")
    packed.add_argument("--stored-packed", action="store_true",
                        help="report each run's stored packed.json instead of measuring it again (measure only "
                             "runs without one, as `onebit run` does): rebuilds the report without re-timing")
    report.set_defaults(func=_cmd_report)

    lst = sub.add_parser("list", help="experiments, their rows and finished runs")
    lst.add_argument("--out", default="runs",
                     help="root of the run directories to list finished runs from (default: runs; "
                          "the committed ones: results)")
    lst.set_defaults(func=_cmd_list)

    export = sub.add_parser("export", help="convert a trained run into a bit-packed model file, or into C code")
    export.add_argument("source", help="a run directory (runs/<experiment>/<row>[/seed<k>]: its best-validation "
                                       "weights) or, with --format c, a .onebit file")
    export.add_argument("-o", "--output", required=True,
                        help="output file, e.g. model.onebit; with --format c, a directory")
    export.add_argument("--format", choices=("onebit", "c"), default="onebit",
                        help="onebit: the packed model file (default); c: NAME.h, NAME.c and the host harness "
                             "NAME_main.c (plain C99, for microcontrollers and any C compiler)")
    export.add_argument("--name", default="model", help="with --format c: the C prefix and file name (default: model)")
    export.add_argument("--target", choices=("host", "aarch64", "cortex-m4"),
                        help="with --format c, also build: the host harness (cc), the ARM64 harness "
                             "(aarch64-linux-gnu-gcc), or a Cortex-M4 ELF for QEMU mps2-an386 with its size "
                             "report NAME_cortex_m4.json (arm-none-eabi-gcc)")
    export.set_defaults(func=_cmd_export)

    infer = sub.add_parser("infer", help="a packed model's predictions on image files, or its accuracy and speed on "
                                         "a test set (no torch in the model)")
    infer.add_argument("file")
    infer.add_argument("--images", metavar="PATH",
                       help="predict these images: a folder (with class folders PATH/<class>/ it also prints the "
                            "accuracy), an image file or a glob; prints CSV lines path,class,score")
    infer.add_argument("--data", metavar="NAME_OR_DIR",
                       help="without --images: the test set of this dataset (default: the one the model was trained "
                            "on); an image folder without test/ gives its validation split")
    _data_options(infer, folder_options=False)
    infer.add_argument("--batch-size", type=_positive_int, default=256)
    infer.set_defaults(func=_cmd_infer)

    train = sub.add_parser("train", help="train one model on a dataset or a folder of your images, into a run "
                                         "directory that report, export, summary, infer and bench take")
    train.add_argument("--data", required=True, metavar="NAME_OR_DIR",
                       help="mnist, fashion-mnist, cifar10, omniglot, or an image folder: DIR/train/<class>/*.png "
                            "(.jpg, .jpeg, .bmp), optionally DIR/val/<class>/ and DIR/test/<class>/")
    train.add_argument("--model", required=True, help=f"an image classifier: {', '.join(_CLASSIFIERS)}")
    train.add_argument("--recipe", required=True,
                       help=f"{', '.join(recipes.names())} (see onebit.recipes)")
    train.add_argument("--out", required=True, metavar="RUN_DIR",
                       help="the run directory: the run goes to RUN_DIR/<name>/seed<S>/ and the report to RUN_DIR")
    train.add_argument("--name", help="the run's name in RUN_DIR and its report (default: MODEL-RECIPE)")
    train.add_argument("--epochs", type=_positive_int, help="default 10")
    train.add_argument("--batch-size", type=_positive_int, help="default 64")
    train.add_argument("--lr", type=float, help="learning rate of Adam, decayed by a cosine (default 1e-3)")
    train.add_argument("--seed", type=_non_negative_int, default=0, help="default 0")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a training option (onebit.training.TrainConfig), e.g. --set weight_decay=1e-4 "
                            "--set compile=true")
    train.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                       help="a model constructor argument, e.g. --model-arg width=0.5 or --model-arg hidden=[512,512]")
    train.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                       help="augmentation and loss of the training images: shift=N (random shifts of up to N "
                            "pixels), flip=true (random left-right flips), cutout=N (a zeroed NxN square), "
                            "label_smoothing=E (e.g. 0.1); none by default")
    _data_options(train, folder_options=True)
    train.add_argument("--quick", action="store_true", help="smoke version: one epoch on a small subset")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser("bench", help="speed and size of packed models vs PyTorch float, measured side by side")
    bench.add_argument("--run-dir", help="benchmark this trained run (default: study A's BNN MLP, untrained)")
    bench.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    bench.add_argument("--threads", type=_positive_int,
                       help="threads for both torch and the packed kernels (default: each one's own default)")
    bench.set_defaults(func=_cmd_bench)

    summ = sub.add_parser("summary", help="parameters, memory and MACs of a run's model by precision")
    summ.add_argument("run_dir")
    summ.set_defaults(func=_cmd_summary)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a command reports as bad input: training's only once a command imported it
    (``onebit infer`` never imports torch)."""
    training = sys.modules.get("onebit.training")
    return (ValueError, FileNotFoundError) + ((training.TrainingDiverged, training.RunDirBusy) if training else ())


def main(argv: list[str] | None = None) -> int:
    """Run the ``onebit`` command ``argv`` (default: the process's arguments); return its exit
    status: 0 on success, 2 for bad input (a message on stderr says what to do)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"onebit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
