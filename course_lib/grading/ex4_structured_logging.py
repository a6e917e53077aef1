"""Exercise 4 checks: structured JSON logging added to the starter agent, read back in lnav.

The learner's notebook defines (its task text states every rule below):

- `JsonFormatter`: their own `logging.Formatter` subclass, made with `JsonFormatter()`, whose
  `format(record)` returns one JSON object on one line: `ts` (the record's `created` time in UTC,
  ISO 8601 with milliseconds, or finer, and its zone), `level` (the level's name), `event` (the message template
  `record.msg`, never the formatted message: its arguments are never written), `logger`,
  `request_id` (the request being served, null outside one), then `method`, `path`, `status`,
  `latency_ms` only when the record has them, and `error` (an object with `type` and `message`)
  when it has exc_info. No other field; every string redacted.
- `make_handler(stream)`: a `logging.Handler` writing those lines to `stream`.
- `create_logged_app(client, ask=ask_model)`: `starter_agent.create_app(client, ask=ask)` plus a
  middleware: the caller's X-Request-ID when it is 1-128 letters, digits and `-_.:`, else a new
  id; that id in a ContextVar while the request is served (so starter_agent's lines carry it);
  the id in the response's X-Request-ID header; one `request_finished` line per request with
  `status` and `latency_ms`, and when the app raises, that line at ERROR with exc_info and a 500.
- course_lib.logs is not used (it is this exercise's answer); course_lib.redaction may be.

How the checks drive it: `make_handler`'s handler goes on the root logger at INFO, and the app
runs against an in-process SimProvider (virtual clock) through starlette's TestClient, with
standard output captured into the same stream: a service's stdout is its log, so a print is a
log line. An `ask` of the checks' own plays a third-party library inside each request: it logs
the question in `extra={"prompt": ...}`, and for one request logs a URL carrying an API key in
its message, then raises ConnectionError with the key in its message. Every request also sends
the key in an Authorization header. Lines the TestClient logs itself (in the calling thread)
are left out. The checks share one such run of four requests while every name of the notebook
stays bound to the same objects (running a cell again serves afresh). Another run sends two
requests at once, held together by a barrier, to tell a ContextVar from a global variable.

The lnav check installs the course's format (`course_lib.logs.install_lnav_format`) into a
temporary HOME, runs `lnav -n -c ';SELECT ...' -c ':write-csv-to -'` on the lines, and compares
lnav's per-request, per-level counts and times with the lines'. Without lnav on PATH it fails
under CI (the CI environment variable set) and otherwise passes, printing "lnav not installed:
viewer check skipped" (a passing check has no message of its own, so the line is printed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..clock import VirtualClock
from ..llm import make_client
from ..logs import install_lnav_format
from ..sim import SimProvider, planted_for
from .core import CheckFailed, Exercise, Namespace

__all__ = ["EX4", "KEY", "LNAV_SKIPPED", "QUESTION", "lnav_query"]

EX4 = Exercise("ex4", "Structured JSON logging, checked in a log viewer", "ex4_structured_logging.ipynb")

KEY = planted_for(4).key
"""An API key in the current OpenAI format (not a real one), planted in headers, messages and errors."""
QUESTION = "Please summarise the medical history of Zebulon Quartermain"
SECOND_QUESTION = "Can Zebulon Quartermain return the gift from order 4471?"
FAILING_QUESTION = "Why did the refund for Wilhelmina Applebaum fail?"
PROMPT_WORDS = ("Zebulon", "Quartermain", "Wilhelmina", "Applebaum", "medical history")
"""Words of the questions: none may appear in any line."""
UNSAFE_ID = 'id "with quotes"; and spaces ' * 6
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REQUIRED = ("ts", "level", "event", "logger", "request_id")
OPTIONAL = ("method", "path", "status", "latency_ms", "error")
LIBRARY = "ex4.check.library"
ERRORS = "ex4.check.errors"
FORBIDDEN_MODULE = "course_lib.logs"
LNAV_SKIPPED = "lnav not installed: viewer check skipped"
LNAV_QUERY = ("SELECT request_id, log_level, COUNT(*) AS n, MIN(log_time) AS first, MAX(log_time) AS last "
              "FROM course_lib_log GROUP BY request_id, log_level ORDER BY request_id, log_level")


# --- what the checks send ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Request:
    question: str
    user: str
    request_id: str | None  # the X-Request-ID sent; None sends none

    def label(self, index: int) -> str:
        return repr(self.request_id) if self.request_id and SAFE_ID.fullmatch(self.request_id) else f"#{index + 1}"

    def headers(self) -> dict[str, str]:
        sent = {"X-User": self.user, "Authorization": f"Bearer {KEY}"}
        if self.request_id is not None:
            sent["X-Request-ID"] = self.request_id
        return sent


REQUESTS = (_Request(QUESTION, "alice", "req-a"), _Request(SECOND_QUESTION, "bob", None),
            _Request(FAILING_QUESTION, "carol", "req-c"), _Request(SECOND_QUESTION, "dave", UNSAFE_ID))
FAILING = 2  # the request whose model call raises


def _library_ask(client: Any, messages: list[dict[str, Any]], model: str) -> str:
    """The model call as a careless library makes it: content in `extra`, a key in a message."""
    question = messages[-1]["content"]
    library = logging.getLogger(LIBRARY)
    library.info("model_call", extra={"prompt": question})
    if question == FAILING_QUESTION:
        library.warning(f"POST https://gateway.example/v1/chat?key={KEY} refused")
        raise ConnectionError(f"gateway refused 'Authorization: Bearer {KEY}'")
    completion = client.chat.completions.create(model=model, messages=messages)
    return completion.choices[0].message.content or ""


# --- running the learner's app -----------------------------------------------------------------
def _need(ns: Namespace, name: str) -> Any:
    if name not in ns:
        raise CheckFailed(f"`{name}` is not defined: run the cell that defines it (see the task)")
    return ns[name]


def _handler(ns: Namespace, stream: io.StringIO) -> logging.Handler:
    handler = _need(ns, "make_handler")(stream)
    if not isinstance(handler, logging.Handler):
        raise CheckFailed(f"make_handler(stream) returned {type(handler).__name__}, not a logging.Handler")
    return handler


@dataclass
class _Capture:
    """The learner's handler on a logger (the root by default) at INFO, for the time of a `with`
    block; the records it fails to write are kept (not printed), and the records of
    `skipped_threads` (the TestClient's side) are left out. Everything is restored after."""

    handler: logging.Handler
    lost: list[str] = field(default_factory=list)
    skipped_threads: set[int] = field(default_factory=set)

    def _keep_error(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        self.lost.append(f"{type(error).__name__}: {str(error)[:120]}" if error else "an unknown error")

    def _served_here(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.skipped_threads

    @contextlib.contextmanager
    def on(self, name: str | None = None) -> Iterator[None]:
        logger = logging.getLogger(name)
        saved = logger.level, logger.propagate
        self.handler.handleError = self._keep_error  # type: ignore[method-assign]
        self.handler.addFilter(self._served_here)
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        logger.propagate = name is None
        try:
            yield
        finally:
            logger.removeHandler(self.handler)
            logger.level, logger.propagate = saved
            self.handler.removeFilter(self._served_here)
            vars(self.handler).pop("handleError", None)


@dataclass
class _Served:
    """What one run of the learner's app wrote: all of it, each request's part, the responses."""

    text: str
    parts: list[str]
    responses: list[Any]
    lost: list[str]
    started: float
    finished: float

    def lines(self) -> list[str]:
        return self.text.splitlines()

    def objects(self) -> list[dict[str, Any]]:
        return [line for line in map(_parse, self.lines()) if line is not None]


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _app(ns: Namespace, ask: Callable[..., str]) -> Any:
    client = make_client(SimProvider(clock=VirtualClock()))
    return _need(ns, "create_logged_app")(client, ask=ask)


_LAST_SERVED: list[tuple[list[Any], _Served]] = []


def _serve(ns: Namespace) -> _Served:
    """What `_serve_now` gives for this namespace, run once for all the checks of a `check("ex4")`:
    kept while every name of the namespace is bound to the very same objects (a cell run again
    rebinds its names, and the app is served afresh)."""
    bound = [ns, *(item for item in ns.items() if not item[0].startswith("_"))]
    if _LAST_SERVED and _same_objects(_LAST_SERVED[0][0], bound):
        return _LAST_SERVED[0][1]
    served = _serve_now(ns)
    _LAST_SERVED[:] = [(bound, served)]  # holding the objects keeps their ids from being reused
    return served


def _same_objects(before: list[Any], now: list[Any]) -> bool:
    if len(before) != len(now) or before[0] is not now[0]:
        return False
    return all(old[0] == new[0] and old[1] is new[1] for old, new in zip(before[1:], now[1:], strict=True))


def _serve_now(ns: Namespace) -> _Served:
    """The four REQUESTS, one after the other, through the learner's handler and app."""
    from starlette.testclient import TestClient

    stream = io.StringIO()
    capture = _Capture(_handler(ns, stream))
    capture.skipped_threads.add(threading.get_ident())  # the TestClient's own "HTTP Request" lines
    parts, responses = [], []
    started = time.time()
    with capture.on(), contextlib.redirect_stdout(stream):
        app = _app(ns, _library_ask)
        with TestClient(app, raise_server_exceptions=False) as web:
            for request in REQUESTS:
                before = len(stream.getvalue())
                body = {"messages": [{"role": "user", "content": request.question}]}
                responses.append(web.post("/chat", json=body, headers=request.headers()))
                parts.append(stream.getvalue()[before:])
    return _Served(stream.getvalue(), parts, responses, capture.lost, started, time.time())


def _expected_id(served: _Served, index: int) -> str | None:
    """The id request `index` should carry: the one sent when it is safe, else the one the app
    chose (its response header, else its request_finished line, else its lines' commonest)."""
    sent = REQUESTS[index].request_id
    if sent is not None and SAFE_ID.fullmatch(sent):
        return sent
    header = served.responses[index].headers.get("x-request-id")
    if header:
        return str(header)
    objects = [line for line in map(_parse, served.parts[index].splitlines()) if line]
    finished = [line.get("request_id") for line in objects if line.get("event") == "request_finished"]
    if finished and isinstance(finished[0], str):
        return finished[0]
    ids = Counter(line.get("request_id") for line in objects if isinstance(line.get("request_id"), str))
    return ids.most_common(1)[0][0] if ids else None


# --- reading lines ----------------------------------------------------------------------------------
def _from(line: dict[str, Any]) -> str:
    """Which logger wrote a line, in words."""
    logger = line.get("logger")
    return f"from {logger}" if isinstance(logger, str) else "without a logger field"


def _short(text: str, limit: int = 70) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _paths(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, string) for every string in a parsed line, keys included."""
    if isinstance(value, str):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, str(key)
            yield from _paths(item, path)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _paths(item, f"{prefix}[{position}]")


def _field(path: str) -> str:
    """A string's field, without list positions: "error.message", "args"."""
    return re.sub(r"\[.*", "", path)


def _where(lines: list[str], found: Callable[[str], bool]) -> tuple[int, list[str]]:
    """How many lines `found` something in, and where: "field (logger)" or "a line that is not JSON"."""
    hits, places = 0, []
    for text in lines:
        if not found(text):
            continue
        hits += 1
        line = _parse(text)
        if line is None:
            places.append("a line that is not JSON")
            continue
        places += [f"'{_field(path)}' (a line {_from(line)})" for path, value in _paths(line) if found(value)] or [
            "a line"]
    return hits, list(dict.fromkeys(places))


def _key_found(text: str) -> bool:
    """The planted key, or any 24 characters of it (a pattern that stops early leaks the rest)."""
    body = KEY[len("sk-proj-"):]
    return any(body[start:start + 24] in text for start in range(0, len(body) - 23, 8))


# --- the rule against course_lib.logs ------------------------------------------------------------
def _from_library(value: Any) -> bool:
    try:
        if isinstance(value, types.ModuleType):
            return value.__name__ == FORBIDDEN_MODULE
        if isinstance(value, type):
            return any(kind.__module__ == FORBIDDEN_MODULE for kind in value.__mro__)
        return getattr(value, "__module__", None) == FORBIDDEN_MODULE or type(value).__module__ == FORBIDDEN_MODULE
    except Exception:  # noqa: BLE001 - an odd object in the namespace is not our business
        return False


def _codes(value: Any) -> Iterator[types.CodeType]:
    """The code of a function, or of every function of a class (nested ones included)."""
    functions = [value] if not isinstance(value, type) else [
        getattr(item, "__func__", item) for item in vars(value).values()]
    todo = [getattr(f, "__code__", None) for f in functions]
    while todo:
        code = todo.pop()
        if isinstance(code, types.CodeType):
            yield code
            todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]


def _library_use(ns: Namespace, handler: logging.Handler) -> str | None:
    """How the notebook uses course_lib.logs, if it does."""
    for name, value in ns.items():
        if not name.startswith("_") and _from_library(value):
            return f"`{name}` comes from it"
    parts: list[tuple[str, object]] = [("the handler", handler), ("the handler's formatter", handler.formatter)]
    parts += [("a filter of the handler", f) for f in handler.filters]
    for what, value in parts:
        if value is not None and _from_library(type(value)):
            return f"{what} is {type(value).__name__} from it"
    notebook = ns.get("__name__", "__main__")
    for name, value in ns.items():
        if name.startswith("_") or getattr(value, "__module__", None) != notebook:
            continue  # only what the notebook itself defines
        for code in _codes(value):
            names = set(code.co_names)
            if FORBIDDEN_MODULE in names or {"course_lib", "logs"} <= names:
                return f"`{name}` imports it"
    return None


# --- the checks ----------------------------------------------------------------------------------
@EX4.check("JsonFormatter is your own logging.Formatter (course_lib.logs is not used)", points=1)
def writes_its_own_formatter(ns: Namespace) -> None:
    formatter_class = _need(ns, "JsonFormatter")
    if not (isinstance(formatter_class, type) and issubclass(formatter_class, logging.Formatter)):
        raise CheckFailed("JsonFormatter must be a class that subclasses logging.Formatter")
    record = logging.LogRecord("ex4.check", logging.INFO, __file__, 1, "ready", None, None)
    text = formatter_class().format(record)
    if not isinstance(text, str):
        raise CheckFailed(f"JsonFormatter().format(record) returned {type(text).__name__}; it must return the line, "
                          "a str")
    handler = _handler(ns, io.StringIO())
    use = _library_use(ns, handler)
    if use is not None:
        raise CheckFailed(f"the notebook uses {FORBIDDEN_MODULE} ({use}): it is this exercise's answer; write the "
                          "formatter and the request context yourself and remove that import")


@EX4.check("every record becomes one line of JSON; nothing else is written", points=2)
def every_line_is_json(ns: Namespace) -> None:
    served = _serve(ns)
    lines = served.lines()
    if not lines:
        raise CheckFailed("nothing was written to the stream given to make_handler(stream) while the app served "
                          "4 requests: the handler must write to that stream")
    if served.lost:
        raise CheckFailed(f"{len(served.lost)} record(s) were lost: the handler could not write them "
                          f"({served.lost[0]}); format() must return a line for every record")
    for number, text in enumerate(lines, 1):
        value = None
        with contextlib.suppress(ValueError):
            value = json.loads(text)
        if value is None or not isinstance(value, dict):
            kind = "not JSON" if value is None else f"JSON but not an object ({type(value).__name__})"
            raise CheckFailed(f"line {number} of {len(lines)} is {kind}: {_short(text)}. Every line the app writes, "
                              "printed ones included, must be one JSON object (no print, no indent)")


@EX4.check("every line has ts, level, event, logger, request_id, and no field off the list", points=2)
def fields_are_the_listed_ones(ns: Namespace) -> None:
    objects = _serve(ns).objects()
    if not objects:
        raise CheckFailed("no line written while serving was a JSON object")
    for line in objects:
        missing = [name for name in REQUIRED if name not in line]
        if missing:
            raise CheckFailed(f"a line {_from(line)} has no {', '.join(missing)}: {_short(json.dumps(line))}")
        extra = [name for name in line if name not in REQUIRED + OPTIONAL]
        if extra:
            raise CheckFailed(f"a line {_from(line)} has fields that are not on the list: {', '.join(extra)}. "
                              "A record's own attributes (msg, args, ...) and unknown extras are never written")
        problem = _type_problem(line)
        if problem:
            raise CheckFailed(f"a line {_from(line)}: {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(line: dict[str, Any]) -> str | None:
    kinds = {"ts": str, "event": str, "logger": str, "method": str, "path": str}
    for name, kind in kinds.items():
        if name in line and not isinstance(line[name], kind):
            return f"{name} is {line[name]!r}, not a string"
    if line["level"] not in LEVELS:
        return f"level is {line['level']!r}, not one of {', '.join(LEVELS)} (the record's levelname)"
    if line["request_id"] is not None and not isinstance(line["request_id"], str):
        return f"request_id is {line['request_id']!r}: a string, or null outside a request"
    if "status" in line and not (isinstance(line["status"], int) and not isinstance(line["status"], bool)):
        return f"status is {line['status']!r}, not an integer"
    if "latency_ms" in line and not _is_number(line["latency_ms"]):
        return f"latency_ms is {line['latency_ms']!r}, not a number"
    error = line.get("error")
    if "error" in line and not (isinstance(error, dict) and isinstance(error.get("type"), str)
                                and isinstance(error.get("message"), str)):
        return f"error is {_short(json.dumps(error))}, not an object with a type and a message (strings)"
    return None


@contextlib.contextmanager
def _time_zone(name: str) -> Iterator[None]:
    """The process's local time zone set to `name` (where the platform allows it), then restored."""
    tzset = getattr(time, "tzset", None)
    before = os.environ.get("TZ")
    if tzset is not None:
        os.environ["TZ"] = name
        tzset()
    try:
        yield
    finally:
        if tzset is not None:
            if before is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = before
            tzset()


CREATED = datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)


@EX4.check("ts is the record's time in UTC, ISO 8601 with milliseconds and its zone", points=1)
def timestamps_are_utc(ns: Namespace) -> None:
    record = logging.LogRecord("ex4.check", logging.INFO, __file__, 1, "clock_probe", None, None)
    record.created, record.msecs = CREATED.timestamp(), 250.0
    with _time_zone("EST+5"):  # local time 5 hours behind UTC, as on many laptops (POSIX rule, no tz database)
        text = _need(ns, "JsonFormatter")().format(record)
    line = _parse(text) if isinstance(text, str) else None
    if line is None or "ts" not in line:
        raise CheckFailed(f"formatting a record gave no JSON object with a ts: {_short(str(text))}")
    ts = line["ts"]
    example = "2026-01-01T00:00:00.250Z"
    if not isinstance(ts, str):
        raise CheckFailed(f"ts is {ts!r}; write it as an ISO 8601 string such as {example}")
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        raise CheckFailed(f"ts {ts!r} is not ISO 8601 (such as {example})") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CheckFailed(f"ts {ts!r} has no time zone: a reader cannot tell which time it is. Write UTC, with a "
                          f"'Z' (or +00:00) at the end, such as {example}")
    if moment.utcoffset() != timedelta(0):
        raise CheckFailed(f"ts {ts!r} is not in UTC (its offset is {moment.utcoffset()}): write UTC, such as {example}")
    off = (moment - CREATED).total_seconds()
    if moment.microsecond == 0 and -1 < off < 0:
        raise CheckFailed(f"ts {ts!r} has no milliseconds: the lines of one second could not be put in order. Write "
                          f"them, such as {example}")
    if abs(off) >= 0.001:
        hint = " (local time labelled as UTC?)" if abs(abs(off) % 3600) < 1 and abs(off) >= 3600 else ""
        raise CheckFailed(f"a record created at {example} got ts {ts!r}, {off:+.3f} s off{hint}: write the record's "
                          "own creation time, record.created, in UTC")


@EX4.check("every line logged while serving a request carries its id, starter_agent's included", points=2)
def request_id_on_every_line(ns: Namespace) -> None:
    served = _serve(ns)
    for index, part in enumerate(served.parts):
        expected = _expected_id(served, index)
        label = REQUESTS[index].label(index)
        objects = [line for line in map(_parse, part.splitlines()) if line is not None]
        if not objects:
            raise CheckFailed(f"request {label} wrote no JSON line at all")
        if expected is None:
            raise CheckFailed(f"no line of request {label} carries a request_id (and its response has no "
                              "X-Request-ID header)")
        missing = Counter(_from(line) for line in objects if line.get("request_id") is None)
        if missing:
            loggers = ", ".join(f"{n} {name}" for name, n in missing.most_common())
            raise CheckFailed(f"during request {label}, {sum(missing.values())} line(s) have no request_id ({loggers}). "
                              "Every line logged while a request is served carries its id, also the lines of code "
                              "that never sees the request (starter_agent's, its libraries')")
        wrong = [line for line in objects if line.get("request_id") != expected]
        if wrong:
            raise CheckFailed(f"during request {label} (id {expected!r}), a line {_from(wrong[0])} carries "
                              f"request_id {wrong[0].get('request_id')!r}")


LEFT, RIGHT = "req-left", "req-right"


def _serve_concurrently(ns: Namespace) -> tuple[_Served, dict[str, str]]:
    """Two requests at once, each model call waiting for the other's: (what was written, tag -> id)."""
    from starlette.testclient import TestClient

    barrier = threading.Barrier(2, timeout=5)
    tags = {"left question": LEFT, "right question": RIGHT}

    def ask(client: Any, messages: list[dict[str, Any]], model: str) -> str:
        tag = messages[-1]["content"]
        barrier.wait()  # both requests are now being served, their ids both set
        logging.getLogger(f"{LIBRARY}.{tags[tag]}").info("model_call")
        return "an answer"

    stream = io.StringIO()
    capture = _Capture(_handler(ns, stream))
    started = time.time()
    with capture.on(), contextlib.redirect_stdout(stream):
        app = _app(ns, ask)
        with TestClient(app, raise_server_exceptions=False) as web:
            def post(tag: str) -> Any:
                capture.skipped_threads.add(threading.get_ident())
                body = {"messages": [{"role": "user", "content": tag}]}
                return web.post("/chat", json=body, headers={"X-Request-ID": tags[tag], "X-User": "erin"})

            with ThreadPoolExecutor(2) as pool:
                responses = list(pool.map(post, tags))
    return _Served(stream.getvalue(), [], responses, capture.lost, started, time.time()), tags


@EX4.check("two requests served at the same time each keep their own id", points=1)
def concurrent_requests_keep_their_ids(ns: Namespace) -> None:
    served, tags = _serve_concurrently(ns)
    if any(response.status_code != 200 for response in served.responses):
        codes = [response.status_code for response in served.responses]
        raise CheckFailed(f"two requests sent at the same time got {codes}, not 200 and 200: the app must serve "
                          "concurrent requests (each waits for the other here)")
    for request_id in tags.values():
        logger = f"{LIBRARY}.{request_id}"
        lines = [line for line in served.objects() if line.get("logger") == logger]
        if len(lines) != 1:
            raise CheckFailed(f"the record logged on {logger} while serving {request_id!r} gave {len(lines)} JSON lines "
                              "with that logger, not one")
        if lines[0].get("request_id") is None:
            raise CheckFailed(f"with two concurrent requests in flight, the line logged while serving {request_id!r} "
                              "carries no request_id: every line logged while a request is served carries its id")
        if lines[0].get("request_id") != request_id:
            raise CheckFailed(f"with two concurrent requests in flight, a line logged while serving {request_id!r} "
                              f"carries request_id {lines[0].get('request_id')!r}: the id must belong to the request "
                              "being served (its context), not be one value shared by the whole process")


@EX4.check("X-Request-ID: the caller's kept when safe, a new one otherwise, returned in the response", points=1)
def request_id_header(ns: Namespace) -> None:
    served = _serve(ns)
    made = []
    for index, (request, response) in enumerate(zip(REQUESTS, served.responses, strict=True)):
        label, header = request.label(index), response.headers.get("x-request-id")
        if not header:
            raise CheckFailed(f"the response to request {label} (status {response.status_code}) has no X-Request-ID "
                              "header: return the request's id to the caller, who quotes it when reporting a problem")
        if request.request_id is not None and SAFE_ID.fullmatch(request.request_id):
            if header != request.request_id:
                raise CheckFailed(f"the caller sent X-Request-ID {request.request_id!r} and got back {header!r}: "
                                  "keep the caller's id when it is safe")
            continue
        if not SAFE_ID.fullmatch(header):
            raise CheckFailed(f"request {label} sent X-Request-ID {_short(str(request.request_id), 40)} and got back "
                              f"{_short(header, 40)}: an id that is not 1-128 letters, digits and -_.: is replaced by a "
                              "new one (quotes and spaces break log readers)")
        made.append(header)
        ids = {line.get("request_id") for line in map(_parse, served.parts[index].splitlines()) if line} - {None}
        if ids and ids != {header}:
            raise CheckFailed(f"request {label} got X-Request-ID {header!r} back, but its lines carry "
                              f"{sorted(map(str, ids))}: the header and the lines must name the same id")
    if len(set(made)) != len(made):
        raise CheckFailed(f"two requests without a usable id both got {made[0]!r}: make a new id for each request")


@EX4.check("one request_finished line per request, with its status and latency_ms", points=1)
def one_summary_line_per_request(ns: Namespace) -> None:
    served = _serve(ns)
    for index, (part, response) in enumerate(zip(served.parts, served.responses, strict=True)):
        label = REQUESTS[index].label(index)
        finished = [line for line in map(_parse, part.splitlines()) if line and line.get("event") == "request_finished"]
        if len(finished) != 1:
            raise CheckFailed(f"request {label} wrote {len(finished)} lines with event 'request_finished', not one")
        line = finished[0]
        status = line.get("status")
        if status != response.status_code or isinstance(status, bool):
            raise CheckFailed(f"request {label} was answered {response.status_code} but its request_finished line "
                              f"says status {status!r}")
        latency = line.get("latency_ms")
        if not (isinstance(latency, (int, float)) and _is_number(latency) and math.isfinite(latency) and latency >= 0):
            raise CheckFailed(f"request {label}'s request_finished line has latency_ms {latency!r}: the time it took, "
                              "in milliseconds (a number, 0 or more)")


@EX4.check("no line holds any of the user's question", points=2)
def no_prompt_in_the_log(ns: Namespace) -> None:
    served = _serve(ns)

    def found(text: str) -> bool:
        return any(word in text for word in PROMPT_WORDS)

    hits, places = _where(served.lines(), found)
    if hits:
        hints = []
        if any(place.startswith("'event'") for place in places):
            hints.append("event is the message template (record.msg): starter_agent passes the question as an "
                         "argument, and arguments are never written")
        if any(place.startswith(("'msg'", "'args'")) for place in places):
            hints.append("a record's own attributes (msg, args, ...) are not fields")
        others = sorted({p.split("'")[1] for p in places if p.startswith("'")} - {"event", "msg", "args"})
        hints += [f"'{name}' is not a field to write: an extra that is not on the list is dropped" for name in others]
        advice = "; ".join(hints or ["no line may hold what a user typed"])
        raise CheckFailed(f"the user's question appears in {hits} line(s), in {'; '.join(places[:4])}. "
                          f"{advice[0].upper()}{advice[1:]}")


@EX4.check("no line holds an API key (messages and exceptions redacted)", points=2)
def no_key_in_the_log(ns: Namespace) -> None:
    served = _serve(ns)
    hits, places = _where(served.lines(), _key_found)
    if hits:
        raise CheckFailed(f"an API key (sk-proj-...) appears in {hits} line(s), in {'; '.join(places[:4])}: every "
                          "string you write goes through redaction first, the event and the exception's message "
                          "and traceback included")


@EX4.check("an exception logged with exc_info gives one valid line with an error field", points=1)
def exceptions_give_a_line(ns: Namespace) -> None:
    stream = io.StringIO()
    capture = _Capture(_handler(ns, stream))
    with capture.on(ERRORS):
        try:
            raise ConnectionError(f"gateway refused 'Authorization: Bearer {KEY}'")
        except ConnectionError:
            logging.getLogger(ERRORS).exception("provider_unreachable")
    if capture.lost:
        raise CheckFailed(f"log.exception(...) wrote no line: the handler failed ({capture.lost[0]}), so the one line "
                          "that explains a failure was lost. exc_info holds the exception's class and traceback, "
                          "which JSON cannot hold as they are")
    lines = stream.getvalue().splitlines()
    if len(lines) != 1 or _parse(lines[0]) is None:
        raise CheckFailed(f"log.exception(...) wrote {len(lines)} line(s), not one JSON object: the exception belongs "
                          f"inside the line, as its error field (first line: {_short(lines[0] if lines else '')})")
    _error_field(_parse(lines[0]) or {}, "log.exception(...)")
    served = _serve(ns)
    label = REQUESTS[FAILING].label(FAILING)
    failed = [line for line in map(_parse, served.parts[FAILING].splitlines())
              if line and line.get("event") == "request_finished"]
    if not failed:
        raise CheckFailed(f"request {label}, whose model call raised ConnectionError, wrote no request_finished line")
    _error_field(failed[0], f"the request_finished line of request {label} (its model call raised)")
    if failed[0].get("level") != "ERROR":
        raise CheckFailed(f"the request_finished line of request {label}, whose model call raised, is at level "
                          f"{failed[0].get('level')!r}: log a failed request at ERROR")


def _error_field(line: dict[str, Any], what: str) -> None:
    error = line.get("error")
    if not isinstance(error, dict):
        raise CheckFailed(f"{what} gave a line without an error object: write the exception (exc_info) as "
                          "error: {\"type\": ..., \"message\": ...}")
    if error.get("type") != "ConnectionError" or not isinstance(error.get("message"), str):
        raise CheckFailed(f"{what}: error is {_short(json.dumps(error))}; its type should be 'ConnectionError', with "
                          "the exception's message (redacted) as message")


# --- the log viewer ----------------------------------------------------------------------------------
class LnavMissing(RuntimeError):
    """lnav is not on PATH."""


def lnav_query(log_text: str, sql: str, *, timeout: float = 30) -> list[dict[str, str]]:
    """Run `sql` (a SELECT over the table course_lib_log) in lnav, headless, on `log_text` read
    with the course's format (installed into a temporary HOME): the result's rows."""
    lnav = shutil.which("lnav")
    if lnav is None:
        raise LnavMissing("lnav is not installed (apt-get install lnav, brew install lnav)")
    with tempfile.TemporaryDirectory(prefix="ex4-lnav-") as folder:
        home, log_file = Path(folder) / "home", Path(folder) / "agent.log"
        install_lnav_format(home / ".lnav" / "formats" / "installed")
        log_file.write_text(log_text, encoding="utf-8")
        done = subprocess.run([lnav, "-n", "-c", f";{sql}", "-c", ":write-csv-to -", str(log_file)],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "HOME": str(home), "TZ": "UTC"})
    if not done.stdout.strip():
        raise CheckFailed("lnav found no line of the log in the course's format (its table course_lib_log is "
                          "empty): the format reads each line as one JSON object with ts as the time, level as the "
                          "level and request_id as the request")
    problem = next((line.strip() for line in done.stderr.splitlines() if "error" in line.lower()), "")
    if done.returncode != 0 or problem:
        raise CheckFailed(f"lnav failed on the log (exit status {done.returncode}): {problem or done.stderr[:200]}")
    return list(csv.DictReader(io.StringIO(done.stdout)))


def _lnav_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return None


@EX4.check("lnav reads the lines with the course's format (counts per request and level match)", points=1)
def lnav_reads_the_log(ns: Namespace) -> str | None:
    served = _serve(ns)  # the learner's code runs (and can fail) before lnav is looked for
    try:
        rows = lnav_query(served.text, LNAV_QUERY)
    except LnavMissing:
        if os.environ.get("CI"):
            raise CheckFailed("lnav is not installed, and under CI the viewer check must run: install it "
                              "(apt-get install lnav)") from None
        return LNAV_SKIPPED  # a pass, and its line says the viewer part was skipped
    unread = sum(int(row["n"]) for row in rows if row["log_level"] in ("invalid", "unknown"))
    if unread:
        raise CheckFailed(f"lnav could not read {unread} line(s) of your log (it marks them invalid or unknown): each "
                          "line must be one JSON object with ts and a level name")
    seen = Counter({(row["request_id"], row["log_level"]): int(row["n"]) for row in rows})
    written = Counter((str(line.get("request_id") or "<NULL>"), str(line.get("level")).lower())
                      for line in served.objects())
    if seen != written:
        differ = min(set(seen) ^ set(written) | {k for k in seen if seen[k] != written[k]})
        raise CheckFailed(f"lnav counts {seen[differ]} line(s) for request {differ[0]!r} at level {differ[1]!r}, your "
                          f"log has {written[differ]}: lnav must see every line with its request_id and level")
    earliest = datetime.fromtimestamp(served.started - 60, UTC)
    latest = datetime.fromtimestamp(served.finished + 60, UTC)
    for row in rows:
        for moment in (_lnav_time(row["first"]), _lnav_time(row["last"])):
            if moment is None or not earliest <= moment <= latest:
                raise CheckFailed(f"lnav read the time of request {row['request_id']!r}'s lines as {row['first']!r}, "
                                  "not the time they were written: check that ts is ISO 8601 in UTC")
    return None
