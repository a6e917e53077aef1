"""Structured logging: one JSON object per line, metrics not content.

    from course_lib.logs import EventLogger, configure_logging, log_context, new_request_id

    configure_logging(path="agent.log", salt=os.environ["LOG_SALT"])   # or stream=sys.stderr
    log = logging.getLogger("course_lib.service")
    with log_context(request_id=new_request_id(), user="alice"):
        log.info("request_finished", extra={"model": "gpt-4o", "tokens_in": 144, "latency_ms": 812})
    # {"ts": "2026-01-01T00:00:00.812Z", "level": "INFO", "event": "request_finished",
    #  "logger": "course_lib.service", "request_id": "3f2a...", "user": "5be1...", ...}
    retrier = Retrier(policy, on_event=EventLogger())   # every pattern event becomes a line

Built on the standard `logging` module, so the records of third-party libraries (httpx2, openai,
uvicorn) come out as the same JSON lines, with the same request context.

**A line** is `ts` (UTC, ISO 8601 with milliseconds and "Z"; the record's creation time, or
`clock.wall()` when the line is formatted if the formatter was given a clock), `level`, `event`
(the record's message: an event name such as "request_finished" for course_lib's own lines, the
formatted message for a third party's), `logger`, then the allow-listed fields in allow-list
order (a record's `extra` value first, else the request context's), then `error` and `stack`
when the record has them, and `log_error` when the formatter had to work around a problem. A
field not in the allow-list is dropped, whether it came as `extra` or in the context:
`extra={"prompt": ...}` never appears.
The record's own attributes (`msg`, `args`, `pathname`, ...) are never fields, and naming one
in `fields` is refused: `args` never reach the line as such (what they put into the message is
another matter, see third-party messages below).

**Allow-list** (`ALLOWED_FIELDS`): the request's metrics (`REQUEST_FIELDS`: request_id, user,
model, tokens_in, tokens_out, cost_usd, latency_ms, outcome, status, handler, degraded,
provider_request_id, ...) and the fields of course_lib's events as `EventLogger` writes them
(`EVENT_FIELDS`). Never prompts, replies or credentials.

**Users** (`user`, and `key`, which names whose rate limit or budget an event is about): "hash"
(default) writes `hash_user(value, salt)`, the first 16 hex digits of HMAC-SHA256 keyed by `salt`,
stable across processes and restarts, so one user's lines can be counted without the log naming
them; keep the salt secret (an unsalted hash of a guessable id is a lookup away from the id).
"plain" writes the id (redacted like any string: an e-mail address as user id becomes a
placeholder); "drop" leaves the field out.

**Redaction** (`redact=True`, the default): every string that reaches the line (the event, each
string field and the strings inside lists and dicts, the exception message and traceback) goes
through `course_lib.redaction` first, so an API key or an e-mail address inside an exception
message comes out as `[REDACTED:openai_key]`. Strings are then capped: `MAX_CHARS` characters
(never half a placeholder), tracebacks `MAX_TRACEBACK_CHARS` (their end is kept: the last frame
and the exception are what matter). A hashed user id is not scanned (it is a hash).

**Third-party messages** are formatted (`msg % args`) and then redacted: the args are not kept
apart, because a formatter cannot tell what a third party interpolated (a URL, a status, a
prompt) from the rest of its sentence. Redaction catches the secrets and personal data it knows;
it cannot recognise a prompt as such. That is why course_lib logs event names plus allow-listed
fields, and never interpolates content into a message; keep third-party loggers that log
content (request bodies at DEBUG) below the level you ship.

**Values** that JSON cannot hold are converted, never fatal: non-finite floats become strings
("nan", "inf"), integers beyond 64 bits strings (JSON readers would round them), tuples and
sets lists, dates ISO strings, anything else its repr (capped); containers keep at most
`MAX_ITEMS` items and `MAX_DEPTH` levels. **Exceptions** become
`error: {"type", "message", "traceback"}`; an exception whose `str()` fails still gives a line.
**A formatter failure** still writes a line: ts, level, logger, the event if it could be
redacted, and `log_error` naming the failure's type, rather than losing the record.

**Request context** lives in a `contextvars.ContextVar`: `log_context(**fields)` (a `with` or
`async with` block; nests, and restores the outer context on exit) adds fields to every record
logged inside it, course_lib's and third parties' alike, in this task and in the asyncio tasks
it starts (a task copies the context when created; `asyncio.to_thread` copies it too, a bare
thread does not). `ContextFilter` stamps the context onto each record where it is logged, so a
handler that formats later (a QueueHandler's listener thread) still sees it; without the
filter the formatter reads the context when it formats.

`new_request_id()` makes an id; `valid_request_id(value)` keeps a caller's `X-Request-ID`
(`REQUEST_ID_HEADER`) only if it is 1-128 letters, digits and `-_.:`, else None.

`EventLogger` is an event sink that writes one line per course_lib event: the event name in
snake_case (`StateChange` -> "state_change"), its fields as `extra` (clock time `t` as
`clock_t`; `error` as `exception`, since `error` is the line's exception object; `limit` and
`check` as `limit_value` and `check_name`, words SQL reserves, lnav's SQL included), at WARNING
for the bad ones (a retry given up, a call rejected by an open breaker, shared state
unreachable, a deadline or a stream cut, a refusal, ...). Fields that can carry a model's
words (`RepairAttempt.detail`, `OutputVerdict.detail`) are left out.

`configure_logging` installs one JSON handler on the root logger. `LNAV_FORMAT` is a format
for the lnav log viewer (table `course_lib_log`, every field a column); `install_lnav_format()`
copies it where lnav 0.11 looks (`lnav -i <file>` installs it wherever your lnav looks):

    python -c "from course_lib.logs import install_lnav_format; install_lnav_format()"
    lnav -n -c ';SELECT request_id, log_level, COUNT(*) FROM course_lib_log GROUP BY 1, 2' \\
         -c ':write-csv-to -' agent.log
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import logging.handlers
import math
import numbers
import re
import shutil
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

from . import redaction
from ._wrapping import check, is_whole
from .clock import Clock
from .events import (
    BudgetChanged,
    CheckRan,
    DeadlineCut,
    Event,
    FallbackStep,
    GiveUp,
    InputRejected,
    LimitChecked,
    OutputVerdict,
    ReadinessChanged,
    Rejected,
    RepairAttempt,
    Screened,
    StateChange,
    StoreFallback,
    StreamCut,
)

__all__ = [
    "ALLOWED_FIELDS", "EVENT_FIELDS", "LNAV_FORMAT", "MAX_CHARS", "MAX_DEPTH", "MAX_ITEMS", "MAX_TRACEBACK_CHARS",
    "REQUEST_FIELDS", "REQUEST_ID_HEADER", "USER_FIELDS", "ContextFilter", "EventLogger", "JsonFormatter",
    "configure_logging", "current_context", "event_fields", "event_name", "hash_user", "install_lnav_format",
    "log_context", "new_request_id", "valid_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
LNAV_FORMAT = Path(__file__).parent / "data" / "lnav" / "course_lib_log.json"

REQUEST_FIELDS: tuple[str, ...] = (
    "request_id", "user", "method", "path", "model", "handler", "degraded", "outcome", "status", "code",
    "tokens_in", "tokens_out", "cost_usd", "latency_ms", "tools_called", "provider_request_id",
)
"""What one request is measured by: who (hashed), which model answered, how, how much, how long."""

EVENT_FIELDS: tuple[str, ...] = (
    "source", "clock_t", "call_id", "attempt", "attempts", "duration", "exception", "delay", "reason",
    "old", "new", "state", "retry_at", "verdict", "operation", "detail", "field", "what", "count",
    "dropped", "tokens_before", "tokens_after", "limit_value", "screen", "flagged", "reasons", "kind", "host",
    "tokens", "problem", "prompt_tokens", "completion_tokens", "key", "allowed", "remaining", "retry_after",
    "action", "amount_usd", "spent_usd", "limit_usd", "stage", "budget", "elapsed", "pieces", "characters",
    "check_name", "latency", "cached", "previous", "current",
)
"""The fields of course_lib's events as EventLogger writes them (status, handler and outcome are
request fields already). All are names, numbers and flags chosen by course_lib, not content."""

ALLOWED_FIELDS: tuple[str, ...] = REQUEST_FIELDS + EVENT_FIELDS
USER_FIELDS: tuple[str, ...] = ("user", "key")
"""Fields that identify a person, hashed (or kept, or dropped) by the formatter's `user_ids`."""

MAX_CHARS = 1_000
MAX_TRACEBACK_CHARS = 8_000
MAX_ITEMS = 50
MAX_DEPTH = 4
TRUNCATED = "...[truncated]"

UserIds = Literal["hash", "plain", "drop"]
USER_ID_MODES: tuple[UserIds, ...] = ("hash", "plain", "drop")

_CONTEXT_ATTR = "_course_lib_log_context"
_LINE_KEYS = frozenset({"ts", "level", "event", "logger", "error", "stack", "log_error"})
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
RESERVED = _LINE_KEYS | _RECORD_ATTRS
"""Names a field may not have: the line's own keys and the LogRecord's attributes (msg, args...)."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# --- request context ---------------------------------------------------------------------------
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("course_lib_log_context", default=_EMPTY)


def current_context() -> dict[str, Any]:
    """The fields `log_context` blocks have set here (a copy)."""
    return dict(_CONTEXT.get())


class log_context:
    """Adds `fields` to every record logged inside the block (sync `with` or `async with`);
    inner blocks add to, and may override, outer ones; leaving a block restores what was there."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self._token: contextvars.Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> dict[str, Any]:
        if self._token is not None:
            raise RuntimeError("this log_context block is already entered; make a new one to nest")
        merged = {**_CONTEXT.get(), **self.fields}
        self._token = _CONTEXT.set(merged)
        return dict(merged)

    def __exit__(self, *exc: object) -> None:
        token, self._token = self._token, None
        if token is not None:
            _CONTEXT.reset(token)

    async def __aenter__(self) -> dict[str, Any]:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


class ContextFilter(logging.Filter):
    """Stamps the current context onto each record as it is handled (in the logging task), so a
    formatter running elsewhere later still sees it. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, _CONTEXT_ATTR):
            setattr(record, _CONTEXT_ATTR, _CONTEXT.get())
        return True


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits."""
    return uuid.uuid4().hex


def valid_request_id(value: object) -> str | None:
    """An incoming X-Request-ID worth keeping (1-128 letters, digits and `-_.:`), else None so
    that the caller generates one. Anything else (spaces, quotes, newlines) could forge log lines
    or break a log viewer's parsing."""
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value):
        return value
    return None


def hash_user(user: object, salt: str = "") -> str:
    """The id a line carries for `user` under user_ids="hash": 16 hex digits of HMAC-SHA256."""
    return hmac.new(salt.encode(), str(user).encode(), hashlib.sha256).hexdigest()[:16]


# --- the formatter -----------------------------------------------------------------------------
def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the line
        return f"<unrepresentable {type(value).__name__}>"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", "")
    return kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"


class JsonFormatter(logging.Formatter):
    """Formats any record as one JSON object (see the module docstring for every rule)."""

    def __init__(self, *, fields: Iterable[str] = ALLOWED_FIELDS, redact: bool = True, user_ids: UserIds = "hash",
                 salt: str = "", clock: Clock | None = None) -> None:
        super().__init__()
        check(not isinstance(fields, str), "fields", "an iterable of field names, not one string", fields)
        chosen = tuple(dict.fromkeys(fields))
        check(all(isinstance(name, str) and name.isidentifier() for name in chosen), "fields",
              "identifiers", chosen)
        clash = sorted(set(chosen) & RESERVED)
        check(not clash, "fields", "free of the line's own keys and LogRecord attributes (msg, args, ...)", clash)
        check(isinstance(redact, bool), "redact", "True or False", redact)
        check(user_ids in USER_ID_MODES, "user_ids", f"one of {', '.join(USER_ID_MODES)}", user_ids)
        check(isinstance(salt, str), "salt", "a string", salt)
        self.fields = chosen
        self.redact = redact
        self.user_ids = user_ids
        self.salt = salt
        self.clock = clock

    def format(self, record: logging.LogRecord) -> str:
        try:
            return json.dumps(self._line(record), allow_nan=False)
        except Exception as failure:  # noqa: BLE001 - whatever failed, the record still gets a line
            return self._fallback(record, failure)

    # --- one line ---------------------------------------------------------------------------
    def _line(self, record: logging.LogRecord) -> dict[str, Any]:
        problems: list[str] = []
        line: dict[str, Any] = {"ts": self._timestamp(record), "level": record.levelname,
                                "event": self._event(record, problems), "logger": self._text(record.name)}
        own = record.__dict__
        context = own.get(_CONTEXT_ATTR)
        if context is None:
            context = _CONTEXT.get()
        for name in self.fields:
            if name in own:
                value = own[name]
            elif name in context:
                value = context[name]
            else:
                continue
            if name in USER_FIELDS and value is not None and self.user_ids != "plain":
                if self.user_ids == "hash":
                    line[name] = hash_user(value, self.salt)
                continue
            line[name] = self._value(value, 0)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = self._error(record.exc_info)
        if record.stack_info:
            line["stack"] = self._tail(record.stack_info, MAX_TRACEBACK_CHARS)
        if problems:
            line["log_error"] = "; ".join(problems)
        return line

    def _timestamp(self, record: logging.LogRecord) -> str:
        seconds = self.clock.wall() if self.clock is not None else record.created
        moment = datetime.fromtimestamp(seconds, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def _event(self, record: logging.LogRecord, problems: list[str]) -> str:
        try:
            message = record.getMessage()
        except Exception as failure:  # noqa: BLE001 - e.g. a third party's "%d" given a string
            problems.append(f"message not formatted ({type(failure).__name__}); the template is shown")
            message = _safe_str(record.msg)
        return self._text(message)

    def _error(self, exc_info: Any) -> dict[str, str]:
        kind, error, trace = exc_info
        try:
            text = "".join(traceback.format_exception(kind, error, trace))
        except Exception:  # noqa: BLE001 - an exception may break its own formatting
            text = "<traceback unavailable>"
        return {"type": self._text(_type_name(kind)), "message": self._text(_safe_str(error)),
                "traceback": self._tail(text, MAX_TRACEBACK_CHARS)}

    def _value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self._text(value)
        if value is None or kind is bool or (kind is int and -2**63 <= value < 2**63):
            return value
        if kind is float and math.isfinite(value):
            return value
        if isinstance(value, numbers.Integral):
            whole = int(value)
            return whole if -2**63 <= whole < 2**63 else self._text(_safe_repr(value))
        if isinstance(value, numbers.Real):
            number = float(value)
            return number if math.isfinite(number) else repr(number)
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, (date, datetime)):
            return self._text(value.isoformat())
        if depth < MAX_DEPTH and isinstance(value, Mapping):
            items = {self._text(_safe_str(k)): self._value(v, depth + 1) for k, v in islice(value.items(), MAX_ITEMS)}
            if len(value) > MAX_ITEMS:
                items[TRUNCATED] = len(value) - MAX_ITEMS
            return items
        if depth < MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
            kept = [self._value(v, depth + 1) for v in islice(value, MAX_ITEMS)]
            return kept + [TRUNCATED] if len(value) > MAX_ITEMS else kept
        return self._text(_safe_repr(value))

    # --- text: redact first, then cut --------------------------------------------------------
    def _text(self, text: str, limit: int = MAX_CHARS) -> str:
        """Redacted, then at most `limit` characters (never half a placeholder)."""
        clean = (_redacted_short(text) if len(text) <= SHORT else redaction.redact(text)) if self.redact else text
        if len(clean) <= limit:
            return clean
        keep = limit - len(TRUNCATED)
        # redact_then_truncate knows where its placeholders are, so it never cuts one in half
        cut = redaction.redact_then_truncate(text, keep) if self.redact else text[:keep]
        return cut + TRUNCATED

    def _tail(self, text: str, limit: int) -> str:
        """Redacted, then its last `limit` characters (a traceback's end is what matters)."""
        if self.redact:
            text = redaction.redact(text)
        return text if len(text) <= limit else TRUNCATED + text[len(text) - limit + len(TRUNCATED):]

    def _fallback(self, record: logging.LogRecord, failure: Exception) -> str:
        """A line with what could be kept; the record is never lost."""
        line: dict[str, Any] = {}
        for key, make in (("ts", lambda: self._timestamp(record)), ("level", lambda: str(record.levelname)),
                          ("event", lambda: self._event(record, [])), ("logger", lambda: self._text(str(record.name)))):
            try:
                line[key] = make()
            except Exception:  # noqa: BLE001 - keep every piece that can be kept
                line[key] = "[unavailable]"
        line["log_error"] = f"formatter failed ({type(failure).__name__}); fields dropped"
        try:
            return json.dumps(line)
        except Exception:  # noqa: BLE001 - the last resort never raises
            return '{"event": "[unavailable]", "log_error": "formatter failed"}'


SHORT = 64


@functools.lru_cache(maxsize=4096)
def _redacted_short(text: str) -> str:
    """Names, models and outcomes repeat on every line: their redaction is looked up, not redone."""
    return redaction.redact(text)


# --- events as lines ---------------------------------------------------------------------------
def event_name(event: Event | type[Event]) -> str:
    """The snake_case name of an event's class: StateChange -> "state_change"."""
    kind = event if isinstance(event, type) else type(event)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


_RENAMED = {"t": "clock_t", "error": "exception", "limit": "limit_value", "check": "check_name"}
_CONTENT: dict[type[Event], frozenset[str]] = {
    RepairAttempt: frozenset({"detail"}),  # a validation message may quote the model's reply
    OutputVerdict: frozenset({"detail"}),  # a refusal's text, or a reply's problem
}
_ALWAYS_BAD = (GiveUp, Rejected, StoreFallback, DeadlineCut, StreamCut, InputRejected)
_BAD_WHEN: dict[type[Event], Callable[[Any], bool]] = {
    StateChange: lambda e: e.new == "open",
    FallbackStep: lambda e: e.outcome == "raised",
    LimitChecked: lambda e: not e.allowed,
    BudgetChanged: lambda e: e.action in ("refused", "expired"),
    OutputVerdict: lambda e: e.outcome in ("refused", "rejected"),
    Screened: lambda e: e.flagged,
    CheckRan: lambda e: e.status == "failed",
    ReadinessChanged: lambda e: e.current != "ready",
}


def _rule_for(table: Mapping[type[Event], Any], event: Event) -> Any:
    return next((table[kind] for kind in type(event).__mro__ if kind in table), None)


def event_fields(event: Event) -> dict[str, Any]:
    """An event's fields as a line's extra: renamed (t -> clock_t, error -> exception, limit ->
    limit_value, check -> check_name), without the fields that can carry content."""
    content = _rule_for(_CONTENT, event) or frozenset()
    return {_RENAMED.get(f.name, f.name): getattr(event, f.name) for f in dataclasses.fields(event)
            if f.name not in content}


def _is_bad(event: Event) -> bool:
    if isinstance(event, _ALWAYS_BAD):
        return True
    rule = _rule_for(_BAD_WHEN, event)
    return bool(rule(event)) if rule is not None else False


class EventLogger:
    """An event sink (`on_event=EventLogger()`) writing each event as one line on `logger`
    (default "course_lib.events"): at `level`, or at WARNING (at least) for a bad one."""

    def __init__(self, logger: logging.Logger | str | None = None, *, level: int = logging.INFO) -> None:
        check(is_whole(level) and level >= 0, "level",
              "a logging level (an int such as logging.INFO)", level)
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "course_lib.events")
        self.logger = logger
        self.level = level
        self.bad_level = max(level, logging.WARNING)

    def __call__(self, event: Event) -> None:
        level = self.bad_level if _is_bad(event) else self.level
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event_name(event), extra=event_fields(event))

    def __repr__(self) -> str:
        return f"EventLogger(logger={self.logger.name!r}, level={logging.getLevelName(self.level)})"


# --- wiring ------------------------------------------------------------------------------------
_MARK = "_course_lib_json_handler"


def _level(level: int | str) -> int:
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        check(isinstance(number, int), "level", "a level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) or an int", level)
        return int(number)
    check(is_whole(level) and level >= 0, "level", "a level name or an int >= 0",
          level)
    return level


def configure_logging(*, stream: IO[str] | None = None, path: str | Path | None = None, level: int | str = "INFO",
                      **formatter_options: Any) -> logging.Handler:
    """One JSON-lines handler on the root logger: appending to `path` when given (reopened if
    logrotate moves it), else writing to `stream` (sys.stdout by default). A handler this
    function installed before is removed and closed; other handlers are left alone. The root
    logger's level is set to `level`. `formatter_options` go to JsonFormatter."""
    check(stream is None or path is None, "stream", "None when path is given (one destination)", stream)
    formatter = JsonFormatter(**formatter_options)  # bad options fail before anything changes
    threshold = _level(level)
    handler: logging.Handler
    if path is not None:
        handler = logging.handlers.WatchedFileHandler(Path(path), mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    return handler


def install_lnav_format(directory: str | Path | None = None) -> Path:
    """Copy LNAV_FORMAT into `directory` (default ~/.lnav/formats/installed, where lnav 0.11
    reads installed formats; `lnav -i` does the same), creating it; the installed file's path."""
    target = Path(directory) if directory is not None else Path.home() / ".lnav" / "formats" / "installed"
    target.mkdir(parents=True, exist_ok=True)
    installed = target / LNAV_FORMAT.name
    shutil.copyfile(LNAV_FORMAT, installed)
    return installed

