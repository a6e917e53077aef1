"""Matplotlib timelines drawn from recorded events.

Plots read the same `Event` records that tests assert on, so a picture can never disagree with
the numbers next to it. Each function draws on an optional `ax` and returns the figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .events import Attempt, Event, GiveUp, Wait

__all__ = ["retry_timeline", "fleet_chart"]

OK, FAILED, WAIT, DOWN = "#2e9d4f", "#d1495b", "#8d99ae", "#f4d6da"
Window = tuple[float, float]


def _figure(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax


def _shade(ax: Axes, windows: Iterable[Window], label: str) -> None:
    for i, (start, end) in enumerate(windows):
        ax.axvspan(start, end, color=DOWN, zorder=0, label=label if i == 0 else None)


def retry_timeline(
    events: Iterable[Event],
    *,
    ax: Axes | None = None,
    outages: Sequence[Window] = (),
    title: str = "Retry timeline",
) -> Figure:
    """One row per call: each attempt as a bar (green ok, red failed, labelled with its
    status), the waits between attempts as dotted lines, and an x where the call gave up."""
    fig, ax = _figure(ax, (9, 3))
    events = list(events)
    rows = {call: i for i, call in enumerate(sorted({e.call_id for e in events if isinstance(e, (Attempt, Wait, GiveUp))}))}
    span = max((e.t + getattr(e, "duration", 0) + getattr(e, "delay", 0) for e in events), default=1.0)
    min_width = span / 200  # instant attempts stay visible

    _shade(ax, outages, "provider down")
    for e in events:
        if isinstance(e, Attempt):
            y = rows[e.call_id]
            ax.broken_barh([(e.t, max(e.duration, min_width))], (y - 0.3, 0.6), color=OK if e.ok else FAILED)
            label = "ok" if e.ok else str(e.status or e.error)
            ax.annotate(label, (e.t, y - 0.34), fontsize=7, ha="left", va="bottom")  # above the bar
        elif isinstance(e, Wait):
            y = rows[e.call_id]
            ax.plot([e.t, e.t + e.delay], [y, y], ls=":", color=WAIT, lw=1.5)
        elif isinstance(e, GiveUp):
            ax.plot(e.t, rows[e.call_id], marker="x", color="black", ms=9, mew=2)

    ax.set_yticks(list(rows.values()), [f"call {c}" for c in rows])
    ax.set_ylim(-0.8, max(len(rows), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    ax.legend(
        handles=[Patch(color=OK, label="attempt ok"), Patch(color=FAILED, label="attempt failed"), Patch(color=WAIT, label="waiting")]
        + ([Patch(color=DOWN, label="provider down")] if outages else []),
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    return fig


def fleet_chart(
    attempts_by_strategy: Mapping[str, Sequence[Attempt]],
    *,
    bin_width: float = 1.0,
    outages: Sequence[Window] = (),
    capacity: float | None = None,
) -> Figure:
    """Arrivals at the provider over time, one panel per strategy, stacked by outcome.

    Each panel's title gives the total calls and the time the last client got its answer.
    """
    names = list(attempts_by_strategy)
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(9, 1.9 * len(names)), layout="constrained", squeeze=False)
    end = max((a.t for attempts in attempts_by_strategy.values() for a in attempts), default=0.0) + bin_width
    bins = [i * bin_width for i in range(int(end / bin_width) + 2)]

    for ax, name in zip(axes[:, 0], names):
        attempts = attempts_by_strategy[name]
        ok = [a.t for a in attempts if a.ok]
        failed = [a.t for a in attempts if not a.ok]
        _shade(ax, outages, "provider down")
        ax.hist([ok, failed], bins=bins, stacked=True, color=[OK, FAILED], label=["answered", "failed"])
        if capacity is not None:
            ax.axhline(capacity * bin_width, color="black", ls="--", lw=1, label="capacity")
        drained = max((a.t + a.duration for a in attempts if a.ok), default=float("nan"))
        ax.set_title(f"{name}: {len(attempts)} calls, last answer at {drained:.1f} s", fontsize=10, loc="left")
        ax.set_ylabel(f"calls / {bin_width:g} s")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    return fig
