"""The figures people read: no legend over the data, no value labels running into each other, no line
hiding another (each checked on the drawn figure, in display coordinates)."""

import itertools

import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from medfed.server.report import plots

ROUNDS = list(range(1, 21))


def drawn(fig: Figure) -> object:
    fig.canvas.draw()
    return fig.canvas.get_renderer()  # type: ignore[attr-defined]


def test_the_legend_of_the_round_curves_covers_no_panel() -> None:
    panels = [
        ("accuracy / AUC", {"test accuracy": (ROUNDS, [0.9] * 20), "test macro AUC": (ROUNDS, [0.1] * 20)},
         {f"hospital_{c} (own validation)": (ROUNDS, [0.5] * 20) for c in "abc"}),
        ("loss", {"test loss": (ROUNDS, [0.3] * 20)}, {}),
    ]  # fmt: skip
    fig = plots.line_figure("run", panels)
    renderer = drawn(fig)

    legends = fig.legends
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert all(not box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert len(legends[0].get_texts()) == 6  # every series named once, with one colour across panels


def test_ten_classes_at_the_same_accuracy_each_get_a_panel_of_their_own() -> None:
    series = {f"digit {c}": (ROUNDS, [1.0] * 20) for c in range(10)}

    fig = plots.small_multiples_figure("per class", series, "accuracy")

    visible = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert sorted(ax.get_title() for ax in visible) == sorted(series) and all(len(ax.lines) == 1 for ax in visible)


@pytest.mark.parametrize("classes", [2, 10])
def test_bar_value_labels_do_not_collide_and_the_legend_sits_beside_the_bars(classes: int) -> None:
    models = ["local hospital_a", "local hospital_b", "local hospital_c", "federated", "centralized"]
    groups = ["accuracy", "macro AUC", *(f"acc. {c}" for c in range(classes))]
    fig = plots.bars_figure("study", groups, {m: [0.99] * len(groups) for m in models}, "on the test set")
    renderer = drawn(fig)

    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    assert len(labels) == len(models) * len(groups)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(labels, 2))
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))
    assert all(Bbox.intersection(label, ax.get_window_extent(renderer)) is not None for label in labels)


def test_many_bar_series_keep_colours_of_their_own_and_no_labels_that_would_collide() -> None:
    models = [f"model {i}" for i in range(11)]
    groups = ["accuracy", "macro AUC", *(f"acc. {c}" for c in range(10))]
    fig = plots.bars_figure("study", groups, {m: [0.99] * len(groups) for m in models}, "on the test set")
    renderer = drawn(fig)

    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(labels, 2))
    colours = {tuple(container.patches[0].get_facecolor()) for container in ax.containers}
    assert len(colours) == len(models)
