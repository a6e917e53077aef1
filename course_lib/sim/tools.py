"""Tool calling at the simulated provider: which tools the model calls, with what arguments, and
what it says once the tools have answered.

Deterministic, like every reply: the calls depend on (seed, model, messages, tools). A request
with tools whose last message is the user's gets `tool_calls` (unless `tool_choice` is "none");
"required" or a named function forces a call whatever the last message, as the real API does, so
an agent loop sends "auto" (or nothing) once it has tool results. The tool chosen is the named one,
else those whose names share a word with the user's message (several, when parallel calls are
allowed), else the best match on descriptions, else the first tool. Arguments follow the tool's
JSON schema (`content.value_for`), with values the user gave where a field asks for them: an order
number for `order_id`, an email address for `email`, an enum value the message names.

Once `tool` messages answer the last assistant tool calls, the reply is text that reports the first
short value of each result, in the support assistant's voice.

Token counts: prompt tokens bill the messages as `models.count_prompt_tokens` does, plus the name
and arguments of each tool call an assistant message carries (a tool message's content is content).
Tool definitions are not counted, though a real provider bills them too; the completion of a
tool-call reply is the tokens of each call's name and arguments.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from .content import CLOSINGS, GREETINGS, KEYWORDS, SchemaError, resolve, seeded, to_json, value_for
from .models import count_prompt_tokens, count_tokens
from .models import text_of

__all__ = ["wants_tool_calls", "choose_tools", "tool_calls_for", "arguments_for", "tool_results", "answer_from_results",
           "last_user_text", "prompt_tokens", "completion_tokens", "ToolSchemaError"]

IGNORED = frozenset({
    "the", "and", "for", "you", "your", "with", "this", "that", "what", "where", "when", "which", "who", "how", "can",
    "could", "would", "from", "are", "was", "has", "have", "had", "please", "about", "into", "its", "our", "not", "any",
    "all", "one", "use", "get", "set", "find", "check", "read", "look", "lookup", "fetch", "list", "show", "search",
    "tell", "give", "need", "want", "help", "will", "there", "them", "they", "been", "does", "did", "why", "yet"})
"""Words too common to say which tool a message is about."""
ID_WORDS = frozenset({"id", "number", "num", "no", "code", "ref", "reference"})
TEXT_WORDS = frozenset({"query", "question", "q", "search", "text", "message", "issue", "problem"})
IDENTIFIER = re.compile(r"(?<![\w-])#?((?:[A-Za-z]{2,5}-)?\d{3,}(?:-\d+)*)(?![\w-])")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
CALL_ID_ALPHABET = string.ascii_letters + string.digits
SHORT = 80  # the longest tool value quoted in the final reply


class ToolSchemaError(SchemaError):
    """A tool's parameters schema that no arguments can be made for; `index` is the tool's place."""

    def __init__(self, index: int, name: str, why: str) -> None:
        super().__init__(f"Invalid schema for function '{name}': {why}.")
        self.index, self.name = index, name


# --- when and which -------------------------------------------------------------------------------
def wants_tool_calls(request: Mapping[str, Any]) -> bool:
    """Whether this reply is tool calls: tools offered, not "none", and the user spoke last (or the
    choice forces a call)."""
    choice = request.get("tool_choice") or "auto"
    if not request.get("tools") or choice == "none":
        return False
    return choice == "required" or isinstance(choice, dict) or request["messages"][-1].get("role") == "user"


def _norm(word: str) -> str:
    """A word reduced so that "orders", "ordered" and "order" meet: the topic it raises, or its singular."""
    topic = KEYWORDS.get(word)
    if topic:
        return topic
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _words(text: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)  # lookupOrder -> lookup Order
    return {_norm(w) for w in re.findall(r"[a-z0-9]+", spaced.casefold()) if len(w) > 2 and w not in IGNORED}


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """What the user said last: the words that choose the tool and fill its arguments."""
    return next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


def choose_tools(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], choice: Any = "auto",
                 parallel: bool = True) -> list[int]:
    """Indexes of the tools to call, in the order called."""
    functions = [tool["function"] for tool in tools]
    if isinstance(choice, dict):
        return [next(i for i, f in enumerate(functions) if f["name"] == choice["function"]["name"])]
    said = _words(last_user_text(messages))
    by_name = [len(_words(f["name"]) & said) for f in functions]
    by_text = [len(_words(f.get("description") or "") & said) for f in functions]
    named = sorted((i for i, hits in enumerate(by_name) if hits), key=lambda i: (-by_name[i], -by_text[i], i))
    if named:
        return named if parallel else named[:1]
    best = max(range(len(functions)), key=lambda i: (by_text[i], -i))
    return [best if by_text[best] else 0]


# --- arguments ----------------------------------------------------------------------------------
def arguments_for(function: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], rng: Any) -> Any:
    """Arguments valid for the function's parameters schema, with the user's own values where a
    top-level field asks for them and they fit the field's schema."""
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    value = value_for(schema, rng)
    properties = schema.get("properties") or {}
    if not isinstance(value, dict) or not properties:
        return value
    text = last_user_text(messages)
    identifiers = [m.group(1) for m in IDENTIFIER.finditer(text)]
    emails = EMAIL.findall(text)
    for key, sub in properties.items():
        sub = resolve(sub, schema)
        for source, found in _from_message(key, sub, text, identifiers, emails):
            if _fits(found, sub):
                value[key] = found
                if source in identifiers:
                    identifiers.remove(source)  # one order number fills one field
                break
    return value


def _from_message(key: str, schema: Mapping[str, Any], text: str, identifiers: list[str],
                  emails: list[str]) -> list[tuple[str, Any]]:
    """(what the user wrote, the value made of it) for each thing said that this field may want,
    best first."""
    words = set(re.split(r"[_\W]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", key).casefold()))
    if isinstance(schema.get("enum"), list):
        said = set(re.findall(r"[\w-]+", text.casefold()))
        return [(v, v) for v in schema["enum"] if isinstance(v, str) and v.casefold() in said]
    if "email" in words:
        return [(email, email) for email in emails]
    if words & ID_WORDS or key.casefold().endswith("id"):
        kinds = schema.get("type")
        numeric = kinds in ("integer", "number") or (isinstance(kinds, list) and "string" not in kinds)
        return [(i, int(i) if numeric and i.isdigit() else i) for i in identifiers]
    if words & TEXT_WORDS and text:
        return [(text, text)]
    return []


def _fits(value: Any, schema: Mapping[str, Any]) -> bool:
    """Whether `value` keeps the arguments valid: type, enum, length, pattern, bounds (a format
    other than email is left to the generated value)."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(value, str):
        if kinds is not None and "string" not in kinds:
            return False
        fmt = schema.get("format")
        if fmt is not None and not (fmt == "email" and EMAIL.fullmatch(value)):
            return False
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and not re.search(pattern, value):
            return False
    elif isinstance(value, int):
        if kinds is not None and not ({"integer", "number"} & set(kinds)):
            return False
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            return False
        if "multipleOf" in schema or "exclusiveMinimum" in schema or "exclusiveMaximum" in schema:
            return False
    return "enum" not in schema or value in schema["enum"]


def tool_calls_for(seed: int, model: str, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `tool_calls` of the reply: `{id, type, function: {name, arguments}}` each, arguments as
    compact JSON text. ToolSchemaError names a tool whose schema admits no value."""
    messages, tools = request["messages"], request["tools"]
    choice = request.get("tool_choice") or "auto"
    parallel = request.get("parallel_tool_calls")
    prompt = json.dumps(messages, sort_keys=True)
    calls = []
    for place, index in enumerate(choose_tools(messages, tools, choice, parallel is not False)):
        function = tools[index]["function"]
        rng = seeded(seed, model, prompt, "tool", function["name"], json.dumps(function, sort_keys=True))
        try:
            arguments = arguments_for(function, messages, rng)
        except (ValueError, TypeError, IndexError, KeyError) as error:
            why = str(error) if isinstance(error, SchemaError) else f"no value can be made for it ({error!r})"
            raise ToolSchemaError(index, function["name"], why) from None
        ids = seeded(seed, model, prompt, "call", place)
        calls.append({"id": "call_sim_" + "".join(ids.choice(CALL_ID_ALPHABET) for _ in range(20)),
                      "type": "function", "function": {"name": function["name"], "arguments": to_json(arguments)}})
    return calls


# --- after the tools answer -------------------------------------------------------------------------
def tool_results(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(function name, result text) of the tool messages that end the conversation, answering the
    assistant message before them; empty when the conversation does not end that way."""
    end = len(messages)
    start = end
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    if start == end or start == 0:
        return []
    names = {call["id"]: call["function"]["name"] for call in messages[start - 1].get("tool_calls") or []}
    return [(names.get(m.get("tool_call_id"), "the tool"), text_of(m.get("content"))) for m in messages[start:end]]


def _first_short(value: Any, key: str = "") -> tuple[str, str] | None:
    """(key, text) of the first scalar in `value` (shortened), depth first, preferring fields that
    are not identifiers (the user already knows the order number they asked about)."""
    found: list[tuple[str, str]] = []

    def walk(item: Any, name: str) -> None:
        if isinstance(item, dict):
            for child, sub in item.items():
                walk(sub, str(child))
        elif isinstance(item, list):
            for sub in item:
                walk(sub, name)
        elif isinstance(item, bool):
            found.append((name, "yes" if item else "no"))
        elif isinstance(item, (int, float, str)) and str(item).strip():
            found.append((name, _shorten(str(item).strip())))

    walk(value, key)
    plain = [pair for pair in found if not (set(re.split(r"[_\W]+", pair[0].casefold())) & ID_WORDS
                                            or pair[0].casefold().endswith("id"))]
    return (plain or found)[0] if found else None


def _shorten(text: str) -> str:
    """Its first sentence, at most SHORT characters."""
    return text if len(text) <= SHORT else re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0][:SHORT].rstrip()


def _report(rng: Any, name: str, result: str) -> str:
    """One sentence on what tool `name` returned."""
    try:
        value = json.loads(result)
    except ValueError:
        value = result
    pair = _first_short(value)
    if pair is None:
        return f"I checked with {name}, but it returned nothing I can share."
    key, said = pair
    if not key:
        return rng.choice((f'I checked with {name}, which returned "{said}".',
                           f'According to {name}: "{said}".'))
    field = key.replace("_", " ")
    return rng.choice((f'I checked with {name}: the {field} is "{said}".',
                       f'According to {name}, the {field} is "{said}".',
                       f'The {name} tool shows that the {field} is "{said}".'))


def answer_from_results(seed: int, model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The final text once tools have answered (None when the conversation does not end with tool
    results): a greeting, one sentence per result (at most three), a closing."""
    results = tool_results(messages)
    if not results:
        return None
    rng = seeded(seed, model, json.dumps(messages, sort_keys=True), "after tools")
    said = [rng.choice(GREETINGS), *(_report(rng, name, result) for name, result in results[:3])]
    return " ".join([*said, rng.choice(CLOSINGS)])


# --- tokens -----------------------------------------------------------------------------------------
def prompt_tokens(messages: Sequence[Mapping[str, Any]], model: str) -> int:
    """`count_prompt_tokens` plus the name and arguments of every tool call in the messages."""
    return count_prompt_tokens(messages, model) + sum(
        count_tokens(call["function"]["name"], model) + count_tokens(call["function"]["arguments"], model)
        for message in messages for call in message.get("tool_calls") or ())


def completion_tokens(calls: Sequence[Mapping[str, Any]], model: str) -> int:
    return sum(count_tokens(c["function"]["name"], model) + count_tokens(c["function"]["arguments"], model)
               for c in calls)
