"""Matplotlib timelines drawn from recorded events.

Plots read the same records that tests assert on (events, and the simulated provider's log), so
a picture can never disagree with the numbers next to it. Each chart takes the fault plan (or
plain `(start, end, label)` windows) and shades every window in which the provider was failing,
with a legend entry per kind of fault. Each function draws on an optional `ax` and returns the
figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .events import Attempt, CallOutcome, Event, FallbackStep, GiveUp, Rejected, StateChange, Wait
from .sim.faults import FaultPlan
from .sim.models import MODELS
from .sim.provider import CallRecord

__all__ = ["retry_timeline", "load_chart", "breaker_timeline", "fallback_chart", "fault_windows", "Shade"]

OK, FAILED, RATE_LIMITED, OTHER_ERROR = "#2e9d4f", "#d1495b", "#e07a1f", "#7b5ea7"
BACKOFF_WAIT, SERVER_WAIT, NO_ANSWER = "#8d99ae", "#1f6fb2", "#b0b0b0"
REJECTED, IGNORED = "#f29e4c", "#5c6f91"
STATE_COLOURS = {"closed": "#e3f2e6", "open": "#f8d7da", "half-open": "#fff3cd"}
# One colour per kind of fault, the same on every chart; a window's row says which model it hit.
FAULT_COLOURS = {"outage": "#f4cdd2", "rate_limit": "#fde2c4", "quota": "#f3e6b3", "capacity": "#ddd3ef",
                 "hang": "#d6e4f0", "drop": "#d9ece4", "slow_stream": "#e8dff5"}
OTHER_FAULT = "#e2e2e2"
REAL_ANSWER_COLOURS = ("#1f4e79", "#4a90c2", "#9cc3e4")
DEGRADED_COLOURS = ("#e07a1f", "#8d99ae", "#c9a227")


@dataclass(frozen=True)
class Shade:
    """A window in which the provider was failing: [start, end), for `models` (None: all)."""

    start: float
    end: float
    label: str
    models: tuple[str, ...] | None = None
    kind: str = ""

    @property
    def colour(self) -> str:
        return FAULT_COLOURS.get(self.kind, OTHER_FAULT)


Faults = Union[FaultPlan, Iterable[tuple[float, float, str]]]


def _describe(fault: Any, name_models: bool) -> str:
    kind = fault.kind
    text = {
        "outage": lambda: f"{fault.status} outage",
        "rate_limit": lambda: f"429 rate limit (Retry-After {fault.retry_after:g} s)",
        "quota": lambda: "429 quota exhausted",
        "capacity": lambda: f"over {fault.per_second}/s: {fault.status}",
        "hang": lambda: "hangs",
        "drop": lambda: "dropped connections",
        "slow_stream": lambda: "slow streams" if fault.stall_after is None else
                               f"streams stall after {fault.stall_after} chunks",
    }[kind]()
    if fault.rate < 1:
        text += f", {fault.rate:.0%} of calls"
    return f"{', '.join(fault.models)}: {text}" if fault.models and name_models else text


def fault_windows(faults: Faults, *, name_models: bool = True) -> list[Shade]:
    """Every window of failure in a plan; latency is a slowdown, not a failure, so it is left out
    (say so in the text when a chart's calls are slow). Labels name the models a fault hits
    unless the chart shows that by row (`name_models=False`)."""
    if isinstance(faults, FaultPlan):
        return [Shade(f.start, f.end, _describe(f, name_models), tuple(f.models) if f.models else None, f.kind)
                for f in faults.faults if f.kind != "latency"]
    return [Shade(start, end, label) for start, end, label in faults]


def _legend_of(shades: Sequence[Shade], **style: Any) -> list[Patch]:
    """One legend entry per label, in the order first drawn."""
    first = {shade.label: shade for shade in reversed(shades)}
    return [Patch(facecolor=first[label].colour, label=label, **style) for label in dict.fromkeys(s.label for s in shades)]


def _last_finite_end(shades: Sequence[Shade]) -> float:
    return max((s.end for s in shades if math.isfinite(s.end)), default=0.0)


def _shade(ax: Axes, shades: Sequence[Shade], until: float, rows: Mapping[str, int] | None = None) -> list[Patch]:
    """Shade each window (on the rows of its models when `rows` is given); legend handles back."""
    for shade in shades:
        end = min(shade.end, until)
        if end <= shade.start:
            continue
        if rows is None:
            ax.axvspan(shade.start, end, color=shade.colour, zorder=0)
            continue
        for name, y in rows.items():
            if name in (shade.models or MODELS):
                ax.broken_barh([(shade.start, end - shade.start)], (y - 0.45, 0.9), color=shade.colour, zorder=0)
    return _legend_of(shades)


def _figure(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax


def _legend(ax: Axes, handles: list[Any]) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


# --- retry -----------------------------------------------------------------------------------
def _attempt_colour(attempt: Attempt) -> tuple[str, str]:
    if attempt.ok:
        return OK, "attempt ok"
    if attempt.status == 429:
        return RATE_LIMITED, "429 rate limited"
    if attempt.status is not None and attempt.status >= 500:
        return FAILED, f"{attempt.status} server error"
    return OTHER_ERROR, attempt.error or "failed"


def retry_timeline(events: Iterable[Event], *, ax: Axes | None = None, faults: Faults = (),
                   title: str = "Retry timeline", row_label: str = "call") -> Figure:
    """One row per call (labelled `row_label` and its call id): each attempt a bar coloured by its outcome, each wait a line (dotted
    for our own backoff, dashed for a wait the server asked for), an x where the call gave up."""
    fig, ax = _figure(ax, (9, 3))
    events = list(events)
    rows = {c: i for i, c in enumerate(sorted({e.call_id for e in events if isinstance(e, (Attempt, Wait, GiveUp))}))}
    span = max((e.t + getattr(e, "duration", 0) + getattr(e, "delay", 0) for e in events), default=1.0)
    min_width = span / 200  # instant attempts stay visible

    legend: dict[str, Any] = {}
    for e in events:
        if isinstance(e, Attempt):
            colour, label = _attempt_colour(e)
            ax.broken_barh([(e.t, max(e.duration, min_width))], (rows[e.call_id] - 0.3, 0.6), color=colour)
            legend.setdefault(label, Patch(color=colour, label=label))
        elif isinstance(e, Wait):
            server = e.reason == "retry-after"
            style, colour = ("--", SERVER_WAIT) if server else (":", BACKOFF_WAIT)
            ax.plot([e.t, e.t + e.delay], [rows[e.call_id]] * 2, ls=style, color=colour, lw=1.5)
            label = "waiting as the server asked (Retry-After)" if server else "waiting (our backoff)"
            legend.setdefault(label, Line2D([], [], ls=style, color=colour, lw=1.5, label=label))
        elif isinstance(e, GiveUp):
            ax.plot(e.t, rows[e.call_id], marker="x", color="black", ms=9, mew=2)
            legend.setdefault("gave up", Line2D([], [], marker="x", color="black", ls="", ms=9, mew=2, label="gave up"))

    shades = _shade(ax, fault_windows(faults), span)
    ax.set_yticks(list(rows.values()), [f"{row_label} {c}" for c in rows])
    ax.set_ylim(-0.8, max(len(rows), 1) - 0.2)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    _legend(ax, list(legend.values()) + shades)
    return fig


# --- load at the provider --------------------------------------------------------------------
def load_chart(logs: Mapping[str, Sequence[CallRecord]], *, bin_width: float = 1.0, faults: Faults = (),
               capacity: float | None = None) -> Figure:
    """Calls reaching the provider over time, one panel per run, stacked by what the provider did:
    answered, refused (an error status), or no answer at all (hang or dropped connection).
    `logs` maps a run's name to its provider's `log`."""
    names, windows = list(logs), fault_windows(faults)
    fig, axes = plt.subplots(len(names), 1, sharex=True, sharey=True, figsize=(9, 1.9 * len(names)),
                             layout="constrained", squeeze=False)
    last = max([c.t for log in logs.values() for c in log] + [_last_finite_end(windows)])
    bins = [i * bin_width for i in range(math.floor(last / bin_width) + 2)]
    statuses = [c.status for log in logs.values() for c in log]
    kinds = [(label, colour, test) for label, colour, test in (
        ("answered", OK, lambda s: s == 200), ("refused", FAILED, lambda s: s is not None and s != 200),
        ("no answer", NO_ANSWER, lambda s: s is None)) if any(map(test, statuses))]  # only what is drawn
    shades: list[Patch] = []
    for ax, name in zip(axes[:, 0], names):
        log = logs[name]
        shades = _shade(ax, windows, bins[-1])
        ax.hist([[c.t for c in log if test(c.status)] for _, _, test in kinds], bins=bins, stacked=True,
                color=[colour for _, colour, _ in kinds], label=[label for label, _, _ in kinds])
        if capacity is not None:
            ax.axhline(capacity * bin_width, color="black", ls="--", lw=1)
        answered = sum(c.status == 200 for c in log)
        ax.set_title(f"{name}: {len(log)} calls reached the provider, {answered} answered", fontsize=10, loc="left")
        ax.set_ylabel(f"calls / {bin_width:g} s")
    handles: list[Any] = [Patch(color=colour, label=label) for label, colour, _ in kinds]
    if capacity is not None:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label=f"capacity ({capacity:g}/s)"))
    _legend(axes[0, 0], handles + shades)
    axes[-1, 0].set_xlabel("time (s)")
    return fig


# --- circuit breaker ---------------------------------------------------------------------------
def _state_spans(events: Sequence[Event], end: float) -> list[tuple[float, float, str]]:
    """(start, end, state) intervals from the breaker's StateChange events."""
    spans, start, state = [], 0.0, "closed"
    for change in (e for e in events if isinstance(e, StateChange)):
        spans.append((start, change.t, state))
        start, state = change.t, change.new
    spans.append((start, end, state))
    return [span for span in spans if span[1] > span[0]]


def breaker_timeline(events: Iterable[Event], *, ax: Axes | None = None, faults: Faults = (),
                     title: str = "Circuit breaker") -> Figure:
    """The breaker's state as coloured bands over time; the provider's failure windows in a row of
    their own; every request as a mark: success, failure, ignored (a client error) or rejected
    fast, with the rejections made while the provider was in fact up counted apart."""
    fig, ax = _figure(ax, (9, 3.1))
    events = list(events)
    end = max((e.t + getattr(e, "duration", 0.0) for e in events), default=1.0)
    for start, stop, state in _state_spans(events, end):
        ax.axvspan(start, stop, color=STATE_COLOURS[state], zorder=0)
    windows = fault_windows(faults)
    for w in windows:  # hatched, to stand apart from the breaker's own bands behind it
        ax.broken_barh([(w.start, min(w.end, end) - w.start)], (-0.3, 0.6), facecolor=w.colour, edgecolor="grey",
                       hatch="///")

    rows = {"success": (1, OK, "o"), "failure": (2, FAILED, "x"), "ignored": (3, IGNORED, "s"), "rejected": (4, REJECTED, "|")}
    marks: dict[str, list[float]] = {kind: [] for kind in rows}
    for e in events:
        if isinstance(e, CallOutcome):
            marks[e.verdict].append(e.t)
        elif isinstance(e, Rejected):
            marks["rejected"].append(e.t)
    for kind, times in marks.items():
        y, colour, marker = rows[kind]
        ax.scatter(times, [y] * len(times), color=colour, marker=marker, s=30, label=f"{kind} ({len(times)})", zorder=2)
    if windows:
        up = [t for t in marks["rejected"] if not any(w.start <= t < w.end for w in windows)]
        if up:
            ax.annotate(f"{len(up)} rejected while the provider was up", (min(up), rows["rejected"][0]),
                        xytext=(0, -14), textcoords="offset points", fontsize=8, ha="left", va="top")
    ax.set_yticks([0] + [y for y, _, _ in rows.values()], ["provider"] + list(rows))
    ax.set_ylim(-0.6, 5.0)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    states = [Patch(color=c, label=f"breaker {state}") for state, c in STATE_COLOURS.items()]
    _legend(ax, states + _legend_of(windows, edgecolor="grey", hatch="///") + ax.get_legend_handles_labels()[0])
    return fig


# --- fallback chain ----------------------------------------------------------------------------
def fallback_chart(events: Iterable[Event], *, faults: Faults = (), title: str = "Who answered") -> Figure:
    """Top: which handler served each request over time, with each model's failure windows shaded
    on its own row; real answers in blues, degraded ones (cache, static) in orange and grey.
    Bottom: each request's latency."""
    steps = [e for e in events if isinstance(e, FallbackStep)]
    started: dict[int, float] = {}
    for step in steps:
        started.setdefault(step.call_id, step.t)
    served = [s for s in steps if s.outcome == "answered"]
    handlers = list(dict.fromkeys(s.handler for s in steps))
    degraded = {s.handler for s in served if s.detail == "degraded"}
    real, fallback = iter(REAL_ANSWER_COLOURS), iter(DEGRADED_COLOURS)
    colours = {name: next(fallback) if name in degraded else next(real) for name in handlers}

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 4), layout="constrained", height_ratios=[2, 1])
    end = max((s.t + s.duration for s in steps), default=1.0)
    rows = {name: i for i, name in enumerate(handlers)}
    shades = _shade(top, fault_windows(faults, name_models=False), end, rows=rows)
    for i, name in enumerate(handlers):
        times = [started[s.call_id] for s in served if s.handler == name]
        label = f"{name}{', degraded' if name in degraded else ''} ({len(times)})"
        top.scatter(times, [i] * len(times), color=colours[name], s=18, label=label, zorder=2)
    top.set_yticks(range(len(handlers)), handlers)
    top.set_ylim(len(handlers) - 0.5, -0.5)
    top.set_title(title)
    _legend(top, top.get_legend_handles_labels()[0] + shades)
    arrival = [started[s.call_id] for s in served]
    bottom.scatter(arrival, [s.t + s.duration - started[s.call_id] for s in served],
                   c=[colours[s.handler] for s in served], s=12)
    bottom.set_ylabel("latency (s)")
    bottom.set_xlabel("time the request arrived (s)")
    return fig
