"""Plots draw exactly what the events say, and shade every failure window with its own label."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from course_lib.events import Attempt, CallOutcome, FallbackStep, GiveUp, Rejected, StateChange, Wait  # noqa: E402
from course_lib.plots import (  # noqa: E402
    BACKOFF_WAIT, FAILED, FAULT_COLOURS, OK, RATE_LIMITED, SERVER_WAIT, STATE_COLOURS, breaker_timeline, fallback_chart,
    fault_windows, load_chart, retry_timeline)
from course_lib.sim import FaultPlan  # noqa: E402
from course_lib.sim.provider import CallRecord  # noqa: E402

EVENTS = [
    Attempt(0.0, "r", 1, 1, 0.2, "InternalServerError", 503),
    Wait(0.2, "r", 1, 1, 1.0, "backoff"),
    Attempt(1.2, "r", 1, 2, 0.2),
    Attempt(0.5, "r", 2, 1, 0.1, "RateLimitError", 429),
    Wait(0.6, "r", 2, 1, 2.0, "retry-after"),
    Attempt(2.6, "r", 2, 2, 0.1, "RateLimitError", 429),
    GiveUp(2.7, "r", 2, 2, "deadline", "RateLimitError"),
]
PLAN = FaultPlan(faults=[
    {"kind": "outage", "start": 0, "end": 1, "status": 503},
    {"kind": "rate_limit", "start": 0.5, "end": 3, "retry_after": 2},
    {"kind": "latency", "seconds": 0.1},
])


def hexes(colours) -> list[str]:
    return [matplotlib.colors.to_hex(c) for c in colours]


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_fault_windows_name_slow_and_stalling_streams() -> None:
    plan = FaultPlan.model_validate({"faults": [
        {"kind": "slow_stream", "start": 1, "end": 2, "first_token_seconds": 2, "stall_after": 3},
        {"kind": "slow_stream", "start": 3, "end": 4, "chunk_seconds": 0.5}]})
    assert [(w.label, w.kind) for w in fault_windows(plan)] == [
        ("streams stall after 3 chunks", "slow_stream"), ("slow streams", "slow_stream")]


def test_fault_windows_label_each_failure_and_leave_latency_out() -> None:
    assert [(w.start, w.end, w.label) for w in fault_windows(PLAN)] == [
        (0, 1, "503 outage"), (0.5, 3, "429 rate limit (Retry-After 2 s)")]
    plan = FaultPlan(faults=[{"kind": "outage", "rate": 0.35, "models": ["gpt-4o"]}])
    assert [w.label for w in fault_windows(plan)] == ["gpt-4o: 503 outage, 35% of calls"]


def test_retry_timeline_colours_attempts_by_outcome_and_tells_the_two_waits_apart() -> None:
    ax = retry_timeline(EVENTS, faults=PLAN).axes[0]
    bars = [c for c in ax.collections if c.get_paths()]
    assert hexes(c.get_facecolor()[0] for c in bars) == [FAILED, OK, RATE_LIMITED, RATE_LIMITED]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["call 1", "call 2"]
    waits = {(tuple(line.get_xdata()), line.get_linestyle(), matplotlib.colors.to_hex(line.get_color())) for line in ax.lines
             if line.get_linestyle() in (":", "--")}
    assert waits == {((0.2, 1.2), ":", BACKOFF_WAIT), ((0.6, 2.6), "--", SERVER_WAIT)}
    assert legend_labels(ax) == ["503 server error", "waiting (our backoff)", "attempt ok", "429 rate limited",
                                 "waiting as the server asked (Retry-After)", "gave up", "503 outage",
                                 "429 rate limit (Retry-After 2 s)"]
    spans = [p for p in ax.patches if p.get_x() is not None]
    assert len(spans) == 2  # both windows shaded


def test_load_chart_counts_what_the_provider_did_in_each_bin() -> None:
    logs = {"no breaker": [CallRecord(0.2, "m", 503), CallRecord(0.7, "m", 200), CallRecord(1.5, "m", None)],
            "breaker": [CallRecord(1.1, "m", 200)]}
    fig = load_chart(logs, faults=[(0, 1, "503 outage")], capacity=5)
    top, bottom = fig.axes
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "no breaker: 3 calls reached the provider, 1 answered", "breaker: 1 calls reached the provider, 1 answered"]
    heights = [[round(p.get_height()) for p in container] for container in top.containers]
    assert heights == [[1, 0], [1, 0], [0, 1]]  # answered, refused, no answer (stacked: cumulative)
    assert legend_labels(top) == ["answered", "refused", "no answer", "capacity (5/s)", "503 outage"]
    only_answers = load_chart({"run": [CallRecord(0.5, "m", 200)]}, faults=[(0, 60, "60 s outage")]).axes[0]
    assert legend_labels(only_answers) == ["answered", "60 s outage"]  # nothing listed that is not drawn
    assert only_answers.get_xlim()[1] >= 60  # the whole window is shown, past the last call


def test_breaker_timeline_bands_follow_the_state_changes_and_counts_each_mark() -> None:
    events = [
        CallOutcome(0.0, "b", "closed", "success", 0.1),
        CallOutcome(1.0, "b", "closed", "failure", 0.1, "TimeoutError"),
        StateChange(1.1, "b", "closed", "open", "1 consecutive failures"),
        Rejected(2.0, "b", "open", 6.1),
        Rejected(4.0, "b", "open", 6.1),
        StateChange(6.1, "b", "open", "half-open", "open for 5.0s"),
        CallOutcome(6.1, "b", "half-open", "success", 0.2),
        StateChange(6.3, "b", "half-open", "closed", "1 probe(s) succeeded"),
        CallOutcome(7.0, "b", "closed", "ignored", 0.1, "BadRequestError"),
    ]
    ax = breaker_timeline(events, faults=[(0.5, 3, "503 outage")]).axes[0]
    bands = [(round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6), matplotlib.colors.to_hex(p.get_facecolor()))
             for p in ax.patches]
    assert bands == [(0, 1.1, STATE_COLOURS["closed"]), (1.1, 6.1, STATE_COLOURS["open"]),
                     (6.1, 6.3, STATE_COLOURS["half-open"]), (6.3, 7.1, STATE_COLOURS["closed"])]
    outage = [c for c in ax.collections if len(c.get_paths()) == 1 and c.get_paths()[0].vertices[:, 0].min() == 0.5]
    assert len(outage) == 1  # the outage drawn on the provider row
    assert legend_labels(ax)[3:] == ["503 outage", "success (2)", "failure (1)", "ignored (1)", "rejected (2)"]
    assert [t.get_text() for t in ax.texts] == ["1 rejected while the provider was up"]


def test_fallback_chart_shades_each_models_outage_on_its_own_row_and_marks_degraded_answers() -> None:
    events = [
        FallbackStep(0.0, "f", 1, "gpt-4o", "failed", "InternalServerError", 2.0),
        FallbackStep(2.0, "f", 1, "gpt-4o-mini", "answered", "", 0.5),
        FallbackStep(3.0, "f", 2, "gpt-4o", "skipped", "breaker open", 0.0),
        FallbackStep(3.0, "f", 2, "gpt-4o-mini", "failed", "InternalServerError", 0.25),
        FallbackStep(3.25, "f", 2, "static", "answered", "degraded", 0.0),
    ]
    plan = FaultPlan(faults=[{"kind": "outage", "models": ["gpt-4o"]}, {"kind": "outage", "start": 3, "models": ["gpt-4o-mini"]}])
    top, bottom = fallback_chart(events, faults=plan).axes[:2]
    assert [t.get_text() for t in top.get_yticklabels()] == ["gpt-4o", "gpt-4o-mini", "static"]
    assert legend_labels(top) == ["gpt-4o (0)", "gpt-4o-mini (1)", "static, degraded (1)", "503 outage"]
    shaded = [c for c in top.collections if c.get_zorder() == 0]
    assert sorted(round(c.get_paths()[0].vertices[:, 1].mean()) for c in shaded) == [0, 1]  # not on static's row
    assert {matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in shaded} == {FAULT_COLOURS["outage"]}
    assert bottom.collections[0].get_offsets().tolist() == [[0.0, 2.5], [3.0, 0.25]]  # arrival time, latency
