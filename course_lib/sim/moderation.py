"""The simulated `POST /v1/moderations`: a small phrase table in place of a classifier.

A real moderation model scores meaning; this one only spots the phrases below, so that a
notebook can show a flagged and a clean input and know the outcome in advance. Scores are
stable (derived from a hash of the text), in the real wire format, so the SDK parses them:

    {"id": "modr-sim-1", "model": "omni-moderation-latest",
     "results": [{"flagged": true, "categories": {...}, "category_scores": {...},
                  "category_applied_input_types": {...}}]}
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from .requests import ApiError, check_auth, parse_body

__all__ = ["CATEGORIES", "PHRASES", "MODERATION_MODELS", "DEFAULT_MODERATION_MODEL", "classify", "validate_moderation",
           "moderation_texts"]

MODERATION_MODELS = ("omni-moderation-latest", "text-moderation-latest")
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
THRESHOLD = 0.5  # a category whose score reaches this is flagged

# Category -> phrases that put a text in it. A phrase may stand in several categories, as a threat
# is both violence and threatening harassment. Matched whole-word, ignoring case and spacing.
PHRASES: dict[str, tuple[str, ...]] = {
    "harassment": ("kill you", "hurt you", "you are worthless", "you're worthless", "you idiot", "you are pathetic"),
    "harassment/threatening": ("kill you", "hurt you", "i know where you live", "you will regret this"),
    "hate": ("those people are vermin", "subhuman", "go back where you came from"),
    "hate/threatening": ("wipe them all out", "drive them all out"),
    "illicit": ("how to shoplift", "launder money", "stolen credit card", "bypass the alarm", "how to make a bomb"),
    "illicit/violent": ("how to make a bomb", "build a bomb", "buy a gun illegally"),
    "self-harm": ("hurt myself", "harm myself", "end my life", "kill myself", "i want to die"),
    "self-harm/intent": ("i want to die", "i want to end my life", "i am going to hurt myself"),
    "self-harm/instructions": ("how to hurt myself", "ways to end my life"),
    "sexual": ("sexually explicit", "explicit sex", "nude photos"),
    "sexual/minors": ("sexual content involving a minor", "sexual content involving minors"),
    "violence": ("kill you", "beat him up", "stab", "shoot them", "how to make a bomb", "build a bomb"),
    "violence/graphic": ("blood everywhere", "graphic gore", "dismembered"),
}
CATEGORIES = tuple(PHRASES)
_KNOWN = {"input", "model"}


def _pattern(phrase: str) -> re.Pattern[str]:
    words = (re.escape(word) for word in phrase.split())
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


_PATTERNS = {category: tuple(_pattern(p) for p in phrases) for category, phrases in PHRASES.items()}


def _normal(text: str) -> str:
    """NFKC (fullwidth letters become plain ones), invisible format characters such as zero-width
    spaces removed (so "k\\u200bill" is "kill"), case folded."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()


def _unit(*parts: str) -> float:
    """A stable number in [0, 1) from the parts (the same text always scores the same)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def classify(text: str) -> dict[str, Any]:
    """One moderation result for `text`: a matched category scores 0.80-0.99, any other below 0.05."""
    normal = _normal(text)
    scores = {}
    for category, patterns in _PATTERNS.items():
        hit = any(pattern.search(normal) for pattern in patterns)
        unit = _unit(category, normal)
        scores[category] = round(0.8 + 0.19 * unit if hit else 0.000001 + 0.048 * unit**3, 6)
    flags = {category: score >= THRESHOLD for category, score in scores.items()}
    return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores,
            "category_applied_input_types": {category: ["text"] for category in CATEGORIES}}


def moderation_texts(value: Any) -> list[str]:
    """The texts of an `input`: a string, an array of strings, or an array of text parts."""
    if value is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ApiError(400, "Invalid type for 'input': expected a string, an array of strings or an array of "
                            "content parts.", param="input", code="invalid_type")
    if not value:
        raise ApiError(400, "Invalid 'input': expected at least 1 item, got an empty array.", param="input",
                       code="empty_array")
    texts = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "image_url":
            raise ApiError(400, f"Invalid 'input[{i}]': image inputs are not simulated; send text.",
                           param=f"input[{i}]")
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise ApiError(400, f"Invalid 'input[{i}]': expected a string or a part "
                                '{"type": "text", "text": ...}.', param=f"input[{i}]", code="invalid_type")
        if not item:
            raise ApiError(400, f"Invalid 'input[{i}]': expected a non-empty string.", param=f"input[{i}]",
                           code="invalid_value")
        texts.append(item)
    return texts


def validate_moderation(headers: Mapping[str, str], body: bytes) -> tuple[str, list[str]]:
    """(model, texts) of a moderation request, or ApiError (401, 400, 404) naming what is wrong."""
    check_auth(headers)
    request = parse_body(body)
    for name in request:
        if name not in _KNOWN:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}")
    model = request.get("model")
    if model is None:
        model = DEFAULT_MODERATION_MODEL
    if not isinstance(model, str) or not model:
        raise ApiError(400, "Invalid 'model': expected a non-empty string.", param="model", code="invalid_type")
    if model not in MODERATION_MODELS:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    return model, moderation_texts(request.get("input"))
