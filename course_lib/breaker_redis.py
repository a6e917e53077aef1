"""Circuit breaker state shared through Redis, so every worker and server obeys one breaker.

    breaker = CircuitBreaker(policy, name="gpt-4o", state=RedisState(redis_client, "gpt-4o", policy))
    breaker = CircuitBreaker(policy, name="gpt-4o", state=AsyncRedisState(async_client, "gpt-4o", policy))

Each decision (admit, settle) is one Lua script, so concurrent processes cannot interleave
half-way through a transition. In async code use `AsyncRedisState` with a `redis.asyncio`
client: a synchronous client would block the event loop for every decision. Time comes from
the Redis server (`TIME`) unless a clock is given (tests and notebooks pass a VirtualClock):
app servers' clocks differ, Redis's is one.

A broken store never fails, nor stalls, the call it protects. With redis-py's defaults (5 s
socket timeouts, retries with backoff) a dead Redis added 3-4.5 s to every guarded call and a
frozen one up to a minute. So each Redis call is bounded by `timeout` (0.25 s) whatever the
client's settings (`RedisState` talks through a copy of the client's pool with socket timeouts
capped and retries off, `AsyncRedisState` cuts the call off), and after a failure the state logs
one warning, emits a `StoreFallback` event and decides locally (a `LocalState`) without asking
Redis for `store_retry_seconds` (5 s on the breaker's clock), then asks again; it logs when Redis
answers again. Still give clients short timeouts and no retries of their own: an async call cut
off costs its connection a reconnect, and a client used as given (`timeout=None`) is bounded by
its own settings only:

    redis.Redis(..., socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0))
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._wrapping import check
from .breaker import NO_MOVES, BreakerPolicy, LocalState, Moves, Ticket, Verdict
from .clock import Clock
from .events import Event, StoreFallback

__all__ = ["RedisState", "AsyncRedisState", "StoreOutage"]

log = logging.getLogger("course_lib.breaker")

# Shared prelude: the time, and a helper that moves the breaker to a new state. Times are
# written with 17 significant digits: Lua's tostring keeps 14, which would round them and make
# the shared breaker disagree with the local one about when an open period ends.
_PRELUDE = """
local h, window = KEYS[1], KEYS[2]
local function num(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HGET', h, 'state') or 'closed'
local gen = tonumber(redis.call('HGET', h, 'gen') or '0')
local moves = {}
local function move(new, reason)
  table.insert(moves, state) ; table.insert(moves, new) ; table.insert(moves, reason)
  state, gen = new, gen + 1
  redis.call('HSET', h, 'state', new, 'gen', gen, 'probes', 0, 'successes', 0, 'consecutive', 0, 'failures', 0)
  redis.call('DEL', window)
  if new == 'open' then redis.call('HSET', h, 'opened_at', num(now)) end
  if new == 'half-open' then redis.call('HSET', h, 'half_open_at', num(now)) end
end
"""

# ARGV: now, open_seconds, half_open_probes, probe_timeout -> {admitted, retry_in, state, gen, now, moves...}
_ADMIT = _PRELUDE + """
if state == 'open' then
  local reopen_at = tonumber(redis.call('HGET', h, 'opened_at')) + tonumber(ARGV[2])
  if now < reopen_at then return {0, num(reopen_at - now), state, gen, num(now)} end
  move('half-open', 'open for ' .. ARGV[2] .. 's')
end
if state == 'half-open' then
  if tonumber(redis.call('HGET', h, 'probes') or '0') >= tonumber(ARGV[3]) then
    if now < tonumber(redis.call('HGET', h, 'half_open_at')) + tonumber(ARGV[4]) then
      return {0, '0', state, gen, num(now), unpack(moves)}
    end
    move('half-open', 'probe unanswered for ' .. ARGV[4] .. 's')
  end
  redis.call('HINCRBY', h, 'probes', 1)
end
return {1, '0', state, gen, num(now), unpack(moves)}
"""

# ARGV: now, gen, verdict, trip_on, failure_threshold, failure_rate, minimum_calls,
#       window, window_size, probes_to_close -> moves
_SETTLE = _PRELUDE + """
if tonumber(ARGV[2]) ~= gen then return moves end
local verdict = ARGV[3]
if state == 'half-open' then
  redis.call('HINCRBY', h, 'probes', -1)
  if verdict == 'failure' then
    move('open', 'probe failed')
  elseif verdict == 'success' then
    local ok = redis.call('HINCRBY', h, 'successes', 1)
    if ok >= tonumber(ARGV[10]) then move('closed', ok .. ' probe(s) succeeded') end
  end
elseif state == 'closed' and verdict ~= 'ignored' then
  local failed = verdict == 'failure'
  if ARGV[4] == 'consecutive' then
    local streak = 0
    if failed then streak = redis.call('HINCRBY', h, 'consecutive', 1) else redis.call('HSET', h, 'consecutive', 0) end
    if streak >= tonumber(ARGV[5]) then move('open', streak .. ' consecutive failures') end
  else
    local size = tonumber(ARGV[9])
    redis.call('RPUSH', window, num(now) .. (failed and ' 1' or ' 0'))
    if failed then redis.call('HINCRBY', h, 'failures', 1) end
    local function drop_oldest()
      local entry = redis.call('LPOP', window)
      if string.sub(entry, -1) == '1' then redis.call('HINCRBY', h, 'failures', -1) end
    end
    if ARGV[8] == 'count' then
      if redis.call('LLEN', window) > size then drop_oldest() end
    else
      while true do
        local oldest = redis.call('LINDEX', window, 0)
        if not oldest or tonumber(string.match(oldest, '^(%S+)')) > now - size then break end
        drop_oldest()
      end
    end
    local calls = redis.call('LLEN', window)
    local failures = tonumber(redis.call('HGET', h, 'failures') or '0')
    if calls >= tonumber(ARGV[7]) and failures / calls >= tonumber(ARGV[6]) then
      move('open', 'failure rate ' .. failures .. '/' .. calls .. ' >= ' .. ARGV[6])
    end
  end
end
return moves
"""

# -> state, opened_at (or ''), now
_CURRENT = _PRELUDE + """
return {state, redis.call('HGET', h, 'opened_at') or '', num(now)}
"""


def _moves(flat: list[Any]) -> Moves:
    if not flat:
        return NO_MOVES
    text = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    return [(text[i], text[i + 1], text[i + 2]) for i in range(0, len(text), 3)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float) -> str:
    return repr(float(value))  # full precision: str() of a Lua number would round


# Connection settings a redis-py pool adds for itself (maintenance notifications, redis-py 7+):
# they belong to the caller's pool, so a copy must not inherit them.
_POOL_OWNED = frozenset({"maint_notifications_pool_handler", "oss_cluster_maint_notifications_handler",
                         "orig_host_address", "orig_socket_timeout", "orig_socket_connect_timeout"})


class StoreOutage:
    """How a guard lives through its shared store (Redis) failing, the same for the breaker, the
    rate limiter and the budget: one warning per outage and a debug line for each failure after
    it, one `StoreFallback` event per failed call, an info line when the store answers again, and
    for `rest` seconds after a failure the store is not asked at all (`resting`), so an outage
    does not add a timeout to every call. `then` says what the guard does meanwhile."""

    def __init__(self, logger: logging.Logger, kind: str, name: str, *, rest: float, then: str,
                 on_event: Callable[[Event], None] | None, recovered: str = "") -> None:
        self.log, self.kind, self.name, self.rest, self.then = logger, kind, name, rest, then
        self.on_event, self.recovered = on_event, recovered
        self._retry_at: float | None = None  # while the store is failing: when to ask it again
        self._lock = threading.Lock()

    def resting(self, now: float) -> bool:
        retry_at = self._retry_at
        return retry_at is not None and now < retry_at

    def failed(self, operation: str, now: float, error: Exception) -> str:
        """Record a failed call; the error as text."""
        with self._lock:
            news, self._retry_at = self._retry_at is None, now + self.rest
        detail = f"{type(error).__name__}: {error}"
        if news:
            self.log.warning("%s %r: Redis %s failed (%s); %s", self.kind, self.name, operation, detail, self.then)
        else:
            self.log.debug("%s %r: Redis %s still failing (%s)", self.kind, self.name, operation, detail)
        if self.on_event is not None:
            self.on_event(StoreFallback(now, self.name, operation, detail))
        return detail

    def answered(self) -> None:
        if self._retry_at is None:
            return
        with self._lock:
            news, self._retry_at = self._retry_at is not None, None
        if news:
            self.log.info("%s %r: Redis answers again%s", self.kind, self.name, self.recovered)


def _with_timeout(client: Any, timeout: float) -> redis.Redis:
    """A client for the same server whose connects and reads give up after `timeout` seconds, and
    never retry, on a pool of its own: the caller's client keeps its settings. A synchronous
    call cannot be cut off from outside, so the sockets must be."""
    pool: Any = getattr(client, "connection_pool", None)
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        kind = type(client if pool is None else pool).__name__
        raise TypeError(f"RedisState cannot bound the time of Redis calls through a {kind} (it copies only a plain "
                        "ConnectionPool): give the client socket_timeout, socket_connect_timeout and "
                        "retry=Retry(NoBackoff(), 0) yourself, and pass timeout=None")
    kwargs = {key: value for key, value in pool.connection_kwargs.items() if key not in _POOL_OWNED}
    for key in ("socket_timeout", "socket_connect_timeout"):
        kwargs[key] = min(kwargs.get(key) or timeout, timeout)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class _RedisScripts:
    """What the sync and async Redis states share: keys, script arguments, parsing, fallback."""

    def __init__(self, client: Any, name: str, policy: BreakerPolicy, clock: Clock | None, prefix: str,
                 on_event: Callable[[Event], None] | None, timeout: float | None, store_retry_seconds: float) -> None:
        check(timeout is None or (math.isfinite(timeout) and timeout > 0), "timeout", "> 0 seconds or None", timeout)
        check(math.isfinite(store_retry_seconds) and store_retry_seconds >= 0, "store_retry_seconds", ">= 0", store_retry_seconds)
        self.client, self.name, self.policy, self.clock, self.on_event = client, name, policy, clock, on_event
        self.timeout, self.store_retry_seconds = timeout, store_retry_seconds
        # One hash tag for both keys, so that a Redis Cluster keeps them in one slot for the scripts.
        self.keys = [f"{{{prefix}:{name}}}", f"{{{prefix}:{name}}}:window"]
        self.fallback = LocalState(policy)
        self.outage = StoreOutage(log, "breaker", name, rest=store_retry_seconds, on_event=on_event,
                                  then=f"deciding locally for the next {store_retry_seconds:g}s",
                                  recovered="; the shared state decides")
        self.redis = self._bounded(client)  # what the state talks to Redis through
        self._admit = self.redis.register_script(_ADMIT)
        self._settle = self.redis.register_script(_SETTLE)
        self._current = self.redis.register_script(_CURRENT)

    def _bounded(self, client: Any) -> Any:
        return client

    def _now_arg(self) -> str:
        return _number(self.clock.now()) if self.clock is not None else ""

    def _admit_args(self) -> list[Any]:
        policy = self.policy
        return [self._now_arg(), _number(policy.open_seconds), policy.half_open_probes, _number(policy.probe_timeout)]

    def _settle_args(self, ticket: Ticket, verdict: Verdict) -> list[Any]:
        policy = self.policy
        return [self._now_arg(), ticket[0], verdict, policy.trip_on, policy.failure_threshold, _number(policy.failure_rate),
                policy.minimum_calls, policy.window, _number(policy.window_size), policy.probes_to_close]

    @staticmethod
    def _admitted(result: list[Any], now: float) -> tuple[Ticket | None, float, Moves]:
        admitted, retry_in, state, gen, _, *moves = result
        ticket = (int(gen), _text(state), now) if admitted else None
        return ticket, float(_text(retry_in)), _moves(moves)

    def _current_of(self, result: list[Any]) -> str:
        state, opened_at, server_now = (_text(v) for v in result)
        if state == "open" and float(server_now) >= float(opened_at) + self.policy.open_seconds:
            return "half-open"
        return state

    def _admit_locally(self, now: float) -> tuple[Ticket | None, float, Moves]:
        ticket, retry_in, moves = self.fallback.admit(now)
        # Local tickets carry a negative generation so that settle knows where they belong.
        return (None if ticket is None else (-1 - ticket[0], ticket[1], ticket[2])), retry_in, moves

    def _settle_locally(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        generation, state, started = ticket
        return self.fallback.settle((-1 - generation, state, started), verdict, now)


class RedisState(_RedisScripts):
    """`BreakerState` kept in Redis (a hash and a list under `{prefix:name}`), for sync clients.

    Redis calls go through a copy of the client's pool whose connects and reads time out after
    `timeout` seconds, without retries (the client you pass keeps its own settings). A client
    whose pool cannot be copied (Sentinel, Cluster, a custom pool) is refused unless you pass
    `timeout=None`, which uses it as given: then give it short timeouts and no retries. After a
    Redis failure the state decides locally for `store_retry_seconds` on the breaker's clock.
    A ticket is settled where it was admitted; a shared one settled while Redis is down is dropped
    (a probe's slot is then freed after `probe_timeout`)."""

    def __init__(self, client: redis.Redis, name: str, policy: BreakerPolicy, *, clock: Clock | None = None,
                 prefix: str = "course_lib:breaker", on_event: Callable[[Event], None] | None = None,
                 timeout: float | None = 0.25, store_retry_seconds: float = 5.0) -> None:
        if isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a synchronous redis.Redis; for a redis.asyncio client use AsyncRedisState")
        super().__init__(client, name, policy, clock, prefix, on_event, timeout, store_retry_seconds)

    def _bounded(self, client: Any) -> Any:
        return client if self.timeout is None else _with_timeout(client, self.timeout)

    def _run(self, script: Any, args: list[Any], operation: str, now: float) -> Any:
        """The script's answer, or None if Redis failed now or recently: then decide locally."""
        if self.outage.resting(now):
            return None
        try:
            result = script(keys=self.keys, args=args)
        except redis.RedisError as error:
            self.outage.failed(operation, now, error)
            return None
        self.outage.answered()
        return result

    def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        result = self._run(self._admit, self._admit_args(), "admit", now)
        return self._admit_locally(now) if result is None else self._admitted(result, now)

    def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        if ticket[0] < 0:
            return self._settle_locally(ticket, verdict, now)
        result = self._run(self._settle, self._settle_args(ticket, verdict), "settle", now)
        return NO_MOVES if result is None else _moves(result)

    def current(self, now: float) -> str:
        result = self._run(self._current, [self._now_arg()], "read", now)
        return self.fallback.current(now) if result is None else self._current_of(result)

    def reset(self) -> None:
        """Forget the shared state (closed, empty window)."""
        self.redis.delete(*self.keys)


class AsyncRedisState(_RedisScripts):
    """The same state for `redis.asyncio` clients: every decision is awaited, so an async
    service never blocks its event loop on Redis. A breaker with this state guards async
    callables (use `await breaker.call(...)`, `await breaker.astate()`).

    Each Redis call is cut off after `timeout` seconds (`asyncio.timeout`, so a Sentinel client
    works too; `None` turns this off); the rest is as in `RedisState`."""

    def __init__(self, client: redis.asyncio.Redis, name: str, policy: BreakerPolicy, *, clock: Clock | None = None,
                 prefix: str = "course_lib:breaker", on_event: Callable[[Event], None] | None = None,
                 timeout: float | None = 0.25, store_retry_seconds: float = 5.0) -> None:
        if not isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a redis.asyncio.Redis; for a synchronous client use RedisState")
        super().__init__(client, name, policy, clock, prefix, on_event, timeout, store_retry_seconds)

    async def _run(self, script: Any, args: list[Any], operation: str, now: float) -> Any:
        """The script's answer, or None if Redis failed (or was too slow) now or recently."""
        if self.outage.resting(now):
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await script(keys=self.keys, args=args)
        except redis.RedisError as error:
            self.outage.failed(operation, now, error)
            return None
        except TimeoutError:  # ours: redis-py's own timeouts are RedisErrors
            self.outage.failed(operation, now, redis.TimeoutError(f"no answer within {self.timeout:g}s"))
            return None
        self.outage.answered()
        return result

    async def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        result = await self._run(self._admit, self._admit_args(), "admit", now)
        return self._admit_locally(now) if result is None else self._admitted(result, now)

    async def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        if ticket[0] < 0:
            return self._settle_locally(ticket, verdict, now)
        result = await self._run(self._settle, self._settle_args(ticket, verdict), "settle", now)
        return NO_MOVES if result is None else _moves(result)

    async def current(self, now: float) -> str:
        result = await self._run(self._current, [self._now_arg()], "read", now)
        return self.fallback.current(now) if result is None else self._current_of(result)

    async def reset(self) -> None:
        """Forget the shared state (closed, empty window)."""
        await self.redis.delete(*self.keys)
