"""Cost budgets in dollars, per user and global, per UTC day, shared by every worker through Redis.

Counting requests ignores that one call can cost a hundred times another, and "check the
balance, call, then add the cost" lets ten concurrent calls all see the same balance and all
spend it. So a call first *reserves* its worst-case cost (`worst_case_cost_usd` from input
validation) in one atomic Lua script that refuses when spent + reserved + amount would pass the
limit; after the call it *settles* the actual cost from `usage`, which frees the rest; on failure
it *releases* all of it:

    budget = Budget(redis_client, limit_usd=5.0, name="user")
    held = budget.reserve("alice", worst_case_cost_usd(model, prompt, max_tokens))  # or BudgetExhausted
    try:
        reply = call_model(...)
    except Exception:
        budget.release(held)
        raise
    budget.settle(held, cost_usd(model, usage.prompt_tokens, usage.completion_tokens))

Amounts are kept as integer micro-dollars (no float drift); dollars go in and come out, rounded
up to the micro-dollar. Time comes from Redis (`TIME`) unless a `clock` is given (notebooks and
tests pass a VirtualClock, whose `wall()` is then used): the period (a UTC day by default) is
derived from that time, so budgets reset at midnight UTC for every worker at once.

A reservation is a lease: it holds its amount only until `expires` (`lease_seconds` after it was
made). Every script first sweeps the leases that ran out and gives their amounts back, so a worker
that dies between reserve and settle leaks nothing for longer than one lease. Choose
`lease_seconds` longer than the slowest call you allow (its deadline).

- Settling more than was reserved charges the whole actual cost: the money is spent. The budget
  can then end above its limit; bound the answer with `max_tokens` so that this cannot happen.
- Settling after the lease ran out still charges the actual cost (the event says "expired"): the
  amount was already given back, and meanwhile others may have reserved it, so the day can end
  above the limit by that call. Settling or releasing a reservation twice changes nothing the
  second time ("unknown").
- A reservation made before midnight and settled after it is charged to the new day.
- Several budgets for one call (the user's and the global one): `reserve_all` reserves them in
  order and releases the ones already held when one refuses, so a call holds all or none. While
  that rollback is in flight a concurrent call may be refused by the first budget; nothing is
  ever overspent. Each budget key keeps its own hash tag, so Redis Cluster may spread users.
- Redis unreachable: `on_redis_error="closed"` (the default, for money) refuses the call with
  `BudgetUnavailable`; `"open"` lets it through with a local, unshared reservation whose actual
  cost is charged once Redis answers a settle. Either way a `StoreFallback` event is emitted, one
  warning is logged per outage, and no Redis exception reaches the caller. A settle or release
  that cannot reach Redis is dropped (the lease gives the amount back). Each Redis call is
  bounded by `timeout` seconds, as in `course_lib.breaker_redis`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import redis
import redis.asyncio

from ._wrapping import check, is_finite
from .breaker_redis import StoreOutage, _with_timeout
from .clock import SYSTEM_CLOCK, Clock
from .events import BudgetChanged, Event

__all__ = [
    "PERIODS",
    "AsyncBudget",
    "Budget",
    "BudgetError",
    "BudgetExhausted",
    "BudgetStatus",
    "BudgetUnavailable",
    "Reservation",
    "arelease_all",
    "areserve_all",
    "asettle_all",
    "release_all",
    "reserve_all",
    "settle_all",
]

log = logging.getLogger("course_lib.budget")

PERIODS = {"minute": 60, "hour": 3_600, "day": 86_400}
"""Budget periods in seconds; each starts at a multiple of its length in Unix time (a day at 00:00 UTC)."""
MAX_LIMIT_USD = 1_000_000.0
"""Largest limit: micro-dollar sums stay far below 2**53, where Lua's numbers stop being exact."""
MAX_KEY_CHARS = 256
KEEP_MARGIN = 60
"""Seconds the keys outlive the period's end plus one lease, so no lease is lost to a TTL."""
_MICRO = Decimal(1_000_000)

# Shared prelude (KEYS: totals hash, lease zset, amounts hash). Times are integer microseconds;
# every number handed to redis.call goes through int(): Lua would print large ones as 1.7e+15
# (and -0 as "-0", which HINCRBY refuses).
_PRELUDE = """
local h, leases, amounts = KEYS[1], KEYS[2], KEYS[3]
local function int(x) if x == 0 then return '0' end return string.format('%.0f', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local length = tonumber(ARGV[2]) * 1000000
local period = math.floor(now / length)
local ends = (period + 1) * length
local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', int(now))
local freed = 0
for _, id in ipairs(gone) do
  freed = freed + (tonumber(redis.call('HGET', amounts, id)) or 0)
  redis.call('HSET', amounts, id, 'expired')
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', int(now))
  redis.call('HINCRBY', h, 'reserved', int(-freed))
end
local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
if redis.call('HGET', h, 'period') ~= int(period) then
  spent = 0
  redis.call('HSET', h, 'period', int(period), 'spent', 0)
end
local function keep()
  local ms = math.ceil((ends - now) / 1000) + tonumber(ARGV[3]) * 1000
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, int(ms)) end
end
local function answer(status, extra)
  keep()
  return {status, int(spent), int(reserved), int(ends - now), int(freed), int(now), extra}
end
"""

# ARGV: now, period, keep, limit, amount, id, lease -> {1|0, spent, reserved, reset_after, freed, now, expires}
_RESERVE = _PRELUDE + """
local amount = tonumber(ARGV[5])
if spent + reserved + amount > tonumber(ARGV[4]) then return answer('refused', '0') end
local expires = now + tonumber(ARGV[7])
redis.call('ZADD', leases, int(expires), ARGV[6])
redis.call('HSET', amounts, ARGV[6], int(amount))
reserved = redis.call('HINCRBY', h, 'reserved', int(amount))
return answer('reserved', int(expires))
"""

# ARGV: now, period, keep, id, actual, 'settle'|'release'|'unleased'
#   -> {settled|released|expired|unknown, spent, reserved, reset_after, freed, now, amount the lease held}
_FINISH = _PRELUDE + """
local id, actual, mode = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local held = redis.call('HGET', amounts, id)
local action, amount = 'unknown', 0
if held == 'expired' then
  action = 'expired'
elseif held then
  amount = tonumber(held)
  action = (mode == 'release') and 'released' or 'settled'
  redis.call('ZREM', leases, id)
  reserved = redis.call('HINCRBY', h, 'reserved', int(-amount))
elseif mode == 'unleased' then
  action = 'settled'
end
redis.call('HDEL', amounts, id)
if action ~= 'unknown' and mode ~= 'release' then spent = redis.call('HINCRBY', h, 'spent', int(actual)) end
return answer(action, int(amount))
"""

# ARGV: now, period, keep -> {'status', spent, reserved, reset_after, freed, now, ''}
_STATUS = _PRELUDE + """
return answer('status', '')
"""


def _micros(amount_usd: float) -> int:
    """Dollars to micro-dollars, rounded up: 0.1 is 100000, not 100000.00000000001."""
    return math.ceil(Decimal(repr(float(amount_usd))) * _MICRO)


def _usd(micros: int) -> float:
    return micros / 1_000_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BudgetError(Exception):
    """A call the budget did not let through; `code` is stable for an HTTP error body."""

    code = "budget_error"


class BudgetExhausted(BudgetError):
    """The reservation would take `key` past its limit. `reset_after` is seconds until the
    period ends (for Retry-After, round it up); amounts in dollars."""

    code = "budget_exhausted"

    def __init__(self, name: str, key: str, *, limit_usd: float, spent_usd: float, reserved_usd: float,
                 requested_usd: float, reset_after: float) -> None:
        super().__init__(f"budget {name!r} for {key!r} is exhausted: ${spent_usd:.6f} spent and ${reserved_usd:.6f} "
                         f"reserved of ${limit_usd:.6f}, ${requested_usd:.6f} requested; resets in {reset_after:.0f}s")
        self.name, self.key, self.limit_usd, self.spent_usd = name, key, limit_usd, spent_usd
        self.reserved_usd, self.requested_usd, self.reset_after = reserved_usd, requested_usd, reset_after


class BudgetUnavailable(BudgetError):
    """Redis could not be asked and the budget fails closed: the call is refused (an HTTP 503)."""

    code = "budget_unavailable"

    def __init__(self, name: str, key: str, operation: str, error: str) -> None:
        super().__init__(f"budget {name!r} for {key!r}: Redis {operation} failed ({error}); refusing (fail closed)")
        self.name, self.key, self.operation, self.error = name, key, operation, error


@dataclass(frozen=True, slots=True)
class Reservation:
    """A lease on `amount_usd` of budget `budget` for `key` until `expires` (Unix seconds, on the
    budget's time: Redis's or the clock's wall). `shared` is False for a fail-open reservation
    that Redis never saw."""

    id: str
    key: str
    amount_usd: float
    expires: float
    budget: str
    shared: bool = True


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where a key's budget stands now (expired leases already given back)."""

    key: str
    spent_usd: float
    reserved_usd: float
    limit_usd: float
    reset_after: float

    @property
    def remaining_usd(self) -> float:
        return _usd(max(0, _micros(self.limit_usd) - _micros(self.spent_usd) - _micros(self.reserved_usd)))


@dataclass(frozen=True, slots=True)
class _Answer:
    status: str
    spent: int
    reserved: int
    reset_after: float
    freed: int
    now: float
    extra: int

    @classmethod
    def of(cls, raw: list[Any]) -> _Answer:
        status, spent, reserved, reset_after, freed, now, extra = (_text(v) for v in raw)
        return cls(status, int(spent), int(reserved), int(reset_after) / 1e6, int(freed), int(now) / 1e6,
                   int(extra or 0))


class _BudgetCore:
    """What the sync and async budgets share: configuration, keys, script arguments, events, fallback."""

    def __init__(self, client: Any, *, limit_usd: float, name: str, period: str, lease_seconds: float,
                 on_event: Callable[[Event], None] | None, clock: Clock | None, on_redis_error: str,
                 prefix: str, timeout: float | None) -> None:
        check(is_finite(limit_usd) and 0 < limit_usd <= MAX_LIMIT_USD,
              "limit_usd", f"a number of dollars > 0 and <= {MAX_LIMIT_USD:,.0f}", limit_usd)
        check(isinstance(name, str) and 0 < len(name) <= 64 and not set(name) & set("{}"),
              "name", "1-64 characters without braces", name)
        check(period in PERIODS, "period", f"one of {sorted(PERIODS)}", period)
        check(isinstance(lease_seconds, (int, float)) and math.isfinite(lease_seconds)
              and 0.001 <= lease_seconds <= PERIODS[period], "lease_seconds",
              f">= 0.001 and <= the period ({PERIODS[period]} s)", lease_seconds)
        check(on_redis_error in ("closed", "open"), "on_redis_error", "'closed' or 'open'", on_redis_error)
        check(isinstance(prefix, str) and bool(prefix) and not set(prefix) & set("{}"), "prefix",
              "a non-empty string without braces", prefix)
        check(timeout is None or (math.isfinite(timeout) and timeout > 0), "timeout", "> 0 seconds or None", timeout)
        self.limit_usd, self.name, self.period = float(limit_usd), name, period
        self.lease_seconds = float(lease_seconds)
        self.on_event, self.clock, self.on_redis_error, self.prefix = on_event, clock, on_redis_error, prefix
        self.timeout, self.client = timeout, client
        self._limit = _micros(limit_usd)
        self._lease = math.ceil(lease_seconds * 1_000_000)
        self._keep = math.ceil(lease_seconds) + KEEP_MARGIN
        self.outage = StoreOutage(log, "budget", name, rest=0.0, on_event=on_event, then=f"failing {on_redis_error}")
        self.redis = self._bounded(client)
        self._reserve = self.redis.register_script(_RESERVE)
        self._finish = self.redis.register_script(_FINISH)
        self._status = self.redis.register_script(_STATUS)

    def _bounded(self, client: Any) -> Any:
        return client

    # --- arguments ---------------------------------------------------------------------------
    def keys(self, key: str) -> list[str]:
        """The Redis keys of one budget key: one hash tag, so a Cluster keeps them in one slot."""
        tag = f"{{{self.prefix}:{self.name}:{key}}}"
        return [tag, f"{tag}:leases", f"{tag}:amounts"]

    def _head(self) -> list[Any]:
        now = "" if self.clock is None else str(math.floor(self.clock.wall() * 1_000_000))
        return [now, PERIODS[self.period], self._keep]

    def _check_key(self, key: str) -> None:
        check(isinstance(key, str) and 0 < len(key) <= MAX_KEY_CHARS, "key", f"1-{MAX_KEY_CHARS} characters", key)

    @staticmethod
    def _check_amount(field: str, amount_usd: float) -> int:
        check(is_finite(amount_usd) and 0 <= amount_usd <= MAX_LIMIT_USD, field,
              f"a number of dollars >= 0 and <= {MAX_LIMIT_USD:,.0f}", amount_usd)
        return _micros(amount_usd)

    def _reserve_args(self, key: str, amount_usd: float) -> tuple[list[str], list[Any], int, str]:
        self._check_key(key)
        amount = self._check_amount("amount_usd", amount_usd)
        rid = uuid.uuid4().hex
        return self.keys(key), [*self._head(), self._limit, amount, rid, self._lease], amount, rid

    def _finish_args(self, reservation: Reservation, actual_usd: float, mode: str) -> tuple[list[str], list[Any]]:
        check(isinstance(reservation, Reservation), "reservation", "a Reservation from reserve()", reservation)
        check(reservation.budget == self.name, "reservation", f"a reservation of budget {self.name!r}",
              reservation.budget)
        actual = self._check_amount("actual_usd", actual_usd)
        if not reservation.shared and mode == "settle":
            mode = "unleased"
        return self.keys(reservation.key), [*self._head(), reservation.id, actual, mode]

    # --- answers -----------------------------------------------------------------------------
    def _emit(self, key: str, action: str, amount: int, spent: int) -> None:
        if self.on_event is not None:
            self.on_event(BudgetChanged((self.clock or SYSTEM_CLOCK).now(), self.name, key, action, _usd(amount),
                                        _usd(spent), self.limit_usd))

    def _swept(self, key: str, answer: _Answer) -> None:
        if answer.freed:
            self._emit(key, "expired", answer.freed, answer.spent)

    def _reserved(self, key: str, amount: int, rid: str, raw: list[Any]) -> Reservation:
        answer = _Answer.of(raw)
        self._swept(key, answer)
        if answer.status == "refused":
            self._emit(key, "refused", amount, answer.spent)
            raise BudgetExhausted(self.name, key, limit_usd=self.limit_usd, spent_usd=_usd(answer.spent),
                                  reserved_usd=_usd(answer.reserved), requested_usd=_usd(amount),
                                  reset_after=answer.reset_after)
        self._emit(key, "reserved", amount, answer.spent)
        return Reservation(rid, key, _usd(amount), answer.extra / 1e6, self.name)

    def _finished(self, reservation: Reservation, actual_usd: float, raw: list[Any], mode: str) -> str:
        answer = _Answer.of(raw)
        self._swept(reservation.key, answer)
        if answer.status != "unknown" and not (mode == "release" and answer.status == "expired"):  # nothing moved
            amount = answer.extra if answer.status == "released" else _micros(actual_usd)
            self._emit(reservation.key, answer.status, amount, answer.spent)
        return answer.status

    def _status_of(self, key: str, raw: list[Any]) -> BudgetStatus:
        answer = _Answer.of(raw)
        self._swept(key, answer)
        return BudgetStatus(key, _usd(answer.spent), _usd(answer.reserved), self.limit_usd, answer.reset_after)

    # --- Redis failures ----------------------------------------------------------------------
    def _failed(self, operation: str, error: Exception) -> str:
        return self.outage.failed(operation, (self.clock or SYSTEM_CLOCK).now(), error)

    def _unreachable_reserve(self, key: str, amount: int, rid: str, detail: str) -> Reservation:
        if self.on_redis_error == "closed":
            raise BudgetUnavailable(self.name, key, "reserve", detail)
        wall = (self.clock or SYSTEM_CLOCK).wall()
        return Reservation(rid, key, _usd(amount), wall + self.lease_seconds, self.name, shared=False)


class Budget(_BudgetCore):
    """A daily (or hourly...) dollar budget per key, for synchronous `redis.Redis` clients.

    Redis calls go through a copy of the client's pool whose connects and reads give up after
    `timeout` seconds, without retries; pass `timeout=None` to use a client as given (Sentinel,
    Cluster), then give it short timeouts yourself."""

    def __init__(self, client: redis.Redis, *, limit_usd: float, name: str, period: str = "day",
                 lease_seconds: float = 60.0, on_event: Callable[[Event], None] | None = None,
                 clock: Clock | None = None, on_redis_error: Literal["closed", "open"] = "closed",
                 prefix: str = "course_lib:budget", timeout: float | None = 0.25) -> None:
        if isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a synchronous redis.Redis; for a redis.asyncio client use AsyncBudget")
        super().__init__(client, limit_usd=limit_usd, name=name, period=period, lease_seconds=lease_seconds,
                         on_event=on_event, clock=clock, on_redis_error=on_redis_error, prefix=prefix, timeout=timeout)

    def _bounded(self, client: Any) -> Any:
        return client if self.timeout is None else _with_timeout(client, self.timeout)

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        result = script(keys=keys, args=args)
        self.outage.answered()
        return result  # type: ignore[no-any-return]

    def reserve(self, key: str, amount_usd: float) -> Reservation:
        """Hold `amount_usd` (the worst case) for `key`, or raise BudgetExhausted (BudgetUnavailable
        when Redis is unreachable and the budget fails closed)."""
        keys, args, amount, rid = self._reserve_args(key, amount_usd)
        try:
            raw = self._run(self._reserve, keys, args)
        except redis.RedisError as error:
            return self._unreachable_reserve(key, amount, rid, self._failed("reserve", error))
        return self._reserved(key, amount, rid, raw)

    def settle(self, reservation: Reservation, actual_usd: float) -> str:
        """Charge the actual cost and free the rest of the reservation. Returns "settled",
        "expired" (the lease had run out; charged anyway), "unknown" (already finished; nothing
        changed) or "unavailable" (Redis unreachable; the lease will give the amount back)."""
        return self._finish_call(reservation, actual_usd, "settle")

    def release(self, reservation: Reservation) -> str:
        """Give the whole reservation back (the call failed, nothing was spent). Returns
        "released", "expired", "unknown" or "unavailable" (the lease will give it back)."""
        return self._finish_call(reservation, 0.0, "release")

    def _finish_call(self, reservation: Reservation, actual_usd: float, mode: str) -> str:
        keys, args = self._finish_args(reservation, actual_usd, mode)
        if not reservation.shared and mode == "release":
            self._emit(reservation.key, "released", _micros(reservation.amount_usd), 0)
            return "released"
        try:
            raw = self._run(self._finish, keys, args)
        except redis.RedisError as error:
            self._failed(mode, error)
            return "unavailable"
        return self._finished(reservation, actual_usd, raw, mode)

    def status(self, key: str) -> BudgetStatus:
        """Spent and reserved for `key` in the current period (raises BudgetUnavailable without Redis)."""
        self._check_key(key)
        try:
            raw = self._run(self._status, self.keys(key), self._head())
        except redis.RedisError as error:
            raise BudgetUnavailable(self.name, key, "status", self._failed("status", error)) from None
        return self._status_of(key, raw)

    def reset(self, key: str) -> None:
        """Forget everything about `key` (spent, reservations)."""
        self.redis.delete(*self.keys(key))


class AsyncBudget(_BudgetCore):
    """The same budget for `redis.asyncio` clients, so an async service never blocks its event
    loop on Redis. Each Redis call is cut off after `timeout` seconds (`None`: not cut off)."""

    def __init__(self, client: redis.asyncio.Redis, *, limit_usd: float, name: str, period: str = "day",
                 lease_seconds: float = 60.0, on_event: Callable[[Event], None] | None = None,
                 clock: Clock | None = None, on_redis_error: Literal["closed", "open"] = "closed",
                 prefix: str = "course_lib:budget", timeout: float | None = 0.25) -> None:
        if not isinstance(client, redis.asyncio.Redis):
            raise TypeError("client must be a redis.asyncio.Redis; for a synchronous client use Budget")
        super().__init__(client, limit_usd=limit_usd, name=name, period=period, lease_seconds=lease_seconds,
                         on_event=on_event, clock=clock, on_redis_error=on_redis_error, prefix=prefix, timeout=timeout)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        try:
            async with asyncio.timeout(self.timeout):
                result = await script(keys=keys, args=args)
        except TimeoutError:  # ours: redis-py's own timeouts are RedisErrors
            raise redis.TimeoutError(f"no answer within {self.timeout:g}s") from None
        self.outage.answered()
        return result  # type: ignore[no-any-return]

    async def reserve(self, key: str, amount_usd: float) -> Reservation:
        """As `Budget.reserve`."""
        keys, args, amount, rid = self._reserve_args(key, amount_usd)
        try:
            raw = await self._run(self._reserve, keys, args)
        except redis.RedisError as error:
            return self._unreachable_reserve(key, amount, rid, self._failed("reserve", error))
        return self._reserved(key, amount, rid, raw)

    async def settle(self, reservation: Reservation, actual_usd: float) -> str:
        """As `Budget.settle`."""
        return await self._finish_call(reservation, actual_usd, "settle")

    async def release(self, reservation: Reservation) -> str:
        """As `Budget.release`."""
        return await self._finish_call(reservation, 0.0, "release")

    async def _finish_call(self, reservation: Reservation, actual_usd: float, mode: str) -> str:
        keys, args = self._finish_args(reservation, actual_usd, mode)
        if not reservation.shared and mode == "release":
            self._emit(reservation.key, "released", _micros(reservation.amount_usd), 0)
            return "released"
        try:
            raw = await self._run(self._finish, keys, args)
        except redis.RedisError as error:
            self._failed(mode, error)
            return "unavailable"
        return self._finished(reservation, actual_usd, raw, mode)

    async def status(self, key: str) -> BudgetStatus:
        """As `Budget.status`."""
        self._check_key(key)
        try:
            raw = await self._run(self._status, self.keys(key), self._head())
        except redis.RedisError as error:
            raise BudgetUnavailable(self.name, key, "status", self._failed("status", error)) from None
        return self._status_of(key, raw)

    async def reset(self, key: str) -> None:
        """Forget everything about `key` (spent, reservations)."""
        await self.redis.delete(*self.keys(key))


# --- several budgets for one call -----------------------------------------------------------------
Held = list[tuple[Budget, Reservation]]
AsyncHeld = list[tuple[AsyncBudget, Reservation]]


def reserve_all(claims: Sequence[tuple[Budget, str]], amount_usd: float) -> Held:
    """Reserve `amount_usd` on every (budget, key), in order, or on none: when one refuses (or is
    unavailable), the ones already held are released and its error is raised."""
    held: Held = []
    try:
        for budget, key in claims:
            held.append((budget, budget.reserve(key, amount_usd)))
    except BaseException:
        release_all(held)
        raise
    return held


def settle_all(held: Held, actual_usd: float) -> list[str]:
    """Charge the actual cost to every budget held; each one's outcome as `Budget.settle`."""
    return [budget.settle(reservation, actual_usd) for budget, reservation in held]


def release_all(held: Held) -> list[str]:
    """Give every reservation held back; each one's outcome as `Budget.release`."""
    return [budget.release(reservation) for budget, reservation in held]


async def areserve_all(claims: Sequence[tuple[AsyncBudget, str]], amount_usd: float) -> AsyncHeld:
    """As `reserve_all`, for AsyncBudget."""
    held: AsyncHeld = []
    try:
        for budget, key in claims:
            held.append((budget, await budget.reserve(key, amount_usd)))
    except BaseException:
        await arelease_all(held)
        raise
    return held


async def asettle_all(held: AsyncHeld, actual_usd: float) -> list[str]:
    """As `settle_all`, for AsyncBudget."""
    return [await budget.settle(reservation, actual_usd) for budget, reservation in held]


async def arelease_all(held: AsyncHeld) -> list[str]:
    """As `release_all`, for AsyncBudget."""
    return [await budget.release(reservation) for budget, reservation in held]
