"""Input validation: check a chat request before any token is paid for.

    validator = InputValidator(InputPolicy(invisible="remove"), on_event=recorder)
    valid = validator.validate(raw)               # InputError (a ValueError) when refused
    reply = client.chat.completions.create(**valid.kwargs_for_api())

Four steps, in this order. Shape: `ChatRequest` (pydantic) checks fields, roles, lengths and the
model. Hygiene: every text is NFKC-normalised; invisible characters (zero-width, bidi controls,
tag characters) are removed and recorded, or refused by policy; control characters are always
refused. Size: prompt tokens are counted exactly as the provider bills them, for the target
model; the limit is the context window minus the room reserved for the answer, and an old
conversation is fitted by dropping its oldest messages, never by cutting text. Cost: the worst
case (every reserved answer token used) is computed so a budget can reserve it before the call.
Every refusal is one `InputError` naming the field and the limit, after an `InputRejected` event.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictInt, StrictStr, Tag,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ._wrapping import check, is_whole
from .clock import SYSTEM_CLOCK, Clock
from .events import Event, EventSink, InputRejected, TextCleaned, TurnsDropped
from .sim.models import MODELS, check_model, encoding_for

__all__ = ["InputError", "InputPolicy", "InputValidator", "ValidRequest", "ChatRequest", "Message", "TextPart",
           "input_error", "clean_text", "message_tokens", "prompt_tokens", "worst_case_cost_usd", "CODES"]

CODES = ("missing", "unknown_field", "invalid", "too_long", "out_of_range", "unknown_model", "bad_character",
         "too_many_tokens")
"""Every `InputError.code`: stable strings a caller can branch on (the message is for people)."""
MAX_MESSAGES, MAX_MESSAGE_CHARS, MAX_ID_CHARS = 256, 32_000, 64
PER_MESSAGE, PER_NAME, REPLY_PRIMER = 3, 1, 3
"""Chat framing the provider bills: per message, extra for a `name`, and once to prime the reply."""


class InputError(ValueError):
    """A refused request. `field` is a path ("messages[2].content"), `code` one of CODES, `limit`
    and `value` what was allowed and what came (None where there is no number to quote)."""

    def __init__(self, field: str, code: str, detail: str, *, limit: Any = None, value: Any = None) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.code, self.limit, self.value = field, code, limit, value

    @property
    def reason(self) -> str:
        return self.code


def _refuse(code: str, detail: str, limit: Any, value: Any, field: str | None = None) -> PydanticCustomError:
    """An error raised in a validator below, which `input_error` turns back into an InputError
    (`field` when pydantic's location would not name it, as in a whole-model check)."""
    return PydanticCustomError(code, "{detail}", {"detail": detail, "limit": limit, "value": value, "field": field})


# --- shape --------------------------------------------------------------------------------------
def _charset(allowed: str, described: str) -> AfterValidator:
    """Refuse the first character outside `allowed` (a regex class), naming its code point."""
    outside = re.compile(f"[^{allowed}]")

    def checked(value: str) -> str:
        if found := outside.search(value):
            point = f"U+{ord(found.group()):04X}"
            raise _refuse("bad_character", f"character {found.group()!r} ({point}) at position {found.start()} is not "
                          f"allowed; use {described}", described, point)
        return value

    return AfterValidator(checked)


def _context(info: ValidationInfo, key: str, default: int) -> int:
    return int((info.context or {}).get(key, default))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


def _content_kind(value: Any) -> str | None:
    return "string" if isinstance(value, str) else "parts" if isinstance(value, list) else None


Content = Annotated[Annotated[StrictStr, Tag("string")] | Annotated[list[TextPart], Field(min_length=1), Tag("parts")],
                    Discriminator(_content_kind, custom_error_type="invalid",
                                  custom_error_message="expected a string or a list of text parts")]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS),
                    _charset("A-Za-z0-9_-", "A-Z, a-z, 0-9, _ and -")] | None = None

    @field_validator("content")
    @classmethod
    def _guard_size(cls, content: str | list[TextPart], info: ValidationInfo) -> str | list[TextPart]:
        """A cheap guard against huge pastes before any tokenizing; not the limit, which is in tokens."""
        cap, size = _context(info, "max_message_chars", MAX_MESSAGE_CHARS), len(_text_of(content))
        if size > cap:
            raise _refuse("too_long", f"{size:,} characters, over the limit of {cap:,}", cap, size)
        return content

    def text(self) -> str:
        """The content as one text: the provider bills parts joined, so they are counted joined."""
        return _text_of(self.content)


def _text_of(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class ChatRequest(BaseModel):
    """What a client may send: the messages, the model, optionally max_tokens and a user id."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    user: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS),
                    _charset("A-Za-z0-9_.:-", "A-Z, a-z, 0-9, _ . : and -")] | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _guard_count(cls, messages: Any, info: ValidationInfo) -> Any:
        """Before the items are validated, so ten thousand messages cost one comparison."""
        cap = _context(info, "max_messages", MAX_MESSAGES)
        if isinstance(messages, list) and len(messages) > cap:
            raise _refuse("too_long", f"{len(messages):,} messages, over the limit of {cap:,}", cap, len(messages))
        return messages

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in MODELS:
            known = ", ".join(MODELS)
            raise _refuse("unknown_model", f"{model!r} is not a known model; known: {known}", known, model)
        return model

    @model_validator(mode="after")
    def _answer_fits_model(self) -> ChatRequest:
        most = MODELS[self.model].max_output_tokens
        if self.max_tokens is not None and self.max_tokens > most:
            detail = f"{self.max_tokens:,} is over {self.model}'s limit of {most:,}"
            raise _refuse("out_of_range", detail, most, self.max_tokens, field="max_tokens")
        return self


_FIELDS_AT: dict[int, type[BaseModel]] = {1: ChatRequest, 3: Message, 5: TextPart}  # path depth -> its model


def _path(loc: Sequence[int | str]) -> list[int | str]:
    """pydantic's location without the union tags ("string", "parts") that follow "content"."""
    return [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "content" and p in ("string", "parts"))]


def _dotted(path: Sequence[int | str]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "request"


def input_error(error: ValidationError) -> InputError:
    """The first problem pydantic found, as one InputError naming the field and the limit."""
    first = error.errors(include_url=False)[0]
    path, kind, ctx, given = _path(first["loc"]), first["type"], first.get("ctx") or {}, first.get("input")
    field = ctx.get("field") or _dotted(path)
    if "detail" in ctx:  # raised by one of our validators above
        return InputError(field, kind, ctx["detail"], limit=ctx["limit"], value=ctx["value"])
    if kind in ("model_type", "dict_type"):
        return InputError(field, "invalid", f"expected an object, got {type(given).__name__}", value=given)
    if kind == "missing":
        return InputError(field, "missing", "is required")
    if kind == "extra_forbidden":
        accepted = ", ".join(_FIELDS_AT[len(path)].model_fields) if len(path) in _FIELDS_AT else "see the schema"
        return InputError(field, "unknown_field", f"is not an accepted field; accepted: {accepted}", limit=accepted)
    if kind == "literal_error":
        return InputError(field, "invalid", f"{given!r} is not one of {ctx['expected']}", limit=ctx["expected"],
                          value=given)
    if kind == "string_too_long":
        most = ctx["max_length"]
        return InputError(field, "too_long", f"{len(given):,} characters, over the limit of {most:,}", limit=most,
                          value=len(given))
    if kind in ("string_too_short", "too_short"):
        least = ctx["min_length"]
        return InputError(field, "invalid", f"is empty; at least {least} required", limit=least, value=0)
    if kind == "greater_than_equal":
        return InputError(field, "out_of_range", f"{given!r} is under the minimum of {ctx['ge']}", limit=ctx["ge"],
                          value=given)
    return InputError(field, "invalid", first["msg"][:1].lower() + first["msg"][1:], value=given)


# --- hygiene ------------------------------------------------------------------------------------
_SUSPECT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                      "\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff\U0001d173-\U0001d17a\U000e0000-\U000e007f"
                      "\U000e0100-\U000e01ef]")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_JOINERS = frozenset("\u200c\u200d")
_ALLOWED = {"control": "tab, newline and carriage return only", "surrogate": "paired surrogates only (valid UTF-16)"}


def _kind(char: str) -> str:
    point = ord(char)
    if char in _BIDI:
        return "bidi-control"
    if point >= 0xE0100:
        return "variation-selector"  # invisible; a run of them can smuggle bytes behind one emoji
    if point >= 0xE0000:
        return "tag"
    if 0x2061 <= point <= 0x206F or 0xFFF9 <= point <= 0xFFFB or 0x1D173 <= point <= 0x1D17A:
        return "format"  # invisible math operators, deprecated format and annotation characters
    if 0xD800 <= point <= 0xDFFF:
        return "surrogate"
    return "control" if point < 0x20 or 0x7F <= point <= 0x9F else "zero-width"


def _joins(text: str, at: int) -> bool:
    """A ZWJ/ZWNJ between two visible non-ASCII characters is spelling, not smuggling: emoji
    sequences (family, flags) and scripts such as Persian or Devanagari need it."""
    if not 0 < at < len(text) - 1:
        return False
    return all(ord(c) > 127 and not c.isspace() and not _SUSPECT.match(c) for c in (text[at - 1], text[at + 1]))


def clean_text(text: str, field: str = "text", *, refuse_invisible: bool = False) -> tuple[str, Counter[str]]:
    """`text` NFKC-normalised without invisible characters, and how many of each kind went
    ("zero-width", "bidi-control", "tag", "format", "variation-selector" for U+E0100-E01EF, and
    "nfkc" for characters the normalisation rewrote).
    Control characters (all but tab, newline, carriage return) and lone surrogates are always
    refused, invisible ones when `refuse_invisible`: InputError "bad_character" naming the code
    point and its position in the text as given."""
    removed: Counter[str] = Counter()
    kept: list[str] = []
    start = 0
    for found in _SUSPECT.finditer(text):
        char, at = found.group(), found.start()
        if char in _JOINERS and _joins(text, at):
            continue
        kind, point = _kind(char), f"U+{ord(char):04X}"
        if kind in ("control", "surrogate") or refuse_invisible:
            allowed = _ALLOWED.get(kind, "no invisible characters (policy)")
            raise InputError(field, "bad_character", f"{kind} character {point} at position {at} is not allowed; "
                             f"allowed: {allowed}", limit=allowed, value=point)
        kept.append(text[start:at])
        start = at + 1
        removed[kind] += 1
    stripped = "".join(kept) + text[start:] if removed else text
    if unicodedata.is_normalized("NFKC", stripped):
        return stripped, removed
    rewritten = sum(1 for c in stripped if unicodedata.normalize("NFKC", c) != c)
    removed["nfkc"] = max(1, rewritten)  # a composed accent pair changes no single character
    return unicodedata.normalize("NFKC", stripped), removed


# --- size and cost --------------------------------------------------------------------------------
def message_tokens(message: Message, model: str) -> int:
    """Tokens one message adds to the prompt of `model`, framing included."""
    check_model(model)
    count = encoding_for(model).count
    tokens = PER_MESSAGE + count(message.role) + count(message.text())
    return int(tokens + (count(message.name) + PER_NAME if message.name is not None else 0))


def prompt_tokens(messages: Sequence[Message], model: str) -> int:
    """Prompt tokens the provider will report in `usage.prompt_tokens` for these messages."""
    return REPLY_PRIMER + sum(message_tokens(m, model) for m in messages)


def worst_case_cost_usd(model: str, prompt: int, max_tokens: int) -> float:
    """What the call costs at most: every prompt token plus every answer token it may produce."""
    check_model(model)
    spec = MODELS[model]
    return (prompt * spec.input_price_per_million + max_tokens * spec.output_price_per_million) / 1_000_000


# --- the entry point --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InputPolicy:
    """What to accept. Checked on construction."""

    invisible: Literal["remove", "refuse"] = "remove"
    """Zero-width, bidi-control and tag characters: removed (recorded as TextCleaned) or refused."""
    default_reserve: int = 1_024
    """Answer tokens reserved when the request sets no max_tokens (capped at the model's maximum);
    it is sent as max_tokens, so the reserve and the worst-case cost hold."""
    fit: Literal["drop-oldest", "refuse"] = "drop-oldest"
    """A conversation over the limit: drop its oldest messages, or refuse it whole."""
    max_messages: int = MAX_MESSAGES
    max_message_chars: int = MAX_MESSAGE_CHARS
    """A guard against huge pastes before tokenizing; the real limit is counted in tokens."""

    def __post_init__(self) -> None:
        check(self.invisible in ("remove", "refuse"), "invisible", "'remove' or 'refuse'", self.invisible)
        check(is_whole(self.default_reserve) and self.default_reserve >= 1, "default_reserve", ">= 1",
              self.default_reserve)
        check(self.fit in ("drop-oldest", "refuse"), "fit", "'drop-oldest' or 'refuse'", self.fit)
        check(isinstance(self.max_messages, int) and self.max_messages >= 1, "max_messages", ">= 1", self.max_messages)
        check(isinstance(self.max_message_chars, int) and self.max_message_chars >= 1, "max_message_chars", ">= 1",
              self.max_message_chars)


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """A request that may be sent: cleaned and fitted, with its size and worst-case cost."""

    request: ChatRequest
    prompt_tokens: int
    limit: int
    """Prompt tokens allowed: the context window minus `max_tokens`."""
    max_tokens: int
    cost_usd: float
    dropped: int

    def messages_for_api(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.request.messages]

    def kwargs_for_api(self) -> dict[str, Any]:
        """Arguments for `client.chat.completions.create`, max_tokens always set."""
        request = self.request
        extra = {"user": request.user} if request.user is not None else {}
        return {"model": request.model, "messages": self.messages_for_api(), "max_tokens": self.max_tokens, **extra}


class InputValidator:
    """Validates raw requests (a dict, e.g. a JSON body) into ValidRequests, or raises InputError."""

    def __init__(self, policy: InputPolicy | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 on_event: EventSink | None = None, name: str = "input") -> None:
        self.policy = policy or InputPolicy()
        self.clock, self.on_event, self.name = clock, on_event, name
        self._context = {"max_messages": self.policy.max_messages, "max_message_chars": self.policy.max_message_chars}

    def validate(self, raw: Mapping[str, Any]) -> ValidRequest:
        """The request checked, cleaned, fitted and priced; InputError (after InputRejected) if refused."""
        try:
            return self._validate(raw)
        except InputError as error:
            self._emit(InputRejected, error.field, error.code)
            raise

    def _validate(self, raw: Mapping[str, Any]) -> ValidRequest:
        try:
            request = ChatRequest.model_validate(raw, context=self._context)
        except ValidationError as error:
            raise input_error(error) from None
        messages = [self._clean_message(m, i) for i, m in enumerate(request.messages)]
        spec = MODELS[request.model]
        max_tokens = request.max_tokens or min(self.policy.default_reserve, spec.max_output_tokens)
        limit = spec.context_window - max_tokens
        kept, tokens = self._fit(messages, request.model, limit, max_tokens)
        cost = worst_case_cost_usd(request.model, tokens, max_tokens)
        cleaned = request.model_copy(update={"messages": kept})
        return ValidRequest(cleaned, tokens, limit, max_tokens, cost, len(messages) - len(kept))

    def _clean_message(self, message: Message, index: int) -> Message:
        field = f"messages[{index}].content"
        if isinstance(message.content, str):
            return message.model_copy(update={"content": self._clean(message.content, field)})
        parts = [TextPart(type="text", text=self._clean(part.text, f"{field}[{j}].text"))
                 for j, part in enumerate(message.content)]
        return message.model_copy(update={"content": parts})

    def _clean(self, text: str, field: str) -> str:
        clean, removed = clean_text(text, field, refuse_invisible=self.policy.invisible == "refuse")
        for what, count in removed.items():
            self._emit(TextCleaned, field, what, count)
        return clean

    def _fit(self, messages: list[Message], model: str, limit: int, reserve: int) -> tuple[list[Message], int]:
        """Drop the oldest whole turns (a user message and the replies that follow it) between the
        leading system/developer messages and the latest turn (the last user message and whatever
        follows it; the last message if there is no user message) until the prompt fits, so no
        answer is kept without its question. What must be kept is never cut: too long is refused."""
        sizes = [message_tokens(m, model) for m in messages]
        before = REPLY_PRIMER + sum(sizes)
        if before <= limit:
            return messages, before
        head = next((i for i, m in enumerate(messages) if m.role not in ("system", "developer")), len(messages))
        users = [i for i in range(head, len(messages)) if messages[i].role == "user"]
        latest = users[-1] if users else len(messages) - 1
        after, dropped = before, 0
        if self.policy.fit == "drop-oldest":
            starts = [i for i in range(head + 1, latest) if messages[i].role == "user"] + [latest]
            for end in starts:  # each turn ends where the next user message starts
                if after <= limit:
                    break
                after -= sum(sizes[head + dropped:end])
                dropped = end - head
        if after > limit:
            kept = f" after dropping {dropped} older message{'s' if dropped > 1 else ''}" if dropped else ""
            raise InputError("messages", "too_many_tokens", f"{after:,} tokens{kept}, over the limit of {limit:,} "
                             f"for {model} ({MODELS[model].context_window:,} context window minus {reserve:,} "
                             "reserved for the answer)", limit=limit, value=after)
        self._emit(TurnsDropped, dropped, before, after, limit)
        return messages[:head] + messages[head + dropped:], after

    def _emit(self, kind: type[Event], *fields: Any) -> None:
        """Build the event only when someone listens."""
        if self.on_event is not None:
            self.on_event(kind(self.clock.now(), self.name, *fields))

    def __repr__(self) -> str:
        return f"InputValidator({self.policy!r}, name={self.name!r})"
