"""Every refusal as one JSON shape with a stable `code`, so clients branch on codes, not prose:

    {"error": {"code": "rate_limited", "message": "...", "field": "messages[0].role"}}

`field` names the part of the request at fault (when one is), `limit` what was allowed.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["STATUS", "ServiceError", "error_response"]

STATUS = {
    "unauthorized": 401,
    "invalid_request": 400,
    "input_too_long": 400,
    "injection_suspected": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "rate_limited": 429,
    "budget_exhausted": 429,
    "provider_error": 502,
    "provider_unavailable": 503,
    "budget_unavailable": 503,
    "deadline_exceeded": 504,
    "internal_error": 500,
}
"""Each code's HTTP status; a code never changes its status."""


class ServiceError(Exception):
    """A request the service refuses, ready to become its JSON error response."""

    def __init__(self, code: str, message: str, *, field: str | None = None, limit: Any = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        if code not in STATUS:
            raise ValueError(f"code must be one of {sorted(STATUS)}, got {code!r}")
        super().__init__(message)
        self.code, self.message, self.field, self.limit = code, message, field, limit
        self.headers, self.extra = dict(headers or {}), dict(extra or {})

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.limit is not None:
            error["limit"] = self.limit if isinstance(self.limit, (int, float, str)) else str(self.limit)
        return {"error": {**error, **self.extra}}


def error_response(error: ServiceError, request_id: str | None = None) -> JSONResponse:
    headers = {**error.headers, "X-Worker-PID": str(os.getpid())}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    if error.code == "unauthorized":
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error.body(), status_code=error.status, headers=headers)
