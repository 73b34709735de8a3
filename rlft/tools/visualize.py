"""Metric curves for PNG files and reports (`rlft plot`, `rlft compare`)."""

import matplotlib

matplotlib.use("Agg")  # headless: figures go to TensorBoard or PNG files, never a window
import matplotlib.pyplot as plt


def metric_curves(
    series: dict[str, list[tuple[float, float]]], ylabel: str, xlabel: str = "epoch", title: str = "",
    bands: dict[str, list[tuple[float, float, float]]] | None = None,
    styles: dict[str, dict] | None = None,
):
    """One line per label: label -> [(x, value)], with an optional shaded band per label:
    label -> [(x, low, high)] (e.g. mean ± std over seeds), and optional matplotlib line
    settings per label (e.g. {"linestyle": "--", "color": "C1"} to pair two curves). Returns
    a matplotlib Figure."""
    # Sized for the manual's column: the labels (a sweep's overrides, often long) go below the axes in
    # a readable font rather than beside them, where they squeeze the curves into half the width.
    fig, ax = plt.subplots(figsize=(8, 4.5) if len(series) > 1 else (6, 3.5))
    for label, points in series.items():
        steps, values = zip(*points)
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label=label, **(styles or {}).get(label, {}))
        if bands and bands.get(label):
            xs, low, high = zip(*bands[label])
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        longest = max(len(label) for label in series)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16),  # below: never hides a curve
                  ncol=1 if longest > 40 else 2 if longest > 20 else 3, frameon=False)
    else:
        fig.tight_layout()  # a legend outside is fitted by savefig(bbox_inches="tight") instead
    return fig
