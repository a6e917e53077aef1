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

from .events import Attempt, CallOutcome, Event, FallbackStep, GiveUp, Rejected, StateChange, Wait

__all__ = ["retry_timeline", "fleet_chart", "breaker_timeline", "fallback_chart"]

OK, FAILED, WAIT, DOWN = "#2e9d4f", "#d1495b", "#8d99ae", "#f4d6da"
REJECTED, IGNORED = "#f29e4c", "#5c6f91"
STATE_COLOURS = {"closed": "#e3f2e6", "open": "#f8d7da", "half-open": "#fff3cd"}
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
    fig, axes = plt.subplots(len(names), 1, sharex=True, sharey=True, figsize=(9, 1.9 * len(names)), layout="constrained", squeeze=False)
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


def _state_spans(events: Sequence[Event], end: float) -> list[tuple[float, float, str]]:
    """(start, end, state) intervals from the breaker's StateChange events."""
    spans, start, state = [], 0.0, "closed"
    for change in (e for e in events if isinstance(e, StateChange)):
        spans.append((start, change.t, state))
        start, state = change.t, change.new
    spans.append((start, end, state))
    return [span for span in spans if span[1] > span[0]]


def breaker_timeline(events: Iterable[Event], *, ax: Axes | None = None, title: str = "Circuit breaker") -> Figure:
    """The breaker's state as coloured bands over time, and every request as a mark:
    success, failure, ignored (a client error) or rejected fast."""
    fig, ax = _figure(ax, (9, 2.8))
    events = list(events)
    end = max((e.t + getattr(e, "duration", 0.0) for e in events), default=1.0)
    for start, stop, state in _state_spans(events, end):
        ax.axvspan(start, stop, color=STATE_COLOURS[state], zorder=0)
    rows = {"success": (0, OK, "o"), "failure": (1, FAILED, "x"), "ignored": (2, IGNORED, "s"), "rejected": (3, REJECTED, "|")}
    marks: dict[str, list[float]] = {kind: [] for kind in rows}
    for e in events:
        if isinstance(e, CallOutcome):
            marks[e.verdict].append(e.t)
        elif isinstance(e, Rejected):
            marks["rejected"].append(e.t)
    for kind, times in marks.items():
        y, colour, marker = rows[kind]
        ax.scatter(times, [y] * len(times), color=colour, marker=marker, s=30, label=f"{kind} ({len(times)})", zorder=2)
    ax.set_yticks([y for y, _, _ in rows.values()], list(rows))
    ax.set_ylim(-0.6, 3.6)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    ax.legend(
        handles=[Patch(color=c, label=state) for state, c in STATE_COLOURS.items()] + ax.get_legend_handles_labels()[0],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
    )
    return fig


def fallback_chart(events: Iterable[Event], *, outages: Sequence[Window] = (), title: str = "Who answered") -> Figure:
    """Top: which handler served each request over time. Bottom: each request's latency."""
    answered = [e for e in events if isinstance(e, FallbackStep)]
    started: dict[int, float] = {}
    for step in answered:
        started.setdefault(step.call_id, step.t)
    served = [s for s in answered if s.outcome == "answered"]
    handlers = list(dict.fromkeys(s.handler for s in answered))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 4), layout="constrained", height_ratios=[2, 1])
    for ax in (top, bottom):
        _shade(ax, outages, "primary down")
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(handlers):
        times = [started[s.call_id] for s in served if s.handler == name]
        top.scatter(times, [i] * len(times), color=colours(i), s=18, label=f"{name} ({len(times)})")
    top.set_yticks(range(len(handlers)), handlers)
    top.invert_yaxis()
    top.set_title(title)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    latency = [(started[s.call_id], s.t + s.duration - started[s.call_id], handlers.index(s.handler)) for s in served]
    bottom.scatter([t for t, _, _ in latency], [d for _, d, _ in latency], c=[colours(i) for _, _, i in latency], s=12)
    bottom.set_ylabel("latency (s)")
    bottom.set_xlabel("time the request arrived (s)")
    return fig
