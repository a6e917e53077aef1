"""course_lib.breaker: states, trip rules, probes and failure policy (virtual clock)."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from course_lib.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOpen, BreakerPolicy, CircuitBreaker, is_provider_failure
from course_lib.clock import VirtualClock
from course_lib.events import CallOutcome, Recorder, Rejected, StateChange
from sdk_errors import REQUEST, status_error



def make(clock: VirtualClock, **policy) -> tuple[CircuitBreaker, Recorder]:
    events = Recorder()
    return CircuitBreaker(BreakerPolicy(**policy), clock=clock, on_event=events, name="b"), events


def fail(breaker: CircuitBreaker, error: Exception | None = None) -> None:
    def boom() -> None:
        raise error or status_error(503)

    with pytest.raises(type(error or status_error(503))):
        breaker.call(boom)


def succeed(breaker: CircuitBreaker) -> str:
    return breaker.call(lambda: "ok")


def moves(events: Recorder) -> list[tuple[float, str, str]]:
    return [(e.t, e.old, e.new) for e in events.of(StateChange)]


# --- policy and failure classification --------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [("failure_threshold", 0), ("failure_rate", 0), ("failure_rate", 1.5), ("minimum_calls", 0), ("window_size", 0),
     ("open_seconds", -1), ("half_open_probes", 0), ("probes_to_close", 0), ("slow_call_seconds", 0), ("trip_on", "vibes")],
)
def test_invalid_policy_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        BreakerPolicy(**{field: value})


def test_minimum_calls_cannot_exceed_a_count_window() -> None:
    with pytest.raises(ValueError, match=r"^minimum_calls must be <= window_size \(10\), got 11$"):
        BreakerPolicy(trip_on="rate", window_size=10, minimum_calls=11)


@pytest.mark.parametrize(("error", "counts"), [
    (status_error(500), True), (status_error(503), True), (status_error(429), True), (status_error(409), True),
    (openai.APITimeoutError(request=REQUEST), True), (openai.APIConnectionError(request=REQUEST), True),
    (status_error(400), False), (status_error(404), False), (TypeError("bug"), False),
])
def test_only_provider_side_failures_count(error: Exception, counts: bool) -> None:
    assert is_provider_failure(error) is counts


# --- the state machine ------------------------------------------------------------------------
def test_opens_after_five_consecutive_failures_and_fails_fast() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=5, open_seconds=30)
    for _ in range(4):
        fail(breaker)
    assert breaker.state == CLOSED
    fail(breaker)
    assert breaker.state == OPEN

    calls = []
    clock.advance(10)
    with pytest.raises(BreakerOpen) as rejected:
        breaker.call(lambda: calls.append(1))
    assert calls == []  # the protected function never ran
    assert rejected.value.retry_at == 30 and rejected.value.retry_in == 20
    assert "next probe in 20.00s" in str(rejected.value)
    assert events.of(Rejected)[0].retry_at == 30


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(VirtualClock(), failure_threshold=3)
    for _ in range(5):
        fail(breaker)
        fail(breaker)
        succeed(breaker)
    assert breaker.state == CLOSED


def test_full_cycle_closed_open_half_open_closed() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=2, open_seconds=10, probes_to_close=2)
    fail(breaker)
    fail(breaker)
    clock.advance(10)
    assert breaker.state == HALF_OPEN
    succeed(breaker)
    assert breaker.state == HALF_OPEN  # one of two probes done
    clock.advance(1)
    succeed(breaker)
    assert moves(events) == [(0, CLOSED, OPEN), (10, OPEN, HALF_OPEN), (11, HALF_OPEN, CLOSED)]


def test_a_failed_probe_reopens_for_another_full_period() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=1, open_seconds=10)
    fail(breaker)
    clock.advance(10)
    fail(breaker)
    assert breaker.state == OPEN
    with pytest.raises(BreakerOpen) as rejected:
        succeed(breaker)
    assert rejected.value.retry_at == 20
    assert moves(events)[-1] == (10, HALF_OPEN, OPEN)


def test_client_errors_never_open_the_breaker() -> None:
    breaker, events = make(VirtualClock(), failure_threshold=5)
    for _ in range(50):
        fail(breaker, status_error(400))
    assert breaker.state == CLOSED
    assert {o.verdict for o in events.of(CallOutcome)} == {"ignored"}


def test_a_steady_fifty_percent_error_rate_never_trips_a_consecutive_counter_but_trips_a_rate_window() -> None:
    consecutive, _ = make(VirtualClock(), failure_threshold=5)
    rate, rate_events = make(VirtualClock(), trip_on="rate", failure_rate=0.5, window_size=20, minimum_calls=10)
    for i in range(100):
        for breaker in (consecutive, rate):
            if breaker.state != CLOSED:
                continue
            fail(breaker) if i % 2 else succeed(breaker)
    assert consecutive.state == CLOSED
    assert rate.state == OPEN
    [opened] = rate_events.of(StateChange)
    assert opened.reason == "failure rate 5/10 >= 0.5"  # trips at the 10th call, the minimum


def test_time_window_forgets_old_failures() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, trip_on="rate", window="time", window_size=10, failure_rate=0.5, minimum_calls=4)
    for _ in range(3):
        fail(breaker)
    clock.advance(11)  # those three fall out of the window
    for _ in range(3):
        succeed(breaker)
    fail(breaker)
    assert breaker.state == CLOSED  # 1 failure in 4 calls
    fail(breaker)
    fail(breaker)
    assert breaker.state == OPEN  # 3 of 6


def test_slow_successes_count_as_failures_when_configured() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=2, slow_call_seconds=5)

    def slow() -> str:
        clock.advance(6)
        return "late"

    assert breaker.call(slow) == "late"
    assert breaker.call(slow) == "late"
    assert breaker.state == OPEN
    assert [o.verdict for o in events.of(CallOutcome)] == ["failure", "failure"]


def test_half_open_admits_only_the_configured_number_of_probes() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=5, half_open_probes=2)
    fail(breaker)
    clock.advance(5)
    first, second = breaker.admit(), breaker.admit()
    with pytest.raises(BreakerOpen, match="probe calls already in flight"):
        breaker.admit()
    breaker.settle(first, None)
    third = breaker.admit()  # a slot freed up
    breaker.settle(second, None)
    breaker.settle(third, None)
    assert breaker.state == CLOSED


def test_outcomes_of_calls_admitted_before_a_transition_are_ignored() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=5)
    slow_call = breaker.admit()  # admitted while closed
    fail(breaker)  # opens
    clock.advance(5)
    probe = breaker.admit()
    breaker.settle(slow_call, status_error(503))  # a stale failure must not reopen
    assert breaker.state == HALF_OPEN
    breaker.settle(probe, None)
    assert breaker.state == CLOSED


def test_a_probe_that_never_answers_frees_its_slot_after_the_probe_timeout() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=1, open_seconds=5, probe_timeout=20)
    fail(breaker)
    clock.advance(5)
    breaker.admit()  # a probe whose caller dies: never settled
    clock.advance(19)
    with pytest.raises(BreakerOpen):
        succeed(breaker)
    clock.advance(1)
    assert succeed(breaker) == "ok"
    assert breaker.state == CLOSED
    assert moves(events)[-2:] == [(25, HALF_OPEN, HALF_OPEN), (25, HALF_OPEN, CLOSED)]


def test_the_rate_trips_exactly_at_the_configured_fraction() -> None:
    breaker, _ = make(VirtualClock(), trip_on="rate", failure_rate=0.55, window_size=100, minimum_calls=100)
    for _ in range(45):
        succeed(breaker)
    for _ in range(54):
        fail(breaker)
    assert breaker.state == CLOSED  # 54/99 calls: not yet the minimum
    fail(breaker)
    assert breaker.state == OPEN  # 55/100 == 0.55, although 0.55 * 100 == 55.00000000000001


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")  # the misuse shown here
def test_an_unawaited_coroutine_holds_no_probe_slot() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=5)
    fail(breaker)
    clock.advance(5)

    async def model() -> str:
        return "answer"

    pending = breaker.call(lambda: model())  # looks sync, returns a coroutine
    pending.close()  # never awaited, as FallbackChain.call does with an async handler
    assert breaker.call(lambda: "probe") == "probe"  # the slot was not taken
    assert breaker.state == CLOSED


# --- concurrency ------------------------------------------------------------------------------
def test_half_open_probe_limit_holds_across_threads() -> None:
    clock = VirtualClock()
    breaker, events = make(clock, failure_threshold=1, open_seconds=1, half_open_probes=2)
    fail(breaker)
    clock.advance(1)
    inside, most_inside, lock, release = 0, 0, threading.Lock(), threading.Event()

    def probe() -> None:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        release.wait(5)
        with lock:
            inside -= 1

    outcomes: list[str] = []

    def caller() -> None:
        try:
            breaker.call(probe)
            outcomes.append("admitted")
        except BreakerOpen:
            outcomes.append("rejected")

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    while outcomes.count("rejected") < 14:  # everyone but the two probes is turned away at once
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join()
    assert most_inside == 2
    assert sorted(outcomes) == ["admitted"] * 2 + ["rejected"] * 14


async def test_half_open_probe_limit_holds_across_tasks() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=1, half_open_probes=1)
    fail(breaker)
    clock.advance(1)
    started = []

    async def probe(i: int) -> int:
        started.append(i)
        await clock.asleep(2)  # a slow probe: everyone else arrives while it runs
        return i

    results = await asyncio.gather(*(breaker.call(probe, i) for i in range(10)), return_exceptions=True)
    assert started == [0]
    assert results[0] == 0 and all(isinstance(r, BreakerOpen) for r in results[1:])
    assert breaker.state == CLOSED


def test_the_protected_call_runs_without_the_lock_held() -> None:
    breaker = CircuitBreaker()
    barrier = threading.Barrier(4, timeout=5)  # only passes if four calls are inside together
    threads = [threading.Thread(target=breaker.call, args=(barrier.wait,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not barrier.broken


async def test_async_callables_are_guarded() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=2)

    @breaker
    async def down() -> None:
        raise status_error(502)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await down()
    with pytest.raises(BreakerOpen):
        await down()


# --- property-based: random sequences keep the invariants ---------------------------------
class BreakerMachine(RuleBasedStateMachine):
    """Drives admissions, outcomes and clock advances in random order and checks the rules."""

    @initialize(
        trip_on=st.sampled_from(["consecutive", "rate"]),
        threshold=st.integers(1, 6),
        window_size=st.integers(2, 12),
        rate=st.sampled_from([0.25, 0.5, 0.55, 0.75, 1.0]),
        probes=st.integers(1, 3),
        to_close=st.integers(1, 3),
        open_seconds=st.sampled_from([0.0, 1.0, 5.0]),
        probe_timeout=st.sampled_from([1.0, 60.0]),
    )
    def setup(self, trip_on, threshold, window_size, rate, probes, to_close, open_seconds, probe_timeout) -> None:
        self.clock = VirtualClock()
        self.policy = BreakerPolicy(
            trip_on=trip_on, failure_threshold=threshold, window_size=window_size, minimum_calls=min(threshold, window_size),
            failure_rate=rate, half_open_probes=probes, probes_to_close=to_close, open_seconds=open_seconds,
            probe_timeout=probe_timeout,
        )
        self.events = Recorder()
        self.breaker = CircuitBreaker(self.policy, clock=self.clock, on_event=self.events)
        self.in_flight: list[tuple] = []
        self.closed_verdicts: list[bool] = []  # counted outcomes since the breaker last closed

    def _last_opened_at(self) -> float | None:
        changes = self.events.of(StateChange)
        return changes[-1].t if changes and changes[-1].new == OPEN else None

    @rule()
    def admit(self) -> None:
        opened_at = self._last_opened_at()
        try:
            ticket = self.breaker.admit()
        except BreakerOpen as rejected:
            if rejected.state == OPEN:
                assert opened_at is not None and self.clock.now() < opened_at + self.policy.open_seconds
                assert rejected.retry_at == opened_at + self.policy.open_seconds
            else:
                assert self._probes_in_flight() == self.policy.half_open_probes
                assert self.clock.now() < self.breaker.store.half_opened_at + self.policy.probe_timeout
            return
        if opened_at is not None:  # admitted although the last move was to open: only once its time is up
            assert self.clock.now() >= opened_at + self.policy.open_seconds
        self.in_flight.append(ticket)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100), verdict=st.sampled_from(["success", "failure", "ignored"]))
    def finish(self, index: int, verdict: str) -> None:
        ticket = self.in_flight.pop(index % len(self.in_flight))
        error = {"success": None, "failure": status_error(503), "ignored": status_error(400)}[verdict]
        current = ticket[0] == self.breaker.store.generation and ticket[1] == CLOSED
        self.breaker.settle(ticket, error)
        if current and verdict != "ignored":
            self.closed_verdicts.append(verdict == "failure")
            assert (self.breaker.store.state == OPEN) == self._should_trip()
        if self.breaker.store.state != CLOSED:
            self.closed_verdicts = []

    def _should_trip(self) -> bool:
        verdicts = self.closed_verdicts
        if self.policy.trip_on == "consecutive":
            streak = len(verdicts) - (max((i for i, failed in enumerate(verdicts) if not failed), default=-1) + 1)
            return streak >= self.policy.failure_threshold
        recent = verdicts[-int(self.policy.window_size):]
        return len(recent) >= self.policy.minimum_calls and sum(recent) / len(recent) >= self.policy.failure_rate

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def _probes_in_flight(self) -> int:
        store = self.breaker.store
        return sum(1 for g, state, _ in self.in_flight if g == store.generation and state == HALF_OPEN)

    @invariant()
    def never_more_probes_than_allowed(self) -> None:
        if hasattr(self, "breaker"):
            assert self._probes_in_flight() <= self.policy.half_open_probes
            assert self.breaker.store.probes_in_flight == self._probes_in_flight()


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


async def test_the_async_sdks_methods_are_settled_when_awaited() -> None:
    from course_lib.llm import make_async_client
    from course_lib.sim import SimProvider

    clock = VirtualClock()
    client = make_async_client(SimProvider({"faults": [{"kind": "outage"}]}, clock=clock))
    breaker, events = make(clock, failure_threshold=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await breaker.call(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert [o.verdict for o in events.of(CallOutcome)] == ["failure", "failure"]
    assert breaker.state == OPEN


def test_the_state_turns_half_open_exactly_when_open_seconds_have_passed() -> None:
    clock = VirtualClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=10)
    fail(breaker)
    clock.advance(9.875)  # dyadic steps: the sum lands on 10 exactly
    assert breaker.state == OPEN
    with pytest.raises(BreakerOpen):
        succeed(breaker)
    clock.advance(0.125)
    assert breaker.state == HALF_OPEN
