"""Distributed rate limits on Redis: every server process shares one count per key.

    limiter = RateLimiter(redis_client, limit=60, window=60, name="user-requests")
    decision = limiter.hit(user_id)
    if not decision.allowed:
        return JSONResponse({"code": "rate_limited"}, status_code=429, headers=decision.headers())

In an async service use `AsyncRateLimiter` with a `redis.asyncio` client (`await limiter.hit(key)`):
a synchronous client blocks the event loop for every decision.

Each decision is ONE Lua script, so concurrent servers cannot interleave half-way, and it reads
the time from Redis (`TIME`): the app servers' clocks differ, Redis's is one. (`time_source="clock"`
passes `clock.wall()` to the script instead: for notebooks and tests on a virtual clock; in
production keep Redis time, because app servers' clocks differ.) Two algorithms:

- "sliding-log" (exact): a sorted set of admitted requests scored by their time in microseconds.
  A request is admitted when fewer than `limit` (minus its cost) were admitted in the last
  `window` seconds, the interval (now - window, now]. A refused request is never recorded, so a
  client retrying too fast is admitted as soon as the window frees. Members are
  "<time>-<sequence number>" (an INCR on a key beside the set), so two requests in the same
  microsecond cannot overwrite each other. Memory: one member per admitted unit of cost.
- "gcra" (constant memory, one key): the generic cell rate algorithm. Units of cost free up
  one every `window / limit` seconds and at most `limit` can be stored, so a burst of `limit` is
  admitted at once and then one per `window / limit`. It is exact for its own definition (in
  any interval of d seconds it admits at most `limit + d * limit / window` units), but it is
  NOT a sliding window: a full burst, then one emission interval short of a window later another
  `limit - 1` units, puts up to `2 * limit - 1` admissions inside one window. Use it for token
  budgets and smooth request rates; use the sliding log when "at most N per window" is a promise.

`cost` charges one request several units (tokens): GCRA charges `cost` emission intervals, the
sliding log adds `cost` members. A `cost` above `limit` can never pass and is refused as an error.

Keys share one hash tag per limited key, `{rl:<name>:<key>}:log` and `{rl:<name>:<key>}:seq`
(GCRA: `{rl:<name>:<key>}:tat`), so a Redis Cluster keeps a decision's keys on one slot, and every
key has a TTL, so idle keys disappear by themselves.

Limits per user and global, on requests and on tokens, are several limiters; `hit_all` (or
`ahit_all`) checks them in order and, when a later one refuses, gives back what the earlier
ones counted, so a refused request is not counted anywhere:

    per_user = RateLimiter(r, limit=60, window=60, name="user-requests")
    everyone = RateLimiter(r, limit=1000, window=60, name="global-requests")
    user_tokens = RateLimiter(r, limit=40_000, window=60, algorithm="gcra", name="user-tokens")
    decision = hit_all([(per_user, user_id, 1), (everyone, "all", 1), (user_tokens, user_id, tokens)])

The give-back is a second script per earlier limiter, so between the two another request may
see the earlier count still taken (it is then refused when it could have passed, never the
reverse). A limiter that decided locally (Redis down) gives back nothing.

When Redis is unreachable or fails (any Redis error: refused connection, timeout, READONLY...)
the limiter follows `on_redis_error`:
"open" admits, "closed" refuses (Retry-After 1 s), "local" decides with an in-process sliding
log of `local_limit` per `window`. That local limit is per process: N workers admit up to N
times it. Each failure emits `StoreFallback` and logs (one warning per outage); for
`store_retry_seconds` after a failure Redis is not asked at all, so an outage does not add a
timeout to every request. A Redis error never reaches the caller. Redis calls are bounded by
`timeout` seconds as in `course_lib.breaker_redis` (a copy of the pool with short socket
timeouts and no retries for sync clients, `asyncio.timeout` for async ones).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis.asyncio

from ._wrapping import check, is_whole
from .breaker_redis import StoreOutage, _with_timeout
from .clock import SYSTEM_CLOCK, Clock
from .events import Event, LimitChecked

__all__ = ["ALGORITHMS", "POLICIES", "TIME_SOURCES", "AsyncRateLimiter", "Decision", "RateLimiter", "ahit_all", "hit_all"]

log = logging.getLogger("course_lib.ratelimit")

ALGORITHMS = ("sliding-log", "gcra")
POLICIES = ("open", "closed", "local")
Algorithm = Literal["sliding-log", "gcra"]
Policy = Literal["open", "closed", "local"]
TimeSource = Literal["redis", "clock"]
TIME_SOURCES = ("redis", "clock")

# Both scripts: KEYS as documented above; ARGV: limit, window (us), cost[, now (us) when time_source="clock"].
# They return "allowed used reset_us retry_us now_us first_seq" as one string; times in whole microseconds.
_NOW = """
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = math.ceil(window / 1000) + 1000
local stamp = string.format('%.0f', now)  -- tostring() would print 14 digits and lose microseconds
local function answer(...)  -- one string, not an array of six: one read for the client, not seven
  return string.format(string.rep('%.0f ', select('#', ...)), ...)
end
"""

_SLIDING_LOG = _NOW + """
local log, seq = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
local used = redis.call('ZCARD', log)
if used + cost > limit then
  -- refused, and not recorded: room for `cost` comes when the oldest (used + cost - limit) leave
  local freeing = redis.call('ZRANGE', log, used + cost - limit - 1, used + cost - limit - 1, 'WITHSCORES')
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  return answer(0, used, tonumber(oldest[2]) + window - now, tonumber(freeing[2]) + window - now, now, 0)
end
local last = redis.call('INCRBY', seq, cost)
local members = {}
for i = last - cost + 1, last do
  table.insert(members, stamp) ; table.insert(members, stamp .. '-' .. i)
end
redis.call('ZADD', log, unpack(members))
redis.call('PEXPIRE', log, ttl) ; redis.call('PEXPIRE', seq, ttl)
local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
return answer(1, used + cost, tonumber(oldest[2]) + window - now, 0, now, last - cost + 1)
"""

# GCRA in microseconds: `tat` is the theoretical arrival time, when the stored units are all
# free again; a request fits if tat + cost * interval <= now + window.
_GCRA = _NOW + """
local key = KEYS[1]
local interval = window / limit
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local function used(at) return math.max(0, math.ceil((at - now) / interval - 1e-9)) end
if new_tat - now > window then
  return answer(0, used(tat), math.ceil(tat - now), math.ceil(new_tat - window - now), now, 0)
end
redis.call('SET', key, string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return answer(1, used(new_tat), math.ceil(new_tat - now), 0, now, 0)
"""

# Give back what an admitted decision counted. ARGV: kind, first member seq / cost, cost, limit, window (us)
_REFUND = """
if ARGV[1] == 'sliding-log' then
  local first, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
  local members = {}
  for i = first, first + cost - 1 do table.insert(members, ARGV[6] .. '-' .. i) end
  return redis.call('ZREM', KEYS[1], unpack(members))
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = tonumber(ARGV[3]) * tonumber(ARGV[5]) / tonumber(ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if tat == 0 or ttl < 0 then return 0 end
redis.call('SET', KEYS[1], string.format('%.17g', tat - back), 'PX', ttl)
return 1
"""


@dataclass(frozen=True, slots=True)
class Decision:
    """One rate-limit decision, with what the HTTP layer needs.

    `remaining`: units of cost that would still pass now. `reset_after`: seconds until the
    limit is fully available again (sliding log: until the oldest admitted request leaves the
    window; GCRA: until every stored unit has freed up); 0 when nothing is counted.
    `retry_after`: whole seconds (rounded up, at least 1) until this request could pass; None
    when it was allowed; a duration, never a timestamp. `decided_by` is "redis", or the policy
    ("open", "closed", "local") that decided while Redis was unreachable. `time` is the Redis
    time of the decision in seconds (None when decided locally)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: int | None
    name: str = "default"
    window: float = 60.0
    decided_by: str = "redis"
    time: float | None = None
    _refund: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` as in draft-ietf-httpapi-ratelimit-headers-09
        (both integer seconds, rounded up), plus `Retry-After` on a refusal."""
        headers = {
            "RateLimit-Policy": f'"{self.name}";q={self.limit};w={math.ceil(self.window)}',
            "RateLimit": f'"{self.name}";r={self.remaining};t={math.ceil(self.reset_after)}',
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def _whole_seconds(seconds: float) -> int:
    """Retry-After: a number of whole seconds, rounded up and at least 1."""
    return max(1, math.ceil(seconds))


class _LocalLog:
    """The in-process fallback: a sliding log on the limiter's clock. Per process only."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._logs: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, cost: int, now: float) -> tuple[bool, int, float, float]:
        """(allowed, used, reset_after, retry_after in seconds)."""
        with self._lock:
            times = self._logs.setdefault(key, collections.deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) + cost > self.limit:
                if cost > self.limit:
                    return False, len(times), self.window, self.window
                freeing = times[len(times) + cost - self.limit - 1]
                return False, len(times), times[0] + self.window - now, freeing + self.window - now
            times.extend([now] * cost)
            return True, len(times), times[0] + self.window - now, 0.0


class _Limiter:
    """What the sync and async limiters share: configuration, keys, parsing, fallback."""

    def __init__(self, client: Any, *, limit: int, window: float, algorithm: str, name: str,
                 on_event: Callable[[Event], None] | None, clock: Clock, on_redis_error: str,
                 local_limit: int | None, timeout: float | None, store_retry_seconds: float,
                 time_source: str = "redis") -> None:
        check(is_whole(limit) and 1 <= limit <= 10_000_000, "limit",
              "an integer from 1 to 10,000,000", limit)
        check(isinstance(window, (int, float)) and math.isfinite(window) and 0.001 <= window <= 31_536_000,
              "window", "from 0.001 to 31,536,000 seconds (a year)", window)
        check(algorithm in ALGORITHMS, "algorithm", f"one of {ALGORITHMS}", algorithm)
        check(isinstance(name, str) and 0 < len(name) <= 100 and '"' not in name and "{" not in name
              and "}" not in name, "name", "1-100 characters without quotes or braces", name)
        check(on_redis_error in POLICIES, "on_redis_error", f"one of {POLICIES}", on_redis_error)
        check(time_source in TIME_SOURCES, "time_source", f"one of {TIME_SOURCES}", time_source)
        if on_redis_error == "local":
            check(is_whole(local_limit) and local_limit >= 1,
                  "local_limit", "an integer >= 1 when on_redis_error is 'local'", local_limit)
        check(timeout is None or (math.isfinite(timeout) and timeout > 0), "timeout", "> 0 seconds or None", timeout)
        check(math.isfinite(store_retry_seconds) and store_retry_seconds >= 0, "store_retry_seconds", ">= 0",
              store_retry_seconds)
        self.limit, self.window, self.algorithm, self.name = limit, float(window), algorithm, name
        self.on_event, self.clock, self.on_redis_error = on_event, clock, on_redis_error
        self.local_limit, self.timeout, self.store_retry_seconds = local_limit, timeout, store_retry_seconds
        self.time_source = time_source
        self._window_us = round(self.window * 1_000_000)
        self._local = _LocalLog(local_limit or limit, self.window)
        self.outage = StoreOutage(log, "rate limiter", name, rest=store_retry_seconds, on_event=on_event,
                                  then=f"deciding {on_redis_error!r} for the next {store_retry_seconds:g}s")
        self.redis = self._bounded(client)
        self._script = self.redis.register_script(_SLIDING_LOG if algorithm == "sliding-log" else _GCRA)
        self._refund_script = self.redis.register_script(_REFUND)

    def _bounded(self, client: Any) -> Any:
        return client

    def keys(self, key: str) -> list[str]:
        """The Redis keys of one limited key; one hash tag, so one Cluster slot."""
        check(isinstance(key, str) and 0 < len(key) <= 200, "key", "a string of 1-200 characters", key)
        tag = f"{{rl:{self.name}:{key}}}"
        return [f"{tag}:log", f"{tag}:seq"] if self.algorithm == "sliding-log" else [f"{tag}:tat"]

    def _args(self, cost: int) -> list[Any]:
        check(is_whole(cost) and 1 <= cost <= self.limit, "cost",
              f"an integer from 1 to the limit ({self.limit})", cost)
        if self.time_source == "clock":  # notebooks and tests on a virtual clock only
            return [self.limit, self._window_us, cost, round(self.clock.wall() * 1_000_000)]
        return [self.limit, self._window_us, cost]

    def _decided(self, key: str, cost: int, result: bytes | str) -> Decision:
        allowed, used, reset_us, retry_us, now_us, first = (int(v) for v in result.split())
        refund = (self.algorithm, first, cost, now_us) if allowed else None
        decision = Decision(bool(allowed), self.limit, max(0, self.limit - used), max(0, reset_us) / 1e6,
                            None if allowed else _whole_seconds(retry_us / 1e6), self.name, self.window, "redis",
                            now_us / 1e6, refund)
        return self._emit(key, decision)

    def _emit(self, key: str, decision: Decision) -> Decision:
        if self.on_event is not None:
            self.on_event(LimitChecked(self.clock.now(), self.name, key, decision.allowed, decision.remaining,
                                       decision.retry_after))
        return decision

    def _fallback(self, key: str, cost: int) -> Decision:
        """Decide without Redis, by the configured policy."""
        policy = self.on_redis_error
        if policy == "open":
            decision = Decision(True, self.limit, self.limit, 0.0, None, self.name, self.window, "open")
        elif policy == "closed":
            decision = Decision(False, self.limit, 0, 1.0, 1, self.name, self.window, "closed")
        else:
            allowed, used, reset, retry = self._local.hit(key, cost, self.clock.now())
            limit = self._local.limit
            decision = Decision(allowed, limit, max(0, limit - used), max(0.0, reset),
                                None if allowed else _whole_seconds(retry), self.name, self.window, "local")
        return self._emit(key, decision)

    def _refund_call(self, decision: Decision) -> tuple[list[str], list[Any]] | None:
        if decision._refund is None or not decision.allowed:
            return None
        algorithm, first, cost, now_us = decision._refund
        return [], [algorithm, first, cost, self.limit, self._window_us, now_us]


class RateLimiter(_Limiter):
    """A rate limiter for a synchronous `redis.Redis` client; see the module docstring.

    `clock` times events, the local fallback and the pause after a Redis failure, never the
    decisions (those use Redis's `TIME`), unless `time_source="clock"`: then each decision
    takes its time from `clock.wall()`, for notebooks and tests on a virtual clock. In
    production keep Redis time, because app servers' clocks differ. A client whose pool cannot
    be copied is refused unless `timeout=None` (then give it short timeouts and no retries
    yourself)."""

    def __init__(self, client: redis.Redis, *, limit: int, window: float, algorithm: Algorithm = "sliding-log",
                 name: str = "default", on_event: Callable[[Event], None] | None = None, clock: Clock = SYSTEM_CLOCK,
                 on_redis_error: Policy = "open", local_limit: int | None = None, timeout: float | None = 0.25,
                 store_retry_seconds: float = 5.0, time_source: TimeSource = "redis") -> None:
        if isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a synchronous redis.Redis; for a redis.asyncio client use AsyncRateLimiter")
        super().__init__(client, limit=limit, window=window, algorithm=algorithm, name=name, on_event=on_event,
                         clock=clock, on_redis_error=on_redis_error, local_limit=local_limit, timeout=timeout,
                         store_retry_seconds=store_retry_seconds, time_source=time_source)

    def _bounded(self, client: Any) -> Any:
        return client if self.timeout is None else _with_timeout(client, self.timeout)

    def hit(self, key: str, cost: int = 1) -> Decision:
        """Count `cost` units for `key` if they fit; a refused hit is not counted."""
        keys, args = self.keys(key), self._args(cost)
        if self.outage.resting(self.clock.now()):
            return self._fallback(key, cost)
        try:
            result = self._script(keys=keys, args=args)
        except redis.RedisError as error:
            self.outage.failed("hit", self.clock.now(), error)
            return self._fallback(key, cost)
        self.outage.answered()
        return self._decided(key, cost, result)

    def refund(self, key: str, decision: Decision) -> None:
        """Give back what an allowed `decision` for `key` counted (nothing for a refused or local one)."""
        call = self._refund_call(decision)
        if call is None:
            return
        try:
            self._refund_script(keys=self.keys(key)[:1], args=call[1])
        except redis.RedisError as error:
            self.outage.failed("refund", self.clock.now(), error)


class AsyncRateLimiter(_Limiter):
    """The same limiter for `redis.asyncio` clients: every decision is awaited. Each Redis call
    is cut off after `timeout` seconds (`asyncio.timeout`)."""

    def __init__(self, client: redis.asyncio.Redis, *, limit: int, window: float,
                 algorithm: Algorithm = "sliding-log", name: str = "default",
                 on_event: Callable[[Event], None] | None = None, clock: Clock = SYSTEM_CLOCK,
                 on_redis_error: Policy = "open", local_limit: int | None = None, timeout: float | None = 0.25,
                 store_retry_seconds: float = 5.0, time_source: TimeSource = "redis") -> None:
        if not isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a redis.asyncio.Redis; for a synchronous client use RateLimiter")
        super().__init__(client, limit=limit, window=window, algorithm=algorithm, name=name, on_event=on_event,
                         clock=clock, on_redis_error=on_redis_error, local_limit=local_limit, timeout=timeout,
                         store_retry_seconds=store_retry_seconds, time_source=time_source)

    async def _run(self, script: Any, keys: list[str], args: list[Any], operation: str) -> Any:
        """The script's answer, or None when Redis failed or was too slow."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await script(keys=keys, args=args)
        except redis.RedisError as error:
            self.outage.failed(operation, self.clock.now(), error)
            return None
        except TimeoutError:  # ours: redis-py's own timeouts are RedisErrors
            self.outage.failed(operation, self.clock.now(), redis.TimeoutError(f"no answer within {self.timeout:g}s"))
            return None
        self.outage.answered()
        return result

    async def hit(self, key: str, cost: int = 1) -> Decision:
        """Count `cost` units for `key` if they fit; a refused hit is not counted."""
        keys, args = self.keys(key), self._args(cost)
        if self.outage.resting(self.clock.now()):
            return self._fallback(key, cost)
        result = await self._run(self._script, keys, args, "hit")
        return self._fallback(key, cost) if result is None else self._decided(key, cost, result)

    async def refund(self, key: str, decision: Decision) -> None:
        """Give back what an allowed `decision` for `key` counted (nothing for a refused or local one)."""
        call = self._refund_call(decision)
        if call is not None:
            await self._run(self._refund_script, self.keys(key)[:1], call[1], "refund")


def _checked_all(checks: Sequence[tuple[Any, str, int]]) -> None:
    check(len(checks) > 0, "checks", "at least one (limiter, key, cost)", checks)


def hit_all(checks: Sequence[tuple[RateLimiter, str, int]]) -> Decision:
    """Hit each (limiter, key, cost) in order. The first refusal is returned after giving back
    what the earlier limiters counted; if all allow, the decision with the fewest remaining."""
    _checked_all(checks)
    admitted: list[tuple[RateLimiter, str, Decision]] = []
    for limiter, key, cost in checks:
        decision = limiter.hit(key, cost)
        if not decision.allowed:
            for earlier, earlier_key, earlier_decision in reversed(admitted):
                earlier.refund(earlier_key, earlier_decision)
            return decision
        admitted.append((limiter, key, decision))
    return min((d for _, _, d in admitted), key=lambda d: d.remaining / d.limit)


async def ahit_all(checks: Sequence[tuple[AsyncRateLimiter, str, int]]) -> Decision:
    """`hit_all` for async limiters."""
    _checked_all(checks)
    admitted: list[tuple[AsyncRateLimiter, str, Decision]] = []
    for limiter, key, cost in checks:
        decision = await limiter.hit(key, cost)
        if not decision.allowed:
            for earlier, earlier_key, earlier_decision in reversed(admitted):
                await earlier.refund(earlier_key, earlier_decision)
            return decision
        admitted.append((limiter, key, decision))
    return min((d for _, _, d in admitted), key=lambda d: d.remaining / d.limit)
