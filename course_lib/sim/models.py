"""The simulated provider's model table, token counting and prices.

Token counts come from the real tokenizers (shipped offline by `bpe-openai`), so budgets and
context-window checks in the notebooks see the same numbers a real provider would bill.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ModelSpec", "MODELS", "encoding_for", "count_tokens", "count_prompt_tokens", "cost_usd", "text_pieces", "whole_text", "text_of",
           "check_model"]


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


def check_model(model: object) -> None:
    """Refuse a model the table does not know, naming the field and the known ones (the message
    is built only on failure: this runs for every message counted)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")


@functools.cache
def encoding_for(model: str) -> Any:
    """The tokenizer of `model`, loaded once: `encode(text)`, `decode(tokens)`, `count(text)`.

    These are bpe-openai's compiled tokenizers (its vocabularies ship inside the package, so
    nothing is downloaded), used without its Python wrapper, which builds Python tables of
    every token (over a second per process) and refuses any text over a million characters or
    200,000 tokens, though gpt-4.1 accepts more. The compiled tokenizer loads in milliseconds
    and counts any length; the tests check it against the wrapper."""
    return _compiled_tokenizers().tokenizer_for_encoding(MODELS[model].encoding)


@functools.cache
def _compiled_tokenizers() -> ModuleType:
    """bpe-openai's compiled module, loaded without running the package's `__init__`, which
    reads every vocabulary into Python dicts (most of a second) only to list special tokens."""
    name = "bpe_openai._bindings"
    package = importlib.util.find_spec("bpe_openai")  # finds the folder without importing it
    if name not in sys.modules and package is not None and package.submodule_search_locations:
        folder = Path(next(iter(package.submodule_search_locations)))
        for path in (folder / f"_bindings{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            spec = importlib.util.spec_from_file_location(name, path)
            if path.exists() and spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # a later `import bpe_openai` reuses it: it loads only once
                spec.loader.exec_module(module)
                return module
    return importlib.import_module(name)  # already loaded, or another layout: the ordinary import


def count_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model`, as the model's tokenizer counts them (special-token text
    such as `<|endoftext|>` counts as ordinary text, as in a chat message)."""
    return int(encoding_for(model).count(text))


def text_pieces(tokens: list[int], model: str, size: int = 4) -> list[str]:
    """The text of `tokens` in pieces of about `size` tokens, for streaming. Each piece ends
    where a character ends: a token can stop inside a multi-byte character (an emoji often
    takes several), which the tokenizer refuses to decode alone. An incomplete character at the
    very end, left by a cut at max_tokens, is dropped, as a provider drops it."""
    encoding = encoding_for(model)
    cuts = [*range(size, len(tokens), size), *range(len(tokens), 0, -1)]  # the end backs off to a whole character
    pieces, said, done = [], "", 0
    for end in cuts:
        if end <= done:
            break
        try:
            text = encoding.decode(tokens[:end])
        except ValueError:
            continue
        pieces.append(text[len(said):])
        said, done = text, end
        if end == len(tokens):
            break
    return [piece for piece in pieces if piece]


def whole_text(tokens: list[int], model: str) -> str:
    """The text of the longest prefix of `tokens` that ends where a character ends (a cut at a
    token limit can stop inside a multi-byte character, which is dropped)."""
    return "".join(text_pieces(tokens, model, size=len(tokens) or 1))


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
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
                total += count_tokens(text_of(message[key]), model) + (key == "name")
    return total


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    spec = MODELS[model]
    return (prompt_tokens * spec.input_price_per_million + completion_tokens * spec.output_price_per_million) / 1_000_000
