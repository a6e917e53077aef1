"""The support agent: a bounded tool-calling loop where every model call walks
fallback(breaker(retry(call))).

Each round asks the chain once. The requested model comes first (breaker around retry), then the
fallback model (its own breaker and retry), then, if enabled, a fixed degraded message. A round
that the static handler answers ends the loop: there is no model left to read tool results. After
`max_rounds` rounds of tool calls the last call sends `tool_choice="none"`, so the loop ends with
text whatever the model wants. Usage is summed over every call, each priced at its own model.

Under a `course_lib.timeouts.deadline_scope` (the service opens one per request) every model
call's timeout is what is left of the run, capped at `provider_timeout`; the retrier starts no wait
that outlasts it, and no tool runs after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import openai
from redis.asyncio import Redis as AsyncRedis

from ..breaker import BreakerPolicy, CircuitBreaker
from ..breaker_redis import AsyncRedisState
from ..clock import SYSTEM_CLOCK, Clock
from ..events import EventSink
from ..fallback import FallbackChain, Handler
from ..retry import Retrier, RetryPolicy
from ..sim.models import MODELS, cost_usd
from ..timeouts import current_deadline, time_left
from .settings import Settings
from .tools import TOOLS, run_tool

log = logging.getLogger("course_lib.service")

__all__ = ["STATIC_ANSWER", "SYSTEM_PROMPT", "AgentReply", "SupportAgent"]

SYSTEM_PROMPT = ("You are the support assistant of a small coffee-equipment shop. Answer questions about orders and "
                 "refunds using the tools; never invent an order's status.")
STATIC_ANSWER = "Our assistant is busy right now; please try again in a few minutes."
STATIC = "static"


@dataclass
class AgentReply:
    """The loop's outcome: the raw answer text (not yet guarded) and what it cost."""

    text: str
    handler: str
    degraded: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    tools_called: list[str] = field(default_factory=list)
    trail: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Turn:
    model: str
    message: Any
    usage: Any


class SupportAgent:
    """Runs the loop against `client` (an `openai.AsyncOpenAI`, SDK retries off). Breakers live as
    long as the agent, so one outage is remembered across requests. With a `store` (a
    `redis.asyncio` client) each model's breaker state lives in Redis, so every worker sees the
    same outage; without one it is this process's own."""

    def __init__(self, client: openai.AsyncOpenAI, settings: Settings, *, clock: Clock = SYSTEM_CLOCK,
                 on_event: EventSink | None = None, store: AsyncRedis | None = None) -> None:
        self.client, self.settings, self.clock, self.on_event, self.store = client, settings, clock, on_event, store
        self._breakers: dict[str, CircuitBreaker] = {}
        self._policy = BreakerPolicy(failure_threshold=settings.breaker_failures,
                                     open_seconds=settings.breaker_open_seconds)
        self._retry = RetryPolicy(max_attempts=settings.retry_attempts, base_delay=settings.retry_base_delay,
                                  max_delay=max(settings.retry_base_delay, 5.0), deadline=settings.retry_deadline)

    @property
    def calls_per_request(self) -> int:
        """Model calls one request may make at most: the tool rounds plus the final answer."""
        return self.settings.max_tool_rounds + 1

    def breaker(self, model: str) -> CircuitBreaker:
        if model not in self._breakers:
            state = None if self.store is None else AsyncRedisState(
                self.store, model, self._policy, on_event=self.on_event, timeout=self.settings.redis_timeout)
            self._breakers[model] = CircuitBreaker(self._policy, clock=self.clock, on_event=self.on_event, name=model,
                                                   state=state)  # type: ignore[arg-type] # async states are accepted
        return self._breakers[model]

    def chain(self, model: str) -> FallbackChain:
        """Requested model, fallback model (unless it is the same), static message (if enabled)."""
        models = [model] + [m for m in (self.settings.fallback_model,) if m is not None and m != model]
        handlers = [Handler(m, self._asker(m), context_window=MODELS[m].context_window, breaker=self.breaker(m),
                            retrier=Retrier(self._retry, clock=self.clock, on_event=self.on_event, name=f"retry-{m}",
                                            time_left=time_left))
                    for m in models]
        if self.settings.static_fallback:
            handlers.append(Handler(STATIC, lambda *_, **__: None, degraded=True))
        return FallbackChain(handlers, clock=self.clock, on_event=self.on_event, name="agent")

    def _asker(self, model: str) -> Any:
        async def ask(messages: Sequence[dict[str, Any]], max_tokens: int, tool_choice: str) -> _Turn:
            # plain dicts, not the SDK's TypedDicts: typed as Any for the SDK's overloads
            options: dict[str, Any] = {"messages": list(messages), "tools": TOOLS, "tool_choice": tool_choice}
            deadline, cap = current_deadline(), self.settings.provider_timeout
            # the call's timeout is what is left of the run, capped; a cut by our own deadline is
            # DeadlineExceeded, which neither the breaker nor the fallback counts against the provider
            with deadline.bound(cap, f"model {model}") if deadline else nullcontext(cap) as timeout:
                completion = await self.client.chat.completions.create(model=model, max_tokens=max_tokens,
                                                                       timeout=timeout, **options)
            usage = completion.usage
            log.info("model_call", extra={"model": model, "provider_request_id": completion._request_id,
                                          "tokens_in": usage and usage.prompt_tokens,
                                          "tokens_out": usage and usage.completion_tokens})
            return _Turn(model, completion.choices[0].message, completion.usage)

        return ask

    async def run(self, messages: Sequence[dict[str, Any]], *, model: str, max_tokens: int) -> AgentReply:
        """Answer the conversation; raises FallbackExhausted when every handler failed (static off)
        and whatever the chain does not fall through on (a 400 from the provider, a bug)."""
        chain = self.chain(model)
        history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
        reply = AgentReply("", model, False)
        for round_number in range(self.calls_per_request):
            last = round_number == self.calls_per_request - 1
            answer = await chain.acall(history, max_tokens, "none" if last else "auto")
            reply.trail.extend(answer.trail)
            reply.handler, reply.degraded = answer.handler, answer.degraded
            if answer.value is None:  # the static handler
                reply.text = STATIC_ANSWER
                return reply
            turn: _Turn = answer.value
            self._count(reply, turn)
            calls = turn.message.tool_calls or []
            if not calls or last:
                reply.text = turn.message.content or ""
                return reply
            history.append(turn.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}))
            for call in calls:
                if (deadline := current_deadline()) is not None:
                    deadline.check(f"tool {call.function.name}")
                reply.tools_called.append(call.function.name)
                history.append({"role": "tool", "tool_call_id": call.id,
                                "content": run_tool(call.function.name, call.function.arguments)})
        raise AssertionError("unreachable: the last round always returns")  # pragma: no cover

    @staticmethod
    def _count(reply: AgentReply, turn: _Turn) -> None:
        usage = turn.usage
        if usage is None:
            return
        reply.prompt_tokens += usage.prompt_tokens
        reply.completion_tokens += usage.completion_tokens
        reply.cost_usd += cost_usd(turn.model, usage.prompt_tokens, usage.completion_tokens)
