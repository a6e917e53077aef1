"""Circuit breaker state shared through Redis, so every worker and server obeys one breaker.

    breaker = CircuitBreaker(policy, name="gpt-4o", state=RedisState(redis_client, "gpt-4o", policy))
    breaker = CircuitBreaker(policy, name="gpt-4o", state=AsyncRedisState(async_client, "gpt-4o", policy))

Each decision (admit, settle) is one Lua script, so concurrent processes cannot interleave
half-way through a transition. In async code use `AsyncRedisState` with a `redis.asyncio`
client: a synchronous client would block the event loop for every decision. Time comes from
the Redis server (`TIME`) unless a clock is given (tests and notebooks pass a VirtualClock):
app servers' clocks differ, Redis's is one.
If Redis fails, the breaker decides locally for that call and says so in a warning log and a
`StoreFallback` event; a broken cache never fails the call it was meant to protect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from .breaker import NO_MOVES, BreakerPolicy, LocalState, Moves, Ticket, Verdict
from .clock import Clock
from .events import Event, StoreFallback

__all__ = ["RedisState", "AsyncRedisState"]

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


class _RedisScripts:
    """What the sync and async Redis states share: keys, script arguments, parsing, fallback."""

    def __init__(self, client: Any, name: str, policy: BreakerPolicy, clock: Clock | None, prefix: str,
                 on_event: Callable[[Event], None] | None) -> None:
        self.client, self.name, self.policy, self.clock, self.on_event = client, name, policy, clock, on_event
        # One hash tag for both keys, so that a Redis Cluster keeps them in one slot for the scripts.
        self.keys = [f"{{{prefix}:{name}}}", f"{{{prefix}:{name}}}:window"]
        self.fallback = LocalState(policy)
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._current = client.register_script(_CURRENT)

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

    def _fall_back(self, operation: str, now: float, error: Exception) -> None:
        log.warning("breaker %r: Redis %s failed (%s: %s); deciding locally", self.name, operation, type(error).__name__, error)
        if self.on_event is not None:
            self.on_event(StoreFallback(now, self.name, operation, f"{type(error).__name__}: {error}"))

    def _admit_locally(self, now: float, error: Exception) -> tuple[Ticket | None, float, Moves]:
        self._fall_back("admit", now, error)
        ticket, retry_in, moves = self.fallback.admit(now)
        # Local tickets carry a negative generation so that settle knows where they belong.
        return (None if ticket is None else (-1 - ticket[0], ticket[1], ticket[2])), retry_in, moves

    def _settle_locally(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        generation, state, started = ticket
        return self.fallback.settle((-1 - generation, state, started), verdict, now)


class RedisState(_RedisScripts):
    """`BreakerState` kept in Redis (a hash and a list under `{prefix:name}`), for sync clients."""

    def __init__(self, client: redis.Redis, name: str, policy: BreakerPolicy, *, clock: Clock | None = None,
                 prefix: str = "course_lib:breaker", on_event: Callable[[Event], None] | None = None) -> None:
        if isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a synchronous redis.Redis; for a redis.asyncio client use AsyncRedisState")
        super().__init__(client, name, policy, clock, prefix, on_event)

    def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        try:
            result = self._admit(keys=self.keys, args=self._admit_args())
        except redis.RedisError as error:
            return self._admit_locally(now, error)
        return self._admitted(result, now)

    def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        if ticket[0] < 0:
            return self._settle_locally(ticket, verdict, now)
        try:
            return _moves(self._settle(keys=self.keys, args=self._settle_args(ticket, verdict)))
        except redis.RedisError as error:
            self._fall_back("settle", now, error)
            return NO_MOVES

    def current(self, now: float) -> str:
        try:
            return self._current_of(self._current(keys=self.keys, args=[self._now_arg()]))
        except redis.RedisError as error:
            self._fall_back("read", now, error)
            return self.fallback.current(now)

    def reset(self) -> None:
        """Forget the shared state (closed, empty window)."""
        self.client.delete(*self.keys)


class AsyncRedisState(_RedisScripts):
    """The same state for `redis.asyncio` clients: every decision is awaited, so an async
    service never blocks its event loop on Redis. A breaker with this state guards async
    callables (use `await breaker.call(...)`, `await breaker.astate()`)."""

    def __init__(self, client: redis.asyncio.Redis, name: str, policy: BreakerPolicy, *, clock: Clock | None = None,
                 prefix: str = "course_lib:breaker", on_event: Callable[[Event], None] | None = None) -> None:
        if not isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a redis.asyncio.Redis; for a synchronous client use RedisState")
        super().__init__(client, name, policy, clock, prefix, on_event)

    async def admit(self, now: float) -> tuple[Ticket | None, float, Moves]:
        try:
            result = await self._admit(keys=self.keys, args=self._admit_args())
        except redis.RedisError as error:
            return self._admit_locally(now, error)
        return self._admitted(result, now)

    async def settle(self, ticket: Ticket, verdict: Verdict, now: float) -> Moves:
        if ticket[0] < 0:
            return self._settle_locally(ticket, verdict, now)
        try:
            return _moves(await self._settle(keys=self.keys, args=self._settle_args(ticket, verdict)))
        except redis.RedisError as error:
            self._fall_back("settle", now, error)
            return NO_MOVES

    async def current(self, now: float) -> str:
        try:
            return self._current_of(await self._current(keys=self.keys, args=[self._now_arg()]))
        except redis.RedisError as error:
            self._fall_back("read", now, error)
            return self.fallback.current(now)

    async def reset(self) -> None:
        """Forget the shared state (closed, empty window)."""
        await self.client.delete(*self.keys)
