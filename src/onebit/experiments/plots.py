"""Plots of a report: training curves (:func:`plot_curves`) and firing-rate heatmaps
(:func:`plot_heatmap`), drawn with matplotlib's Agg back end."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["curve_groups", "plot_curves", "plot_heatmap"]


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


def plot_curves(rows: list[dict], path: Path) -> None:
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


def plot_heatmap(rate: torch.Tensor, title: str, path: Path) -> None:
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
