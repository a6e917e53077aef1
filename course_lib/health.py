"""Health and readiness: liveness says the process runs; readiness says it can serve now.

Two questions, two endpoints, and mixing them up is how health checks cause outages:

- **Liveness** (`/healthz`): is this process stuck? When it fails, the orchestrator *restarts* the
  process. It must consult nothing outside the process: a liveness probe that calls the provider
  turns one provider outage into a restart of every pod at once. The handler answering at all is
  the answer (an event loop that cannot run it cannot serve a request either), so liveness needs
  nothing from this module.
- **Readiness** (`/readyz`): can this process serve a request now? When it fails, the load
  balancer stops sending it traffic; nothing is restarted. `Readiness` runs a `Check` for each thing
  serving needs (the provider reachable, Redis answering, a model's breaker closed) and says what
  each one answered, instead of a hard-coded "available: true", which says nothing.

    from course_lib.health import Check, Readiness, degraded

    async def provider():           # GET /v1/models: network, DNS, TLS and the key; 0 tokens
        page = await client.models.list()
        return f"{len(page.data)} models listed"

    async def primary_model():      # free: reads the breaker that real traffic keeps up to date
        if await breaker.astate() != "closed":
            return degraded("gpt-4o breaker open; gpt-4o-mini serving")
        return None

    readiness = Readiness([Check("provider", provider, ttl=5, timeout=1),
                           Check("gpt-4o", primary_model, ttl=0, required=False)])

    @app.get("/readyz")
    async def readyz():
        report = await readiness.report()
        return JSONResponse(report.to_dict(), status_code=report.http_status)

**A check** is a name and a probe: a callable with no arguments, normally `async def`. The probe
returns None or a str (the detail) for "ok", `degraded("why")` for "degraded" (works, but worse:
a fallback model serving), and raises for "failed". A probe that takes `timeout` seconds on the
clock is cancelled and counts as failed (`TimeoutError`); the detail of a failure is the error's
type and message. A probe that returns anything else fails with a TypeError detail, so that a
probe returning False cannot pass for healthy. A plain function is accepted for instant checks
(reading a breaker's local state); it runs on the event loop, where no timeout can cut it off, so
it must not do I/O.

**The cache.** Every answer (ok, degraded or failed alike) is reused until `ttl` seconds have
passed on the clock since its probe finished; a report at exactly `ttl` probes again, and `ttl=0`
probes on every report. A load balancer and an orchestrator probing every second from every pod
would otherwise call the provider on each probe: rate limit spent, and money if the probe is a
completion. Checks are not retried; the next probe after the ttl is the retry.

**A report** (`await readiness.report()`) probes every check whose answer is stale, all at once
(one `asyncio.gather`), each bounded by its own timeout, so a report takes about the longest
timeout, not their sum. Reports that overlap share one probe in flight per check: a burst of
probes costs one call. The report that started a probe gets its answer with `cached=False`; every
other report gets `cached=True` (a shared or cached answer, which cost nothing). A report cancelled
by its caller leaves the shared probe running for the others.

**Statuses.** A check is "ok", "degraded" or "failed". Overall: "not_ready" if any required check
failed; else "degraded" if any check is degraded or an optional (`required=False`) check failed;
else "ready" (also with no checks at all). `http_status` is 200 for "ready" and "degraded" (a
degraded pod still serves: keep it in the pool) and 503 for "not_ready". `to_dict()` is the JSON
body: `{"status", "checks": [{"name", "status", "required", "latency_ms", "age_s", "detail"}]}`,
plus `"reason"` when not ready; latency in ms to 0.1, age at report time in s to 0.01.

**Draining.** `drain()` is the first step of a graceful shutdown: from then on every report is
"not_ready" with reason "shutting down" and no checks, at once and without probing, so the load
balancer stops sending new requests while in-flight ones finish; stop the server only after that.

**Events** (through `on_event`, source `name`): `CheckRan` once for every probe that finishes
(cached=False; so they count calls to the dependency) and once per report for every answer a
report took from the cache or from another report's probe (cached=True); `ReadinessChanged` when
the overall status moves, starting from "unknown" at the first report, and at `drain()`.

Readiness is async only; use one `Readiness` from one event loop (its probes in flight belong to
that loop). Every time comes from the injected `clock`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from ._wrapping import check, is_finite
from .clock import SYSTEM_CLOCK, Clock, wait_for
from .events import CheckRan, EventSink, ReadinessChanged

__all__ = [
    "DEGRADED",
    "FAILED",
    "NOT_READY",
    "OK",
    "READY",
    "SHUTTING_DOWN",
    "UNKNOWN",
    "Check",
    "CheckResult",
    "Degraded",
    "Readiness",
    "Report",
    "degraded",
]

CheckStatus = Literal["ok", "degraded", "failed"]
Overall = Literal["ready", "degraded", "not_ready"]
OK: CheckStatus = "ok"
FAILED: CheckStatus = "failed"
DEGRADED: Literal["degraded"] = "degraded"
"""A check's status, and the overall one: it works, but worse (still 200)."""
READY: Overall = "ready"
NOT_READY: Overall = "not_ready"
UNKNOWN = "unknown"
"""The overall status before the first report (the `previous` of the first ReadinessChanged)."""
SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True, slots=True)
class Degraded:
    """What a probe returns for "works, but worse"; build it with `degraded(detail)`."""

    detail: str


def degraded(detail: str) -> Degraded:
    """The answer of a probe whose dependency works in a reduced way (e.g. the fallback model
    serving while the primary's breaker is open): the check is "degraded", the pod still serves."""
    return Degraded(str(detail))


ProbeAnswer = None | str | Degraded
Probe = Callable[[], Awaitable[ProbeAnswer] | ProbeAnswer]


@dataclass(frozen=True, slots=True)
class Check:
    """One thing serving needs, and how to ask about it. Checked on construction."""

    name: str
    probe: Probe
    """No arguments; None or a str -> ok, `degraded(...)` -> degraded, raises -> failed."""
    _: KW_ONLY
    ttl: float = 5.0
    """Seconds an answer is reused (from when its probe finished); 0: probe on every report."""
    timeout: float = 1.0
    """Seconds a probe may take on the clock before it is cancelled and counts as failed."""
    required: bool = True
    """A required check that fails makes the pod not ready; an optional one only degrades it."""

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name.strip() != "", "name", "a non-empty string", self.name)
        check(callable(self.probe), "probe", "a callable with no arguments", self.probe)
        check(is_finite(self.ttl) and self.ttl >= 0, "ttl", "a finite number >= 0 (seconds)", self.ttl)
        check(is_finite(self.timeout) and self.timeout > 0, "timeout", "a finite number > 0 (seconds)", self.timeout)
        check(isinstance(self.required, bool), "required", "True or False", self.required)



@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check answered, as a report saw it."""

    name: str
    status: CheckStatus
    detail: str
    latency: float
    """Seconds the probe took (the timeout for one that was cut off)."""
    age: float
    """Seconds between the probe finishing and the report."""
    required: bool
    cached: bool
    """True when this report did not start the probe (a cached or shared answer)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "required": self.required,
                "latency_ms": round(self.latency * 1000, 1), "age_s": round(self.age, 2), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Report:
    """The overall answer of one readiness report."""

    status: Overall
    checks: list[CheckResult] = field(default_factory=list)
    reason: str = ""
    """Why not "ready": the failed or degraded checks with their details, or "shutting down"."""
    t: float = 0.0
    """Clock time of the report."""

    @property
    def http_status(self) -> int:
        """200 while the pod can serve (ready or degraded), 503 when it cannot."""
        return 503 if self.status == NOT_READY else 200

    @property
    def ready(self) -> bool:
        """True when the load balancer should send traffic (ready or degraded)."""
        return self.status != NOT_READY

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of /readyz."""
        body: dict[str, Any] = {"status": self.status, "checks": [c.to_dict() for c in self.checks]}
        if self.status == NOT_READY:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True, slots=True)
class _Answer:
    status: CheckStatus
    detail: str
    latency: float
    at: float
    """Clock time at which the probe finished."""


@dataclass(slots=True)
class _Slot:
    """Per check: the last answer, and the probe in flight that overlapping reports share."""

    answer: _Answer | None = None
    running: asyncio.Future[_Answer] | None = None


class Readiness:
    """Runs the checks for /readyz: concurrently, each with its timeout, cached for its ttl, one
    probe in flight per check; see the module docstring for the rules."""

    def __init__(self, checks: Sequence[Check], *, clock: Clock = SYSTEM_CLOCK, on_event: EventSink | None = None,
                 name: str = "readiness") -> None:
        checks = tuple(checks)
        check(all(isinstance(c, Check) for c in checks), "checks", "a sequence of Check", checks)
        names = [c.name for c in checks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        check(not repeated, "checks", "unique by name (each name keys a cached answer)", repeated)
        check(isinstance(name, str) and name != "", "name", "a non-empty string", name)
        self.checks = checks
        self.clock = clock
        self.name = name
        self._emit = on_event
        self._slots = {c.name: _Slot() for c in checks}
        self._status: str = UNKNOWN
        self._draining = False

    @property
    def status(self) -> str:
        """The overall status of the last report ("unknown" before the first one)."""
        return self._status

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Answer "not_ready" from now on, without probing: the first step of a graceful shutdown."""
        self._draining = True
        self._moved(NOT_READY, SHUTTING_DOWN, self.clock.now())

    async def report(self) -> Report:
        """Probe what is stale (concurrently, single-flight), reuse the rest, and judge."""
        if self._draining:
            return Report(NOT_READY, [], SHUTTING_DOWN, self.clock.now())
        answers = await asyncio.gather(*(self._answer(c) for c in self.checks))
        now = self.clock.now()
        results = [CheckResult(c.name, a.status, a.detail, a.latency, now - a.at, c.required, cached)
                   for c, (a, cached) in zip(self.checks, answers)]
        status, reason = _overall(results)
        if self._draining:  # drain() was called while the probes ran
            status, reason = NOT_READY, SHUTTING_DOWN
        self._moved(status, reason, now)
        return Report(status, results, reason, now)

    # --- one check --------------------------------------------------------------------------------
    async def _answer(self, item: Check) -> tuple[_Answer, bool]:
        """(answer, cached): the fresh cached one, the probe in flight, or a new probe."""
        slot, loop = self._slots[item.name], asyncio.get_running_loop()
        if slot.answer is not None and self.clock.now() - slot.answer.at < item.ttl:
            self._ran(item, slot.answer, cached=True, t=self.clock.now())
            return slot.answer, True
        if slot.running is not None and not slot.running.done() and slot.running.get_loop() is loop:
            answer = await asyncio.shield(slot.running)
            self._ran(item, answer, cached=True, t=self.clock.now())
            return answer, True
        slot.running = loop.create_task(self._probe(item, slot))
        return await asyncio.shield(slot.running), False

    async def _probe(self, item: Check, slot: _Slot) -> _Answer:
        """Run the probe once, bounded by its timeout; store and announce the answer."""
        started = self.clock.now()
        try:
            status, detail = _judge(await self._call(item))
        except Exception as error:  # noqa: BLE001 - any failure of a dependency is a failed check
            status, detail = FAILED, f"{type(error).__name__}: {error}"
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this probe itself is being cancelled (the loop is closing): let it end
            status, detail = FAILED, f"CancelledError: {error}"  # something inside the probe was cancelled
        finished = self.clock.now()
        answer = _Answer(status, detail, finished - started, finished)
        slot.answer = answer
        self._ran(item, answer, cached=False, t=finished)
        return answer

    async def _call(self, item: Check) -> Any:
        result = item.probe()
        if inspect.isawaitable(result):
            return await wait_for(self.clock, result, item.timeout)
        return result

    # --- events -----------------------------------------------------------------------------------
    def _ran(self, item: Check, answer: _Answer, *, cached: bool, t: float) -> None:
        if self._emit is not None:
            self._emit(CheckRan(t, self.name, item.name, answer.status, answer.latency, cached, answer.detail))

    def _moved(self, status: str, reason: str, t: float) -> None:
        previous, self._status = self._status, status
        if status != previous and self._emit is not None:
            self._emit(ReadinessChanged(t, self.name, previous, status, reason or "all checks ok"))


def _judge(value: Any) -> tuple[CheckStatus, str]:
    """A probe's return value as (status, detail)."""
    if value is None:
        return OK, ""
    if isinstance(value, str):
        return OK, value
    if isinstance(value, Degraded):
        return DEGRADED, value.detail
    raise TypeError(f"a probe returns None, a str or degraded(...), not {type(value).__name__} {value!r}")


def _overall(results: Sequence[CheckResult]) -> tuple[Overall, str]:
    """The overall status and the reason for it (empty when ready)."""
    broken = [r for r in results if r.status == FAILED and r.required]
    if broken:
        return NOT_READY, _reasons(broken)
    weak = [r for r in results if r.status != OK]
    if weak:
        return DEGRADED, _reasons(weak)
    return READY, ""


def _reasons(results: Sequence[CheckResult]) -> str:
    return "; ".join(f"{r.name} {r.status}" + (f": {r.detail}" if r.detail else "") for r in results)
