"""course_lib.logs: one JSON object per line, metrics not content, a request id on every line."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import logging
import logging.handlers
import os
import queue
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from course_lib import events
from course_lib.clock import VirtualClock
from course_lib.events import (
    Attempt,
    CheckRan,
    DeadlineCut,
    Event,
    FallbackStep,
    GiveUp,
    LimitChecked,
    OutputVerdict,
    RepairAttempt,
    Screened,
    StateChange,
    StreamCut,
    Wait,
)
from course_lib.llm import make_client
from course_lib.logs import (
    ALLOWED_FIELDS,
    LNAV_FORMAT,
    MAX_CHARS,
    MAX_TRACEBACK_CHARS,
    REQUEST_ID_HEADER,
    ContextFilter,
    EventLogger,
    JsonFormatter,
    configure_logging,
    current_context,
    event_fields,
    event_name,
    hash_user,
    install_lnav_format,
    log_context,
    new_request_id,
    valid_request_id,
)
from course_lib.retry import Retrier, RetryPolicy
from course_lib.sim import SimProvider

KEY = "sk-proj-" + "Ab3d_-9Zx" * 17 + "T3BlbkFJ" + "q" * 3  # the shape of a current OpenAI key
EMAIL = "bob.smith@example.com"
PROMPT = "Please summarise my medical history"


class Capture:
    """A logger whose records become JSON lines in memory, through a JsonFormatter."""

    def __init__(self, name: str = "test.logs", **options: Any) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter(**options))
        self.handler.addFilter(ContextFilter())
        self.logger = logging.getLogger(name)
        self.before = (self.logger.level, self.logger.propagate)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[dict[str, Any]]:
        raw = self.stream.getvalue().splitlines()
        return [json.loads(line) for line in raw]  # every line must parse

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.level, self.logger.propagate = self.before


@pytest.fixture
def capture() -> Iterator[Capture]:
    made = Capture()
    yield made
    made.close()


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


# --- the shape of a line -----------------------------------------------------------------------
def test_a_line_has_ts_level_event_logger_then_the_allowed_fields_in_order(capture: Capture) -> None:
    capture.handler.setFormatter(JsonFormatter(clock=VirtualClock(1.25)))
    capture.logger.info("request_finished", extra={"latency_ms": 812.5, "model": "gpt-4o", "tokens_in": 144})
    (line,) = capture.lines()
    assert line == {"ts": "2026-01-01T00:00:01.250Z", "level": "INFO", "event": "request_finished",
                    "logger": "test.logs", "model": "gpt-4o", "tokens_in": 144, "latency_ms": 812.5}
    assert list(line)[:4] == ["ts", "level", "event", "logger"]


def test_without_a_clock_ts_is_the_records_creation_time_in_utc_with_milliseconds(capture: Capture) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    record.created = 1_767_225_600.0 + 3723.0456  # 2026-01-01 01:02:03.0456 UTC
    assert json.loads(JsonFormatter().format(record))["ts"] == "2026-01-01T01:02:03.045Z"
    capture.logger.info("now")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", capture.lines()[0]["ts"])


def test_a_prompt_given_as_extra_or_in_the_context_never_appears(capture: Capture) -> None:
    with log_context(request_id="r-1", prompt=PROMPT, api_key=KEY):
        capture.logger.info("request_started", extra={"prompt": PROMPT, "response": "the reply", "model": "gpt-4o"})
    text = capture.stream.getvalue()
    assert PROMPT not in text and "the reply" not in text and KEY not in text
    assert capture.lines()[0] == {**capture.lines()[0], "request_id": "r-1", "model": "gpt-4o"}
    assert not {"prompt", "response", "api_key"} & set(capture.lines()[0])


def test_the_records_own_attributes_never_become_fields_and_cannot_be_allowed(capture: Capture) -> None:
    capture.logger.info("asking %s", "the model", extra={"user": "alice"})
    line = capture.lines()[0]
    assert not {"msg", "args", "pathname", "lineno", "funcName", "exc_info", "process"} & set(line)
    assert line["event"] == "asking the model"  # a third party's args are formatted in (then redacted)
    for name in ("msg", "args", "message", "error", "ts"):
        with pytest.raises(ValueError, match=rf"^fields must be free of .*{name}"):
            JsonFormatter(fields=["model", name])


@pytest.mark.parametrize(("option", "value", "limit"), [
    ("user_ids", "sha1", "one of hash, plain, drop"),
    ("salt", b"pepper", "a string"),
    ("fields", "model", "an iterable of field names"),
    ("fields", ["model", "not a name"], "identifiers"),
])
def test_bad_formatter_options_name_the_field_and_the_limit(option: str, value: object, limit: str) -> None:
    with pytest.raises(ValueError, match=rf"^{option} must be {limit}"):
        JsonFormatter(**{option: value})


def test_a_custom_allow_list_keeps_only_its_fields(capture: Capture) -> None:
    capture.handler.setFormatter(JsonFormatter(fields=["tenant", "model"]))
    capture.logger.info("x", extra={"tenant": "acme", "model": "gpt-4o", "tokens_in": 3})
    assert capture.lines()[0] == {**capture.lines()[0], "model": "gpt-4o", "tenant": "acme"}
    assert "tokens_in" not in capture.lines()[0] and list(capture.lines()[0])[-2:] == ["tenant", "model"]


# --- exceptions and secrets --------------------------------------------------------------------
def test_an_exception_becomes_one_line_with_its_type_message_and_traceback(capture: Capture) -> None:
    try:
        {}["missing"]
    except KeyError:
        capture.logger.exception("request_failed", extra={"status": 500})
    raw = capture.stream.getvalue()
    assert raw.count("\n") == 1
    (line,) = capture.lines()
    assert line["level"] == "ERROR" and line["status"] == 500
    assert line["error"]["type"] == "KeyError" and line["error"]["message"] == "'missing'"
    assert line["error"]["traceback"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in line["error"]["traceback"]


def test_a_library_exception_type_is_named_with_its_module(capture: Capture) -> None:
    try:
        json.loads("{")
    except json.JSONDecodeError:
        capture.logger.warning("bad_json", exc_info=True)
    assert capture.lines()[0]["error"]["type"] == "json.decoder.JSONDecodeError"


def test_secrets_in_an_exception_message_its_cause_and_the_message_are_redacted(capture: Capture) -> None:
    try:
        try:
            raise ConnectionError(f"proxy refused Authorization: Bearer {KEY}")
        except ConnectionError as cause:
            raise ValueError(f"no order for {EMAIL}") from cause
    except ValueError:
        capture.logger.exception("lookup failed for %s", EMAIL)
    raw = capture.stream.getvalue()
    assert KEY not in raw and KEY[:20] not in raw and EMAIL not in raw
    error = capture.lines()[0]["error"]
    assert error["message"] == "no order for [REDACTED:email]"
    assert "[REDACTED:" in error["traceback"] and "ConnectionError" in error["traceback"]
    assert capture.lines()[0]["event"] == "lookup failed for [REDACTED:email]"


def test_every_string_field_is_redacted_and_nested_strings_too(capture: Capture) -> None:
    capture.logger.info(f"key {KEY}", extra={"detail": f"mail {EMAIL}", "reasons": [KEY, {"k": EMAIL}]})
    line = capture.lines()[0]
    assert line["event"] == "key [REDACTED:openai_key]"
    assert line["detail"] == "mail [REDACTED:email]"
    assert line["reasons"] == ["[REDACTED:openai_key]", {"k": "[REDACTED:email]"}]


def test_redact_false_keeps_text_as_it_is(capture: Capture) -> None:
    capture.handler.setFormatter(JsonFormatter(redact=False))
    capture.logger.info("mail %s", EMAIL)
    assert capture.lines()[0]["event"] == f"mail {EMAIL}"


def test_long_text_is_redacted_before_it_is_cut_so_no_prefix_of_a_key_survives(capture: Capture) -> None:
    capture.logger.info("x" * (MAX_CHARS - 40) + " " + KEY)  # the key straddles the cut
    assert capture.lines()[0]["event"] == "x" * (MAX_CHARS - 40) + " [REDACTED:openai_key]"
    capture.logger.info("y" * (MAX_CHARS - 30) + " " + KEY + " and more text" * 10)
    event = capture.lines()[1]["event"]
    assert len(event) <= MAX_CHARS and event.endswith("...[truncated]") and "sk-" not in event
    assert event == "y" * (MAX_CHARS - 30) + " ...[truncated]"  # never half a placeholder either


def test_a_long_traceback_keeps_its_end(capture: Capture) -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise RuntimeError(f"bottom {'z' * 9_000} {KEY}")
        deep(n - 1)

    try:
        deep(20)
    except RuntimeError:
        capture.logger.exception("deep")
    trace = capture.lines()[0]["error"]["traceback"]
    assert len(trace) == MAX_TRACEBACK_CHARS and trace.startswith("...[truncated]")
    assert trace.endswith(f"{'z' * 7_000} [REDACTED:openai_key]\n")  # the end: the exception itself


# --- values JSON cannot hold, and failures -----------------------------------------------------
class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_values_json_cannot_hold_are_converted_not_fatal(capture: Capture) -> None:
    loop: list[Any] = []
    loop.append(loop)
    capture.logger.info("values", extra={
        "latency_ms": float("nan"), "cost_usd": float("inf"), "tokens_in": 10**5000, "reasons": frozenset({3}),
        "detail": b"bytes", "outcome": BrokenRepr(), "tools_called": loop, "degraded": True, "status": None,
        "count": range(3), "kind": list(range(MAX_CHARS)), "tokens_out": 2**64,
    })
    line = capture.lines()[0]
    assert line["latency_ms"] == "nan" and line["cost_usd"] == "inf"
    assert line["tokens_in"] == "<unrepresentable int>" and line["reasons"] == [3]
    assert line["detail"] == "b'bytes'" and line["outcome"] == "<unrepresentable BrokenRepr>"
    assert line["degraded"] is True and line["status"] is None and line["count"] == "range(0, 3)"
    assert line["tools_called"] == [[[["[[...]]"]]]]  # depth capped, then repr
    assert len(line["kind"]) == 51 and line["kind"][-1] == "...[truncated]"
    assert line["tokens_out"] == str(2**64)  # beyond 64 bits: a string, as JSON readers lose precision


def test_an_exception_whose_str_fails_still_gives_a_line(capture: Capture) -> None:
    try:
        raise BrokenStr()
    except BrokenStr:
        capture.logger.exception("broken")
    assert capture.lines()[0]["error"]["message"] == "<unprintable BrokenStr>"


def test_a_message_that_cannot_be_formatted_shows_its_template() -> None:
    # formatted directly: pytest's own capture handlers would raise on this record
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "expected a number: %d", ("not a number",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "expected a number: %d"
    assert line["log_error"].startswith("message not formatted (TypeError)")


class ExplodingMapping(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def, override]
        raise RuntimeError("boom")


def test_a_formatter_failure_still_writes_a_line_with_what_it_could_keep(capture: Capture) -> None:
    with log_context(request_id="r-9"):
        capture.logger.error(f"failing for {EMAIL}", extra={"reasons": ExplodingMapping(a=1)})
    (line,) = capture.lines()
    assert line["level"] == "ERROR" and line["logger"] == "test.logs"
    assert line["event"] == "failing for [REDACTED:email]"
    assert line["log_error"] == "formatter failed (RuntimeError); fields dropped"


# --- users ----------------------------------------------------------------------------------------
def test_user_ids_are_hashed_stably_and_depend_on_the_salt() -> None:
    assert hash_user("alice", "s1") == hash_user("alice", "s1") != hash_user("alice", "s2")
    assert hash_user("alice", "s1") != hash_user("bob", "s1")
    assert re.fullmatch(r"[0-9a-f]{16}", hash_user("alice"))
    assert hash_user("alice", "pepper") == "f2f95d059a71b4aa"  # the same in every process, every run


@pytest.mark.parametrize(("mode", "expected"), [
    ("hash", {"user": hash_user(EMAIL, "pepper"), "key": hash_user("alice", "pepper")}),
    ("plain", {"user": "[REDACTED:email]", "key": "alice"}),
    ("drop", {}),
])
def test_user_and_key_follow_the_user_ids_mode(capture: Capture, mode: str, expected: dict[str, str]) -> None:
    capture.handler.setFormatter(JsonFormatter(user_ids=mode, salt="pepper"))  # type: ignore[arg-type]
    with log_context(user=EMAIL):
        capture.logger.info("limit_checked", extra={"key": "alice", "allowed": True})
    line = capture.lines()[0]
    assert {k: line[k] for k in ("user", "key") if k in line} == expected
    assert EMAIL not in capture.stream.getvalue()


# --- request context -------------------------------------------------------------------------------
def test_log_context_nests_overrides_and_restores() -> None:
    assert current_context() == {}
    with log_context(request_id="outer", user="alice") as fields:
        assert fields == {"request_id": "outer", "user": "alice"}
        with log_context(request_id="inner", model="gpt-4o"):
            assert current_context() == {"request_id": "inner", "user": "alice", "model": "gpt-4o"}
        assert current_context() == {"request_id": "outer", "user": "alice"}
    assert current_context() == {}
    block = log_context(request_id="x")
    with block, pytest.raises(RuntimeError, match="already entered"):
        block.__enter__()


async def test_the_request_id_reaches_lines_from_nested_tasks_and_stays_apart(capture: Capture) -> None:
    clock = VirtualClock()

    async def step(name: str, delay: float) -> None:
        await clock.asleep(delay)
        capture.logger.info(name)

    async def request(request_id: str, delay: float) -> None:
        async with log_context(request_id=request_id):
            capture.logger.info("request_started")
            await asyncio.gather(step("tool_called", delay), step("model_called", 2 * delay))
            capture.logger.info("request_finished")

    await asyncio.gather(request("a", 0.3), request("b", 0.2))
    capture.logger.info("outside")
    ids = [(line["event"], line.get("request_id")) for line in capture.lines()]
    assert ids == [("request_started", "a"), ("request_started", "b"), ("tool_called", "b"), ("tool_called", "a"),
                   ("model_called", "b"), ("request_finished", "b"), ("model_called", "a"),
                   ("request_finished", "a"), ("outside", None)]


def test_a_third_party_loggers_lines_carry_the_context() -> None:
    httpx2_lines = Capture("httpx2")
    try:
        client = make_client(SimProvider(clock=VirtualClock()))
        with log_context(request_id="req-42", user="alice"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
        line = httpx2_lines.lines()[0]
        assert line["logger"] == "httpx2" and line["event"].startswith("HTTP Request: POST http://sim.local/v1/")
        assert line["request_id"] == "req-42" and line["user"] == hash_user("alice")
        assert PROMPT not in httpx2_lines.stream.getvalue()
    finally:
        httpx2_lines.close()


def test_the_filter_stamps_the_context_so_a_later_formatter_still_sees_it() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = logging.handlers.QueueHandler(records)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("test.logs.queue")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        with log_context(request_id="queued"):
            logger.info("in_the_queue")
        line = json.loads(JsonFormatter().format(records.get_nowait()))  # formatted outside the block
        assert line["request_id"] == "queued"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_request_ids_are_generated_and_incoming_ones_checked() -> None:
    fresh = new_request_id()
    assert re.fullmatch(r"[0-9a-f]{32}", fresh) and valid_request_id(fresh) == fresh and fresh != new_request_id()
    for good in ("a", "req_1.2:3-x", "A" * 128):
        assert valid_request_id(good) == good
    for bad in ("", "A" * 129, "has space", "line\nbreak", "trailing\n", 'quote"', "ünï", None, 42):
        assert valid_request_id(bad) is None
    assert REQUEST_ID_HEADER == "X-Request-ID"


# --- events as lines -------------------------------------------------------------------------------
def event_classes() -> list[type[Event]]:
    return [getattr(events, name) for name in events.__all__
            if isinstance(getattr(events, name), type) and issubclass(getattr(events, name), Event)
            and getattr(events, name) is not Event]


def test_event_names_are_snake_case_class_names() -> None:
    assert [event_name(kind) for kind in (Attempt, StateChange, DeadlineCut, GiveUp)] == [
        "attempt", "state_change", "deadline_cut", "give_up"]
    assert event_name(StreamCut(0, "s", "idle", 1.0, 2, 3)) == "stream_cut"


@pytest.mark.parametrize("kind", event_classes(), ids=lambda kind: kind.__name__)
def test_every_event_field_but_content_passes_the_allow_list_and_fits_a_record(kind: type[Event]) -> None:
    names = {f.name for f in dataclasses.fields(kind)}
    sample = kind(**{f.name: _sample(f.type) for f in dataclasses.fields(kind)})
    written = set(event_fields(sample))
    content = {"detail"} if kind in (RepairAttempt, OutputVerdict) else set()
    assert len(written) == len(names) - len(content)
    assert written <= set(ALLOWED_FIELDS)
    reserved = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
    assert not written & reserved


def _sample(annotation: Any) -> Any:
    text = str(annotation)
    if "tuple" in text:
        return ("a",)
    if text.startswith("int"):
        return 1
    if text.startswith("float"):
        return 1.0
    if text.startswith("bool"):
        return True
    return "x"


def test_event_logger_writes_name_fields_and_the_clock_time(capture: Capture) -> None:
    sink = EventLogger(capture.logger)
    sink(Attempt(1.5, "retry", 3, 2, 0.25, "RateLimitError", 429))
    sink(FallbackStep(2.0, "chain", 3, "gpt-4o-mini", "answered", "", 0.3))
    first, second = (dict(line, ts=None) for line in capture.lines())
    assert first == {"ts": None, "level": "INFO", "event": "attempt", "logger": "test.logs", "status": 429,
                     "source": "retry", "clock_t": 1.5, "call_id": 3, "attempt": 2, "duration": 0.25,
                     "exception": "RateLimitError"}
    assert second["handler"] == "gpt-4o-mini" and second["outcome"] == "answered" and second["clock_t"] == 2.0


@pytest.mark.parametrize(("event", "level"), [
    (GiveUp(0, "r", 1, 3, "max-attempts", "InternalServerError"), "WARNING"),
    (StateChange(0, "b", "closed", "open", "5 failures"), "WARNING"),
    (StateChange(0, "b", "half-open", "closed", "probe ok"), "INFO"),
    (LimitChecked(0, "l", "alice", False, 0, 3), "WARNING"),
    (LimitChecked(0, "l", "alice", True, 4), "INFO"),
    (DeadlineCut(0, "d", "model", 10.0, 10.0), "WARNING"),
    (Screened(0, "s", "rules", True, ("ignore-previous",)), "WARNING"),
    (CheckRan(0, "h", "provider", "failed", 0.1, False), "WARNING"),
    (Wait(0, "r", 1, 1, 0.5, "backoff"), "INFO"),
])
def test_bad_events_are_warnings(capture: Capture, event: Event, level: str) -> None:
    EventLogger(capture.logger)(event)
    assert capture.lines()[0]["level"] == level


def test_fields_that_can_carry_a_models_words_are_left_out(capture: Capture) -> None:
    sink = EventLogger(capture.logger)
    sink(OutputVerdict(0, "out", "refused", 1, "I'm sorry, I cannot share the patient's records"))
    sink(RepairAttempt(0, "out", 1, "schema", "value 'Dear Bob, your diagnosis...' is not an int", 10, 20))
    assert "sorry" not in capture.stream.getvalue() and "diagnosis" not in capture.stream.getvalue()
    assert [line.get("detail") for line in capture.lines()] == [None, None]
    assert capture.lines()[1]["problem"] == "schema" and capture.lines()[0]["level"] == "WARNING"


def test_event_logger_skips_building_lines_below_the_loggers_level(capture: Capture) -> None:
    capture.logger.setLevel(logging.WARNING)
    sink = EventLogger(capture.logger, level=logging.DEBUG)
    sink(Wait(0, "r", 1, 1, 0.5, "backoff"))
    sink(GiveUp(0, "r", 1, 3, "max-attempts", "InternalServerError"))
    assert [line["event"] for line in capture.lines()] == ["give_up"]
    with pytest.raises(ValueError, match="^level must be a logging level"):
        EventLogger(level="INFO")  # type: ignore[arg-type]
    assert EventLogger().logger.name == "course_lib.events"


def test_a_retriers_real_events_become_lines(capture: Capture) -> None:
    clock = VirtualClock()
    retrier = Retrier(RetryPolicy(max_attempts=3, base_delay=1, jitter="none"), clock=clock,
                      on_event=EventLogger(capture.logger), name="gpt-4o")
    with log_context(request_id="r-7"), pytest.raises(TimeoutError):
        retrier.call(_always_times_out)
    lines = capture.lines()
    assert [(line["event"], line["level"]) for line in lines] == [
        ("attempt", "INFO"), ("wait", "INFO"), ("attempt", "INFO"), ("wait", "INFO"), ("attempt", "INFO"),
        ("give_up", "WARNING")]
    assert {line["request_id"] for line in lines} == {"r-7"} and {line["source"] for line in lines} == {"gpt-4o"}
    assert [line["clock_t"] for line in lines if line["event"] == "attempt"] == [0.0, 1.0, 3.0]


def _always_times_out() -> None:
    raise TimeoutError("slow")


# --- configure_logging ------------------------------------------------------------------------------
def test_configure_logging_replaces_its_own_handler_and_leaves_others_alone(root_logging: logging.Logger,
                                                                          tmp_path: Path) -> None:
    other = logging.NullHandler()
    root_logging.addHandler(other)
    first = configure_logging(stream=io.StringIO())
    second = configure_logging(path=tmp_path / "agent.log", level="debug", salt="s")
    ours = [h for h in root_logging.handlers if isinstance(h.formatter, JsonFormatter)]
    assert ours == [second] and other in root_logging.handlers and first not in root_logging.handlers
    assert root_logging.level == logging.DEBUG
    (tmp_path / "agent.log").write_text('{"earlier": "line"}\n')  # appended to, never truncated
    logging.getLogger("course_lib.test").debug("written", extra={"user": "alice"})
    second.flush()
    lines = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()]
    assert lines[0] == {"earlier": "line"} and lines[1]["event"] == "written"
    assert lines[1]["user"] == hash_user("alice", "s")


def test_configure_logging_writes_to_stdout_by_default(root_logging: logging.Logger,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level=logging.INFO)
    with log_context(request_id="r-1"):
        logging.getLogger("uvicorn.access").info('%s - "%s" %d', "127.0.0.1", "POST /v1/chat", 200)
    line = json.loads(capsys.readouterr().out)
    assert line["logger"] == "uvicorn.access" and line["request_id"] == "r-1"


@pytest.mark.parametrize(("options", "message"), [
    ({"level": "LOUD"}, "^level must be a level name"),
    ({"level": -1}, "^level must be a level name or an int >= 0"),
    ({"stream": io.StringIO(), "path": "x.log"}, "^stream must be None when path is given"),
    ({"user_ids": "md5"}, "^user_ids must be one of"),
])
def test_configure_logging_refuses_bad_options_before_changing_anything(root_logging: logging.Logger,
                                                                        options: dict[str, Any], message: str) -> None:
    before = list(root_logging.handlers)
    with pytest.raises(ValueError, match=message):
        configure_logging(**options)
    assert root_logging.handlers == before


# --- lnav ---------------------------------------------------------------------------------------------
def test_the_lnav_format_declares_every_allowed_field_with_sql_safe_names() -> None:
    spec = json.loads(LNAV_FORMAT.read_text())["course_lib_log"]
    assert spec["json"] is True and spec["timestamp-field"] == "ts" and spec["level-field"] == "level"
    values = spec["value"]
    assert set(ALLOWED_FIELDS) | {"event", "logger", "error", "stack", "log_error"} == set(values)
    assert all(values[name].get("identifier") for name in ("request_id", "user", "model"))
    lnav_table = ", ".join(f"{name} TEXT" for name in values)  # lnav 0.11 does not quote column names
    sqlite3.connect(":memory:").execute(f"CREATE TABLE course_lib_log ({lnav_table})")


def test_install_lnav_format_copies_it_under_home_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    installed = install_lnav_format()
    assert installed == tmp_path / ".lnav" / "formats" / "installed" / "course_lib_log.json"
    assert installed.read_text() == LNAV_FORMAT.read_text()
    assert install_lnav_format(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "course_lib_log.json"


LNAV = shutil.which("lnav")


@pytest.mark.skipif(LNAV is None and not os.environ.get("CI"), reason="lnav is not installed (CI installs it)")
def test_lnav_reads_the_lines_and_answers_sql_over_them(tmp_path: Path, root_logging: logging.Logger) -> None:
    assert LNAV is not None, "CI must install lnav (apt-get install lnav)"
    log_file = tmp_path / "agent.log"
    clock = VirtualClock()
    handler = configure_logging(path=log_file, clock=clock)
    log = logging.getLogger("course_lib.service")
    for request_id, failures in (("req-a", 0), ("req-b", 2), ("req-c", 1)):
        with log_context(request_id=request_id, user="alice", model="gpt-4o"):
            log.info("request_started")
            for _ in range(failures):
                EventLogger()(GiveUp(clock.now(), "retry", 1, 3, "max-attempts", "InternalServerError"))
            clock.advance(0.5)
            log.info("request_finished", extra={"latency_ms": 512.5, "outcome": "ok" if not failures else "error"})
    handler.close()
    home = tmp_path / "home"
    install_lnav_format(home / ".lnav" / "formats" / "installed")
    query = (";SELECT request_id, log_level, COUNT(*) AS n, MAX(latency_ms) AS latency FROM course_lib_log "
             "GROUP BY request_id, log_level ORDER BY request_id, log_level")
    done = subprocess.run([LNAV, "-n", "-c", query, "-c", ":write-csv-to -", str(log_file)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": str(home)}, check=False)
    assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["request_id"], r["log_level"], r["n"]) for r in rows] == [
        ("req-a", "info", "2"), ("req-b", "info", "2"), ("req-b", "warning", "2"), ("req-c", "info", "2"),
        ("req-c", "warning", "1")]
    assert {r["latency"] for r in rows if r["log_level"] == "info"} == {"512.5"}
