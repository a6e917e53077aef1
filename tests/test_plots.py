"""Plots draw exactly what the events say."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from course_lib.events import Attempt, CallOutcome, FallbackStep, GiveUp, Rejected, StateChange, Wait  # noqa: E402
from course_lib.plots import FAILED, OK, STATE_COLOURS, breaker_timeline, fallback_chart, fleet_chart, retry_timeline  # noqa: E402

EVENTS = [
    Attempt(0.0, "r", 1, 1, 0.2, "InternalServerError", 503),
    Wait(0.2, "r", 1, 1, 1.0, "backoff"),
    Attempt(1.2, "r", 1, 2, 0.2),
    Attempt(0.5, "r", 2, 1, 0.1, "RateLimitError", 429),
    GiveUp(0.6, "r", 2, 1, "deadline", "RateLimitError"),
]


def test_retry_timeline_draws_one_bar_per_attempt_in_its_outcome_colour() -> None:
    fig = retry_timeline(EVENTS, outages=[(0, 1)])
    ax = fig.axes[0]
    bars = [c for c in ax.collections if c.get_paths()]
    colours = [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in bars]
    assert colours == [FAILED, OK, FAILED]
    assert [t.get_text() for t in ax.texts] == ["503", "ok", "429"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["call 1", "call 2"]
    waits = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert [tuple(line.get_xdata()) for line in waits] == [(0.2, 1.2)]
    assert any(line.get_marker() == "x" for line in ax.lines)  # the give-up


def test_fleet_chart_titles_report_calls_and_drain_time() -> None:
    attempts = {
        "none": [Attempt(0.0, "c", 1, 1, 0.0, "InternalServerError", 503), Attempt(4.0, "c", 1, 2, 0.5)],
        "full": [Attempt(1.0, "c", 1, 1, 0.25)],
    }
    fig = fleet_chart(attempts, bin_width=1.0, outages=[(0, 3)], capacity=5)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["none: 2 calls, last answer at 4.5 s", "full: 1 calls, last answer at 1.2 s"]


def test_breaker_timeline_bands_follow_the_state_changes_and_counts_each_mark() -> None:
    events = [
        CallOutcome(0.0, "b", "closed", "success", 0.1),
        CallOutcome(1.0, "b", "closed", "failure", 0.1, "TimeoutError"),
        StateChange(1.1, "b", "closed", "open", "1 consecutive failures"),
        Rejected(2.0, "b", "open", 6.1),
        StateChange(6.1, "b", "open", "half-open", "open for 5.0s"),
        CallOutcome(6.1, "b", "half-open", "success", 0.2),
        StateChange(6.3, "b", "half-open", "closed", "1 probe(s) succeeded"),
        CallOutcome(7.0, "b", "closed", "ignored", 0.1, "BadRequestError"),
    ]
    ax = breaker_timeline(events).axes[0]
    bands = [(round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6), matplotlib.colors.to_hex(p.get_facecolor()))
             for p in ax.patches]
    assert bands == [(0, 1.1, STATE_COLOURS["closed"]), (1.1, 6.1, STATE_COLOURS["open"]),
                     (6.1, 6.3, STATE_COLOURS["half-open"]), (6.3, 7.1, STATE_COLOURS["closed"])]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["success (2)", "failure (1)", "ignored (1)", "rejected (1)"]


def test_fallback_chart_puts_each_request_on_the_handler_that_served_it() -> None:
    events = [
        FallbackStep(0.0, "f", 1, "gpt-4o", "failed", "InternalServerError", 2.0),
        FallbackStep(2.0, "f", 1, "gpt-4o-mini", "answered", "", 0.5),
        FallbackStep(3.0, "f", 2, "gpt-4o", "skipped", "breaker open", 0.0),
        FallbackStep(3.0, "f", 2, "gpt-4o-mini", "answered", "", 0.25),
    ]
    top, bottom = fallback_chart(events).axes[:2]
    assert [t.get_text() for t in top.get_yticklabels()] == ["gpt-4o", "gpt-4o-mini"]
    assert top.get_legend_handles_labels()[1] == ["gpt-4o (0)", "gpt-4o-mini (2)"]
    assert bottom.collections[0].get_offsets().tolist() == [[0.0, 2.5], [3.0, 0.25]]  # arrival time, latency
