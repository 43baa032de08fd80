"""Turn finished runs into ``results.json``, ``results.md``, ``curves.png`` and heatmaps."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from .._summary import summary as model_summary
from ..data.datasets import describe
from ..nn import QuantizedLayer
from ..quantizers import Quantizer
from ..training import write_json
from . import registry
from .packed import evaluate_packed
from .runs import DATA_FILE, build_model, checkpoint_path, data_info, load_trained

__all__ = ["collect_rows", "write_report", "firing_rates", "aggregate_evaluations"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate_evaluations(finals: list[dict]) -> dict[str, dict[str, Any]]:
    """Aggregate the ``"evaluations"`` of several runs' ``final.json`` (see
    :meth:`onebit.training.Trainer`), keeping the settings every run has, in order.

    Each run holds ``{key: {"acc": ..., "ci95": ..., **description}}``; the result is ``{key:
    {"acc": [per run], "acc_mean", "acc_std", "ci95", **description}}`` where ``acc_std`` is
    the spread over runs (seeds) and ``ci95`` the mean over runs of each run's 95% confidence
    half-width over its evaluation episodes.
    """
    if not finals or any("evaluations" not in f for f in finals):
        return {}
    keys = [k for k in finals[0]["evaluations"] if all(k in f["evaluations"] for f in finals)]
    out = {}
    for key in keys:
        runs = [f["evaluations"][key] for f in finals]
        acc = [r["acc"] for r in runs]
        mean, std = _mean_std(acc)
        entry = {k: v for k, v in runs[0].items() if k not in ("acc", "ci95")}
        out[key] = {"acc": acc, "acc_mean": mean, "acc_std": std,
                    "ci95": statistics.fmean(r["ci95"] for r in runs), **entry}
    return out


def _runs(exp_dir: Path, row: str) -> list[tuple[dict, dict, list[dict]]]:
    """(config, final, metrics) of every finished seed of ``row``, lowest seed first."""
    runs = []
    seed_dirs = {d.name.removeprefix("seed"): d for d in (exp_dir / row).glob("seed*")}
    for _, seed_dir in sorted((int(k), d) for k, d in seed_dirs.items() if k.isdigit()):
        final_path = seed_dir / "final.json"
        if not final_path.exists():
            continue
        metrics = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines() if line]
        runs.append((json.loads((seed_dir / "config.json").read_text()), json.loads(final_path.read_text()), metrics))
    return runs


def _experiment(exp_dir: Path, name: str) -> registry.Experiment:
    """The registered experiment ``name``, or the experiment of the runs ``onebit train`` made here."""
    if name != registry.TRAIN:
        return registry.get(name)
    configs = [json.loads(p.read_text()) for p in sorted(exp_dir.glob("*/seed*/config.json"))]
    if not configs:
        raise ValueError(f"{exp_dir} has no runs of `onebit train` yet")
    return registry.trained(configs)


def _accuracy_key(row: dict) -> str:
    """``"test_acc"``, or ``"val_acc"`` for rows trained on data without a test split."""
    return "test_acc" if "test_acc" in row else "val_acc"


def collect_rows(exp_dir: Path) -> tuple[registry.Experiment, list[dict[str, Any]]]:
    """Aggregate finished runs of every row (mean and std over seeds)."""
    info = json.loads((exp_dir / "experiment.json").read_text())
    experiment = _experiment(exp_dir, info["experiment"])
    rows = []
    for row in experiment.rows:
        runs = _runs(exp_dir, row.name)
        if not runs:
            continue
        config = runs[0][0]
        input_size = data_info(exp_dir / row.name / f"seed{config['seed']}", config).input_size
        stats = model_summary(build_model(config), input_size)
        out: dict[str, Any] = {"name": row.name, "seeds": [c["seed"] for c, _, _ in runs]}
        split = "test" if all("test_acc" in f for _, f, _ in runs) else "val"
        for key in (f"{split}_acc", f"{split}_loss", "train_seconds", "best_epoch"):
            values = [f[key] for _, f, _ in runs]
            out[key] = values
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        out["threads"] = [f["threads"] for _, f, _ in runs]
        out["precision"] = sorted({f["precision"] for _, f, _ in runs})
        out["cpu"] = sorted({f["cpu"] for _, f, _ in runs if "cpu" in f})  # some committed runs did not record it
        out["train_cpu_seconds_mean"] = statistics.fmean(f["train_cpu_seconds"] for _, f, _ in runs)
        out.update(epochs=config["train"]["epochs"], quick=config["quick"],
                   binary_params=stats.binary_params, float_params=stats.float_params,
                   packed_bytes=stats.packed_bytes, float32_bytes=stats.float32_bytes,
                   published=experiment.published.get(row.name), target=experiment.targets.get(row.name))
        evaluations = aggregate_evaluations([f for _, f, _ in runs])
        if evaluations:
            out.update(evaluations)
            out["evaluations"] = list(evaluations)
        out["curves"] = {
            key: [statistics.fmean(m[e][key] for _, _, m in runs) for e in range(min(len(m) for _, _, m in runs))]
            for key in ("train_loss", "val_acc")
        }
        rows.append(out)
    return experiment, rows


def _train_time(row: dict) -> str:
    """Wall time per run, then its CPU time, precision and, where the runs recorded it, machine."""
    details = [f"{row['train_cpu_seconds_mean'] / 60:.1f} CPU-min", "/".join(row["precision"])]
    if row["cpu"]:
        details.append("on " + " and ".join(row["cpu"]))
    return f"{row['train_seconds_mean']:.0f} s ({', '.join(details)})"


def _packed_threads(packed: dict) -> str:
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
    threads = {_packed_threads(p) for p in measured}
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
            f"{f' ({_packed_threads(p)})' if per_row_threads else ''} | {p['speedup']:.1f}x | "
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
        lines.append(f"| {reference} | | {accuracy} (published) | | {size} | | | | |")
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


def _markdown(experiment: registry.Experiment, commands: list[str], rows: list[dict], heatmaps: list[str],
              has_notes_file: bool, data: dict | None = None) -> str:
    split = "test" if all(_accuracy_key(r) == "test_acc" for r in rows) else "val"
    title = {"test": "test", "val": "validation"}[split]
    lines = [
        f"# {experiment.name}: {experiment.description}",
        "",
        f"Produced by {_commands(commands)}, then `onebit report`. {title.capitalize()} accuracy of the "
        "best-validation epoch, mean +- std over seeds; time is training wall time per run (and its CPU time, "
        f"precision and, where the run recorded it, CPU) with {_threads(rows)} torch threads per run.",
        *_data_lines(data),
        "",
        f"| row | {title} acc (%) | target | {title} loss | seeds | epochs | binary / float params | packed size | "
        "train time / run | published |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | "
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
    met = row[f"{_accuracy_key(row)}_mean"] >= row["target"]
    return f">= {100 * row['target']:.1f}: {'met' if met else '**not met**'}"


def _threads(rows: list[dict]) -> str:
    return "/".join(map(str, sorted({t for r in rows for t in r["threads"]})))


#: rows a single panel of curves shows; larger experiments get one panel per group of rows
_ROWS_PER_PANEL = 8


def curve_groups(names: list[str]) -> list[list[str]]:
    """Row names split into panels of at most :data:`_ROWS_PER_PANEL` curves (unless one family
    is larger): rows grouped by the first two parts of their dash-separated names (e.g.
    ``stochastic-reinforce``), in order of first appearance, and consecutive groups joined while
    they fit one panel."""
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault("-".join(name.split("-")[:2]), []).append(name)
    panels: list[list[str]] = []
    for family in families.values():
        if panels and len(panels[-1]) + len(family) <= _ROWS_PER_PANEL:
            panels[-1] += family
        else:
            panels.append(list(family))
    return panels


def _plot_curves(rows: list[dict], path: Path) -> None:
    """Training loss and validation accuracy per epoch, one pair of panels per group of rows
    (:func:`curve_groups`), every row of a panel in its own colour and line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for r in rows}
    groups = curve_groups(list(by_name))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.6 * len(groups) + 0.9), squeeze=False)
    for (ax_loss, ax_acc), group in zip(axes, groups, strict=True):
        for i, name in enumerate(group):
            curves = by_name[name]["curves"]
            epochs = range(1, len(curves["train_loss"]) + 1)
            style = {"color": f"C{i % 10}", "linestyle": styles[i // 10 % len(styles)], "label": name}
            ax_loss.plot(epochs, curves["train_loss"], **style)
            ax_acc.plot(epochs, [100 * a for a in curves["val_acc"]], **style)
        ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="Training loss")
        ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
        ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def binary_activations(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose output is a binary activation: binary neurons, activation quantizers used
    as modules of their own, and the input quantizers of binary layers (named
    ``<layer>.input``). Weight quantizers are not activations."""
    owned = {id(q) for m in model.modules() if isinstance(m, QuantizedLayer)
             for q in (m.weight_quantizer, m.input_quantizer) if q is not None}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Quantizer) and id(module) not in owned:  # BinaryNeuron included
            found[name] = module
        elif isinstance(module, QuantizedLayer) and module.has_binary_input:
            found[f"{name}.input"] = module.input_quantizer
    return found


@torch.no_grad()
def firing_rates(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fraction of ``images`` for which each binary unit outputs its high value (1 or +1),
    per binary activation module: tensors shaped like one activation, e.g. ``(C, H, W)``."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            sums[name] = sums.get(name, 0) + (output > 0).double().sum(0)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in binary_activations(model).items()]
    model.eval()
    try:
        for start in range(0, len(images), 500):
            model(images[start : start + 500])
    finally:
        for h in handles:
            h.remove()
    return {k: (v / len(images)).float() for k, v in sums.items()}


def _plot_heatmap(rate: torch.Tensor, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = rate if rate.dim() == 3 else rate.reshape(1, 1, -1)
    if rate.dim() == 1:  # fully connected: lay the units out as a near-square image
        side = int(rate.numel() ** 0.5)
        while rate.numel() % side:
            side -= 1
        maps = rate.reshape(1, side, -1)
    channels = maps.shape[0]
    cols = min(8, channels)
    rows = (channels + cols - 1) // cols
    if channels > _MAX_PANELS:
        _plot_mosaic(plt, maps, cols, rows, title, path)
        return
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1, 1.6 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < channels:
            im = ax.imshow(maps[i].numpy(), vmin=0, vmax=1, cmap="viridis")
            if channels > 1:
                ax.set_title(f"ch {i}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="firing rate")
    fig.savefig(path, dpi=90)
    plt.close(fig)


_MAX_PANELS = 32  # more channels than this are tiled into one image (one matplotlib axes draws fast)


def _plot_mosaic(plt, maps: torch.Tensor, cols: int, rows: int, title: str, path: Path) -> None:
    """Channels ``(C, H, W)`` tiled row-major into a ``rows x cols`` grid, one pixel of gap."""
    channels, h, w = maps.shape
    grid = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for i in range(channels):
        r, c = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = maps[i]
    fig, ax = plt.subplots(figsize=(1.2 * cols + 1.5, 1.2 * rows + 0.6))
    im = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks([(w + 1) * c + (w - 1) / 2 for c in range(cols)], [str(c) for c in range(cols)], fontsize=7)
    ax.set_yticks([(h + 1) * r + (h - 1) / 2 for r in range(rows)], [str(cols * r) for r in range(rows)], fontsize=7)
    ax.set_xlabel("channel = row label + column label", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="firing rate")
    fig.savefig(path, dpi=90)
    plt.close(fig)


#: A run's heatmap files in network order, kept beside its records for reports made without the checkpoint.
_HEATMAP_LIST = "heatmaps.json"


def _heatmaps(exp_dir: Path, experiment: registry.Experiment, rows: list[dict], root: str | None) -> list[str]:
    """Plot the first seed's firing rates of every row with binary activations into ``heatmaps/``; a row
    whose checkpoint is not kept (a committed record) keeps the heatmaps plotted earlier."""
    written = []
    images = None
    for r in rows:
        seed_dir = exp_dir / r["name"] / f"seed{r['seeds'][0]}"
        if not checkpoint_path(seed_dir).exists():
            written += _kept_heatmaps(exp_dir, seed_dir / _HEATMAP_LIST)
            continue
        model, config = load_trained(seed_dir)
        if not binary_activations(model):
            continue
        if images is None:
            task = experiment.task_of(config, root)
            split = getattr(task, "final_split", "test")
            images = torch.cat([batch[0] for batch in task.eval_batches(split)])[:1000]  # inputs first
        names = []
        for layer, rate in firing_rates(model, images).items():
            name = f"heatmaps/{r['name']}__{layer}.png"
            _plot_heatmap(rate, f"{experiment.name} {r['name']}: {layer} (mean {rate.mean():.2f})", exp_dir / name)
            names.append(name)
        write_json(names, seed_dir / _HEATMAP_LIST)
        written += names
    return written


def _kept_heatmaps(exp_dir: Path, listed: Path) -> list[str]:
    """The heatmaps plotted earlier for a run, in the network order ``listed`` keeps (none for a run
    without binary activations)."""
    if not listed.exists():
        return []
    return [name for name in json.loads(listed.read_text()) if (exp_dir / name).exists()]


_QUICK_PACKED_IMAGES = 500  # quick (smoke) runs evaluate their packed models on this many test images
_QUICK_MCU_IMAGES = 20  # and run this many under emulation


def _evaluate_first_seeds(exp_dir: Path, rows: list[dict], key: str, evaluate, remeasure: bool) -> None:
    """Add ``row[key] = evaluate(seed_dir, row)`` for the first seed of every row with binary
    weights, and keep it as ``<key>.json`` in that run's directory: a row whose checkpoint is not
    kept (a committed record), or any row with a stored evaluation unless ``remeasure``, reports
    the evaluation stored there."""
    for r in rows:
        if not r["binary_params"]:
            continue
        seed_dir = exp_dir / r["name"] / f"seed{r['seeds'][0]}"
        stored = seed_dir / f"{key}.json"
        if checkpoint_path(seed_dir).exists() and (remeasure or not stored.exists()):
            r[key] = evaluate(seed_dir, r)
            write_json(r[key], stored)
        elif stored.exists():
            r[key] = json.loads(stored.read_text())


def _evaluate_deployed(exp_dir: Path, experiment: registry.Experiment, rows: list[dict], root: str | None,
                       remeasure: bool) -> None:
    """``row["packed"]`` (:func:`~onebit.experiments.packed.evaluate_packed`) and, for experiments
    with a microcontroller benchmark, ``row["mcu"]`` (:func:`~onebit.experiments.mcu.evaluate_mcu`)."""
    _evaluate_first_seeds(exp_dir, rows, "packed", lambda seed_dir, r: evaluate_packed(
        seed_dir, root, max_images=_QUICK_PACKED_IMAGES if r["quick"] else None), remeasure)
    if experiment.mcu is not None:
        from .mcu import evaluate_mcu

        _evaluate_first_seeds(exp_dir, rows, "mcu", lambda seed_dir, r: evaluate_mcu(
            seed_dir, root, images=_QUICK_MCU_IMAGES if r["quick"] else experiment.mcu.images), remeasure)


PackedMode = Literal["measure", "stored", "skip"]


def _data_record(exp_dir: Path, rows: list[dict]) -> dict | None:
    """The data of the runs (the first row's first seed's :data:`~onebit.experiments.runs.DATA_FILE`,
    else its spec) when they trained on data other than their experiment's; else None."""
    seed_dir = exp_dir / rows[0]["name"] / f"seed{rows[0]['seeds'][0]}"
    spec = json.loads((seed_dir / "config.json").read_text()).get("data")
    if spec is None:
        return None
    return json.loads((seed_dir / DATA_FILE).read_text()) if (seed_dir / DATA_FILE).exists() else dict(spec)


def write_report(exp_dir: str | Path, root: str | None = None, heatmaps: bool = True,
                 packed: PackedMode = "measure") -> Path:
    """Write ``results.json``, ``results.md``, ``curves.png`` and ``heatmaps/*.png`` into
    ``exp_dir`` (``runs/<experiment>``) from its finished runs (``root``: the data root, for
    heatmaps and packed evaluations of runs with a checkpoint). ``packed`` says what the packed
    table reports for each binary row: ``"measure"`` converts seed 0's model and evaluates it
    beside PyTorch (reading the stored ``packed.json`` of runs without a checkpoint),
    ``"stored"`` reads every stored ``packed.json`` and measures only runs with a checkpoint and
    none stored (what ``onebit run`` does), ``"skip"`` evaluates nothing. Returns the results.md path."""
    if packed not in get_args(PackedMode):
        raise ValueError(f"packed must be one of {get_args(PackedMode)}, got {packed!r}")
    exp_dir = Path(exp_dir)
    if not (exp_dir / "experiment.json").exists():
        raise FileNotFoundError(f"{exp_dir} is not an experiment directory (no experiment.json); "
                                "pass runs/<experiment> as written by `onebit run`")
    info = json.loads((exp_dir / "experiment.json").read_text())
    commands = info["commands"]
    experiment, rows = collect_rows(exp_dir)
    if not rows:
        raise ValueError(f"{exp_dir} has no finished runs yet")
    (exp_dir / "heatmaps").mkdir(exist_ok=True)
    _plot_curves(rows, exp_dir / "curves.png")
    maps = _heatmaps(exp_dir, experiment, rows, root) if heatmaps else []
    if packed != "skip":
        _evaluate_deployed(exp_dir, experiment, rows, root, remeasure=packed == "measure")
    data = _data_record(exp_dir, rows)
    results = {"experiment": experiment.name, "command": info["command"], "commands": commands,
               **({"data": data} if data is not None else {}), "rows": rows}
    write_json(results, exp_dir / "results.json")
    path = exp_dir / "results.md"
    path.write_text(_markdown(experiment, commands, rows, maps, (exp_dir / NOTES_FILE).exists(), data))
    return path
