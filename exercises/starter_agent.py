"""A deliberately naive support agent: the starting point of exercises 1 and 4.

It works on a good day and nothing more: the model call has no retry, the SDK's own retries are
left at their default, and it logs like a first prototype (plain text, the user's question in the
line). The exercises harden it from the outside, without editing this file:

    app = create_app(client)                                   # as shipped
    app = create_app(client, ask=retry_with_backoff()(ask_model))  # exercise 1: your retry around the call

`POST /chat` takes {"messages": [{"role": "user", "content": "..."}]} and answers
{"answer": "...", "model": "..."}; the caller names itself with an `X-User` header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import openai
from fastapi import FastAPI, Request

log = logging.getLogger("starter_agent")

MODEL = "gpt-4o-mini"


def ask_model(client: openai.OpenAI, messages: list[dict[str, Any]], model: str = MODEL) -> str:
    """One chat completion; its text."""
    completion = client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    return completion.choices[0].message.content or ""


def create_app(client: openai.OpenAI, *, ask: Callable[..., str] = ask_model, model: str = MODEL) -> FastAPI:
    """The agent's FastAPI app; `ask(client, messages, model)` makes the model call."""
    app = FastAPI(title="starter agent")

    @app.post("/chat")
    def chat(body: dict[str, Any], request: Request) -> dict[str, Any]:
        user = request.headers.get("x-user", "anonymous")
        messages = body["messages"]
        log.info("chat from %s: %s", user, messages[-1]["content"])
        started = time.perf_counter()
        answer = ask(client, messages, model)
        log.info("answered %s in %.0f ms", user, (time.perf_counter() - started) * 1000)
        return {"answer": answer, "model": model}

    return app
