"""End-to-end speed and size of packed models against PyTorch float eval, in one process.

    python benchmarks/bench_end_to_end.py [--run-dir runs/mnist-mlp/bnn] [--quick]
    onebit bench

Ratios are PyTorch time / packed time on the same inputs, timed in alternation (median of
samples after a warm-up that excludes numba's compilation), so load from other processes
mostly cancels in the ratio. Absolute times on a shared machine mean little.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["compare", "end_to_end", "main"]


def _sample(fn: Callable[[], object], min_seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def compare(fns: list[Callable[[], object]], repeats: int = 5, min_seconds: float = 0.2) -> list[float]:
    """Median seconds per call of each function, sampled in alternation after a warm-up."""
    for fn in fns:
        _sample(fn, min_seconds)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            ts.append(_sample(fn, min_seconds))
    return [statistics.median(ts) for ts in times]


def _model_from_run(run_dir: Path) -> tuple[torch.nn.Module, tuple[int, ...], str]:
    import json

    from ..experiments import get
    from ..experiments.runner import build_model
    from ..training import load_checkpoint

    config_path = next(iter(sorted(run_dir.glob("**/config.json"))), None) if not (run_dir / "config.json").exists() \
        else run_dir / "config.json"
    if config_path is None:
        raise FileNotFoundError(f"no run (config.json) under {run_dir}")
    config = json.loads(config_path.read_text())
    model = build_model(config)
    state = load_checkpoint(config_path.parent / "checkpoint.pt")
    model.load_state_dict(state["best_model"] or state["model"])
    return model, get(config["experiment"]).input_size, f"{config['experiment']}/{config['row']}"


def end_to_end(model: torch.nn.Module, input_size: tuple[int, ...], batch_sizes=(1, 256), repeats: int = 5,
               min_seconds: float = 0.2) -> list[dict]:
    """Time ``model`` (PyTorch, eval) and its packed conversion on random inputs of each batch size;
    also compare the float32 state dict with the packed file. Returns one dict per batch size."""
    import tempfile

    from . import convert

    model = model.eval()
    packed = convert(model, torch.zeros(2, *input_size))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with tempfile.TemporaryDirectory() as tmp:
        packed.save(Path(tmp) / "m.onebit")
        packed_bytes = (Path(tmp) / "m.onebit").stat().st_size
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *input_size)
        xn = x.numpy()

        def run_torch():
            with torch.no_grad():
                model(x)

        t_torch, t_packed = compare([run_torch, lambda: packed(xn)], repeats, min_seconds)
        rows.append({"batch": batch, "torch_ms": 1e3 * t_torch, "packed_ms": 1e3 * t_packed,
                     "speedup": t_torch / t_packed, "state_dict_bytes": buffer.tell(),
                     "packed_bytes": packed_bytes, "size_ratio": buffer.tell() / packed_bytes})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a trained run (default: untrained study A BNN MLP, "
                        "same speed and size)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    args = parser.parse_args(argv)
    if args.run_dir:
        model, input_size, name = _model_from_run(args.run_dir)
    else:
        from ..models import MLP

        torch.manual_seed(0)
        model, input_size, name = MLP(recipe="bnn"), (1, 28, 28), "MLP 784-2048-2048-2048-10, recipe bnn"
    repeats, min_seconds = (3, 0.05) if args.quick else (7, 0.3)
    print(f"end to end: {name}; torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'batch':>6} {'torch ms':>10} {'packed ms':>10} {'speed-up':>9} {'state dict':>12} {'packed file':>12} "
          f"{'smaller':>8}")
    for r in end_to_end(model, input_size, repeats=repeats, min_seconds=min_seconds):
        print(f"{r['batch']:>6} {r['torch_ms']:>10.3f} {r['packed_ms']:>10.3f} {r['speedup']:>8.1f}x "
              f"{r['state_dict_bytes']:>12,} {r['packed_bytes']:>12,} {r['size_ratio']:>7.1f}x")


if __name__ == "__main__":
    main()
