"""The ``onebit`` command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiments import run_experiment

    exp_dir = run_experiment(
        args.experiment, out=args.out, data=args.data, quick=args.quick, epochs=args.epochs, seeds=args.seeds,
        rows=args.rows, jobs=args.jobs, resume=args.resume, device=args.device, progress=not args.no_progress,
        command="onebit " + shlex.join(sys.argv[1:]),
    )
    print(f"results: {exp_dir / 'results.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .experiments import write_report

    print(f"wrote {write_report(args.run_dir, data=args.data, heatmaps=not args.no_heatmaps)}")
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
    from .experiments import get
    from .experiments.runner import build_model

    config = _first_run_config(Path(args.run_dir))
    print(summary(build_model(config), get(config["experiment"]).input_size))
    return 0


def _first_run_config(path: Path) -> dict:
    """The config of the run at ``path`` (a seed directory) or of the first run below it."""
    candidates = [path / "config.json"] if (path / "config.json").exists() else sorted(path.glob("**/config.json"))
    if not candidates:
        raise FileNotFoundError(f"no run (config.json) found under {path}")
    return json.loads(candidates[0].read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onebit", description="Train, reproduce and deploy binary neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train an experiment's runs and write its report")
    run.add_argument("experiment", help="experiment name (see `onebit list`)")
    run.add_argument("--quick", action="store_true", help="smoke version: tiny data subset, 1 epoch, 1 seed")
    run.add_argument("--epochs", type=int, help="override the experiment's number of epochs")
    run.add_argument("--seeds", type=int, help="seeds per row (default 3; 1 with --quick)")
    run.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows")
    run.add_argument("--out", default="runs", help="run directory root (default: runs)")
    run.add_argument("--data", help="dataset root (default: $ONEBIT_DATA or ~/.cache/onebit)")
    run.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="write results.md, results.json and plots for runs/<experiment>")
    report.add_argument("run_dir")
    report.add_argument("--data", help="dataset root (for activation heatmaps)")
    report.add_argument("--no-heatmaps", action="store_true")
    report.set_defaults(func=_cmd_report)

    lst = sub.add_parser("list", help="experiments, their rows and finished runs")
    lst.add_argument("--out", default="runs")
    lst.set_defaults(func=_cmd_list)

    summ = sub.add_parser("summary", help="parameters, memory and MACs of a run's model by precision")
    summ.add_argument("run_dir")
    summ.set_defaults(func=_cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .training.trainer import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as error:
        print(f"onebit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
