"""``onebit bench``: the kernel table and the end-to-end table of :mod:`onebit.deploy.benchmark`,
the latter of a trained run's model (found as reports find it, :func:`~.runs.load_trained`) or,
without a run, of an untrained study A BNN MLP (the same speed and size)."""

from __future__ import annotations

import argparse
import os

import torch

from ..data.mnist import MEAN, STD
from ..deploy.benchmark import Subject, end_to_end_table, kernels_main
from ..models import MLP
from .runs import data_info, find_run_dir, load_trained

__all__ = ["subject", "end_to_end_main", "main"]


def subject(run_dir: str | os.PathLike | None) -> Subject:
    """A trained run's best-validation model, its checkpoint found where reports find it (under
    ``$ONEBIT_CHECKPOINTS`` when set); without ``run_dir``, an untrained study A BNN MLP."""
    if run_dir is None:
        torch.manual_seed(0)
        return Subject(MLP(recipe="bnn"), (1, 28, 28), "MLP 784-2048-2048-2048-10, recipe bnn", (MEAN, STD))
    run_dir = find_run_dir(run_dir)
    model, config = load_trained(run_dir)
    info = data_info(run_dir, config)
    return Subject(model, info.input_size, f"{config['experiment']}/{config['row']}", info.normalization)


def _parser(description: str, thread_counts: bool = False) -> argparse.ArgumentParser:
    """The benchmarks' options; ``thread_counts``: ``--threads`` takes several counts, measured in turn."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", help="a trained run, runs/<experiment>/<row>[/seed<k>] (default: an untrained "
                        "study A BNN MLP, same speed and size)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    if thread_counts:
        parser.add_argument("--threads", type=int, nargs="+", help="thread counts to measure, each for both torch "
                            "and the packed model (default: 1, then every CPU this process may use)")
    else:
        parser.add_argument("--threads", type=int, help="threads for both torch and the packed model (default: "
                            "their defaults)")
    return parser


def end_to_end_main(argv: list[str] | None = None) -> None:
    """``benchmarks/bench_end_to_end.py``: the end-to-end table for each thread count (default: one
    thread, then every CPU this process may use)."""
    args = _parser("packed model vs torch float eval", thread_counts=True).parse_args(argv)
    counts = args.threads or sorted({1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1})
    end_to_end_table(subject(args.run_dir), args.quick, counts)


def main(argv: list[str] | None = None) -> None:
    """``onebit bench``: the kernel table, then the end-to-end table."""
    args = _parser("onebit bench").parse_args(argv)
    timed = subject(args.run_dir)  # a run without its checkpoint fails before anything is timed
    kernels_main((["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else []))
    print()
    end_to_end_table(timed, args.quick, [args.threads])
