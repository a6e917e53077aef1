"""Exercise 1, "Retry on 429 in a FastAPI agent": the checks `check("ex1")` runs.

The learner's notebook (exercises/ex1_retry.ipynb, whose task text states all of this) defines:

- `retry_with_backoff(max_attempts=4, base_delay=0.5, max_delay=8.0, sleep=time.sleep, rng=random.random)`,
  written by the learner (a check fails if it runs course_lib.retry's code): it returns a decorator for
  sync functions. The decorated function returns the first successful result; it retries only
  transient failures (a 429 `openai.RateLimitError` unless its code is `insufficient_quota`, a 5xx
  status error, `openai.APIConnectionError` and `openai.APITimeoutError`) and raises anything else at
  once, unchanged; it makes at most `max_attempts` calls and then raises the last error itself; before
  retry k (k = 1 for the first) it waits `rng() * min(max_delay, base_delay * 2 ** (k - 1))`, one
  `rng()` per wait, or, when the error's response headers carry `retry-after-ms` (milliseconds) or
  `retry-after` (seconds), the larger of that and the backoff wait; it waits only through `sleep`.
- `build_agent(provider, sleep)`: the starter agent's FastAPI app (`starter_agent.create_app`) on the
  simulated `provider`, its model call wrapped in that retry (default policy: 4 attempts, waiting with
  `sleep`), and its client built with the SDK's own retries off (`max_retries=0`).

How the checks run: `retry_with_backoff` wraps a scripted function that raises the SDK's real
exception classes (built from response objects, as the SDK builds them) a set number of times, with
a recording `sleep` and a scripted `rng`, so no real time passes; `build_agent` gets a SimProvider
with a rate-limit fault plan on a VirtualClock (and the clock's `sleep`), and one `POST /chat` goes
through starlette's TestClient, with the global `random` generator (the default `rng`) seeded for
the request and restored after. While the learner's code runs, a `time.sleep` it calls itself
returns at once and fails the check instead of sleeping; a wrapper that keeps calling or sleeping
is stopped after 50 calls or waits. Messages name the mistake, never the code that fixes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType, ModuleType
from typing import Any

import httpx2
import openai

from ..clock import VirtualClock
from ..sim import SimProvider
from .core import CheckFailed, Exercise

__all__ = ["EX1"]

EX1 = Exercise("ex1", "Retry on 429 in a FastAPI agent", "ex1_retry.ipynb")

Namespace = Mapping[str, Any]
ANSWER = "the model's answer"
RUNAWAY_LIMIT = 50
"""Calls (or waits) after which a wrapper that does not stop is stopped."""
QUESTION = [{"role": "user", "content": "Where is my order 1001?"}]
RATE_LIMITED = [{"kind": "rate_limit", "start": 0, "end": 3, "retry_after": 1}]
"""429s with `retry-after: 1` for the first 3 s: four attempts that honour it get through."""
ALWAYS_RATE_LIMITED = [{"kind": "rate_limit", "retry_after": 1}]
_RETRY_SPEC = importlib.util.find_spec("course_lib.retry")
RETRY_SOURCE = _RETRY_SPEC.origin if _RETRY_SPEC is not None else None
"""course_lib.retry's file: a call into it while the learner's retry runs means it was borrowed."""


# --- the failures the scripted function raises -----------------------------------------------

_REQUEST = httpx2.Request("POST", "http://sim.local/v1/chat/completions")
_STATUS_CLASSES: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, *, code: str | None = None, type_: str = "invalid_request_error",
                 headers: Mapping[str, str] | None = None) -> openai.APIStatusError:
    """The exception the SDK raises for an OpenAI-style error reply with this status and headers."""
    message = f"Error code: {status}"
    body = {"message": message, "type": type_, "param": None, "code": code}
    response = httpx2.Response(status, headers=dict(headers or {}), request=_REQUEST, json={"error": body})
    cls = _STATUS_CLASSES.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=body)


@dataclass(frozen=True)
class Failure:
    """One kind of failure, as the learner reads it in a message ("a 400")."""

    label: str
    make: Callable[[], BaseException]


def _server_error(status: int) -> Failure:
    return Failure(f"a {status}", lambda: status_error(status, type_="server_error"))


SERVER_503 = _server_error(503)
TRANSIENT = [
    Failure("a 429 rate limit", lambda: status_error(429, code="rate_limit_exceeded", type_="requests")),
    _server_error(500),
    _server_error(502),
    SERVER_503,
    Failure("an APIConnectionError (a dropped connection)", lambda: openai.APIConnectionError(request=_REQUEST)),
    Failure("an APITimeoutError", lambda: openai.APITimeoutError(request=_REQUEST)),
]
CLIENT_ERRORS = [
    Failure("a 400", lambda: status_error(400, code="invalid_value")),
    Failure("a 401", lambda: status_error(401, code="invalid_api_key")),
    Failure("a 403", lambda: status_error(403)),
    Failure("a 404", lambda: status_error(404, code="model_not_found")),
    Failure("a 422", lambda: status_error(422)),
    Failure("a KeyError from the wrapped function (a bug in the code, not a provider failure)",
            lambda: KeyError("choices")),
]
QUOTA = Failure("a 429 with code `insufficient_quota`",
                lambda: status_error(429, code="insufficient_quota", type_="insufficient_quota"))


# --- running the learner's decorator -----------------------------------------------------------

class _Runaway(BaseException):
    """Stops a wrapper that does not stop (a BaseException, so `except Exception` lets it through)."""


class Script:
    """The function the learner's decorator wraps: raises `failure` `fail_times` times, then answers."""

    def __init__(self, failure: Failure, fail_times: float = math.inf) -> None:
        self.failure, self.fail_times = failure, fail_times
        self.__name__ = self.__qualname__ = "ask_model"  # for a wrapper that logs or wraps (functools.wraps) it
        self.raised: list[BaseException] = []
        self.arguments: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    @property
    def calls(self) -> int:
        return len(self.arguments)

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.arguments.append((args, kwargs))
        if self.calls > RUNAWAY_LIMIT:
            raise _Runaway
        if self.calls <= self.fail_times:
            error = self.failure.make()
            self.raised.append(error)
            raise error
        return ANSWER


@dataclass
class Outcome:
    """What the decorated call did: its calls and waits, and what it returned or raised."""

    script: Script
    waits: list[float]
    result: Any = None
    error: BaseException | None = None

    @property
    def calls(self) -> int:
        return self.script.calls

    def raised_by_script(self) -> bool:
        return any(self.error is raised for raised in self.script.raised)


@dataclass
class _SleepGuard:
    calls: list[float] = field(default_factory=list)


@contextlib.contextmanager
def no_real_sleep(ns: Namespace) -> Iterator[_SleepGuard]:
    """While the learner's code runs, `time.sleep` called from it returns at once and is recorded
    (the check then fails), so a check never waits on real time; other callers sleep as usual."""
    guard, real_sleep = _SleepGuard(), time.sleep

    def guarded_sleep(seconds: Any) -> None:
        caller: FrameType | None = sys._getframe(1)
        if caller is not None and caller.f_globals is ns:
            guard.calls.append(seconds)
            if len(guard.calls) > RUNAWAY_LIMIT:
                raise _Runaway
            return
        real_sleep(seconds)

    time.sleep = guarded_sleep
    try:
        yield guard
    finally:
        time.sleep = real_sleep


def _fail_on_real_sleep(guard: _SleepGuard, where: str) -> None:
    if guard.calls:
        raise CheckFailed(f"{where} called time.sleep({guard.calls[0]:g}) instead of the `sleep` it was given; "
                          "the checks pass their own sleep so that they run on virtual time")


def learner_function(ns: Namespace, name: str) -> Callable[..., Any]:
    value = ns.get(name)
    if value is None:
        raise CheckFailed(f"`{name}` is not defined: run the cell that defines it, and keep its name")
    if not callable(value):
        raise CheckFailed(f"`{name}` should be a function, not {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def constant(value: float) -> Callable[[], float]:
    return lambda: value


MIDDLE_DRAW = constant(0.5)


def run(ns: Namespace, script: Script, *, rng: Callable[[], float] = MIDDLE_DRAW,
        args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **policy: Any) -> Outcome:
    """Decorate `script` with the learner's `retry_with_backoff(**policy, sleep=..., rng=rng)` and
    call it once. The learner's own exceptions propagate when they come from building the decorator
    or are a NotImplementedError (an unfinished stub): the check reports them as they are."""
    retry_with_backoff = learner_function(ns, "retry_with_backoff")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > RUNAWAY_LIMIT:
            raise _Runaway

    decorator = retry_with_backoff(**policy, sleep=sleep, rng=rng)
    if not callable(decorator):
        raise CheckFailed(f"retry_with_backoff(...) returned {decorator!r}, not a decorator (a function that "
                          "takes the function to wrap)")
    wrapped = decorator(script)
    if not callable(wrapped):
        raise CheckFailed(f"your decorator returned {wrapped!r} instead of the wrapped function")
    outcome = Outcome(script, waits)
    with no_real_sleep(ns) as guard:
        try:
            outcome.result = wrapped(*args, **dict(kwargs or {}))
        except _Runaway:
            raise CheckFailed(f"your wrapper did not stop: {script.calls} calls and {len(waits)} waits with "
                              f"max_attempts={policy.get('max_attempts', 4)}") from None
        except Exception as error:  # noqa: BLE001 - judged below, by each check
            outcome.error = error
    _fail_on_real_sleep(guard, "your wrapper")
    if isinstance(outcome.error, NotImplementedError) and not outcome.raised_by_script():
        raise outcome.error
    return outcome


def _foreign(outcome: Outcome) -> str:
    """Says which exception the learner's own code raised."""
    error = outcome.error
    return f"{type(error).__name__}: {str(error)[:120]}"


def expect_raised_unchanged(outcome: Outcome, label: str) -> None:
    """The wrapper gave up: it must raise the script's last error itself."""
    if outcome.error is None:
        raise CheckFailed(f"after {label} your wrapper returned {outcome.result!r} instead of raising the error; "
                          "a caller cannot tell that from an answer")
    if not outcome.raised_by_script():
        raise CheckFailed(f"after {label} your wrapper raised {_foreign(outcome)} instead of the error itself; "
                          "re-raise it unchanged, so that callers' `except openai...` clauses still work")
    if outcome.error is not outcome.script.raised[-1]:
        attempt = next(i for i, e in enumerate(outcome.script.raised, 1) if e is outcome.error)
        raise CheckFailed(f"your wrapper raised the error of attempt {attempt}, not the last one "
                          f"(attempt {outcome.calls})")


def _seconds(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "] s"


# --- the checks ------------------------------------------------------------------------------

@EX1.check("retry_with_backoff is your own code, not course_lib.retry", points=1)
def writes_its_own_retry(ns: Namespace) -> None:
    function = learner_function(ns, "retry_with_backoff")
    borrowed = borrowed_names(function)
    with calls_into(RETRY_SOURCE) as seen:
        run(ns, Script(SERVER_503, fail_times=1))
    if borrowed or seen:
        if any(name.startswith("course_lib") for name in borrowed):
            what = "it imports it"
        elif borrowed:
            what = f"it uses its {', '.join(sorted(borrowed))}"
        else:
            what = f"it runs its {seen[0]}()"
        raise CheckFailed(f"retry_with_backoff is built on course_lib.retry ({what}); this exercise is to write "
                          "the retry loop yourself (course_lib.retry is what you graduate to afterwards)")


@EX1.check("retries 429 rate limits, 5xx, timeouts and connection errors until the call succeeds", points=2)
def retries_transient_failures(ns: Namespace) -> None:
    first_time = run(ns, Script(SERVER_503, fail_times=0), args=("client",), kwargs={"model": "gpt-4o-mini"})
    if first_time.error is not None or first_time.result != ANSWER or first_time.calls != 1 or first_time.waits:
        raise CheckFailed(f"when the first call succeeds your wrapper should return its result at once; it made "
                          f"{first_time.calls} call(s), waited {len(first_time.waits)} time(s) and "
                          + (f"raised {_foreign(first_time)}" if first_time.error else f"returned {first_time.result!r}"))
    if first_time.script.arguments != [(("client",), {"model": "gpt-4o-mini"})]:
        raise CheckFailed(f"the wrapped function got {first_time.script.arguments[0]} instead of the arguments "
                          "passed to the wrapper, ('client',) and model='gpt-4o-mini'")
    for failure in TRANSIENT:
        outcome = run(ns, Script(failure, fail_times=2))
        if outcome.error is not None and outcome.calls == 1:
            hint = (" (RateLimitError is a subclass of APIStatusError: which of your `except` clauses sees it "
                    "first?)" if "429" in failure.label else "")
            raise CheckFailed(f"{failure.label} was not retried: it reached the caller after 1 call, but it is a "
                              f"transient failure{hint}")
        if outcome.error is not None:
            cause = "it" if outcome.raised_by_script() else _foreign(outcome)
            raise CheckFailed(f"{failure.label} twice, then a success: your wrapper raised {cause} after "
                              f"{outcome.calls} calls instead of returning the third call's result")
        if outcome.result != ANSWER:
            raise CheckFailed(f"{failure.label} twice, then a success: your wrapper returned {outcome.result!r} "
                              f"instead of {ANSWER!r}, what the third call returned")


@EX1.check("never retries client errors (400, 401, 403, 404, 422) or bugs in the wrapped code", points=2)
def raises_client_errors_at_once(ns: Namespace) -> None:
    for failure in CLIENT_ERRORS:
        outcome = run(ns, Script(failure))
        if outcome.calls > 1:
            raise CheckFailed(f"{failure.label} was retried {outcome.calls - 1} times; only transient failures "
                              "should be retried")
        expect_raised_unchanged(outcome, failure.label)


@EX1.check("never retries a 429 whose code is insufficient_quota", points=1)
def raises_exhausted_quota_at_once(ns: Namespace) -> None:
    outcome = run(ns, Script(QUOTA))
    if outcome.calls > 1:
        raise CheckFailed(f"{QUOTA.label} was retried {outcome.calls - 1} times; an exhausted quota does not refill "
                          "in seconds, so raise it at once")
    expect_raised_unchanged(outcome, QUOTA.label)


JITTER_DRAWS = (0.9, 0.1, 0.5, 0.99, 0.0)
JITTER_ATTEMPTS, JITTER_BASE, JITTER_CAP = 6, 0.5, 3.0


@EX1.check("full jitter: each wait is rng() * min(max_delay, base_delay * 2 ** (k - 1))", points=2)
def waits_with_full_jitter(ns: Namespace) -> None:
    draws = itertools.cycle(JITTER_DRAWS)
    attempts, base, cap = JITTER_ATTEMPTS, JITTER_BASE, JITTER_CAP
    outcome = run(ns, Script(SERVER_503), rng=lambda: next(draws), max_attempts=attempts, base_delay=base,
                  max_delay=cap)
    ceilings = [min(cap, base * 2 ** (k - 1)) for k in range(1, attempts)]
    expected = [draw * ceiling for draw, ceiling in zip(JITTER_DRAWS, ceilings)]
    waits = outcome.waits
    if len(waits) != len(expected):
        raise CheckFailed(f"with max_attempts={attempts} and a 503 on every call, your wrapper waited "
                          f"{len(waits)} time(s) in {outcome.calls} call(s); 6 attempts have 5 waits between them")
    if all(math.isclose(w, e, abs_tol=1e-9) for w, e in zip(waits, expected)):
        return
    if all(math.isclose(w, c, abs_tol=1e-9) for w, c in zip(waits, ceilings)):
        raise CheckFailed(f"no jitter: every wait was its whole ceiling {_seconds(waits)}, so clients that failed "
                          "together come back together; full jitter draws each wait between 0 and the ceiling")
    if all(c - 1e-9 <= w <= 1.1 * c + 1e-9 for w, c in zip(waits, ceilings)):
        raise CheckFailed(f"+10% jitter: every wait stayed within 10% above its ceiling {_seconds(waits)}, so a "
                          "fleet still comes back in waves; full jitter draws each wait between 0 and the ceiling")
    if any(w > cap + 1e-9 for w in waits):
        raise CheckFailed(f"a wait of {max(waits):.3g} s is longer than max_delay={cap:g} s: max_delay caps "
                          f"each wait's ceiling (your waits: {_seconds(waits)})")
    raise CheckFailed(f"with rng() returning {list(JITTER_DRAWS)} in turn, base_delay={base:g} and "
                      f"max_delay={cap:g}, full jitter waits {_seconds(expected)}; yours were {_seconds(waits)} "
                      "(one rng() per wait, times the ceiling min(max_delay, base_delay * 2 ** (k - 1)))")


RETRY_AFTER_CASES = [
    ("`retry-after: 3` and `retry-after-ms: 3000` (as OpenAI sends them)",
     {"retry-after": "3", "retry-after-ms": "3000"}, 3.0),
    ("only `retry-after: 2` (seconds)", {"retry-after": "2"}, 2.0),
    ("only `retry-after-ms: 1500` (milliseconds)", {"retry-after-ms": "1500"}, 1.5),
]


def rate_limited(description: str, headers: dict[str, str]) -> Failure:
    """A 429 rate limit whose response carries `headers`."""
    return Failure(f"a 429 with {description}",
                   lambda: status_error(429, code="rate_limit_exceeded", type_="requests", headers=headers))


@EX1.check("honours Retry-After: waits at least what the server asks (retry-after, retry-after-ms)", points=2)
def honours_retry_after(ns: Namespace) -> None:
    max_delay = 8.0
    for description, headers, asked in RETRY_AFTER_CASES:
        failure = rate_limited(description, headers)
        outcome = run(ns, Script(failure, fail_times=1), rng=constant(0.5), max_attempts=4, base_delay=0.5,
                      max_delay=max_delay)
        if outcome.error is not None or not outcome.waits:
            raise CheckFailed(f"{failure.label} was not retried (your wrapper "
                              + (f"raised {_foreign(outcome)})" if outcome.error else "did not wait)")
                              + "; a rate limit is transient")
        wait = outcome.waits[0]
        if wait < asked - 1e-9:
            raise CheckFailed(f"{failure.label} was retried after {wait:.3g} s; the server asked for {asked:g} s: "
                              "honour Retry-After")
        if wait > asked + max_delay + 1e-9:
            raise CheckFailed(f"{failure.label} was retried after {wait:.4g} s, far longer than the {asked:g} s "
                              "asked: mind each header's unit")


@EX1.check("stops after max_attempts and re-raises the last error", points=2)
def stops_and_reraises(ns: Namespace) -> None:
    for attempts in (4, 1):
        outcome = run(ns, Script(SERVER_503), max_attempts=attempts)
        if outcome.calls != attempts:
            raise CheckFailed(f"with max_attempts={attempts} and a 503 on every call, your wrapper made "
                              f"{outcome.calls} call(s); max_attempts counts every call, the first one included")
        expect_raised_unchanged(outcome, f"{attempts} failed attempt(s)")
        if len(outcome.waits) != attempts - 1:
            raise CheckFailed(f"{len(outcome.waits)} wait(s) for {attempts} attempt(s): wait only between attempts; "
                              "after the last one, raise at once")


@EX1.check("the agent rides out the 429 plan: POST /chat answers 200 after 3 refused calls", points=2)
def agent_recovers(ns: Namespace) -> None:
    response, provider, _ = post_chat(ns, RATE_LIMITED)
    statuses = [call.status for call in provider.log]
    if response.status_code != 200:
        if len(statuses) == 1:
            raise CheckFailed(f"POST /chat failed with {response.status_code} after 1 call to the provider: the "
                              "agent's model call is not retried; give create_app your retrying model call")
        raise CheckFailed(f"POST /chat failed with {response.status_code} after {len(statuses)} calls to the provider "
                          f"(statuses {statuses} at t = {_times(provider)}); the 429s lasted 3 s and asked for "
                          "1 s between calls")
    answer = response.json().get("answer")
    if not isinstance(answer, str) or not answer:
        raise CheckFailed(f"POST /chat answered 200 but its answer was {answer!r}, not the model's text")
    if statuses != [429, 429, 429, 200]:
        raise CheckFailed(f"the agent got through, but made {len(statuses)} calls (statuses {statuses} at t = "
                          f"{_times(provider)}); waiting as Retry-After asks, it takes 4: three 429s, then the answer")


@EX1.check("one retry loop: a request makes 4 calls at most (the SDK's own retries off)", points=1)
def sdk_retries_off(ns: Namespace) -> None:
    response, provider, app = post_chat(ns, ALWAYS_RATE_LIMITED)
    calls = len(provider.log)
    if calls > 4 and calls % 4 == 0:
        raise CheckFailed(f"one POST /chat made {calls} calls to a provider that refused them all, {calls // 4} per "
                          "attempt of yours: the SDK's own retries (max_retries, 2 by default) multiply yours; "
                          "turn them off in the agent's client")
    if calls != 4:
        raise CheckFailed(f"one POST /chat made {calls} call(s) to a provider that refused them all; with the default "
                          "policy (4 attempts) and the SDK's own retries off it makes 4")
    if response.status_code < 500:
        raise CheckFailed(f"when every call was refused, POST /chat answered {response.status_code} "
                          f"{response.text[:80]} instead of failing: the retry must raise the last error, not return")
    for retries in sdk_max_retries(app):
        if retries != 0:
            raise CheckFailed(f"the agent's OpenAI client has max_retries={retries}: the SDK's own retries multiply "
                              "yours; turn them off")


# --- helpers of the checks ---------------------------------------------------------------------

def post_chat(ns: Namespace, faults: list[dict[str, Any]]) -> tuple[Any, SimProvider, Any]:
    """One `POST /chat` to the learner's agent on a fresh provider with `faults`, on virtual time."""
    from starlette.testclient import (
        TestClient,  # imported here: only the app checks need it
    )

    build_agent = learner_function(ns, "build_agent")
    clock = VirtualClock()
    provider = SimProvider({"seed": 1, "faults": faults}, clock=clock)
    with no_real_sleep(ns) as guard, seeded_global_random():
        app = build_agent(provider, clock.sleep)
        if app is None:
            raise CheckFailed("build_agent returned None: return the app that create_app builds")
        with TestClient(app, raise_server_exceptions=False) as http:
            response = http.post("/chat", json={"messages": QUESTION}, headers={"X-User": "grader"})
    _fail_on_real_sleep(guard, "your agent")
    return response, provider, app


@contextlib.contextmanager
def seeded_global_random(seed: int = 2026) -> Iterator[None]:
    """The agent's retry draws from `random.random` by default: seed it, so that a check gives the
    same verdict in a kernel as in-process, whatever ran before; the notebook's state is restored."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _times(provider: SimProvider) -> str:
    return ", ".join(f"{call.t:.2f}" for call in provider.log) + " s"


def sdk_max_retries(app: Any) -> list[int]:
    """`max_retries` of every OpenAI client the app's endpoints hold (the starter agent's `chat`
    closes over its client)."""
    found = []
    for route in getattr(app, "routes", []):
        for cell in getattr(getattr(route, "endpoint", None), "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                if isinstance(cell.cell_contents, openai.OpenAI):
                    found.append(cell.cell_contents.max_retries)
    return found


def _code_objects(code: CodeType) -> Iterator[CodeType]:
    yield code
    for constant_ in code.co_consts:
        if isinstance(constant_, CodeType):
            yield from _code_objects(constant_)


def _from_retry_module(value: Any) -> bool:
    if isinstance(value, ModuleType):
        return value.__name__ == "course_lib.retry"
    return str(getattr(value, "__module__", "")) == "course_lib.retry"


def borrowed_names(function: Callable[..., Any]) -> set[str]:
    """Names that `function`'s code (nested functions included) takes from course_lib.retry."""
    code, found = getattr(function, "__code__", None), set()
    module_globals = getattr(function, "__globals__", {})
    if _from_retry_module(function):
        found.add(getattr(function, "__name__", "it"))
    if code is None:
        return found
    for each in _code_objects(code):
        for name in each.co_names:
            if name.startswith("course_lib.retry") or _from_retry_module(module_globals.get(name)):
                found.add(name)
    return found


@contextlib.contextmanager
def calls_into(source: str | None) -> Iterator[list[str]]:
    """The names of the functions in file `source` called (in this thread) inside the block."""
    seen: list[str] = []
    previous = sys.getprofile()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == source:
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(previous)
