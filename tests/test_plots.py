"""Plots draw exactly what the events say."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from course_lib.events import Attempt, GiveUp, Wait  # noqa: E402
from course_lib.plots import FAILED, OK, fleet_chart, retry_timeline  # noqa: E402

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
