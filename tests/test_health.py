"""Readiness: answers cached for exactly their ttl, probes cut at exactly their timeout, checks run
concurrently and single-flight, the overall status rules and HTTP codes, draining, events, and
configuration errors that name the field. Every time is read off a VirtualClock."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from course_lib.clock import VirtualClock
from course_lib.events import CheckRan, ReadinessChanged, Recorder
from course_lib.health import Check, Degraded, Readiness, Report, degraded


class Dependency:
    """A probe that records when it was called and answers `answer` after `seconds`."""

    def __init__(self, clock: VirtualClock, seconds: float = 0.0, answer: object = None) -> None:
        self.clock, self.seconds, self.answer = clock, seconds, answer
        self.calls: list[float] = []

    async def __call__(self) -> Any:
        self.calls.append(self.clock.now())
        if self.seconds:
            await self.clock.asleep(self.seconds)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def ran(events: Recorder) -> list[tuple[float, str, str, bool]]:
    return [(e.t, e.check, e.status, e.cached) for e in events.of(CheckRan)]


async def at(clock: VirtualClock, t: float, readiness: Readiness) -> Report:
    """The report asked for at clock time `t`."""
    await clock.asleep(t - clock.now())
    return await readiness.report()


# --- the cache ------------------------------------------------------------------------------------
async def test_an_answer_is_reused_until_exactly_ttl_after_its_probe_finished() -> None:
    clock, events = VirtualClock(), Recorder()
    dep = Dependency(clock, seconds=0.5, answer="pong")
    readiness = Readiness([Check("db", dep, ttl=5)], clock=clock, on_event=events)
    first = await readiness.report()  # probe from 0 to 0.5
    cached = await at(clock, 5.4999, readiness)
    fresh = await at(clock, 5.5, readiness)  # exactly ttl after the probe finished
    assert dep.calls == [0.0, 5.5]
    assert [r.checks[0].cached for r in (first, cached, fresh)] == [False, True, False]
    assert [r.t for r in (first, cached, fresh)] == [0.5, 5.4999, 6.0]
    assert cached.checks[0].age == pytest.approx(4.9999) and first.checks[0].age == 0
    assert cached.checks[0].latency == 0.5 and cached.checks[0].detail == "pong"
    assert ran(events) == [(0.5, "db", "ok", False), (5.4999, "db", "ok", True), (6.0, "db", "ok", False)]


async def test_ttl_zero_probes_on_every_report() -> None:
    clock = VirtualClock()
    dep = Dependency(clock)
    readiness = Readiness([Check("breaker", dep, ttl=0)], clock=clock)
    for t in (0, 0, 1, 1.5):
        await at(clock, t, readiness)
    assert dep.calls == [0, 0, 1, 1.5]


async def test_a_failure_is_cached_like_any_answer() -> None:
    clock = VirtualClock()
    dep = Dependency(clock, answer=ConnectionRefusedError("connection refused"))
    readiness = Readiness([Check("db", dep, ttl=3)], clock=clock)
    reports = [await at(clock, t, readiness) for t in (0, 1, 2.999, 3)]
    assert dep.calls == [0, 3]
    assert [r.status for r in reports] == ["not_ready"] * 4
    assert reports[1].checks[0].detail == "ConnectionRefusedError: connection refused"


async def test_each_check_keeps_its_own_ttl() -> None:
    clock = VirtualClock()
    slow_changing, fast_changing = Dependency(clock), Dependency(clock)
    readiness = Readiness([Check("provider", slow_changing, ttl=10), Check("breaker", fast_changing, ttl=2)],
                          clock=clock)
    for t in range(12):
        await at(clock, t, readiness)
    assert slow_changing.calls == [0, 10] and fast_changing.calls == [0, 2, 4, 6, 8, 10]


# --- timeouts and concurrency -----------------------------------------------------------------------
async def test_a_hanging_probe_fails_at_exactly_its_timeout() -> None:
    clock, events = VirtualClock(), Recorder()
    hangs = Dependency(clock, seconds=3600)
    readiness = Readiness([Check("orders", hangs, timeout=0.25)], clock=clock, on_event=events)
    report = await readiness.report()
    assert clock.now() == 0.25 and report.t == 0.25
    result = report.checks[0]
    assert (result.status, result.latency, result.detail) == ("failed", 0.25, "TimeoutError: no result within 0.25s")
    assert report.status == "not_ready" and report.http_status == 503
    assert ran(events) == [(0.25, "orders", "failed", False)]


async def test_a_probe_just_inside_its_timeout_succeeds() -> None:
    clock = VirtualClock()
    readiness = Readiness([Check("db", Dependency(clock, seconds=0.999), timeout=1.0)], clock=clock)
    report = await readiness.report()
    assert report.status == "ready" and report.checks[0].latency == pytest.approx(0.999)


async def test_three_slow_checks_run_concurrently() -> None:
    clock = VirtualClock()
    deps = [Dependency(clock, seconds=1.0) for _ in range(3)]
    readiness = Readiness([Check(f"dep{i}", d, timeout=2) for i, d in enumerate(deps)], clock=clock)
    report = await readiness.report()
    assert clock.now() == 1.0 and report.status == "ready"  # not 3.0
    assert [d.calls for d in deps] == [[0.0]] * 3


async def test_each_probe_is_bounded_by_its_own_timeout() -> None:
    clock = VirtualClock()
    readiness = Readiness([Check("quick", Dependency(clock, seconds=600), timeout=0.5),
                           Check("patient", Dependency(clock, seconds=1.5), timeout=2.0)], clock=clock)
    report = await readiness.report()
    assert clock.now() == 1.5
    assert [(c.status, c.latency, c.age) for c in report.checks] == [("failed", 0.5, 1.0), ("ok", 1.5, 0.0)]


async def test_overlapping_reports_share_one_probe_in_flight() -> None:
    clock, events = VirtualClock(), Recorder()
    provider = Dependency(clock, seconds=0.3, answer="5 models")
    readiness = Readiness([Check("provider", provider, ttl=0)], clock=clock, on_event=events)
    reports = await asyncio.gather(*(readiness.report() for _ in range(10)))
    assert provider.calls == [0.0]
    assert [r.checks[0].cached for r in reports] == [False] + [True] * 9
    assert all(r.status == "ready" and r.t == 0.3 for r in reports)
    assert ran(events) == [(0.3, "provider", "ok", False)] + [(0.3, "provider", "ok", True)] * 9


async def test_a_report_that_arrives_mid_probe_joins_it() -> None:
    clock = VirtualClock()
    provider = Dependency(clock, seconds=1.0)
    readiness = Readiness([Check("provider", provider, ttl=0)], clock=clock)

    async def later() -> Report:
        await clock.asleep(0.6)
        return await readiness.report()

    first, second = await asyncio.gather(readiness.report(), later())
    assert provider.calls == [0.0] and first.t == second.t == 1.0 and second.checks[0].cached


async def test_a_cancelled_report_leaves_the_shared_probe_to_the_others() -> None:
    clock = VirtualClock()
    provider = Dependency(clock, seconds=1.0)
    readiness = Readiness([Check("provider", provider, ttl=0)], clock=clock)
    impatient = asyncio.ensure_future(readiness.report())
    await clock.asleep(0.1)
    patient = asyncio.ensure_future(readiness.report())
    await clock.asleep(0.1)
    impatient.cancel()
    report = await patient
    assert impatient.cancelled() and report.status == "ready" and report.t == 1.0
    assert provider.calls == [0.0]


# --- what a probe may answer ------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "status", "detail"), [
    (None, "ok", ""),
    ("12 models", "ok", "12 models"),
    (degraded("gpt-4o breaker open"), "degraded", "gpt-4o breaker open"),
    (RuntimeError("boom"), "failed", "RuntimeError: boom"),
    (False, "failed", "TypeError: a probe returns None, a str or degraded(...), not bool False"),
    ({"available": True}, "failed", "TypeError: a probe returns None, a str or degraded(...), not dict {'available': True}"),
])
async def test_what_a_probe_returns_decides_the_check(answer: object, status: str, detail: str) -> None:
    clock = VirtualClock()
    report = await Readiness([Check("dep", Dependency(clock, answer=answer))], clock=clock).report()
    assert (report.checks[0].status, report.checks[0].detail) == (status, detail)


async def test_a_plain_function_serves_as_an_instant_probe() -> None:
    state = {"open": False}

    def breaker() -> Degraded | None:
        return degraded("open") if state["open"] else None

    readiness = Readiness([Check("breaker", breaker, ttl=0)], clock=VirtualClock())
    assert (await readiness.report()).status == "ready"
    state["open"] = True
    assert (await readiness.report()).status == "degraded"


async def test_a_cancellation_inside_the_probe_is_a_failure_not_a_crash() -> None:
    async def cancelled_inside() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    report = await Readiness([Check("dep", cancelled_inside)], clock=VirtualClock()).report()
    assert report.checks[0].status == "failed" and report.checks[0].detail.startswith("CancelledError")


# --- overall status and the HTTP answer ---------------------------------------------------------------
OKAY, WORSE, BROKEN = None, degraded("worse"), RuntimeError("down")


@pytest.mark.parametrize(("answers", "status", "http"), [
    ([], "ready", 200),
    ([(OKAY, True), (OKAY, False)], "ready", 200),
    ([(OKAY, True), (WORSE, True)], "degraded", 200),
    ([(OKAY, True), (WORSE, False)], "degraded", 200),
    ([(OKAY, True), (BROKEN, False)], "degraded", 200),
    ([(BROKEN, True), (OKAY, False)], "not_ready", 503),
    ([(BROKEN, True), (WORSE, True), (BROKEN, False)], "not_ready", 503),
])
async def test_the_overall_status_rules(answers: list[tuple[object, bool]], status: str, http: int) -> None:
    clock = VirtualClock()
    checks = [Check(f"c{i}", Dependency(clock, answer=a), required=r) for i, (a, r) in enumerate(answers)]
    report = await Readiness(checks, clock=clock).report()
    assert (report.status, report.http_status, report.ready) == (status, http, http == 200)


async def test_the_json_body_rounds_and_gives_a_reason_only_when_not_ready() -> None:
    clock = VirtualClock()
    primary = Dependency(clock, seconds=0.01234, answer=degraded("gpt-4o breaker open; gpt-4o-mini serving"))
    orders = Dependency(clock, seconds=0.5, answer=ConnectionResetError("reset by peer"))
    readiness = Readiness([Check("gpt-4o", primary, required=False), Check("orders", orders, required=False),
                           Check("redis", Dependency(clock, answer="PONG"))], clock=clock)
    body = (await readiness.report()).to_dict()
    assert body == {"status": "degraded", "checks": [
        {"name": "gpt-4o", "status": "degraded", "required": False, "latency_ms": 12.3, "age_s": 0.49,
         "detail": "gpt-4o breaker open; gpt-4o-mini serving"},
        {"name": "orders", "status": "failed", "required": False, "latency_ms": 500.0, "age_s": 0.0,
         "detail": "ConnectionResetError: reset by peer"},
        {"name": "redis", "status": "ok", "required": True, "latency_ms": 0.0, "age_s": 0.5, "detail": "PONG"}]}
    report = await Readiness([Check("redis", Dependency(clock, answer=TimeoutError("no PONG")))], clock=clock).report()
    assert report.to_dict()["reason"] == "redis failed: TimeoutError: no PONG"


# --- draining and events ------------------------------------------------------------------------------
async def test_drain_answers_not_ready_at_once_without_probing() -> None:
    clock, events = VirtualClock(), Recorder()
    dep = Dependency(clock, seconds=0.2)
    readiness = Readiness([Check("db", dep, ttl=0)], clock=clock, on_event=events)
    assert (await readiness.report()).status == "ready" and not readiness.draining
    readiness.drain()
    report = await readiness.report()
    assert readiness.draining and dep.calls == [0.0] and clock.now() == 0.2
    assert (report.status, report.http_status, report.reason, report.checks) == ("not_ready", 503, "shutting down", [])
    assert report.to_dict() == {"status": "not_ready", "checks": [], "reason": "shutting down"}
    assert [(e.t, e.previous, e.current, e.reason) for e in events.of(ReadinessChanged)] == [
        (0.2, "unknown", "ready", "all checks ok"), (0.2, "ready", "not_ready", "shutting down")]


async def test_a_drain_during_a_report_wins() -> None:
    clock = VirtualClock()
    readiness = Readiness([Check("db", Dependency(clock, seconds=1.0))], clock=clock)

    async def shut_down() -> None:
        await clock.asleep(0.5)
        readiness.drain()

    report, _ = await asyncio.gather(readiness.report(), shut_down())
    assert (report.status, report.reason) == ("not_ready", "shutting down") and readiness.status == "not_ready"


async def test_readiness_changed_is_emitted_only_when_the_overall_status_moves() -> None:
    clock, events = VirtualClock(), Recorder()
    answers = iter([None, None, degraded("fallback serving"), degraded("fallback serving"),
                    RuntimeError("every model down"), None])

    async def models() -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    readiness = Readiness([Check("models", models, ttl=0)], clock=clock, on_event=events, name="pod-1")
    statuses = [(await at(clock, t, readiness)).status for t in range(6)]
    assert statuses == ["ready", "ready", "degraded", "degraded", "not_ready", "ready"]
    assert [(e.t, e.source, e.previous, e.current, e.reason) for e in events.of(ReadinessChanged)] == [
        (0, "pod-1", "unknown", "ready", "all checks ok"),
        (2, "pod-1", "ready", "degraded", "models degraded: fallback serving"),
        (4, "pod-1", "degraded", "not_ready", "models failed: RuntimeError: every model down"),
        (5, "pod-1", "not_ready", "ready", "all checks ok")]
    assert readiness.status == "ready"
    assert all(e.source == "pod-1" and not e.cached for e in events.of(CheckRan))


async def test_no_sink_no_events_and_nothing_breaks() -> None:
    clock = VirtualClock()
    readiness = Readiness([Check("db", Dependency(clock))], clock=clock)
    assert (await readiness.report()).status == "ready"
    readiness.drain()
    assert readiness.status == "not_ready"


# --- configuration errors --------------------------------------------------------------------------
async def _nothing() -> None:
    return None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": ""}, "name"),
    ({"name": "  "}, "name"),
    ({"name": None}, "name"),
    ({"probe": "not callable"}, "probe"),
    ({"ttl": -1}, "ttl"),
    ({"ttl": math.inf}, "ttl"),
    ({"ttl": math.nan}, "ttl"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -0.5}, "timeout"),
    ({"timeout": math.inf}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"required": "yes"}, "required"),
])
def test_a_bad_check_names_the_field(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"name": "db", "probe": _nothing, **kwargs}
    name, probe = arguments.pop("name"), arguments.pop("probe")
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        Check(name, probe, **arguments)  # type: ignore[arg-type]


def test_check_names_must_be_unique_in_a_readiness() -> None:
    with pytest.raises(ValueError, match=r"^checks must be unique by name .*got \['db'\]"):
        Readiness([Check("db", _nothing), Check("redis", _nothing), Check("db", _nothing)])
    with pytest.raises(ValueError, match=r"^checks must be a sequence of Check"):
        Readiness([_nothing])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^name must be"):
        Readiness([], name="")


def test_limits_at_the_edge_are_accepted() -> None:
    edge = Check("db", _nothing, ttl=0, timeout=0.001, required=False)
    assert (edge.ttl, edge.timeout, edge.required) == (0, 0.001, False)
