"""The simulated provider's model table, token counting and prices.

Token counts come from the real tokenizers (shipped offline by `bpe-openai`), so budgets and
context-window checks in the notebooks see the same numbers a real provider would bill.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import bpe_openai

__all__ = ["ModelSpec", "MODELS", "encoding_for", "count_tokens", "count_prompt_tokens", "cost_usd", "pieces", "is_safe_cut"]


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
    """The tokenizer of `model` (loaded once; the vocabularies ship inside bpe-openai)."""
    return bpe_openai.get_encoding(MODELS[model].encoding)


# bpe-openai refuses more than 1,000,000 characters or 200,000 tokens in one call. A character
# is at most 4 UTF-8 bytes and a token at least one byte, so 40,000 characters stay below both.
_PIECE_CHARS = 40_000


def count_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model`, exactly as the model's tokenizer counts them, at any length."""
    encoding = encoding_for(model)
    return sum(len(encoding.encode(piece, disallowed_special=())) for piece in pieces(text))


def pieces(text: str, size: int = _PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most `size` characters whose tokens add up to the tokens of
    the whole: each cut lies where both tokenizers' pre-split always breaks (before a single space
    between two non-spaces, or between a letter or digit and punctuation). A stretch of `size`
    characters with no such place (one huge word) is cut where it ends, which may shift the count
    by a token."""
    out, start = [], 0
    while len(text) - start > size:
        cut = _safe_cut(text, start + 1, start + size)
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _safe_cut(text: str, low: int, high: int) -> int:
    return next((i for i in range(high, low - 1, -1) if is_safe_cut(text, i)), high)


def is_safe_cut(text: str, i: int) -> bool:
    """True where the tokenizers' pre-split always breaks, so text[:i] and text[i:] encode to
    exactly the tokens of text."""
    before, here, after = text[i - 1], text[i], text[i + 1 : i + 2]
    if here == " ":
        return not before.isspace() and after != "" and not after.isspace()
    return before.isalnum() and not (here.isalnum() or here.isspace() or here in "'\u2019")


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
