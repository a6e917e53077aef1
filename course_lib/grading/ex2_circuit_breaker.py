"""Exercise 2, "A circuit breaker and its test": the helpers the notebook imports, and its checks.

The learner writes two things, and both are graded:

- `CircuitBreaker(failure_threshold=5, reset_timeout=30.0, clock=time.monotonic)` with
  `call(fn, *args, **kwargs)` and `state` ("closed", "open" or "half-open"). The checks drive it
  on a fake clock: it opens after exactly `failure_threshold` consecutive provider failures;
  while open it raises `CircuitOpen` without calling `fn`; once `reset_timeout` seconds have
  passed on its `clock` it is half-open and lets one probe through (a second call meanwhile is
  rejected); a successful probe closes it, a failed one reopens it for another `reset_timeout`;
  a success resets the count; every provider failure counts (5xx, 408, 409, 429, timeouts,
  connection errors), anything else (a 400 from `client_error()`, a bug) is re-raised and
  neither counts nor resets the count. It must be the learner's own code, not
  `course_lib.breaker`, and measure time with the clock it is given, never `time.time`.
- `test_breaker_opens_after_5_failures(CircuitBreaker)`: a test that receives a breaker CLASS.
  It is run against our correct breaker, where it must pass, and against seven buggy ones
  (`_BUGGY`), each of which it must fail on; a buggy breaker it lets pass is a failed check that
  says which bug went unnoticed.

`provider_error()` and `client_error()` raise the openai SDK's real exceptions (503 and 400),
built from response objects as the SDK builds them, so learners need no provider for the test.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NoReturn

import httpx2
import openai

from .core import CheckFailed, Exercise, Namespace

__all__ = ["EX2", "CircuitOpen", "client_error", "provider_error"]

EX2 = Exercise("ex2", "A circuit breaker and its test", "ex2_circuit_breaker.ipynb")
TEST_NAME = "test_breaker_opens_after_5_failures"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


# --- what the notebook imports ----------------------------------------------------------------
class CircuitOpen(Exception):
    """Raised by a breaker instead of calling the function while it is open (or while its one
    half-open probe is still running)."""


_REQUEST = httpx2.Request("POST", "http://sim.local/v1/chat/completions")


def _sdk_error(status: int, cls: type[openai.APIStatusError], message: str, kind: str) -> openai.APIStatusError:
    body = {"message": message, "type": kind, "param": None, "code": None}
    response = httpx2.Response(status, request=_REQUEST, json={"error": body})
    return cls(f"Error code: {status} - {message}", response=response, body=body)


def provider_error(*args: Any, **kwargs: Any) -> NoReturn:
    """Raise what the SDK raises when the provider fails: a 503 `openai.InternalServerError`.
    Takes any arguments, so it can stand in for the function a breaker calls."""
    raise _sdk_error(503, openai.InternalServerError, "The server is overloaded, try again later", "server_error")


def client_error(*args: Any, **kwargs: Any) -> NoReturn:
    """Raise what the SDK raises for a malformed request: a 400 `openai.BadRequestError`, which
    would fail on a healthy provider too."""
    raise _sdk_error(400, openai.BadRequestError, "'messages' must be a non-empty array", "invalid_request_error")


# --- our breakers: one correct, seven buggy (the learner's test must tell them apart) -----------
def _is_provider_failure(error: BaseException) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500 or error.status_code in (408, 409, 429)
    return isinstance(error, (openai.APIConnectionError, TimeoutError, ConnectionError))


class _Breaker:
    """The reference breaker, written as plainly as the task asks. Each buggy subclass changes
    one hook. `built` counts instances, to tell a learner whose test ignores its argument."""

    built = 0

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        type(self).built += 1
        self.failure_threshold, self.reset_timeout, self.clock = failure_threshold, reset_timeout, clock
        self._state, self.failures, self.opened_at, self.probing = CLOSED, 0, 0.0, False

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self.opened_at >= self.reset_timeout:
            return HALF_OPEN
        return self._state

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._admit(fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            self._record(self._counts(error), failed=True)
            raise
        self._record(True, failed=False)
        return result

    def _admit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        state = self.state
        if state == OPEN:
            self._reject(fn, args, kwargs)
        if state == HALF_OPEN:
            if self.probing:
                raise CircuitOpen("circuit half-open: its probe is still running")
            self._state, self.probing = HALF_OPEN, True

    def _reject(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        wait = self.opened_at + self.reset_timeout - self.clock()
        raise CircuitOpen(f"circuit open: call rejected, next probe in {wait:.1f} s")

    def _counts(self, error: BaseException) -> bool:
        return _is_provider_failure(error)

    def _record(self, counts: bool, *, failed: bool) -> None:
        if self._state == HALF_OPEN:
            self.probing = False
            if counts:
                self._move(OPEN if failed else CLOSED)
        elif counts and failed:
            self.failures += 1
            if self._trips():
                self._move(OPEN)
        elif counts:
            self.failures = 0

    def _trips(self) -> bool:
        return self.failures >= self.failure_threshold

    def _move(self, state: str) -> None:
        self._state, self.failures, self.probing = state, 0, False
        if state == OPEN:
            self.opened_at = self.clock()


class _OpensAfter4(_Breaker):
    def _trips(self) -> bool:
        return self.failures >= self.failure_threshold - 1


class _OpensAfter6(_Breaker):
    def _trips(self) -> bool:
        return self.failures > self.failure_threshold


class _NeverOpens(_Breaker):
    def _trips(self) -> bool:
        return False


class _CallsThroughWhileOpen(_Breaker):
    def _reject(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        return  # says "open", calls anyway


class _CallsThenRejects(_Breaker):
    def _reject(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            fn(*args, **kwargs)
        super()._reject(fn, args, kwargs)


class _CountsClientErrors(_Breaker):
    def _counts(self, error: BaseException) -> bool:
        return True


class _RaisesLastError(_Breaker):
    last_error: Exception | None = None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call(fn, *args, **kwargs)
        except CircuitOpen:
            if self.last_error is None:
                raise
            raise self.last_error from None
        except Exception as error:
            self.last_error = error
            raise


_BUGGY: list[tuple[type[_Breaker], str, str]] = [
    (_OpensAfter4, "opens after 4 failures",
     "assert the state after exactly 4 provider failures (still \"closed\") and after the 5th (\"open\")"),
    (_OpensAfter6, "opens only after 6 failures", "assert that it is \"open\" right after the 5th provider failure"),
    (_NeverOpens, "never opens", "assert that it is \"open\" after 5 provider failures"),
    (_CallsThroughWhileOpen, "lets calls through while open (its state says \"open\", but it calls the function)",
     "assert that a call while it is open raises CircuitOpen"),
    (_CallsThenRejects, "calls the function before rejecting the call while open",
     "count the calls that reach your function, and assert that a rejected call added none"),
    (_CountsClientErrors, "counts a 400 (client_error) as a failure",
     "assert that 5 client errors in a row leave it \"closed\""),
    (_RaisesLastError, "raises the last provider error instead of CircuitOpen while open",
     "expect CircuitOpen itself (pytest.raises(CircuitOpen), not Exception)"),
]
_ALL: list[type[_Breaker]] = [_Breaker, *(bug for bug, _, _ in _BUGGY)]
for _cls in _ALL:
    _cls.__name__ = _cls.__qualname__ = "CircuitBreaker"  # what the learner's test sees in its messages


# --- tools for the checks ---------------------------------------------------------------------
class _Clock:
    """A monotonic clock the checks move by hand (it starts at 1000 s, far from time.time())."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class _Probe:
    """A function for the breaker to call that counts its calls and answers as told."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.answer()


class _RealSleep(Exception):
    """Raised when the learner's test sleeps for real (it would make grading wait)."""


@contextlib.contextmanager
def _watching_time(ns: Namespace, *, forbid_sleep: bool = False) -> Iterator[Counter[str]]:
    """Count the learner's own calls to time.time / time.monotonic / time.sleep (calls whose
    caller runs in the notebook's globals); other callers, threads included, are unaffected."""
    seen: Counter[str] = Counter()
    originals = {name: getattr(time, name) for name in ("time", "monotonic", "sleep")}

    def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if sys._getframe(1).f_globals is ns:
                seen[name] += 1
                if name == "sleep" and forbid_sleep:
                    raise _RealSleep(f"your test called time.sleep({args[0] if args else ''}), which waits for "
                                     "real; give the breaker a clock you control (VirtualClock().now) and move it")
            return real(*args)
        return call

    for name, real in originals.items():
        setattr(time, name, watched(name, real))
    try:
        yield seen
    finally:
        for name, real in originals.items():
            setattr(time, name, real)


def _learner_class(ns: Namespace) -> type:
    cls = ns.get("CircuitBreaker")
    if not isinstance(cls, type):
        raise CheckFailed("define a class named CircuitBreaker (the stub cell does)")
    return cls


def _new(ns: Namespace, threshold: int = 5, timeout: float = 30.0) -> tuple[Any, _Clock]:
    clock = _Clock()
    breaker = _learner_class(ns)(failure_threshold=threshold, reset_timeout=timeout, clock=clock)
    return breaker, clock


def _call(breaker: Any, fn: Callable[[], Any]) -> tuple[str, Any]:
    """("returned", value) or ("raised", error)."""
    try:
        return "returned", breaker.call(fn)
    except Exception as error:  # noqa: BLE001 - sorted out by the caller
        return "raised", error


def _fail_provider(breaker: Any, what: str = "a provider failure") -> None:
    """One call that fails with a 503, which the breaker must run and re-raise."""
    error = _caught(provider_error)
    probe = _Probe(partial(_raise, error))
    outcome, value = _call(breaker, probe)
    if probe.calls == 0:
        raise CheckFailed(f"{what} was never made: the breaker rejected it ({_describe(value)}) while it should "
                          f"still be closed (state {breaker.state!r})")
    if outcome == "returned" or value is not error:
        got = f"returned {value!r}" if outcome == "returned" else f"raised {_describe(value)}"
        raise CheckFailed(f"a call whose function raised a 503 {got}; re-raise the function's own error")


def _caught(make: Callable[[], Any]) -> BaseException:
    try:
        make()
    except Exception as error:  # noqa: BLE001
        return error
    raise AssertionError("unreachable")


def _raise(error: BaseException) -> NoReturn:
    raise error


def _describe(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return repr(value)


LIMIT = 10
"""Provider failures the checks make before concluding that a breaker never opens."""


def _failures_to_open(breaker: Any) -> int | None:
    """Provider failures until the breaker reads 'open' (None if LIMIT never opened it)."""
    for failures in range(1, LIMIT + 1):
        _fail_provider(breaker, f"provider failure {failures}")
        state = breaker.state
        if state == OPEN:
            return failures
        if state != CLOSED:
            raise CheckFailed(f"after {failures} provider failure(s) the state is {state!r}; it should be 'closed' "
                              "below failure_threshold and 'open' at it")
    return None


def _measured_threshold(ns: Namespace) -> int:
    """How many provider failures open a new breaker (5 if correct), so that a wrong threshold
    fails its own check and not also every check that needs an open breaker."""
    opened_after = _failures_to_open(_new(ns)[0])
    if opened_after is None:
        raise CheckFailed(f"{LIMIT} provider failures in a row never opened it (see the check on opening)")
    return opened_after


def _half_open(ns: Namespace) -> tuple[Any, _Clock]:
    """A breaker opened at t=1000, with the clock moved on by reset_timeout (30 s)."""
    with _watching_time(ns) as seen:
        breaker, clock = _open(ns)
        clock.advance(30)
        state = breaker.state
    if state != HALF_OPEN:
        hint = _time_misuse(seen) or "it should read 'half-open' once reset_timeout has passed on its clock"
        raise CheckFailed(f"30 s after opening (reset_timeout) the state is {state!r}; {hint}")
    return breaker, clock


def _open(ns: Namespace) -> tuple[Any, _Clock]:
    """A breaker opened by provider failures at t=1000 on a fake clock: 5 of them, or as many as
    it takes (up to 10), so that a wrong threshold fails its own check, not every later one."""
    breaker, clock = _new(ns)
    if _failures_to_open(breaker) is None:
        raise CheckFailed(f"{LIMIT} provider failures in a row never opened it (see the check on opening)")
    return breaker, clock


def _rejection_problem(calls: int, outcome: str, value: Any, when: str) -> str:
    """What is wrong with how a call that should have been rejected ended ("" if nothing)."""
    if calls:
        return f"{when}, the breaker called the function; it must reject the call without calling it"
    if outcome == "returned":
        return f"{when}, a call returned {value!r} instead of raising CircuitOpen"
    if isinstance(value, CircuitOpen):
        return ""
    if type(value).__name__ == "CircuitOpen":
        return (f"{when}, the breaker raised your own CircuitOpen class; raise the CircuitOpen imported in the "
                "setup cell (tests catch that one), and do not define another")
    return f"{when}, a call raised {_describe(value)}; raise CircuitOpen (from the setup cell)"


def _expect_rejection(breaker: Any, when: str) -> None:
    probe = _Probe(lambda: "answer")
    outcome, value = _call(breaker, probe)
    problem = _rejection_problem(probe.calls, outcome, value, when)
    if problem:
        raise CheckFailed(problem)


def _still_closed_after(breaker: Any, failures: int, story: str, advice: str) -> None:
    """`failures` provider failures after `story`, each of which must leave the breaker closed."""
    for number in range(1, failures + 1):
        _fail_provider(breaker)
        if breaker.state != CLOSED:
            raise CheckFailed(f"{story}, then {number} provider failure(s) left it {breaker.state!r}; {advice}")


def _time_misuse(seen: Counter[str]) -> str:
    if seen["time"]:
        return ("your breaker calls time.time(), the wall clock (NTP can step it); measure with the clock it is "
                "given: call `clock()`")
    if seen["monotonic"]:
        return "your breaker calls time.monotonic() itself; measure with the clock it is given: call `clock()`"
    return ""


# --- checks on the learner's breaker ------------------------------------------------------------
@EX2.check("CircuitBreaker has the stated interface and is your own code", points=1)
def interface(ns: Namespace) -> None:
    cls = _learner_class(ns)
    borrowed = [c for c in cls.__mro__ if c.__module__.startswith("course_lib")]
    breaker, _ = _new(ns)
    held = [value for value in getattr(breaker, "__dict__", {}).values()
            if type(value).__module__.startswith("course_lib.breaker")]
    if borrowed or held:
        raise CheckFailed("your CircuitBreaker is built on course_lib.breaker; write the breaker yourself (that is "
                          "the exercise), with only the helpers of the setup cell")
    if not callable(getattr(breaker, "call", None)):
        raise CheckFailed("CircuitBreaker needs a method call(fn, *args, **kwargs)")
    if breaker.state != CLOSED:
        raise CheckFailed(f"a new breaker's state is {breaker.state!r}; it should start 'closed'")
    parameters = inspect.signature(cls).parameters
    for name, default in (("failure_threshold", 5), ("reset_timeout", 30.0)):
        if name not in parameters or parameters[name].default != default:
            raise CheckFailed(f"CircuitBreaker's parameter {name} should default to {default}")
    if cls().state != CLOSED:
        raise CheckFailed("CircuitBreaker() with its defaults should start 'closed'")


@EX2.check("opens after exactly failure_threshold consecutive provider failures", points=2)
def opens_at_threshold(ns: Namespace) -> None:
    for threshold in (5, 3):
        breaker, _ = _new(ns, threshold=threshold)
        opened_after = _failures_to_open(breaker)
        if opened_after is None:
            raise CheckFailed(f"with failure_threshold={threshold}, {LIMIT} provider failures in a row never "
                              "opened the breaker")
        if opened_after != threshold:
            raise CheckFailed(f"with failure_threshold={threshold} it opened after {opened_after} consecutive "
                              f"provider failures; it should open after exactly {threshold}: use the "
                              "failure_threshold it was given, and compare with care")


@EX2.check("rejects while open with CircuitOpen, without calling the function", points=2)
def rejects_while_open(ns: Namespace) -> None:
    breaker, clock = _open(ns)
    _expect_rejection(breaker, "while open")
    clock.advance(29.9)
    if breaker.state != OPEN:
        raise CheckFailed(f"29.9 s after opening (reset_timeout is 30 s) the state is {breaker.state!r}; it should "
                          "still be 'open'")
    _expect_rejection(breaker, "29.9 s after opening (reset_timeout is 30 s)")


@EX2.check("measures time with the clock it is given, never time.time", points=1)
def uses_injected_clock(ns: Namespace) -> None:
    default = inspect.signature(_learner_class(ns)).parameters.get("clock")
    if default is not None and default.default is time.time:
        raise CheckFailed("the default clock is time.time, the wall clock (NTP can step it); use time.monotonic")
    with _watching_time(ns) as seen:
        breaker, clock = _open(ns)
        clock.advance(30)
        state = breaker.state
        outcome, value = _call(breaker, _Probe(lambda: "answer"))
    misuse = _time_misuse(seen)
    if misuse:
        raise CheckFailed(misuse)
    if state != HALF_OPEN or outcome != "returned":
        raise CheckFailed(f"when reset_timeout (30 s) had passed on the clock it was given, the state was {state!r} "
                          f"and a call {outcome} {_describe(value)}; measure time with that clock")


@EX2.check("after reset_timeout it goes half-open and lets ONE probe through", points=2)
def one_probe_when_half_open(ns: Namespace) -> None:
    breaker, _ = _half_open(ns)
    inside: dict[str, Any] = {}
    second = _Probe(lambda: "second")

    def probe() -> str:
        # From another thread, so that a breaker holding a lock while its call runs blocks that
        # thread (which is fine: nothing else gets through meanwhile) instead of this check.
        inside["state"] = _in_thread(lambda: breaker.state)
        inside["second"] = _in_thread(lambda: _call(breaker, second))
        inside["second calls"] = second.calls
        return "probe answer"

    outcome, value = _call(breaker, _Probe(probe))
    if "state" not in inside:
        raise CheckFailed(f"half-open, the first call did not go through as a probe: it {outcome} {_describe(value)}")
    if inside["second calls"] or (inside["second"] and inside["second"][0][0] == "returned"):
        raise CheckFailed("while a probe was running (half-open), a second call went through too; half-open must "
                          "let only one probe through and reject the others with CircuitOpen")
    if inside["second"]:
        second_outcome, second_value = inside["second"][0]
        problem = _rejection_problem(0, second_outcome, second_value, "while a probe was running")
        if problem:
            raise CheckFailed(problem)
    if inside["state"] and inside["state"][0] != HALF_OPEN:
        raise CheckFailed(f"while its probe ran, the state was {inside['state'][0]!r}; it should be 'half-open'")
    if outcome != "returned" or value != "probe answer":
        raise CheckFailed(f"the probe's call should return what the function returned; it {outcome} {_describe(value)}")


def _in_thread(work: Callable[[], Any], seconds: float = 0.5) -> tuple[Any] | tuple[()]:
    """(result,) of `work` run in a daemon thread, or () if it had not finished after `seconds`."""
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(work()), daemon=True)
    worker.start()
    worker.join(seconds)
    return (done[0],) if done else ()


@EX2.check("a successful probe closes it; a failed probe reopens it for another reset_timeout", points=2)
def probe_outcome(ns: Namespace) -> None:
    breaker, _ = _half_open(ns)
    _call(breaker, _Probe(lambda: "answer"))
    if breaker.state != CLOSED:
        raise CheckFailed(f"after a successful probe the state is {breaker.state!r}; it should be 'closed'")
    _still_closed_after(breaker, 4, "a successful probe closed it", "closing must start the count from zero")
    breaker, clock = _half_open(ns)
    _fail_provider(breaker, "the probe")
    if breaker.state != OPEN:
        raise CheckFailed(f"after a failed probe the state is {breaker.state!r}; a failed probe must reopen it")
    clock.advance(29.9)
    if breaker.state != OPEN:
        raise CheckFailed(f"29.9 s after a failed probe the state is {breaker.state!r}: a failed probe must reopen "
                          "it for a full reset_timeout, counted from the failed probe")
    _expect_rejection(breaker, "29.9 s after a failed probe")
    clock.advance(0.1)
    if breaker.state != HALF_OPEN:
        raise CheckFailed(f"30 s after a failed probe the state is {breaker.state!r}; it should be 'half-open' again")


@EX2.check("a success resets the count of consecutive failures", points=1)
def success_resets(ns: Namespace) -> None:
    threshold = _measured_threshold(ns)
    breaker, _ = _new(ns)
    _still_closed_after(breaker, threshold - 1, "a new breaker", f"it opened after {threshold} before")
    _call(breaker, _Probe(lambda: "answer"))
    _still_closed_after(breaker, threshold - 1, f"{threshold - 1} provider failures and a success",
                        "a success must reset the count: only failures in a row count")
    _fail_provider(breaker)
    if breaker.state != OPEN:
        raise CheckFailed(f"after a success, {threshold} provider failures in a row did not open it")


@EX2.check("client errors (a 400) and other exceptions are re-raised and do not count", points=2)
def client_errors_ignored(ns: Namespace) -> None:
    threshold = _measured_threshold(ns)
    breaker, _ = _new(ns)
    kinds = [(client_error, "400 (client_error)", "400s (client errors)"), (_raise_bug, "ValueError", "ValueErrors")]
    for made, one, many in kinds:
        for number in range(5):
            error = _caught(made)
            probe = _Probe(partial(_raise, error))
            outcome, value = _call(breaker, probe)
            if probe.calls == 0:
                raise CheckFailed(f"a call was rejected ({_describe(value)}) after {number} {many} in a row: they "
                                  "say nothing about the provider; only provider failures may count")
            if value is not error:
                raise CheckFailed(f"a call whose function raised a {one} {outcome} {_describe(value)}; re-raise "
                                  "the function's own error")
        if breaker.state != CLOSED:
            raise CheckFailed(f"after 5 {many} in a row the state is {breaker.state!r}: they say nothing about the "
                              "provider; only provider failures may count")
    breaker, _ = _new(ns)
    _still_closed_after(breaker, threshold - 1, "a new breaker", f"it opened after {threshold} before")
    _call(breaker, client_error)
    _fail_provider(breaker)
    if breaker.state != OPEN:
        raise CheckFailed(f"{threshold - 1} provider failures, a 400, then 1 more failure did not open it: a client "
                          "error neither counts as a failure nor resets the count")


def _raise_bug() -> NoReturn:
    raise ValueError("a bug in the function the breaker calls")


@EX2.check("every provider failure counts: 5xx, 429, timeouts, connection errors", points=1)
def provider_failures_count(ns: Namespace) -> None:
    failures = {
        "502": _sdk_error(502, openai.InternalServerError, "bad gateway", "server_error"),
        "429": _sdk_error(429, openai.RateLimitError, "slow down", "requests"),
        "timeout": openai.APITimeoutError(request=_REQUEST),
        "connection error": openai.APIConnectionError(request=_REQUEST),
    }
    threshold = _measured_threshold(ns)
    breaker, _ = _new(ns)
    for number in range(1, threshold + 1):
        name, error = list(failures.items())[(number - 1) % len(failures)]
        outcome, value = _call(breaker, _Probe(partial(_raise, error)))
        if value is not error:
            raise CheckFailed(f"a call whose function raised a {name} {outcome} {_describe(value)}; re-raise it")
    if breaker.state != OPEN:
        raise CheckFailed(f"{threshold} provider failures in a row ({', '.join(failures)}) did not open it; every "
                          "provider failure counts: 5xx, 408, 409, 429, timeouts and connection errors")


# --- checks on the learner's test ---------------------------------------------------------------
def _learner_test(ns: Namespace) -> Callable[[type], Any]:
    test = ns.get(TEST_NAME)
    if not callable(test):
        raise CheckFailed(f"define a function {TEST_NAME}(CircuitBreaker) (the stub cell does)")
    return test  # type: ignore[no-any-return]


def _run_test(ns: Namespace, cls: type[_Breaker]) -> BaseException | None:
    """Run the learner's test on `cls`; the exception it raised, or None if it passed. A stub's
    NotImplementedError propagates, so an untouched test fails with its own message."""
    test = _learner_test(ns)
    try:
        with _watching_time(ns, forbid_sleep=True):
            test(cls)
    except (NotImplementedError, KeyboardInterrupt):
        raise
    except BaseException as error:  # noqa: BLE001 - failing is what a test does (pytest.raises and pytest.fail
        return error                # raise BaseExceptions)
    return None


def _where(error: BaseException, ns: Namespace) -> str:
    """Which line of the learner's test raised, counting its `def` line as line 1."""
    code = getattr(ns.get(TEST_NAME), "__code__", None)
    lines = [line for frame, line in traceback.walk_tb(error.__traceback__) if frame.f_code is code]
    return f" (line {lines[-1] - code.co_firstlineno + 1} of your test)" if lines and code is not None else ""


def _passes_on_correct(ns: Namespace) -> None:
    _Breaker.built = 0
    error = _run_test(ns, _Breaker)
    if error is not None:
        detail = str(error) if isinstance(error, _RealSleep) else f"{_describe(error)}{_where(error, ns)}"
        if ns.get("CircuitOpen") is not CircuitOpen:
            detail += "; the notebook's CircuitOpen is not the one from the setup cell: do not define your own"
        raise CheckFailed(f"your test fails on a correct breaker: {detail}")
    if _Breaker.built == 0:
        raise CheckFailed("your test never built a breaker from the class it was given; build every breaker from "
                          "its argument (CircuitBreaker(...) inside the test), so the grader can swap in others")


@EX2.check("your test passes on a correct breaker", points=2)
def learner_test_passes_on_correct(ns: Namespace) -> None:
    _passes_on_correct(ns)


def _catches(buggy: type[_Breaker], bug: str, advice: str) -> Callable[[Namespace], None]:
    def run(ns: Namespace) -> None:
        try:
            _passes_on_correct(ns)
        except CheckFailed:
            raise CheckFailed(f"your test must first pass on a correct breaker (see above) before it can tell a "
                              f"breaker that {bug.split(' (')[0]} from a correct one") from None
        if _run_test(ns, buggy) is None:
            raise CheckFailed(f"your test passed on a breaker that {bug}; {advice}")
    return run


for _buggy, _bug, _advice in _BUGGY:
    EX2.check(f"your test catches a breaker that {_bug.split(' (')[0]}", points=1)(_catches(_buggy, _bug, _advice))
