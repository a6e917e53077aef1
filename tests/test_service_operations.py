"""The agent service's operational side: the hard deadline (504), /readyz, request ids and the
JSON log lines written while serving."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient
from test_service import ALICE, ORDER, OUTAGE, dead_redis, error_of, post

from course_lib.budget import AsyncBudget
from course_lib.clock import VirtualClock
from course_lib.events import CallOutcome, CheckRan, DeadlineCut, Recorder
from course_lib.logs import configure_logging
from course_lib.service import Settings, create_app
from course_lib.sim.provider import SimProvider

HANG = {"kind": "hang", "seconds": 600}


def service(plan: dict[str, Any] | None = None, *, clock: VirtualClock | None = None, redis: Any = None,
            recorder: Recorder | None = None, **overrides: Any) -> TestClient:
    clock = clock or VirtualClock()
    options = {"api_keys": {ALICE: "alice"}, "retry_attempts": 2, "retry_base_delay": 0.0, **overrides}
    app = create_app(Settings(**options), provider=SimProvider(plan, clock=clock), clock=clock, on_event=recorder,
                     redis=redis or fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    return TestClient(app, raise_server_exceptions=False)


def budget_left(client: TestClient) -> tuple[float, float]:
    status = client.portal.call(AsyncBudget(client.app.state.service.store, limit_usd=5.0, name="user").status,
                                "alice")
    return status.spent_usd, status.reserved_usd


# --- the deadline ---------------------------------------------------------------------------------
def test_a_hanging_provider_is_cut_at_the_deadline_with_504_and_nothing_is_charged() -> None:
    clock, recorder = VirtualClock(), Recorder()
    with service({"faults": [HANG]}, clock=clock, recorder=recorder, request_deadline=8.0) as client:
        response = post(client, ORDER)
        spent_reserved = budget_left(client)
        breaker_state = client.portal.call(client.app.state.service.agent.breaker("gpt-4o").astate)
    error = error_of(response)
    assert (response.status_code, error["code"], error["limit"]) == (504, "deadline_exceeded", 8.0)
    assert clock.now() == pytest.approx(8.0)  # not the SDK's 30 s provider timeout, not the hang's 600 s
    cuts = recorder.of(DeadlineCut)
    assert len(cuts) == 1 and cuts[0].elapsed == pytest.approx(8.0)
    assert spent_reserved == (0.0, 0.0)  # the reservation was released
    assert breaker_state == "closed"  # our own deadline is not the provider's failure
    assert all(outcome.verdict != "failure" for outcome in recorder.of(CallOutcome))


def test_the_remaining_deadline_is_passed_down_so_a_slow_fallback_cannot_overshoot_it() -> None:
    """gpt-4o hangs and is cut at its 4 s cap (a provider timeout: its breaker opens, the chain
    falls through); gpt-4o-mini answers each of the two rounds in 3 s: 4 + 3 + 3 = 10 s."""
    plan = {"faults": [{**HANG, "models": ["gpt-4o"]}, {"kind": "latency", "seconds": 3.0, "models": ["gpt-4o-mini"]}]}
    options = {"provider_timeout": 4.0, "retry_attempts": 1, "breaker_failures": 1}
    with service(plan, clock=(clock := VirtualClock()), request_deadline=10.5, **options) as client:
        response = post(client, ORDER)
    assert response.status_code == 200 and response.json()["handler"] == "gpt-4o-mini"
    assert clock.now() == pytest.approx(10.0)
    with service(plan, clock=(clock := VirtualClock()), request_deadline=9.0, **options) as client:
        response = post(client, ORDER)
    assert (response.status_code, error_of(response)["code"]) == (504, "deadline_exceeded")
    assert clock.now() == pytest.approx(9.0)  # the last call got the 2 s left, not its 4 s cap


# --- readiness -----------------------------------------------------------------------------------
def readyz(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


def statuses(body: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in body["checks"]}


def test_readyz_is_ready_when_every_check_passes_and_caches_the_provider_probe() -> None:
    recorder = Recorder()
    with service(recorder=recorder) as client:
        answers = [readyz(client) for _ in range(5)]  # no time passes on the virtual clock
    status, body = answers[0]
    assert status == 200 and body["status"] == "ready"
    assert statuses(body) == {"redis": "ok", "provider": "ok", "breakers": "ok", "budget": "ok"}
    assert all(answer == 200 for answer, _ in answers)
    provider_checks = [ran.cached for ran in recorder.of(CheckRan) if ran.check == "provider"]
    assert provider_checks == [False, True, True, True, True]  # one GET /v1/models for five probes


def test_a_whole_provider_outage_fails_the_provider_check() -> None:
    with service({"faults": [OUTAGE]}) as client:
        status, body = readyz(client)
    assert (status, body["status"], statuses(body)["provider"]) == (200, "degraded", "failed")  # static answers
    with service({"faults": [OUTAGE]}, static_fallback=False) as client:
        status, body = readyz(client)
    assert (status, body["status"], statuses(body)["provider"]) == (503, "not_ready", "failed")
    assert "InternalServerError" in next(c["detail"] for c in body["checks"] if c["name"] == "provider")


def test_an_open_primary_breaker_is_degraded_but_still_200() -> None:
    with service({"faults": [{**OUTAGE, "models": ["gpt-4o"]}]}, breaker_failures=2, retry_attempts=1) as client:
        assert post(client, ORDER).json()["handler"] == "gpt-4o-mini"  # two gpt-4o failures open its breaker
        status, body = readyz(client)
    assert status == 200 and body["status"] == "degraded"
    breakers = next(check for check in body["checks"] if check["name"] == "breakers")
    assert breakers["status"] == "degraded" and "gpt-4o open" in breakers["detail"]


def test_redis_down_makes_the_service_not_ready_when_budgets_need_it() -> None:
    with service(redis=dead_redis()) as client:
        status, body = readyz(client)
    assert status == 503 and body["status"] == "not_ready"
    assert statuses(body)["redis"] == "failed" and "redis" in body["reason"]
    with service(redis=dead_redis(), budget_on_redis_error="open") as client:
        status, body = readyz(client)
    assert status == 200 and body["status"] == "degraded"  # budgets run unmetered: serving, but say so


def test_a_spent_global_budget_degrades_readiness() -> None:
    with service(global_daily_budget_usd=0.04, user_daily_budget_usd=5.0, readiness_cache_seconds=0) as client:
        assert readyz(client)[1]["status"] == "ready"
        while (response := post(client, ORDER)).status_code == 200:
            pass
        status, body = readyz(client)
    assert error_of(response)["code"] == "budget_exhausted" and error_of(response)["budget"] == "global"
    budget = next(check for check in body["checks"] if check["name"] == "budget")
    assert status == 200 and body["status"] == "degraded" and budget["status"] == "degraded"
    assert "of $0.04 left today: requests get 429 budget_exhausted" in budget["detail"]


# --- request ids and log lines ---------------------------------------------------------------------
@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(stream=buffer, level="INFO")
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_every_line_logged_while_serving_carries_the_request_id_and_no_content(log_lines: io.StringIO) -> None:
    from course_lib.logs import EventLogger

    clock = VirtualClock()
    app = create_app(Settings(api_keys={ALICE: "alice"}), provider=SimProvider(clock=clock), clock=clock,
                     on_event=EventLogger(), redis=fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    with TestClient(app) as client:
        answered = client.post("/v1/chat", json=ORDER, headers={"Authorization": f"Bearer {ALICE}",
                                                                  "X-Request-ID": "trace-42"})
        generated = client.post("/v1/chat", json=ORDER, headers={"Authorization": f"Bearer {ALICE}",
                                                                   "X-Request-ID": "bad id; with spaces"})
    assert answered.headers["X-Request-ID"] == "trace-42" and answered.json()["request_id"] == "trace-42"
    other = generated.headers["X-Request-ID"]
    assert other != "bad id; with spaces" and len(other) >= 16
    lines = parsed(log_lines)
    mine = [line for line in lines if line.get("request_id") == "trace-42"]
    kinds = {(line["logger"], line["event"].split(":")[0]) for line in mine}
    assert {("course_lib.service", "request_finished"), ("course_lib.service", "model_call"),
            ("course_lib.events", "limit_checked"), ("course_lib.events", "budget_changed"),
            ("httpx2", "HTTP Request")} <= kinds
    assert len([line for line in lines if line.get("request_id") == other]) == len(mine)
    finished = next(line for line in mine if line["event"] == "request_finished")
    assert (finished["status"], finished["handler"], finished["degraded"], finished["model"]) == \
        (200, "gpt-4o", False, "gpt-4o")
    assert finished["tokens_in"] > 0 and finished["tokens_out"] > 0 and finished["cost_usd"] > 0
    assert {line["provider_request_id"] for line in mine if line["event"] == "model_call"} == {"req_sim_1", "req_sim_2"}
    text = log_lines.getvalue()
    assert "Where is my order" not in text and ALICE not in text  # no prompt, no key
    assert '"alice"' not in text and finished["user"] != "alice"  # the user id is hashed
