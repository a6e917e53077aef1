"""The service's configuration: typed, read from `COURSE_LIB_*` environment variables.

A dataclass rather than pydantic-settings, so the package needs nothing more; `from_env` reads
the variables, `__post_init__` checks every value, and a bad one stops the service at start with
a `SettingsError` naming the variable and the limit (never a traceback on the first request).

API keys come only from the environment (`COURSE_LIB_API_KEYS=alice=key-a,bob=key-b`) or from a
file it names (`COURSE_LIB_API_KEYS_FILE`, same format, one pair per line or comma-separated):
never from code or a command line, where `ps` would show them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..sim.models import MODELS

__all__ = ["PREFIX", "Settings", "SettingsError", "parse_api_keys"]

PREFIX = "COURSE_LIB_"
_USER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MIN_KEY_CHARS = 8


class SettingsError(ValueError):
    """A configuration value the service cannot start with; `variable` is the environment name."""

    def __init__(self, variable: str, detail: str) -> None:
        super().__init__(f"{variable}: {detail}")
        self.variable = variable


def parse_api_keys(text: str, variable: str = PREFIX + "API_KEYS") -> dict[str, str]:
    """`user=key` pairs separated by commas or newlines -> {key: user}. Users are 1-64 characters
    of A-Z a-z 0-9 _ . : -; keys at least MIN_KEY_CHARS characters, each used by one user only."""
    keys: dict[str, str] = {}
    for number, item in enumerate((p.strip() for p in re.split(r"[,\n]", text)), 1):
        if not item or item.startswith("#"):
            continue
        user, sep, key = (part.strip() for part in item.partition("="))
        if not sep or not _USER.fullmatch(user):
            raise SettingsError(variable, f"entry {number} is not user=key with a user of 1-64 characters "
                                          "A-Z a-z 0-9 _ . : -")
        if len(key) < MIN_KEY_CHARS or not key.isascii() or any(c.isspace() for c in key):
            raise SettingsError(variable, f"the key of user {user!r} must be at least {MIN_KEY_CHARS} printable "
                                          "ASCII characters without spaces")
        if key in keys:
            raise SettingsError(variable, f"users {keys[key]!r} and {user!r} share one key; give each its own")
        keys[key] = user
    return keys


def _number(variable: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(variable, f"{raw!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(variable, f"{raw!r} is not a finite number")
    return value


def _flag(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(variable, f"{raw!r} is not a yes/no value (1/0, true/false, yes/no, on/off)")


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, with safe defaults."""

    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    """{key: user}; empty means every request is refused with a 401."""
    redis_url: str | None = None
    """None: an in-process fakeredis, which only one worker may use."""
    provider_url: str | None = None
    """An OpenAI-compatible base URL (e.g. `course-lib sim serve`'s); None: the in-process simulator."""
    provider_api_key: str = "sim-key"
    model: str = "gpt-4o"
    """Used when a request names no model."""
    fallback_model: str | None = "gpt-4o-mini"
    allowed_models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini")
    static_fallback: bool = True
    """Answer with a fixed, degraded message when every model fails (else a 503)."""
    default_max_tokens: int = 512
    max_body_bytes: int = 256_000
    max_tool_rounds: int = 3
    user_requests_per_minute: int = 60
    """Exact sliding window per user, shared by every worker through Redis."""
    global_requests_per_minute: int = 3_000
    """All users together (sliding window)."""
    user_tokens_per_minute: int = 100_000
    """Per user; a request costs its prompt tokens plus its max_tokens (GCRA: constant memory)."""
    global_tokens_per_minute: int = 5_000_000
    limiter_on_redis_error: str = "local"
    """Rate limits while Redis is unreachable: "local" (each worker keeps its own count, see the
    next field), "open" (admit everything) or "closed" (refuse everything with a 429)."""
    limiter_local_fraction: float = 1.0
    """Each worker's local limit as a fraction of the shared one (N workers: 1/N keeps the total)."""
    budget_on_redis_error: str = "closed"
    """Budgets while Redis is unreachable: "closed" (refuse with 503 budget_unavailable) or "open"
    (let calls through unmetered: money can be overspent until Redis is back)."""
    redis_timeout: float = 0.25
    """Seconds any one Redis call may take before the guard's policy decides instead."""
    user_daily_budget_usd: float = 5.0
    global_daily_budget_usd: float = 100.0
    allowed_hosts: tuple[str, ...] = ()
    """Hosts whose links may stay in an answer; every other link is removed."""
    retry_attempts: int = 3
    retry_base_delay: float = 0.25
    retry_deadline: float = 20.0
    provider_timeout: float = 30.0
    breaker_failures: int = 5
    breaker_open_seconds: float = 30.0
    request_deadline: float = 30.0
    """Seconds one agent run may take in all (every model call, wait and tool); past it: 504."""
    readiness_cache_seconds: float = 5.0
    """How long /readyz reuses each check's answer, so frequent probes cost one provider call."""
    readiness_check_timeout: float = 1.0
    """Seconds each readiness check may take before it counts as failed."""
    shutdown_delay: float = 5.0
    """After SIGTERM: seconds /readyz answers 503 while requests are still served, so the load
    balancer stops sending new ones before the listener closes."""
    drain_timeout: float = 30.0
    """Then: seconds in-flight requests get to finish before the worker exits anyway."""
    log_file: str | None = None
    """JSON log lines go here (appended); unset: standard output."""
    log_level: str = "INFO"
    log_user_ids: str = "hash"
    """How logs show a user: "hash" (a stable salted hash), "plain" or "drop"."""
    log_salt: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, limit: str, value: Any) -> None:
            if not ok:
                raise SettingsError(PREFIX + name.upper(), f"must be {limit}, got {value!r}")

        for name in ("model", "fallback_model"):
            value = getattr(self, name)
            need(value is None and name == "fallback_model" or value in MODELS, name, f"one of {sorted(MODELS)}",
                 value)
        need(len(self.allowed_models) > 0 and all(m in MODELS for m in self.allowed_models), "allowed_models",
             f"a comma-separated list of models from {sorted(MODELS)}", ",".join(self.allowed_models))
        need(self.model in self.allowed_models, "model", f"one of the allowed models {self.allowed_models}",
             self.model)
        need(self.fallback_model is None or self.fallback_model != self.model, "fallback_model",
             f"a model other than COURSE_LIB_MODEL ({self.model}), or empty for none", self.fallback_model)
        def within(name: str, low: float, high: float, *, above: bool = False, unit: str = "",
                   prefix: str = "") -> None:
            """low <= value <= high (low < value with `above`), its limit said in one fixed form."""
            value = getattr(self, name)
            bounds = f"> {low:,} and <= {high:,}" if above else f"from {low:,} to {high:,}"
            need((low < value if above else low <= value) and value <= high, name,
                 prefix + bounds + (f" {unit}" if unit else ""), value)

        within("default_max_tokens", 1, min(MODELS[m].max_output_tokens for m in self.allowed_models))
        within("max_body_bytes", 1_000, 10_000_000)
        within("max_tool_rounds", 0, 10)
        for name in ("user_requests_per_minute", "global_requests_per_minute"):
            within(name, 1, 1_000_000)
        for name in ("user_tokens_per_minute", "global_tokens_per_minute"):
            within(name, 1_000, 10_000_000)
        need(self.limiter_on_redis_error in ("local", "open", "closed"), "limiter_on_redis_error",
             "one of local, open, closed", self.limiter_on_redis_error)
        within("limiter_local_fraction", 0, 1, above=True)
        need(self.budget_on_redis_error in ("closed", "open"), "budget_on_redis_error", "one of closed, open",
             self.budget_on_redis_error)
        within("redis_timeout", 0.01, 10, unit="seconds")
        for name in ("user_daily_budget_usd", "global_daily_budget_usd"):
            within(name, 0, 1_000_000, above=True, prefix="a number of dollars ")
        within("retry_attempts", 1, 10)
        within("retry_base_delay", 0, 10, unit="seconds")
        for name in ("retry_deadline", "provider_timeout", "request_deadline"):
            within(name, 0, 600, above=True, unit="seconds")
        within("breaker_failures", 1, 1_000)
        within("breaker_open_seconds", 0, 3_600, unit="seconds")
        within("readiness_cache_seconds", 0, 300, unit="seconds")
        within("readiness_check_timeout", 0, 30, above=True, unit="seconds")
        within("shutdown_delay", 0, 300, unit="seconds")
        within("drain_timeout", 0, 3_600, unit="seconds")
        need(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "log_level",
             "one of DEBUG, INFO, WARNING, ERROR, CRITICAL", self.log_level)
        need(self.log_user_ids in ("hash", "plain", "drop"), "log_user_ids", "one of hash, plain, drop",
             self.log_user_ids)
        for name in ("redis_url", "provider_url"):
            value = getattr(self, name)
            schemes = ("redis://", "rediss://", "unix://") if name == "redis_url" else ("http://", "https://")
            need(value is None or value.startswith(schemes), name, f"a URL starting with {' or '.join(schemes)}",
                 value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `COURSE_LIB_*` variables (os.environ by default); unset or empty ones keep
        their default. Raises SettingsError naming the first bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            variable = PREFIX + spec.name.upper()
            raw = env.get(variable, "").strip()
            if spec.name == "api_keys":
                values["api_keys"] = _keys_from(env)
            elif spec.name == "fallback_model" and variable in env and not raw:
                values["fallback_model"] = None  # set but empty: no fallback model
            elif not raw:
                continue
            elif spec.type in ("int", "float"):
                values[spec.name] = _number(variable, raw, int if spec.type == "int" else float)
            elif spec.type == "bool":
                values[spec.name] = _flag(variable, raw)
            elif spec.type == "tuple[str, ...]":
                values[spec.name] = tuple(p.strip().lower() if "host" in spec.name else p.strip()
                                          for p in raw.split(",") if p.strip())
            else:
                values[spec.name] = raw.lower() if spec.name.endswith("on_redis_error") or spec.name == "log_user_ids" else raw
        return cls(**values)


def _keys_from(env: Mapping[str, str]) -> dict[str, str]:
    inline, path = env.get(PREFIX + "API_KEYS", ""), env.get(PREFIX + "API_KEYS_FILE", "").strip()
    if inline.strip() and path:
        raise SettingsError(PREFIX + "API_KEYS_FILE", "set either it or COURSE_LIB_API_KEYS, not both")
    if not path:
        return parse_api_keys(inline)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or error
        raise SettingsError(PREFIX + "API_KEYS_FILE", f"cannot read {path}: {why}") from None
    return parse_api_keys(text, PREFIX + "API_KEYS_FILE")
