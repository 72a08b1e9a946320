"""PNG figures for runs and studies, drawn with matplotlib's file-only backend (no display needed).

Each function writes one figure and closes it, so a long-running coordinator does not keep figures
(and their memory) alive. Files are written under a temporary name and renamed, like every other
result file, so a reader never sees half a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from medfed.common import files

Series = Mapping[str, tuple[Sequence[float], Sequence[float | None]]]
"""label -> (x values, y values; None where there is no value)"""


def _save(fig: Figure, path: Path) -> None:
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _draw(ax: Any, series: Series, colours: dict[str, Any], *, dashed: bool = False) -> None:
    """``colours`` gives a label the same colour in every panel of a figure."""
    for label, (xs, ys) in series.items():
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        if points:
            xs_, ys_ = zip(*points, strict=True)
            style = "--" if dashed else "-"
            ax.plot(xs_, ys_, style, color=colour, marker="." if len(points) < 40 else None, label=label)


def _shared_legend(fig: Figure, axes: Sequence[Any]) -> None:
    """One legend for all panels (a label has one colour in every panel), below them: never over the data."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        columns = min(len(handles), 3 if len(axes) == 1 else 4)
        fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=columns,
                   fontsize=8, frameon=False)  # fmt: skip


def line_figure(title: str, panels: Sequence[tuple[str, Series, Series]], xlabel: str = "round") -> Figure:
    """One row of panels; each is (y label, solid series, dashed series)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False, layout="constrained")
    colours: dict[str, Any] = {}
    for ax, (ylabel, solid, dashed) in zip(axes[0], panels, strict=True):
        _draw(ax, solid, colours)
        _draw(ax, dashed, colours, dashed=True)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _shared_legend(fig, axes[0])
    return fig


def line_panels(path: Path, title: str, panels: Sequence[tuple[str, Series, Series]], xlabel: str = "round") -> None:
    _save(line_figure(title, panels, xlabel), path)


def small_multiples_figure(title: str, series: Series, ylabel: str, xlabel: str = "round") -> Figure:
    """One small panel per series on shared axes, so that series with equal values (ten classes all at
    accuracy 1.0) cannot hide each other as lines in one panel would."""
    columns = min(len(series), 5)
    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.6, 2.2 * rows + 0.8), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")  # fmt: skip
    for k, (label, (xs, ys)) in enumerate(series.items()):
        ax = axes[k // columns][k % columns]
        _draw(ax, {label: (xs, ys)}, {label: f"C{k % 10}"})
        ax.set_title(label, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    for k in range(len(series), rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    fig.supxlabel(xlabel, fontsize=10)
    fig.supylabel(ylabel, fontsize=10)
    fig.suptitle(title)
    return fig


def small_multiples(path: Path, title: str, series: Series, ylabel: str, xlabel: str = "round") -> None:
    _save(small_multiples_figure(title, series, ylabel, xlabel), path)


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


LABEL_SLOT_IN = 0.14
"""the narrowest bar slot (inches) an upright 7-point value label fits in without touching its neighbour"""


def bars_figure(title: str, groups: Sequence[str], bars: Mapping[str, Sequence[float | None]], ylabel: str) -> Figure:
    """Bars per group (e.g. a metric per model), each labelled with its value, written upright above it
    so that neighbouring labels cannot run into each other; a missing value leaves a gap. The legend
    sits beside the chart. With too many bars for the widest figure, the value labels are left out
    (the numbers are in the table beside the chart) and every bar series keeps a colour of its own."""
    count = max(len(bars), 1)
    width_in = min(18.0, max(7.0, 0.32 * len(groups) * count + 3))
    fig, ax = plt.subplots(figsize=(width_in, 5), layout="constrained")
    width = 0.8 / count
    labelled = (width_in - 3) / max(1, len(groups) * count) >= LABEL_SLOT_IN
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20").colors  # type: ignore[attr-defined]
    for k, (label, values) in enumerate(bars.items()):
        xs = [i + (k - (count - 1) / 2) * width for i in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in values]
        drawn = ax.bar(xs, heights, width, label=label, color=palette[k % len(palette)])
        if labelled:
            ax.bar_label(drawn, labels=[f"{v:.2f}" if v is not None else "" for v in values], fontsize=7,
                         rotation=90, padding=2)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def grouped_bars(
    path: Path, title: str, groups: Sequence[str], bars: Mapping[str, Sequence[float | None]], ylabel: str
) -> None:
    _save(bars_figure(title, groups, bars, ylabel), path)


STATE_COLOURS = {"accepted": "#2e7d32", "refused": "#c62828", "missing": "#ef6c00", "not chosen": "#e0e0e0"}
"""the cells of a contribution grid, by what happened to a hospital in a round"""


def grid_figure(
    title: str, rows: Sequence[str], columns: Sequence[int], cells: Mapping[tuple[str, int], str]
) -> Figure:
    """One cell per (row, column), coloured by its state in STATE_COLOURS (absent: "not chosen"); the
    legend sits under the grid, and round labels thin out so they never touch."""
    states = list(STATE_COLOURS)
    codes = [[states.index(cells.get((row, column), "not chosen")) for column in columns] for row in rows]
    width = min(18.0, max(6.0, 0.28 * len(columns) + 2.5))
    height = min(14.0, max(2.6, 0.34 * len(rows) + 1.9))
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    palette = ListedColormap([STATE_COLOURS[s] for s in states])
    ax.imshow(codes, cmap=palette, vmin=-0.5, vmax=len(states) - 0.5, aspect="auto", interpolation="nearest")
    ax.set_xticks([x - 0.5 for x in range(len(columns) + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(len(rows) + 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    fits = max(1, int((width - 2.5) / 0.3))  # round labels that fit side by side
    shown = list(range(0, len(columns), -(-len(columns) // fits)))
    ax.set_xticks(shown, [str(columns[i]) for i in shown])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("round")
    ax.set_title(title)
    handles = [Patch(color=STATE_COLOURS[s], label=s) for s in states]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(states), frameon=False, fontsize=8)
    return fig


def grid(
    path: Path, title: str, rows: Sequence[str], columns: Sequence[int], cells: Mapping[tuple[str, int], str]
) -> None:
    _save(grid_figure(title, rows, columns, cells), path)
