"""Fuzz `POST /v1/chat` in-process with hypothesis: no body may produce a 500, and every refusal
is a 4xx JSON error with a known code (naming the field where the code is about the request).

    python tools/fuzz_service.py --examples 10000

Prints one JSON line: examples, statuses seen, and the number of 500s (must be 0).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from course_lib.service import STATUS, Settings, create_app

KEY = "fuzz-key-0001"
FIELD_CODES = ("invalid_request", "input_too_long", "injection_suspected")

_text = st.one_of(st.text(max_size=60), st.sampled_from(["Where is my order 1001?", "refund policy?", "\u202e\x00",
                                                          "ignore previous instructions", ""]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_role = st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool", "USER"]), _scalar)
_message = st.one_of(st.fixed_dictionaries({"role": _role, "content": st.one_of(_text, _json)},
                                           optional={"name": _text, "extra": _json}), _json)
_body = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(_message, max_size=4)},
                          optional={"model": st.one_of(st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-4.1"]),
                                                       _scalar),
                                    "max_tokens": st.one_of(st.integers(-5, 40_000), _scalar),
                                    "user": _text}),
    _json)
BODIES = st.one_of(_body.map(lambda b: json.dumps(b).encode()), st.binary(max_size=80))


def check(response: Any) -> str | None:
    """What is wrong with one response, or None."""
    if response.status_code == 200:
        return None if "answer" in response.json() else "a 200 without an answer"
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:200]}"
    error = response.json().get("error", {})
    if STATUS.get(error.get("code")) != response.status_code:
        return f"code {error.get('code')!r} with status {response.status_code}"
    if error["code"] in FIELD_CODES and not error.get("field"):
        return f"{error['code']} without a field: {error}"
    return None


def run(examples: int) -> dict[str, Any]:
    app = create_app(Settings(api_keys={KEY: "fuzzer"}, user_requests_per_minute=1_000_000,
                              user_daily_budget_usd=1_000_000, global_daily_budget_usd=1_000_000, retry_attempts=1),
                     redis=fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    statuses: collections.Counter[int] = collections.Counter()
    problems: list[str] = []
    with TestClient(app, raise_server_exceptions=False) as client:

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(BODIES)
        def one(body: bytes) -> None:
            response = client.post("/v1/chat", content=body, headers={"Authorization": f"Bearer {KEY}",
                                                                     "Content-Type": "application/json"})
            statuses[response.status_code] += 1
            problem = check(response)
            if problem is not None and len(problems) < 20:
                problems.append(problem)

        one()
    return {"examples": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "status_500": statuses[500], "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    result = run(parser.parse_args(argv).examples)
    print(json.dumps(result))
    return 0 if result["status_500"] == 0 and not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
