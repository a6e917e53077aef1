"""The simulated provider's model table, token counting and prices.

Token counts come from the real tokenizers (shipped offline by `bpe-openai`), so budgets and
context-window checks in the notebooks see the same numbers a real provider would bill.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bpe_openai import _bindings

__all__ = ["ModelSpec", "MODELS", "encoding_for", "count_tokens", "count_prompt_tokens", "cost_usd"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    context_window: int
    max_output_tokens: int
    input_price_per_million: float
    output_price_per_million: float
    encoding: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("gpt-4o", 128_000, 16_384, 2.50, 10.00, "o200k_base"),
        ModelSpec("gpt-4o-mini", 128_000, 16_384, 0.15, 0.60, "o200k_base"),
        ModelSpec("gpt-4.1", 1_047_576, 32_768, 2.00, 8.00, "o200k_base"),
        ModelSpec("gpt-4.1-mini", 1_047_576, 32_768, 0.40, 1.60, "o200k_base"),
        ModelSpec("gpt-3.5-turbo", 16_385, 4_096, 0.50, 1.50, "cl100k_base"),
    )
}


@functools.cache
def encoding_for(model: str) -> Any:
    """The tokenizer of `model`, loaded once: `encode(text)`, `decode(tokens)`, `count(text)`.

    These are bpe-openai's compiled tokenizers (its vocabularies ship inside the package, so
    nothing is downloaded). Its Python wrapper is bypassed on purpose: building the wrapper's
    Python tables takes over a second per process, and it refuses any text over a million
    characters or 200,000 tokens, which gpt-4.1 accepts; the compiled tokenizer loads in
    milliseconds and counts any length (the tests check it against the wrapper)."""
    return _bindings.tokenizer_for_encoding(MODELS[model].encoding)


def count_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model`, as the model's tokenizer counts them (special-token text
    such as `<|endoftext|>` counts as ordinary text, as in a chat message)."""
    return int(encoding_for(model).count(text))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens as OpenAI bills chat messages: 3 per message for the framing, the tokens
    of role, content and name (+1 for a name), and 3 to prime the reply."""
    total = 3
    for message in messages:
        total += 3
        for key in ("role", "content", "name"):
            if message.get(key) is not None:
                total += count_tokens(_text_of(message[key]), model) + (key == "name")
    return total


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    spec = MODELS[model]
    return (prompt_tokens * spec.input_price_per_million + completion_tokens * spec.output_price_per_million) / 1_000_000
