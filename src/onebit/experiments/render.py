"""Rendering: ``results.md`` from the aggregated rows (:func:`~.aggregate.collect_rows`)."""

from __future__ import annotations

from ..data.datasets import describe
from . import registry
from .aggregate import accuracy_key

__all__ = ["markdown", "NOTES_FILE"]


def _train_time(row: dict) -> str:
    """Wall time per run, then its CPU time, precision and, where the runs recorded it, machine."""
    details = [f"{row['train_cpu_seconds_mean'] / 60:.1f} CPU-min", "/".join(row["precision"])]
    if row["cpu"]:
        details.append("on " + " and ".join(row["cpu"]))
    return f"{row['train_seconds_mean']:.0f} s ({', '.join(details)})"


def packed_threads(packed: dict) -> str:
    """The threads a packed evaluation timed PyTorch and the packed model with."""
    count = packed["torch_threads"]
    if packed.get("packed_threads") == count:
        return f"{count} thread{'s' * (count != 1)} each"
    return f"{count} torch thread{'s' * (count != 1)}"  # some committed evaluations name torch's threads only


def _packed_table(rows: list[dict]) -> list[str]:
    """Markdown table of each row's packed model (its first seed) beside its PyTorch model."""
    evaluated = [r for r in rows if "packed" in r]
    if not evaluated:
        return []
    measured = [r["packed"] for r in evaluated if "error" not in r["packed"]]
    threads = {packed_threads(p) for p in measured}
    per_row_threads = len(threads) > 1  # evaluations kept from runs with other thread counts
    setup = ""
    if measured:
        setup = (f" on {measured[0]['images']:,} test images at batch {measured[0]['batch_size']}, in one process "
                 + ("per row (threads as each row's throughput says)" if per_row_threads
                    else f"({next(iter(threads))})"))
    lines = ["", "Packed inference (`onebit export` of each row's first seed, seed 0 unless `--first-seed` "
             f"skipped it, run from the file){setup}. "
             "Accuracy (%) as PyTorch / packed; few-shot rows swap in the packed encoder under the same "
             "head and episodes, and \"same output\" counts identical embeddings instead of identical "
             "predictions. Classifiers take raw uint8 pixels when packed. Throughput in images/s. The "
             "packed model computes every binary layer exactly in integers; PyTorch's float32 sums round, "
             "so a pre-activation within rounding of its threshold can take the other sign there, which "
             "moves the outputs (max output diff) and, rarely, a prediction.", "",
             "| row | accuracy PyTorch / packed | same output (%) | max output diff | "
             "PyTorch / packed throughput | speed-up | file (x smaller than float32) |",
             "|---|---|---|---|---|---|---|"]
    for r in evaluated:
        p = r["packed"]
        if "error" in p:
            lines.append(f"| {r['name']} | not convertible: {p['error']} ||||||")
            continue
        accuracy = "; ".join(f"{key}: {100 * a['torch']:.2f} / {100 * a['packed']:.2f}"
                             for key, a in p["accuracy"].items())
        lines.append(
            f"| {r['name']} | {accuracy} | {100 * p['agreement']:.2f} | {p['max_output_diff']:.2g} | "
            f"{p['torch_images_per_s']:,.0f} / {p['packed_images_per_s']:,.0f}"
            f"{f' ({packed_threads(p)})' if per_row_threads else ''} | {p['speedup']:.1f}x | "
            f"{p['file_bytes'] / 1024:,.1f} KiB ({p['size_ratio']:.1f}x) |")
    return lines


def _mcu_table(experiment: registry.Experiment, rows: list[dict]) -> list[str]:
    """Markdown table of each row's first seed on the emulated Cortex-M4, and the anchors."""
    if experiment.mcu is None:
        return []
    measured = [r for r in rows if "mcu" in r]
    lines = ["", "On a Cortex-M4F (`onebit export --format c`, arm-none-eabi-gcc -O2, QEMU mps2-an386): each row's "
             "first seed on the first test images (accuracy as Cortex-M4 / numpy runtime / PyTorch; \"same\": the "
             "Cortex-M4's outputs equal the numpy runtime's bit for bit). Bytes: weights = packed weights, "
             "thresholds, flips and scales in flash; flash = text + rodata of the whole program; RAM = arena + "
             "data + bss; stack = high-water mark of one inference. Instructions: QEMU's count per inference "
             "under -icount (the most over the images), not cycles.", "",
             "| row | images | accuracy (%) | same | weights | flash | RAM | stack | instructions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in measured:
        m = r["mcu"]
        accuracy = " / ".join(f"{100 * m['accuracy'][k]:.2f}" for k in ("mcu", "packed", "torch"))
        lines.append(f"| {r['name']} | {m['images']:,} | {accuracy} | {'yes' if m['same_outputs'] else '**no**'} | "
                     f"{m['weights_bytes']:,} | {m['flash_bytes']:,} | {m['ram_bytes']:,} | {m['stack_bytes']:,} | "
                     f"{m['instructions_per_inference']:,} |")
    for reference, accuracy, size in experiment.mcu.anchors:
        lines.append(f"| {reference} (published) | | {accuracy} | | {size} | | | | |")
    compilers = sorted({r["mcu"]["compiler"] for r in measured})
    if compilers:
        lines += ["", f"Compiler: {'; '.join(compilers)}."]
    return lines


def _commands(commands: list[str]) -> str:
    return ", ".join(f"`{c}`" for c in commands)


#: Dated observations kept beside a results directory's report, which the report links to.
NOTES_FILE = "NOTES.md"


def _data_lines(data: dict | None) -> list[str]:
    """What the report says of data other than the experiment's own (runs of ``--data``, ``onebit train``)."""
    if data is None:
        return []
    line = f"Data: {describe(data)}." if "classes" in data else f"Data: {data['name']}."
    if "test" not in data.get("splits", {"test": 0}):
        line += " The data has no test split: the accuracies are those of the validation split."
    return ["", line]


def markdown(experiment: registry.Experiment, commands: list[str], rows: list[dict], heatmaps: list[str],
              has_notes_file: bool, data: dict | None = None) -> str:
    split = "test" if all(accuracy_key(r) == "test_acc" for r in rows) else "val"
    title = {"test": "test", "val": "validation"}[split]
    lines = [
        f"# {experiment.name}: {experiment.description}",
        "",
        f"Produced by {_commands(commands)}, then `onebit report`. {title.capitalize()} accuracy of the "
        "best-validation epoch, mean +- std over seeds; time is training wall time per run (and its CPU time, "
        f"precision and, where the run recorded it, CPU) with {_threads(rows)} torch threads per run.",
        *_data_lines(data),
        "",
        f"| row |{f' {experiment.row_column} |' if experiment.row_column else ''} {title} acc (%) | target | "
        f"{title} loss | seeds | epochs | binary / float params | packed size | train time / run | published |",
        "|---|" + "---|" * (10 if experiment.row_column else 9),
    ]
    described = {row.name: f" {row.description} |" for row in experiment.rows} if experiment.row_column else {}
    for r in rows:
        lines.append(
            f"| {r['name']} |{described.get(r['name'], '')} "
            f"{100 * r[f'{split}_acc_mean']:.2f} +- {100 * r[f'{split}_acc_std']:.2f} | {_target(r)} | "
            f"{r[f'{split}_loss_mean']:.4f} | {len(r['seeds'])} | {r['epochs']} | "
            f"{r['binary_params']:,} / {r['float_params']:,} | {r['packed_bytes'] / 1024:,.1f} KiB | "
            f"{_train_time(r)} | {r['published'] or ''} |"
        )
    pending = [row.name for row in experiment.rows if row.name not in {r["name"] for r in rows}]
    if pending and experiment.name == registry.TRAIN:
        lines += ["", f"Not finished yet: {', '.join(pending)} (run their `onebit train` command again with "
                  "`--resume`)."]
    elif pending:
        lines += ["", f"Not run yet: {', '.join(pending)} (`onebit run {experiment.name} --resume --rows "
                  f"{' '.join(pending)}` with this directory's `--out` and `--seeds`)."]
    lines += _evaluations_table(rows)
    lines += _packed_table(rows)
    lines += _mcu_table(experiment, rows)
    if any(r["quick"] for r in rows):
        lines += ["", "**Quick (smoke) runs: tiny data subset, one epoch. These numbers mean nothing.**"]
    lines += ["", "![curves](curves.png)", ""]
    lines += [f"- {note}" for note in experiment.notes]
    if has_notes_file:
        lines += ["", f"Measured observations (costs per machine, probes, what was tried, why a target was missed), "
                  f"each dated with the command that measures it again: [{NOTES_FILE}]({NOTES_FILE})."]
    if heatmaps:
        lines += ["", "## Activation heatmaps (firing rate of each binary unit over test images, each row's first "
                  "seed)", ""]
        lines += [f"![{h}]({h})" for h in heatmaps]
    return "\n".join(lines) + "\n"


def _evaluations_table(rows: list[dict]) -> list[str]:
    """Markdown table of the rows' extra evaluations (e.g. few-shot protocols), if any."""
    keys = list(dict.fromkeys(k for r in rows for k in r.get("evaluations", [])))
    if not keys:
        return []
    lines = ["", "Evaluations: accuracy (%) +- 95% confidence half-width over evaluation episodes "
             "(mean over seeds; with several seeds, the seed std follows in brackets).", "",
             "| row | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for key in keys:
            e = r.get(key) if key in r.get("evaluations", []) else None
            if e is None:
                cells.append("")
                continue
            cell = f"{100 * e['acc_mean']:.2f} +- {100 * e['ci95']:.2f}"
            cells.append(cell + (f" [{100 * e['acc_std']:.2f}]" if len(e["acc"]) > 1 else ""))
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def _target(row: dict) -> str:
    if row["target"] is None:
        return ""
    met = row[f"{accuracy_key(row)}_mean"] >= row["target"]
    percent = 100 * row["target"]
    shown = f"{percent:.1f}" if round(percent, 1) == round(percent, 4) else f"{percent:.2f}"  # 98.5, 88.95
    return f">= {shown}: {'met' if met else '**not met**'}"


def _threads(rows: list[dict]) -> str:
    return "/".join(map(str, sorted({t for r in rows for t in r["threads"]})))
