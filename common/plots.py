"""PNG figures for runs and studies, drawn with matplotlib's file-only backend (no display needed).

Each function writes one figure and closes it, so a long-running coordinator does not keep figures
(and their memory) alive. Files are written under a temporary name and renamed, like every other
result file, so a reader never sees half a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Series = Mapping[str, tuple[Sequence[float], Sequence[float | None]]]
"""label -> (x values, y values; None where there is no value)"""


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _draw(ax: Any, series: Series, colours: dict[str, Any], *, dashed: bool = False) -> None:
    """``colours`` gives a label the same colour in every panel of a figure."""
    for label, (xs, ys) in series.items():
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        if points:
            xs_, ys_ = zip(*points, strict=True)
            style = "--" if dashed else "-"
            ax.plot(xs_, ys_, style, color=colour, marker="." if len(points) < 40 else None, label=label)


def line_panels(path: Path, title: str, panels: Sequence[tuple[str, Series, Series]], xlabel: str = "round") -> None:
    """One row of panels; each is (y label, solid series, dashed series)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    colours: dict[str, Any] = {}
    for ax, (ylabel, solid, dashed) in zip(axes[0], panels, strict=True):
        _draw(ax, solid, colours)
        _draw(ax, dashed, colours, dashed=True)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if solid or dashed:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def confusion(path: Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> None:
    """Counts with each row's share shaded, so a class the model never predicts stands out."""
    n = len(class_names)
    shares = [[v / max(sum(row), 1) for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def grouped_bars(
    path: Path, title: str, groups: Sequence[str], bars: Mapping[str, Sequence[float | None]], ylabel: str
) -> None:
    """Bars per group (e.g. a metric per model); a missing value leaves a gap."""
    fig, ax = plt.subplots(figsize=(min(18.0, max(7.0, 0.3 * len(groups) * max(len(bars), 1) + 2)), 5))
    width = 0.8 / max(len(bars), 1)
    small = len(groups) * len(bars) > 30
    for k, (label, values) in enumerate(bars.items()):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in values]
        drawn = ax.bar(xs, heights, width, label=label)
        ax.bar_label(drawn, labels=[f"{v:.2f}" if v is not None else "" for v in values], fontsize=5 if small else 7,
                     rotation=90 if small else 0, padding=2)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.15)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(bars), 5), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    _save(fig, path)
