"""The agent service: a FastAPI app built by `create_app(settings)`.

One request walks the guards in a fixed order (../shared/DESIGN.md), each refusal a JSON error
with a stable code (`errors.STATUS`):

    authenticate (401) -> validate input (400 invalid_request / input_too_long) -> screen (400) ->
    rate limits on requests and tokens, per user and global (429 rate_limited)
    -> reserve budget, user and global (429 budget_exhausted; 503 budget_unavailable without Redis)
    -> agent loop, each model call fallback(breaker(retry(call))) -> output guard
    -> settle budget with the actual usage (release it all on failure) -> respond

Cheap checks come first, so a request that is refused anyway never counts against a limit or a
budget. While Redis is unreachable each guard follows its own configured policy
(`limiter_on_redis_error`, `budget_on_redis_error`), bounded by `redis_timeout`: never a 500.
The body is parsed by hand (not by a pydantic parameter), so malformed JSON, a wrong type
or an unknown field all become the same error shape naming the field, never a 500.

`uvicorn --factory course_lib.service.app:app_from_env` (what `course-lib serve` runs) builds the
app from the environment in each worker.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import fakeredis
import openai
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.asyncio import Redis as AsyncRedis
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..budget import (
    AsyncBudget,
    BudgetExhausted,
    BudgetUnavailable,
    arelease_all,
    areserve_all,
    asettle_all,
)
from ..clock import SYSTEM_CLOCK, Clock
from ..events import EventSink
from ..fallback import FallbackExhausted
from ..health import Check, Readiness, degraded
from ..input_validation import (
    InputError,
    InputPolicy,
    InputValidator,
    ValidRequest,
    worst_case_cost_usd,
)
from ..llm import make_async_client
from ..logs import (
    REQUEST_ID_HEADER,
    EventLogger,
    configure_logging,
    log_context,
    new_request_id,
    valid_request_id,
)
from ..output_validation import OutputGuard, remove_untrusted_links
from ..ratelimit import AsyncRateLimiter, Decision, ahit_all
from ..redaction import StreamRedactor
from ..screening import RuleScreen, Screening
from ..sim.models import count_tokens
from ..sim.provider import SimProvider
from ..timeouts import Deadline, DeadlineExceeded, deadline_scope
from .agent import SYSTEM_PROMPT, AgentReply, SupportAgent
from .errors import ServiceError, error_response
from .lifecycle import drain_on_sigterm
from .settings import Settings

__all__ = ["BODY_FIELDS", "Service", "app_from_env", "create_app"]

log = logging.getLogger("course_lib.service")

BODY_FIELDS = ("messages", "model", "max_tokens")
CLIENT_ROLES = ("user", "assistant")
TOOL_ALLOWANCE = 400
"""Prompt tokens reserved per call for tool calls and results the loop adds (our tools answer short)."""
_SHARED_FAKE = fakeredis.FakeServer()  # one per process: the embedded single-worker store


@dataclass
class _Outcome:
    """A request that passed every guard, answered."""

    reply: AgentReply
    valid: ValidRequest
    decision: Decision
    raw_text: str


class Service:
    """The guards and the agent, wired once per app; `handle` runs one request through them."""

    def __init__(self, settings: Settings, client: openai.AsyncOpenAI, store: AsyncRedis, *,
                 clock: Clock = SYSTEM_CLOCK, on_event: EventSink | None = None) -> None:
        self.settings, self.client, self.store = settings, client, store
        self.clock, self.on_event = clock, on_event
        self.validator = InputValidator(InputPolicy(default_reserve=settings.default_max_tokens, fit="refuse"),
                                        clock=clock, on_event=on_event)
        self.screening = Screening([RuleScreen()], clock=clock, on_event=on_event)
        self.limiters = {name: self._limiter(store, name, limit, algorithm) for name, limit, algorithm in (
            ("user-requests", settings.user_requests_per_minute, "sliding-log"),
            ("user-tokens", settings.user_tokens_per_minute, "gcra"),
            ("global-requests", settings.global_requests_per_minute, "sliding-log"),
            ("global-tokens", settings.global_tokens_per_minute, "gcra"))}
        lease = max(60.0, settings.retry_deadline * 4)
        self.user_budget, self.global_budget = (
            AsyncBudget(store, limit_usd=limit, name=name, lease_seconds=lease, on_event=on_event,
                        on_redis_error=settings.budget_on_redis_error,  # type: ignore[arg-type]
                        timeout=settings.redis_timeout)
            for name, limit in (("user", settings.user_daily_budget_usd), ("global", settings.global_daily_budget_usd)))
        self.agent = SupportAgent(client, settings, clock=clock, on_event=on_event, store=store)
        self._system_tokens = count_tokens(SYSTEM_PROMPT, settings.model) + 4
        self.readiness = Readiness(self._checks(), clock=clock, on_event=on_event)

    # --- readiness: what serving needs, each answer cached (settings.readiness_cache_seconds) ----
    def _checks(self) -> list[Check]:
        """Redis is required when the budgets refuse without it; the provider and the models'
        breakers only degrade the service while the static fallback can still answer; a spent
        global budget degrades (every worker shares it, so failing readiness would empty the whole
        pool and users would get the balancer's error instead of a 429 with its reset time)."""
        s = self.settings
        timing = {"ttl": s.readiness_cache_seconds, "timeout": s.readiness_check_timeout}
        return [Check("redis", self._redis_answers, required=s.budget_on_redis_error == "closed", **timing),
                Check("provider", self._provider_lists_models, required=not s.static_fallback, **timing),
                Check("breakers", self._breakers_closed, required=not s.static_fallback, **timing),
                Check("budget", self._global_budget_left, required=False, **timing)]

    async def _redis_answers(self) -> None:
        await self.store.ping()

    async def _provider_lists_models(self) -> str:
        page = await self.client.models.list(timeout=self.settings.readiness_check_timeout)  # 0 tokens
        return f"{len(page.data)} models listed"

    async def _breakers_closed(self) -> Any:
        models = [m for m in (self.settings.model, self.settings.fallback_model) if m is not None]
        states = {m: await self.agent.breaker(m).astate() for m in models}
        serving = [m for m, state in states.items() if state != "open"]
        shown = ", ".join(f"{m} {state}" for m, state in states.items())
        if len(serving) == len(models):
            return shown
        if serving or self.settings.static_fallback:
            return degraded(f"{shown}; answering with {serving[0] if serving else 'the static message'}")
        raise RuntimeError(f"every model's breaker is open ({shown})")

    async def _global_budget_left(self) -> Any:
        """Degraded once what is left cannot cover the smallest request at the default max_tokens."""
        status = await self.global_budget.status("all")
        left = status.limit_usd - status.spent_usd - status.reserved_usd
        shown = f"${left:.4f} of ${status.limit_usd:.2f} left today"
        calls = self.agent.calls_per_request
        smallest = calls * worst_case_cost_usd(self.settings.model, self._system_tokens + TOOL_ALLOWANCE * calls,
                                               self.settings.default_max_tokens)
        return degraded(f"{shown}: requests get 429 budget_exhausted") if left < smallest else shown

    def _limiter(self, store: AsyncRedis, name: str, limit: int, algorithm: str) -> AsyncRateLimiter:
        """One per-minute limit. Requests: the exact sliding log; tokens: GCRA, whose one key per
        user costs the same memory whatever the count (a log would hold a member per token)."""
        local = max(1, math.floor(limit * self.settings.limiter_local_fraction))
        return AsyncRateLimiter(store, limit=limit, window=60, algorithm=algorithm,  # type: ignore[arg-type]
                                name=name, clock=self.clock, on_event=self.on_event,
                                on_redis_error=self.settings.limiter_on_redis_error,  # type: ignore[arg-type]
                                local_limit=local, timeout=self.settings.redis_timeout)

    # --- the steps, in order --------------------------------------------------------------------
    def authenticate(self, header: str | None) -> str:
        """The user whose key the `Authorization: Bearer` header carries. Every configured key is
        compared, in constant time each, so the time taken says nothing about which one matched."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServiceError("unauthorized", "send an API key as 'Authorization: Bearer <key>'")
        given, user = token.strip().encode("utf-8", "replace"), None
        for key, owner in self.settings.api_keys.items():
            if hmac.compare_digest(given, key.encode()) and user is None:
                user = owner
        if user is None:
            raise ServiceError("unauthorized", "the API key is not valid")
        return user

    def validate(self, body: Any) -> ValidRequest:
        if not isinstance(body, dict):
            raise ServiceError("invalid_request", f"the body must be a JSON object, got {type(body).__name__}",
                               field="body")
        for name in body:
            if name not in BODY_FIELDS:
                raise ServiceError("invalid_request", f"is not an accepted field; accepted: {', '.join(BODY_FIELDS)}",
                                   field=str(name)[:100] or "\"\"", limit=", ".join(BODY_FIELDS))
        model = body.get("model", self.settings.model)
        if isinstance(model, str) and model not in self.settings.allowed_models:
            allowed = ", ".join(self.settings.allowed_models)
            raise ServiceError("invalid_request", f"{model[:100]!r} is not served here; allowed: {allowed}",
                               field="model", limit=allowed)
        messages = body.get("messages")
        if isinstance(messages, list):
            for index, message in enumerate(messages):
                role = message.get("role") if isinstance(message, dict) else None
                if isinstance(role, str) and role not in CLIENT_ROLES:
                    raise ServiceError("invalid_request", f"{role[:50]!r} is not allowed; clients send only user and "
                                       "assistant messages (the system prompt is the service's)",
                                       field=f"messages[{index}].role", limit=", ".join(CLIENT_ROLES))
        raw = {"messages": messages, "model": model, "max_tokens": body.get("max_tokens",
                                                                            self.settings.default_max_tokens)}
        if "messages" not in body:
            raw.pop("messages")
        try:
            return self.validator.validate(raw)
        except InputError as error:
            code = "input_too_long" if error.code in ("too_long", "too_many_tokens") else "invalid_request"
            raise ServiceError(code, str(error).partition(": ")[2] or str(error), field=error.field,
                               limit=error.limit, extra={"reason": error.code}) from None

    async def screen(self, valid: ValidRequest) -> None:
        for index, message in enumerate(valid.request.messages):
            result = await self.screening.acheck(message.text())
            if result.flagged:
                reasons = ", ".join(result.flagged_by.reasons) if result.flagged_by else "a screening rule"
                raise ServiceError("injection_suspected", f"refused: the text matches prompt-injection rules "
                                   f"({reasons})", field=f"messages[{index}].content")

    @staticmethod
    def token_cost(valid: ValidRequest) -> int:
        """What a request counts against the token limits: its prompt plus every answer token it may use."""
        return valid.prompt_tokens + valid.max_tokens

    async def rate_limit(self, user: str, valid: ValidRequest) -> Decision:
        """The four limits in one `ahit_all`: a refusal gives back what the earlier ones counted, and
        its headers are the refusing limit's. A request larger than a token limit can never pass:
        that is the request's fault (400 naming the field), not a wait (429)."""
        tokens = self.token_cost(valid)
        for name in ("user-tokens", "global-tokens"):
            limit = self.limiters[name].limit
            if tokens > limit:
                field = "max_tokens" if valid.prompt_tokens < limit else "messages"
                raise ServiceError("input_too_long", f"the request needs {tokens:,} tokens ({valid.prompt_tokens:,} "
                                   f"prompt + {valid.max_tokens:,} max_tokens), over the {name} limit of {limit:,} "
                                   "per minute", field=field, limit=limit, extra={"reason": "over_token_limit"})
        limits = self.limiters
        decision = await ahit_all([(limits["user-requests"], user, 1), (limits["user-tokens"], user, tokens),
                                   (limits["global-requests"], "all", 1), (limits["global-tokens"], "all", tokens)])
        if not decision.allowed:
            unit = "tokens" if decision.name.endswith("tokens") else "requests"
            whose = "your" if decision.name.startswith("user") else "the service's"
            raise ServiceError("rate_limited", f"{whose} limit of {decision.limit:,} {unit} per {decision.window:g} s "
                               f"is reached; retry in {decision.retry_after} s", headers=decision.headers(),
                               limit=decision.limit, extra={"retry_after": decision.retry_after,
                                                            "limit_name": decision.name,
                                                            "decided_by": decision.decided_by})
        return decision

    def worst_case_usd(self, valid: ValidRequest) -> float:
        """Every call of the loop at its largest prompt and every answer token used."""
        model, calls = valid.request.model, self.agent.calls_per_request
        prompt = valid.prompt_tokens + self._system_tokens + TOOL_ALLOWANCE * calls
        return calls * worst_case_cost_usd(model, prompt, valid.max_tokens)

    async def reserve(self, user: str, amount: float) -> Any:
        try:
            return await areserve_all([(self.user_budget, user), (self.global_budget, "all")], amount)
        except BudgetExhausted as error:
            reset = max(1, math.ceil(error.reset_after))
            whose = "your daily" if error.name == "user" else "the service's daily"
            raise ServiceError("budget_exhausted", f"{whose} budget of ${error.limit_usd:.2f} cannot cover this "
                               f"request (worst case ${error.requested_usd:.6f}); it resets in {reset} s",
                               limit=error.limit_usd, headers={"Retry-After": str(reset)},
                               extra={"budget": error.name, "reset_after": reset,
                                      "resets_at": math.floor(self.clock.wall()) + reset}) from None
        except BudgetUnavailable as error:
            raise ServiceError("budget_unavailable", "the budget store cannot be reached; try again shortly",
                               headers={"Retry-After": "5"}, extra={"budget": error.name}) from None

    async def answer(self, valid: ValidRequest) -> AgentReply:
        """The agent run under one hard deadline (settings.request_deadline): every call inside
        gets what is left of it, and when it runs out the run is cancelled (its connections
        closed) and the request ends with 504 `deadline_exceeded`."""
        messages = valid.messages_for_api()
        deadline = Deadline(self.settings.request_deadline, clock=self.clock, on_event=self.on_event, name="agent")
        try:
            with deadline_scope(deadline):
                return await deadline.run(self.agent.run(messages, model=valid.request.model,
                                                         max_tokens=valid.max_tokens), "agent run")
        except DeadlineExceeded as error:
            raise ServiceError("deadline_exceeded", f"no answer within the {deadline.budget:g} s limit (cut at "
                               f"{error.stage})", limit=deadline.budget, extra={"stage": error.stage}) from None
        except FallbackExhausted as error:
            raise ServiceError("provider_unavailable", "no model could answer and the static fallback is off",
                               headers={"Retry-After": "30"}, extra={"tried": [n for n, _ in error.errors]}) from None
        except openai.APIStatusError as error:
            raise ServiceError("provider_error", f"the model provider refused the call ({error.status_code})") \
                from None

    async def handle(self, user: str, body: Any) -> _Outcome:
        """Every step after authentication up to the settled budget; the caller renders the outcome."""
        valid = self.validate(body)
        await self.screen(valid)
        decision = await self.rate_limit(user, valid)
        held = await self.reserve(user, self.worst_case_usd(valid))
        try:
            reply = await self.answer(valid)
        except BaseException:
            await arelease_all(held)
            raise
        await asettle_all(held, reply.cost_usd)
        return _Outcome(reply, valid, decision, reply.text)

    def guard(self, outcome: _Outcome) -> str:
        model = outcome.reply.handler if outcome.reply.handler in self.settings.allowed_models \
            or outcome.reply.handler == self.settings.fallback_model else outcome.valid.request.model
        guard = OutputGuard(model=model, max_tokens=outcome.valid.max_tokens, allowed_hosts=self.settings.allowed_hosts,
                            on_event=self.on_event, clock=self.clock)
        return guard.check(outcome.raw_text).text

    @staticmethod
    def summary(outcome: _Outcome, request_id: str) -> dict[str, Any]:
        reply = outcome.reply
        return {"handler": reply.handler, "degraded": reply.degraded, "tools_called": reply.tools_called,
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "cost_usd": round(reply.cost_usd, 8)}, "request_id": request_id}


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServiceError("input_too_long", f"the body is {int(declared):,} bytes, over the limit of {limit:,}",
                           field="body", limit=limit)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise ServiceError("input_too_long", f"the body is over the limit of {limit:,} bytes", field="body",
                               limit=limit)
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as error:
        raise ServiceError("invalid_request", f"the body is not valid JSON ({str(error)[:120]})", field="body") \
            from None


def _headers(decision: Decision, request_id: str) -> dict[str, str]:
    return {**decision.headers(), "X-Request-ID": request_id, "X-Worker-PID": str(os.getpid())}


def _chunks(text: str, size: int = 16) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _sse(data: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def create_app(settings: Settings, *, provider: SimProvider | openai.AsyncOpenAI | None = None,
               redis: AsyncRedis | None = None, clock: Clock = SYSTEM_CLOCK,
               on_event: EventSink | None = None) -> FastAPI:
    """The service. `provider`: a SimProvider (in-process), a ready AsyncOpenAI client, or None for
    `settings.provider_url` (unset: a fresh in-process simulator). `redis`: a `redis.asyncio`
    client, or None for `settings.redis_url` (unset: this process's shared fakeredis). Logging is
    the caller's to set up (`app_from_env` does it for `course-lib serve`)."""
    if isinstance(provider, openai.AsyncOpenAI):
        client = provider
    elif provider is None and settings.provider_url:
        client = openai.AsyncOpenAI(base_url=settings.provider_url, api_key=settings.provider_api_key, max_retries=0,
                                    timeout=settings.provider_timeout)
    else:
        client = make_async_client(provider or SimProvider(), max_retries=0, timeout=settings.provider_timeout)
    if redis is None:
        redis = (AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout)
                 if settings.redis_url
                 else fakeredis.FakeAsyncRedis(server=_SHARED_FAKE))
    service = Service(settings, client, redis, clock=clock, on_event=on_event)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        drain_on_sigterm(service.readiness.drain, settings.shutdown_delay)  # under a real server only
        yield

    app = FastAPI(title="course-lib support agent", version="0.1.0", lifespan=lifespan)
    app.state.service = service

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """A request id (the caller's X-Request-ID if sane, else a new one) on every log line
        written while serving, in the response header, and one `request_finished` line at the end."""
        request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.state.request_id, request.state.log = request_id, {}
        started = clock.now()
        with log_context(request_id=request_id):
            try:
                response = await call_next(request)
            except Exception:
                log.exception("request_failed", extra=_finished(request, 500, clock.now() - started))
                raise
            response.headers[REQUEST_ID_HEADER] = request_id
            log.info("request_finished", extra=_finished(request, response.status_code, clock.now() - started))
        return response

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        if isinstance(getattr(request.state, "log", None), dict):
            request.state.log["outcome"] = error.code
        return error_response(error, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = (error.errors() or [{}])[0]
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(ServiceError("invalid_request", str(first.get("msg", "invalid request")), field=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        if code is None:
            return JSONResponse({"error": {"code": "http_error", "message": str(error.detail)}},
                                status_code=error.status_code)
        return error_response(ServiceError(code, f"{request.method} {request.url.path}: {error.detail}"))

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        return error_response(ServiceError("internal_error", "the service failed; the error is logged"),
                              getattr(request.state, "request_id", None))

    async def run(request: Request) -> tuple[_Outcome, str]:
        request_id: str = request.state.request_id
        user = service.authenticate(request.headers.get("authorization"))  # before reading any body
        request.state.log["user"] = user
        body = await _read_json(request, settings.max_body_bytes)
        with log_context(user=user):
            outcome = await service.handle(user, body)
        reply = outcome.reply
        request.state.log.update(model=outcome.valid.request.model, handler=reply.handler, degraded=reply.degraded,
                                 tokens_in=reply.prompt_tokens, tokens_out=reply.completion_tokens,
                                 cost_usd=round(reply.cost_usd, 8), outcome="answered")
        return outcome, request_id

    @app.post("/v1/chat")
    async def chat(request: Request) -> JSONResponse:
        outcome, request_id = await run(request)
        body = {"answer": service.guard(outcome), **service.summary(outcome, request_id)}
        return JSONResponse(body, headers=_headers(outcome.decision, request_id))

    @app.post("/v1/chat/stream")
    async def chat_stream(request: Request) -> StreamingResponse:
        """Server-sent events: `{"delta": text}` pieces of the answer (links removed, redacted on the
        fly by StreamRedactor), then `{"done": true, ...}` with handler, usage and request_id."""
        outcome, request_id = await run(request)
        text = remove_untrusted_links(outcome.raw_text, settings.allowed_hosts)

        async def events() -> AsyncIterator[bytes]:
            redactor = StreamRedactor()
            for piece in _chunks(text):
                if released := redactor.feed(piece):
                    yield _sse({"delta": released})
            if rest := redactor.close():
                yield _sse({"delta": rest})
            yield _sse({"done": True, **service.summary(outcome, request_id)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**_headers(outcome.decision, request_id), "Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: this process and its event loop answer. Nothing outside is consulted, so a
        provider or Redis outage never gets every worker restarted."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 ready or degraded (still serving), 503 not ready or shutting down."""
        report = await service.readiness.report()
        return JSONResponse(report.to_dict(), status_code=report.http_status)

    return app


def _finished(request: Request, status: int, seconds: float) -> dict[str, Any]:
    """The fields of a request's last log line: what it asked, who, how it ended, how long."""
    fields = getattr(request.state, "log", {})
    return {"method": request.method, "path": request.url.path, "status": status,
            "latency_ms": round(seconds * 1000, 3), "outcome": "answered" if status < 400 else "refused", **fields}


def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory`: settings from COURSE_LIB_* variables; JSON log lines on
    standard output (or COURSE_LIB_LOG_FILE). Pattern events are lines too: the ones that say
    something went wrong (a refusal, a breaker opening, a give-up, a deadline cut...) at WARNING,
    the routine ones (a limit or budget passed, an attempt that worked) at DEBUG, so that the
    default INFO level costs a few lines per request, not twenty."""
    settings = Settings.from_env()
    configure_logging(path=settings.log_file, level=settings.log_level, user_ids=settings.log_user_ids,
                      salt=settings.log_salt)
    return create_app(settings, on_event=EventLogger(level=logging.DEBUG))

