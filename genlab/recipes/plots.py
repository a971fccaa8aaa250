"""PNG plots for run reports (matplotlib, Agg backend: no display needed).

    python -c "from genlab.recipes.plots import plot_curves; plot_curves({'loss': ([0, 1], [3.0, 2.0])}, 'x.png')"
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, ax, path: str | Path) -> Path:
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                title: str = "", xlabel: str = "step", ylabel: str = "loss", logy: bool = False) -> Path:
    """One line per named (x, y) curve, written as a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, (xs, ys) in curves.items():
        if len(xs):
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)


def plot_loss_curves(metrics: list[dict], path: str | Path, title: str = "") -> Path:
    """Train loss per step and validation loss where evaluated, from metrics.jsonl rows."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    curves = {"train": tuple(zip(*train)) if train else ((), ()), "val": tuple(zip(*val)) if val else ((), ())}
    return plot_curves(curves, path, title=title)


def plot_grouped_bars(series: dict[str, Sequence[float]], labels: Sequence[str], path: str | Path, *,
                      title: str = "", ylabel: str = "accuracy") -> Path:
    """Grouped bars: one group per label, one bar per named series (e.g. base vs SFT per eval set)."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, ax, path)
