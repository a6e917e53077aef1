"""The exceptions the openai SDK raises, built from real response objects, for unit tests."""

from __future__ import annotations

import httpx2
import openai

REQUEST = httpx2.Request("POST", "http://sim.local/v1/chat/completions")
CLASS_FOR_STATUS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, *, code: str | None = None, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """The exception the SDK raises for an HTTP `status` with an OpenAI-style error body."""
    body = {"message": f"status {status}", "type": "test", "param": None, "code": code}
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST, json={"error": body})
    cls = CLASS_FOR_STATUS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(f"status {status}", response=response, body=body)


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=REQUEST)


def timeout_error() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=REQUEST)
