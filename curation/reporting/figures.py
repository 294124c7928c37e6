"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display).

matplotlib is imported inside each call, never when this module is imported: ``curate status`` and friends stay
light. Each function returns a ``Figure`` (a PNG and what it shows) or None when the data has nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from curation.reporting.data import STATES, ReportData

DPI = 100
STATE_STYLE = {  # state → (colour, marker size, label)
    "remaining": ("#b8b8b8", 6, "remaining"),
    "selected": ("#1f77b4", 18, "selected (not in Label Studio)"),
    "queued": ("#ff7f0e", 22, "queued in Label Studio"),
    "labeled": ("#2ca02c", 22, "labeled"),
}
SERIES_COLOUR = {
    "scored": "#1f77b4",
    "failed": "#d62728",
    "selected": "#9467bd",
    "queued": "#ff7f0e",
    "labeled": "#2ca02c",
    "skipped": "#8c564b",
}
MAX_MAP_THUMBNAILS = 6


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under --png
    title: str
    caption: str
    png: bytes


def _new(width: float, height: float) -> Any:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=DPI)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def render(data: ReportData) -> list[Figure]:
    """Every figure the data supports, in the report's order."""
    drawn = [
        timeline(data),
        uncertainty(data),
        embedding_map(data),
        class_balance(data),
        model_metrics(data),
        simulation(data),
    ]
    return [f for f in drawn if f is not None]


def format_time_axis(ax: Any) -> None:
    """Concise date ticks; ticks seconds apart (a demo's whole history) read as clock times, not a bare "05 10"."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(
            locator,
            formats=["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S"],
            offset_formats=["", "%Y", "%Y-%b", "%Y-%b-%d", "%Y-%b-%d", "%Y-%b-%d"],
        )
    )


def timeline(data: ReportData) -> Figure | None:
    series = [s for s in data.timeline if s.times]
    if not series:
        return None
    fig = _new(9, 4)
    ax = fig.add_subplot()
    first = min(s.times[0] for s in series)
    last = max(s.times[-1] for s in series)
    for s in series:
        times = [*s.times, last] if s.times[-1] < last else s.times
        values = [*s.values, s.values[-1]] if len(times) > len(s.values) else s.values
        ax.step(times, values, where="post", label=f"{s.name} ({s.values[-1]})", color=SERIES_COLOUR.get(s.name))
    pad = max((last - first) * 0.03, timedelta(seconds=1))  # a run of seconds (a demo) still reads left to right
    ax.set_xlim(first - pad, last + pad)
    format_time_axis(ax)
    ax.set_ylabel("items")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Pool and queue over time")
    return Figure(
        "health",
        "Pool and queue over time",
        "Cumulative items scored (by any model), unreadable, selected, labeled and skipped, and the tasks waiting in "
        "Label Studio, from the times the database recorded for scoring runs, selections, pushes and annotations.",
        _png(fig),
    )


def uncertainty(data: ReportData) -> Figure | None:
    dists = [d for d in data.distributions if len(d.values)]
    if not dists:
        return None
    current = next((d for d in dists if d.current), dists[-1])
    fig = _new(10, 4)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    left.hist(current.values, bins=30, color="#1f77b4", alpha=0.85)
    left.set_xlabel(f"uncertainty ({current.measure}; higher = more worth labeling)")
    left.set_ylabel("remaining items")
    left.set_title(f"{current.version}: {len(current.values)} remaining items", fontsize=10)
    left.grid(alpha=0.3)
    positions = np.arange(1, len(dists) + 1)
    right.boxplot([d.values for d in dists], positions=positions, widths=0.6, showfliers=False)
    medians = [float(np.median(d.values)) for d in dists]
    right.plot(positions, medians, color="#1f77b4", marker="o", markersize=3, linewidth=1)
    right.set_xticks(positions, [_short(d.version) + (" *" if d.current else "") for d in dists], rotation=30)
    for tick in right.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_fontsize(8)
    right.set_ylabel("uncertainty")
    right.set_title("by model version (oldest → newest; * current)", fontsize=10)
    right.grid(alpha=0.3)
    return Figure(
        "uncertainty",
        "Uncertainty on the remaining pool",
        f"The {current.measure} uncertainty of the items still selectable (never selected, queued or labeled). "
        "Right: the same items as each model version scored them; a falling median means the model grows surer.",
        _png(fig),
    )


def _short(version: str, width: int = 22) -> str:
    return version if len(version) <= width else version[: width - 1] + "…"


def embedding_map(data: ReportData) -> Figure | None:
    m = data.embedding_map
    if m is None or len(m.coords) == 0:
        return None
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig = _new(9, 6.5)
    ax = fig.add_subplot()
    states = np.array(m.states)
    for state in STATES:
        mask = states == state
        if not mask.any():
            continue
        colour, size, label = STATE_STYLE[state]
        ax.scatter(
            m.coords[mask, 0],
            m.coords[mask, 1],
            s=size,
            c=colour,
            label=f"{label} ({int(mask.sum())})",
            edgecolors="none" if state == "remaining" else "black",
            linewidths=0.3,
            zorder=2 + STATES.index(state),
        )
    where = {int(i): k for k, i in enumerate(m.item_ids)}
    offsets = [(60, 45), (-60, 45), (60, -45), (-60, -45), (0, 70), (0, -70)]
    shown = 0
    for thumb in data.queue:
        if shown >= MAX_MAP_THUMBNAILS or thumb.jpeg is None or thumb.item_id not in where:
            continue
        xy = m.coords[where[thumb.item_id]]
        box = AnnotationBbox(
            OffsetImage(_decode(thumb.jpeg), zoom=48 / 128),
            (float(xy[0]), float(xy[1])),
            xybox=offsets[shown % len(offsets)],
            boxcoords="offset points",
            pad=0.2,
            arrowprops={"arrowstyle": "-", "color": "black", "linewidth": 0.6},
            zorder=10,
        )
        ax.add_artist(box)
        ax.annotate(
            f"#{thumb.position}",
            (float(xy[0]), float(xy[1])),
            xytext=offsets[shown % len(offsets)],
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=7,
            color="white",
            bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.7},
            zorder=11,
        )
        shown += 1
    ax.margins(0.12)  # room for the thumbnails near the edges
    ax.set_xlabel(f"{m.method} 1")
    ax.set_ylabel(f"{m.method} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=1.2)
    sample = f"{len(m.coords)} of {m.embedded} embedded items" if len(m.coords) < m.embedded else "every embedded item"
    ax.set_title(f"Embeddings of {m.model_version} ({m.method}; {sample})", fontsize=10)
    return Figure(
        "embeddings",
        "The pool in the model's embedding space",
        f"A 2-D {m.method} projection of the current model's embeddings: selected, queued and labeled items marked; "
        f"the thumbnails are the top of the queue (#position). Clusters without coloured marks are parts of the pool "
        "nobody has looked at.",
        _png(fig),
    )


def _decode(jpeg: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def class_balance(data: ReportData) -> Figure | None:
    b = data.balance
    if b is None or not b.classes or (b.n_selected == 0 and b.n_labeled == 0):
        return None
    fig = _new(max(6.0, 1.0 + 0.7 * len(b.classes)), 4)
    ax = fig.add_subplot()
    x = np.arange(len(b.classes))
    width = 0.4
    share_sel = np.array(b.selected, dtype=float) / max(b.n_selected, 1)
    share_lab = np.array(b.labeled, dtype=float) / max(b.n_labeled, 1)
    bars_sel = ax.bar(x - width / 2, share_sel, width, label=f"selected, predicted (n={b.n_selected})", color="#9467bd")
    bars_lab = ax.bar(x + width / 2, share_lab, width, label=f"labeled (n={b.n_labeled})", color="#2ca02c")
    for bars, counts in ((bars_sel, b.selected), (bars_lab, b.labeled)):
        for bar, count in zip(bars, counts, strict=True):
            if count:
                ax.annotate(
                    str(count),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x, [_short(c, 16) for c in b.classes], rotation=30 if len(b.classes) > 6 else 0)
    ax.set_ylabel("share of items containing the class")
    ax.set_ylim(0, max(1.0, float(max(share_sel.max(initial=0), share_lab.max(initial=0)))) * 1.1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("Class balance: what was selected vs what was labeled", fontsize=10)
    return Figure(
        "classes",
        "Class balance",
        f"Selected items by the classes {b.model_version} predicts in them, next to the labeled items by the classes "
        "the labelers gave (an item with several classes counts once for each).",
        _png(fig),
    )


def model_metrics(data: ReportData) -> Figure | None:
    points = [v for v in reversed(data.versions) if v.get("value") is not None and v.get("metric")]
    if len(points) < 2:
        return None
    fig = _new(8, 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(points))
    ax.plot(x, [v["value"] for v in points], marker="o", color="#1f77b4")
    for k, v in enumerate(points):
        if v.get("n_labeled"):
            ax.annotate(f"{v['n_labeled']} labels", (k, v["value"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)  # fmt: skip
    ax.set_xticks(x, [_short(v["version"]) for v in points], rotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_fontsize(8)
    metrics = sorted({v["metric"] for v in points})
    ax.set_ylabel(" / ".join(metrics))
    ax.grid(alpha=0.3)
    ax.set_title("Held-out metric by model version (oldest → newest)", fontsize=10)
    return Figure(
        "models",
        "Model versions",
        "Each version's metric on the held-out split it was evaluated on, with the labels it was trained on.",
        _png(fig),
    )


def draw_learning_curves(ax: Any, curves: Mapping[str, Sequence[tuple[float, float, float]]]) -> None:
    """Per strategy, the mean over seeds with a ±1 std band; ``random``, the baseline, dashed in black. Shared by
    ``curate simulate``'s PNG and the report, so that both show a simulation the same way."""
    for name, points in curves.items():
        n = np.array([p[0] for p in points], dtype=float)
        mean = np.array([p[1] for p in points])
        std = np.array([p[2] for p in points])
        baseline = name == "random"
        (line,) = ax.plot(
            n,
            mean,
            marker="o",
            markersize=3,
            label=name,
            color="black" if baseline else None,
            linestyle="--" if baseline else "-",
        )
        ax.fill_between(n, mean - std, mean + std, alpha=0.15, color=line.get_color())


def simulation(data: ReportData) -> Figure | None:
    sim = data.simulation
    if sim is None or not sim.curves:
        return None
    fig = _new(8, 4.5)
    ax = fig.add_subplot()
    draw_learning_curves(ax, sim.curves)
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"test {sim.metric}")
    ax.set_title(sim.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Figure(
        "simulation",
        "Simulated learning curves",
        "From curate simulate: each strategy's test metric against the labels it used (mean ± std over seeds), "
        "random as the dashed baseline.",
        _png(fig),
    )
