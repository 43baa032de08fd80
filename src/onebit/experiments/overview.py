"""The README's results table, rendered from the committed ``results/<experiment>/results.json``.

``python -m onebit.experiments.overview [README.md] [results]`` rewrites the table in the README;
``tests/test_results.py`` checks that the committed README holds what this module renders.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from .render import packed_threads

__all__ = ["Line", "LINES", "results_table", "with_results_table", "main"]


@dataclass(frozen=True)
class Line:
    """Which rows of an experiment's ``results.json`` one line of the table shows.

    Attributes:
        title: the experiment cell, e.g. ``"`omniglot`, 5-way 1-shot"``.
        float_rows: row name -> label (``""``: the figure alone) of the float models' test accuracy.
        binary_rows: row name -> label of the binary models' test accuracy.
        reference_rows: row name -> label of the published figure the report quotes for that row
            (its first, where it quotes several).
        packed: row name -> label of the packed models whose speed-up and size are shown.
        not_packed: what the packed cell says when there is nothing to pack.
        mcu: row name -> label of the rows whose Cortex-M4 figures the packed cell shows instead.
    """

    title: str
    float_rows: dict[str, str]
    binary_rows: dict[str, str]
    reference_rows: dict[str, str]
    packed: dict[str, str] = field(default_factory=dict)
    not_packed: str = ""
    mcu: dict[str, str] = field(default_factory=dict)


LINES: dict[str, Line] = {
    "mnist-mlp": Line("`mnist-mlp`", {"float": ""}, {"bnn": "bnn", "xnor": "xnor"},
                      {"float": "float", "binaryconnect": "binaryconnect"}, {"xnor": "xnor"}),
    "mnist-cnn": Line("`mnist-cnn`", {"none": ""},
                      {"deterministic-st-both": "binary activations in both convs (deterministic, straight-through)"},
                      {"deterministic-st-both": "both convs, deterministic"},
                      not_packed="(binary activations only: nothing to pack)"),
    "omniglot": Line("`omniglot`, 5-way 1-shot", {"float": ""},
                     {"binary-block4": "binary block 4",
                      "binary-all-hamming": "every block binary with a Hamming head"},
                     {"float": "float", "binary-block4": "block 4"}, {"binary-all-hamming": "Hamming encoder"}),
    "mnist-mcu": Line("`mnist-mcu`, fully binary CNNs for a Cortex-M4", {},
                      {"mcu-4k": "4 KiB", "mcu-8k": "8 KiB", "mcu-16k": "16 KiB"},
                      {"mcu-4k": "", "mcu-16k": ""},
                      mcu={"mcu-4k": "4 KiB", "mcu-16k": "16 KiB"}),
    "cifar10": Line("`cifar10`, width 0.5", {"float": "VGG-small", "float-bireal": "ResNet-18"},
                    {"binaryconnect": "binaryconnect", "bnn": "bnn", "react": "ReActNet Bi-Real, distilled"},
                    {"bnn": "bnn"}, {"bnn": "bnn"}),
}

BEGIN = ("<!-- results table: rendered from results/*/results.json by onebit.experiments.overview; "
         "`python -m onebit.experiments.overview` rewrites it -->")
END = "<!-- end of results table -->"


def _labelled(label: str, text: str) -> str:
    return f"{label}: {text}" if label else text


def _cell(rows: dict[str, dict], picked: dict[str, str], figure) -> str:
    """``label: figure(row)`` of each picked row, ``label: not run`` for rows without records."""
    return "; ".join(_labelled(label, figure(rows[name]) if name in rows else "not run")
                     for name, label in picked.items())


def _accuracy(row: dict) -> str:
    return f"{100 * row['test_acc_mean']:.2f}"


def _published(row: dict) -> str:
    return (row["published"] or "").split(";")[0]


def _packed(row: dict) -> str:
    packed = row.get("packed")
    if packed is None or "error" in packed:
        return "not evaluated"
    return f"{packed['speedup']:.1f}x faster at {packed_threads(packed)}, {packed['size_ratio']:.0f}x smaller"


def _mcu(row: dict) -> str:
    mcu = row.get("mcu")
    if mcu is None:
        return "not measured"
    return (f"Cortex-M4: {mcu['weights_bytes']:,} B of weights, "
            f"{mcu['instructions_per_inference'] / 1e6:.1f} M instructions per image")


def _missed(name: str, rows: list[dict]) -> list[str]:
    return [f"`{name}` {r['name']} ({100 * r['target']:.1f})" for r in rows
            if r["target"] is not None and r["test_acc_mean"] < r["target"]]


def results_table(results_dir: str | Path) -> str:
    """The README's results table: one line per experiment of :data:`LINES` with a committed
    ``results.json`` under ``results_dir``, then the targets the committed rows missed."""
    lines = ["| experiment | float | binary | the studies / papers | packed model vs PyTorch |",
             "|---|---|---|---|---|"]
    missed = []
    for name, line in LINES.items():
        path = Path(results_dir) / name / "results.json"
        if not path.exists():
            continue
        rows = {r["name"]: r for r in json.loads(path.read_text())["rows"]}
        packed = (_cell(rows, line.mcu, _mcu) if line.mcu else _cell(rows, line.packed, _packed) if line.packed
                  else line.not_packed)
        lines.append(f"| {line.title} | {_cell(rows, line.float_rows, _accuracy)} | "
                     f"{_cell(rows, line.binary_rows, _accuracy)} | {_cell(rows, line.reference_rows, _published)} | "
                     f"{packed} |")
        missed += _missed(name, list(rows.values()))
    if missed:
        lines += ["", f"Targets missed (target in brackets): {', '.join(missed)}."]
    return "\n".join(lines) + "\n"


def with_results_table(readme: str, table: str) -> str:
    """``readme`` with the text between its results-table markers replaced by ``table``."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no results table between {BEGIN!r} and {END!r}")
    return readme[: start + len(BEGIN)] + "\n" + table + readme[end:]


def main(argv: list[str] | None = None) -> None:
    """Rewrite the results table of a README (default ``README.md``) from a results directory
    (default ``results``)."""
    parser = argparse.ArgumentParser(description="Rewrite the README's results table from the committed results.")
    parser.add_argument("readme", nargs="?", default="README.md")
    parser.add_argument("results", nargs="?", default="results")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    path.write_text(with_results_table(path.read_text(), results_table(args.results)))


if __name__ == "__main__":
    main()
