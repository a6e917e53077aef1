"""Exercise 3 checks: a fallback chain gpt-4o -> gpt-4o-mini -> static message.

The learner's notebook defines `answer(client, messages) -> Reply` (fields `text`, `answered_by`,
`degraded`) and `STATIC_MESSAGE`. The rules are notebook 03's, for a chain with no larger-window
model in it:

- ask gpt-4o; on a provider failure (a 5xx, a 429, a timeout, a connection error) ask
  gpt-4o-mini; when that fails the same way too, answer `STATIC_MESSAGE`;
- each model at most once per call, and nothing after the first answer;
- a 400 is raised at once (every model would refuse the same request), `context_length_exceeded`
  included: both models take 128,000 tokens, so none in this chain can do better;
- anything that is not an openai error (a bug: KeyError, TypeError...) propagates unchanged;
- `answered_by` is "gpt-4o", "gpt-4o-mini" or "static"; `degraded` is True for the static
  message only (a cheaper model's answer is still a real answer);
- `course_lib.fallback` is not used: the chain is the learner's own.

For each situation a check builds a fresh simulated provider with one fault plan on a
VirtualClock, hands `answer` a client on it (SDK retries off, a 5 s timeout), and counts the
requests each model got in the provider's log (a model's text is checked against what it says on
a healthy provider; the start of it is accepted, for a reply cut short by max_tokens). A bug is
planted as a KeyError in `client.chat.completions.create` for gpt-4o. Virtual time: a hang costs
no real time, so all checks together run in under a second.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai

from ..clock import VirtualClock
from ..llm import make_client
from ..sim import MODELS, SimProvider, count_tokens
from .core import CheckFailed, Exercise, Namespace

__all__ = ["EX3", "QUESTION", "TIMEOUT"]

EX3 = Exercise("ex3", "A fallback chain: gpt-4o, then gpt-4o-mini, then a static message", "ex3_fallback_chain.ipynb")

TIMEOUT = 5.0
"""Seconds the checks' client waits for an answer before it gives up (APITimeoutError)."""
QUESTION = [{"role": "user", "content": "Can I return a gift I was given?"}]
LIBRARY = "course_lib.fallback"
BAD_ROLE = [{"role": "robot", "content": "Can I return a gift I was given?"}]
DOCUMENT = [{"role": "user", "content": "Clause 12: refunds are possible within thirty days. " * 14_000}]


# --- driving the learner's answer() -------------------------------------------------------------
@dataclass
class _Run:
    """One call of the learner's answer(): what came back (or was raised), and what the provider saw."""

    provider: SimProvider
    clock: VirtualClock
    reply: Any = None
    error: Exception | None = None
    planted: _PlantedBug | None = None

    def calls(self, model: str | None = None) -> int:
        return self.provider.calls(model)

    def models_asked(self) -> list[str | None]:
        return [call.model for call in self.provider.log]

    def counts(self) -> str:
        return f"gpt-4o got {self.calls('gpt-4o')} request(s), gpt-4o-mini {self.calls('gpt-4o-mini')}"


class _PlantedBug:
    """A client whose gpt-4o call raises KeyError before any request, as a bug on the way would
    (a lookup of a missing key, like the TypeError the SDK raises for a misspelt parameter)."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client
        self.completions = _PlantedCompletions(client.chat.completions)
        self.chat = types.SimpleNamespace(completions=self.completions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _PlantedCompletions:
    def __init__(self, completions: Any) -> None:
        self._completions = completions
        self.fired = False

    def create(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("model") == "gpt-4o":
            self.fired = True
            raise KeyError("gpt-4o")
        return self._completions.create(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


def _answer(ns: Namespace) -> Callable[..., Any]:
    function = ns.get("answer")
    if not callable(function):
        raise CheckFailed("define a function answer(client, messages) that returns a Reply")
    return function


def _run(ns: Namespace, plan: dict[str, Any], messages: list[dict[str, str]] = QUESTION, *,
         planted_bug: bool = False) -> _Run:
    """Call answer() once against a fresh provider with `plan`; a stub's NotImplementedError propagates."""
    answer = _answer(ns)
    clock = VirtualClock()
    provider = SimProvider(plan, clock=clock)
    client: Any = make_client(provider, timeout=TIMEOUT)
    run = _Run(provider, clock, planted=_PlantedBug(client) if planted_bug else None)
    try:
        run.reply = answer(run.planted or client, [dict(message) for message in messages])
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - what the learner's code raised is the verdict
        run.error = error
    return run


def _raised(error: BaseException) -> str:
    return f"{type(error).__name__} ({str(error)[:120]})"


@functools.cache
def _model_text(model: str) -> str:
    """What `model` says to QUESTION on a healthy simulator (its replies depend on the seed only)."""
    client = make_client(SimProvider(clock=VirtualClock()))
    return client.chat.completions.create(model=model, messages=QUESTION).choices[0].message.content or ""  # type: ignore[arg-type]


def _said_by(text: Any, model: str) -> bool:
    """Whether `text` is what `model` said: all of it, or its start (a reply cut by max_tokens)."""
    said = _model_text(model).strip()
    return isinstance(text, str) and bool(text.strip()) and said.startswith(text.strip())


def _reply(run: _Run, situation: str) -> Any:
    """The run's Reply, with the three fields checked to exist."""
    if run.error is not None:
        raise AssertionError("a run that raised has no reply")  # callers handle errors first
    missing = [name for name in ("text", "answered_by", "degraded") if not hasattr(run.reply, name)]
    if missing:
        raise CheckFailed(f"{situation}, answer() returned {type(run.reply).__name__} {str(run.reply)[:80]!r}: expected a "
                          f"Reply with text, answered_by and degraded (missing: {', '.join(missing)})")
    return run.reply


def _expect_one_each(run: _Run, situation: str) -> None:
    if run.models_asked() != ["gpt-4o", "gpt-4o-mini"]:
        raise CheckFailed(f"{situation}, one request to gpt-4o and then one to gpt-4o-mini were expected; "
                          f"{run.counts()} (ask each model at most once, gpt-4o first)")


def _expect_model_answer(run: _Run, model: str, situation: str) -> None:
    reply = _reply(run, situation)
    if reply.answered_by != model:
        raise CheckFailed(f"{situation}, {model} answered, but the Reply says answered_by={reply.answered_by!r}: it must "
                          f"name who answered")
    if reply.degraded is not False:
        raise CheckFailed(f"{situation}, {model}'s answer came back with degraded={reply.degraded!r}: an answer from a "
                          "model is a real answer (degraded=False); only the static message is degraded")
    if not _said_by(reply.text, model):
        raise CheckFailed(f"{situation}, the Reply's text is not what {model} said (got {str(reply.text)[:60]!r}): "
                          "text must be the model's reply, choices[0].message.content")


# --- the rule against course_lib.fallback -----------------------------------------------------------
def _from_library(value: Any) -> bool:
    try:
        if isinstance(value, types.ModuleType):
            return value.__name__ == LIBRARY
        return getattr(value, "__module__", None) == LIBRARY or type(value).__module__ == LIBRARY
    except Exception:  # noqa: BLE001 - an odd object in the namespace is not our business
        return False


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names a function's code uses, nested functions and lambdas included."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names(constant)


def _library_use(ns: Namespace) -> str | None:
    """How the notebook uses course_lib.fallback, if it does: a name bound to it, or answer()
    (or a function of the notebook it calls) importing or naming it."""
    for name, value in ns.items():
        if not name.startswith("_") and _from_library(value):
            return f"`{name}` comes from it"
    seen: set[int] = set()
    todo: list[Any] = [ns.get("answer")]
    while todo:
        function = todo.pop()
        code = getattr(function, "__code__", None)
        if not isinstance(code, types.CodeType) or id(code) in seen:
            continue
        seen.add(id(code))
        names = set(_names(code))
        if LIBRARY in names or "FallbackChain" in names or {"course_lib", "fallback"} <= names:
            return f"{getattr(function, '__name__', 'a function')}() imports or names it"
        for cell in getattr(function, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _from_library(contents):
                return f"{getattr(function, '__name__', 'a function')}() uses an object from it"
            todo.append(contents)
        todo.extend(ns[name] for name in names if name in ns and callable(ns[name]))
    return None


# --- the checks ---------------------------------------------------------------------------------------
@EX3.check("the chain is your own (course_lib.fallback is not used)", points=1)
def writes_its_own_chain(ns: Namespace) -> None:
    _run(ns, {})  # an unfinished answer() fails here first, with its own message
    use = _library_use(ns)
    if use is not None:
        raise CheckFailed(f"the notebook uses {LIBRARY} ({use}): this exercise is to write the chain yourself, "
                          f"so remove that import")


@EX3.check("gpt-4o healthy: it answers, and gpt-4o-mini is not called", points=2)
def healthy_primary_answers_alone(ns: Namespace) -> None:
    run = _run(ns, {})
    situation = "With both models healthy"
    if run.error is not None:
        raise CheckFailed(f"{situation}, answer() raised {_raised(run.error)}")
    primary, secondary = run.calls("gpt-4o"), run.calls("gpt-4o-mini")
    if primary == 0:
        raise CheckFailed(f"{situation}, gpt-4o was never asked ({run.counts()}): the chain's order is gpt-4o first, "
                          "then gpt-4o-mini, then the static message")
    if primary > 1:
        raise CheckFailed(f"{situation}, gpt-4o was asked {primary} times for one question: ask each model at most once")
    if secondary:
        raise CheckFailed(f"{situation}, gpt-4o answered, yet gpt-4o-mini was asked too ({secondary} request(s)): stop "
                          "at the first answer; every extra call costs time and money")
    _expect_model_answer(run, "gpt-4o", situation)


@EX3.check("gpt-4o down (503): gpt-4o-mini answers, not degraded", points=2)
def outage_falls_through(ns: Namespace) -> None:
    run = _run(ns, {"faults": [{"kind": "outage", "models": ["gpt-4o"]}]})
    situation = "With gpt-4o down (503)"
    if run.error is not None:
        raise CheckFailed(f"{situation}, answer() raised {_raised(run.error)}: a server error is a provider failure; "
                          "it should move on to gpt-4o-mini")
    _expect_one_each(run, situation)
    _expect_model_answer(run, "gpt-4o-mini", situation)


@EX3.check("a 429 from gpt-4o falls through to gpt-4o-mini", points=1)
def rate_limit_falls_through(ns: Namespace) -> None:
    run = _run(ns, {"faults": [{"kind": "rate_limit", "retry_after": 20, "models": ["gpt-4o"]}]})
    situation = "With gpt-4o rate-limited (429)"
    if run.error is not None:
        raise CheckFailed(f"{situation}, answer() raised {_raised(run.error)}: a 429 is a provider failure; it should "
                          "move on to gpt-4o-mini")
    _expect_one_each(run, situation)
    _expect_model_answer(run, "gpt-4o-mini", situation)


@EX3.check("a timeout or a dropped connection on gpt-4o falls through", points=2)
def timeout_and_drop_fall_through(ns: Namespace) -> None:
    cases = [("hang", f"With gpt-4o hanging (the client's {TIMEOUT:g} s timeout ran out)",
              "gpt-4o timed out, and answer() raised {error}: a timeout is a provider failure"),
             ("drop", "With gpt-4o dropping the connection",
              "gpt-4o dropped the connection, and answer() raised {error}: a connection error is a provider failure")]
    for kind, situation, raised in cases:
        run = _run(ns, {"faults": [{"kind": kind, "models": ["gpt-4o"]}]})
        if run.error is not None:
            raise CheckFailed(raised.format(error=_raised(run.error)) + "; it should move on to gpt-4o-mini")
        _expect_one_each(run, situation)
        _expect_model_answer(run, "gpt-4o-mini", situation)


@EX3.check("both models down: the static message, answered_by 'static', degraded", points=2)
def both_down_static(ns: Namespace) -> None:
    run = _run(ns, {"faults": [{"kind": "outage", "models": ["gpt-4o", "gpt-4o-mini"]}]})
    situation = "With both models down (503)"
    if run.error is not None:
        raise CheckFailed(f"{situation}, answer() raised {_raised(run.error)}: when every model fails, answer with the "
                          "static message instead")
    _expect_one_each(run, situation)
    reply = _reply(run, situation)
    static = ns.get("STATIC_MESSAGE")
    if not isinstance(static, str) or not static.strip():
        raise CheckFailed("STATIC_MESSAGE must be a non-empty string: the text users see when every model is down")
    if reply.text != static:
        raise CheckFailed(f"{situation}, the Reply's text should be STATIC_MESSAGE; got {str(reply.text)[:60]!r}")
    if reply.answered_by != "static":
        raise CheckFailed(f"{situation}, the static message came back with answered_by={reply.answered_by!r}: say who "
                          "answered ('static'), or the outage looks like a model's answer")
    if reply.degraded is not True:
        raise CheckFailed(f"{situation}, the static message came back with degraded={reply.degraded!r}: it is not a real "
                          "answer, so mark it degraded=True (callers show a banner, metrics count it)")


def _bad_request_case(ns: Namespace, messages: list[dict[str, str]], what: str, why: str) -> None:
    run = _run(ns, {}, messages)
    requests = run.calls()
    if requests == 0:
        raise CheckFailed(f"For {what}, answer() never asked a model (it "
                          f"{'raised ' + _raised(run.error) if run.error else 'returned'}): ask gpt-4o first")
    if run.error is None:
        reply = _reply(run, f"For {what}")
        raise CheckFailed(f"{what} got a 400, yet answer() returned an answer from {reply.answered_by!r} after "
                          f"{requests} request(s): {why}; raise the 400")
    if not isinstance(run.error, openai.BadRequestError):
        raise CheckFailed(f"{what} got a 400, and answer() raised {_raised(run.error)} instead of the BadRequestError: "
                          "let it propagate unchanged")
    if requests != 1:
        raise CheckFailed(f"{what} got a 400, raised only after {requests} requests: {why}; raise it after the first")


@EX3.check("a 400 is raised, not passed down the chain", points=2)
def bad_request_raised(ns: Namespace) -> None:
    _bad_request_case(ns, BAD_ROLE, "A message with a role the API does not know ('robot')",
                      "every model refuses the same request, so moving on only hides the caller's bug behind an "
                      "outage message")
    tokens = count_tokens(DOCUMENT[0]["content"], "gpt-4o")
    window = MODELS["gpt-4o"].context_window
    assert MODELS["gpt-4o-mini"].context_window == window and tokens > window
    _bad_request_case(ns, DOCUMENT, f"A {tokens:,}-token message (context_length_exceeded)",
                      f"gpt-4o-mini has the same {window:,}-token window, so no model in this chain can take it, and "
                      "'try again later' misleads a user whose message is simply too long")


@EX3.check("a bug (a KeyError on the way) is raised, not turned into an answer", points=2)
def bug_raised(ns: Namespace) -> None:
    run = _run(ns, {}, planted_bug=True)
    what = "A KeyError raised on the way to gpt-4o (a bug in code, not a provider failure)"
    assert run.planted is not None
    if not run.planted.completions.fired:
        raise CheckFailed("this check plants a KeyError in client.chat.completions.create for gpt-4o, and your answer() "
                          f"never made that call ({run.counts()}): ask gpt-4o first, with "
                          "client.chat.completions.create(model=..., messages=...)")
    if run.error is None:
        reply = _reply(run, f"After {what}")
        raise CheckFailed(f"{what} became an answer from {reply.answered_by!r}: catching every exception hides bugs; "
                          "only provider failures should move down the chain")
    if not isinstance(run.error, KeyError):
        raise CheckFailed(f"{what} made answer() raise {_raised(run.error)} instead: let the KeyError propagate unchanged")
    if run.calls("gpt-4o-mini"):
        raise CheckFailed(f"{what} was raised, but only after asking gpt-4o-mini too: a bug is not a reason to try "
                          "another model")
