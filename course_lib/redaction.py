"""Redaction: find credentials and personal data in text and replace them with placeholders.

    from course_lib.redaction import StreamRedactor, redact, redact_then_truncate

    redact("mail bob@example.com, key sk-proj-...")   # 'mail [REDACTED:email], key [REDACTED:openai_key]'
    redact_then_truncate(reply, 2_000)                 # never the other way round
    stream = StreamRedactor()
    for delta in deltas:
        send(stream.feed(delta))
    send(stream.close())

Each detector is one precompiled pattern with a bounded longest match, plus the check a regex
cannot make: Luhn for card numbers, the mod-97 checksum for IBANs, the `phonenumbers` matcher
for phone numbers, base64 decoding for HTTP Basic credentials. Credential patterns follow the
formats issued today: model providers (OpenAI, Anthropic, OpenRouter, Groq, xAI, Hugging Face),
code hosts and registries (GitHub, GitLab, npm), AWS, Google, Slack (tokens and incoming-webhook
URLs), Stripe (keys and webhook signing secrets), SendGrid, JWTs, bearer and Basic credentials,
and private-key blocks. An OpenAI key starts `sk-proj-` (or `sk-svcacct-`, `sk-admin-`) and runs
to about 164 characters; `sk-` + 48 is the legacy form. A prefix is not enough where words may
follow it, as hyphens and underscores allow after `sk-proj-` and `glpat-`: there the body must
hold at least two of capitals, small letters and digits, as a random one does (the CSS class
"sk-proj-header-navigation-item-active" and "glpat-your-personal-access-token" do not). Where
the secret sits in a header or a URL, only the secret is replaced:
`Basic [REDACTED:basic_auth]`, `https://hooks.slack.com/services/[REDACTED:slack_webhook]`.
Overlaps are settled left to right: the match that starts first wins, a tie goes to the detector
listed first in `DETECTORS`, and after a finding every detector starts afresh at its end, reading the
placeholder instead of the secret. That is why redacting twice changes nothing: the second pass
sees exactly what the first one saw, and a placeholder (`[REDACTED:email]`) matches nothing.
Redact before truncating: a key cut short may match no detector, and then its first part leaks.

A stream gives exactly what `redact` gives for the whole text, however the text is chunked.
It holds back the last `HOLDBACK` (65) characters: an e-mail address's local part may be 64
characters long, and nothing marks it as an address until its "@" arrives. The detectors with
no distinctive opening fit in that window (the longest, a spaced IBAN, needs 45). Detectors
that open with a marker (`sk-`, `hf_`, `glpat-`, `SG.`, `eyJ`, `Bearer`, `Basic`, a webhook's
`hooks.slack.com/services/`, `-----BEGIN ... PRIVATE KEY-----`, "@" and the others)
hold from the marker until the token has visibly ended or the detector's bound is reached, so
a 2 kB JWT is held whole while ordinary text flows on. A private-key block is held until its
END line, for at most `PEM_BODY_MAX` characters; past that bound the whole held block is
redacted as one finding and what follows is read as ordinary text again (no key format comes
near that length), so no part of a real key is ever released.

Imports nothing from course_lib but events: structured logging calls it on every line.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher
from stdnum import iban as _iban
from stdnum import luhn as _luhn

from .events import EventSink, Redacted

if TYPE_CHECKING:
    from .clock import Clock

__all__ = [
    "Finding",
    "Detector",
    "DETECTORS",
    "KINDS",
    "CREDENTIAL_KINDS",
    "HOLDBACK",
    "CONTEXT",
    "PEM_BODY_MAX",
    "DEFAULT_PHONE_REGIONS",
    "Redactor",
    "StreamRedactor",
    "find",
    "redact",
    "redact_then_truncate",
    "placeholder",
]

Span = tuple[int, int]
Check = Callable[["re.Match[str]"], "Span | None"]

CONTEXT = 2
"""Characters before a match that a detector may read (its lookbehind)."""
PEM_BODY_MAX = 65_536
"""Longest private-key body (between the BEGIN and END lines) a stream holds back. No key format
comes near it: an RSA-16384 key in PEM is about 12,700 characters."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One span of `text[start:end]` that holds something of `kind`."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of secret: a pattern and what bounds it.

    `max_len` is the most text, from a match's start, that can decide the match (its lookahead
    included). A detector with an `opener` (a marker found in every match, at most `lead`
    characters after its start) is a long one: a stream holds its text from the marker until
    `closed` matches there (the token has visibly ended) or `max_len` is reached. `hints` (or
    `needs_digits`) is an exact shortcut: every match contains one of them."""

    kind: str
    pattern: re.Pattern[str]
    max_len: int
    hints: tuple[str, ...] = ()
    needs_digits: bool = False
    check: Check | None = None
    opener: re.Pattern[str] | None = None
    lead: int = 0
    closed: re.Pattern[str] | None = None
    opener_len: int = 0
    """Longest text the opener can match (the stream must see a whole opener to hold on it)."""
    looks_back: bool = True
    """Whether the pattern reads the (at most two) characters before a match."""
    closer_hint: str = ""
    """Text `closed` cannot match without (a held private key waits for "-----END")."""


# --- credentials ------------------------------------------------------------------------------
# Token characters. A token never takes the first hyphen of "-----BEGIN", so a private-key header
# glued to its end ("...x-----BEGIN RSA PRIVATE KEY-----") stays whole and the key is still found.
_NOT_PEM = "-(?!----BEGIN)"
_URLSAFE = rf"(?:[A-Za-z0-9_]|{_NOT_PEM})"
_ALNUM_DASH = rf"(?:[A-Za-z0-9]|{_NOT_PEM})"
_BEARER_CHAR = rf"(?:[A-Za-z0-9._~+/=]|{_NOT_PEM})"


def _token(kind: str, opener: str, run: str, max_len: int, opener_len: int, hints: tuple[str, ...],
           check: Check | None = None, *, pattern: str) -> Detector:
    """A credential that starts with a fixed marker (`opener`) and runs on over `run` characters;
    a letter or digit just before the marker means it is part of some other word."""
    return Detector(kind, re.compile(rf"(?<![A-Za-z0-9])(?:{pattern})"), max_len, hints, check=check,
                    opener=re.compile(opener), closed=re.compile(rf"(?:{opener}){run}*[^{run[1:-1]}]"),
                    opener_len=opener_len)


def _looks_random(body: str) -> bool:
    """At least two of capitals, small letters and digits: true of a random base64url body of 20
    or more characters (all but about one in seven million), untrue of the hyphenated words of a
    CSS class, a slug or a placeholder. Cutting a body short never makes it pass, so the verdict
    on a token that runs into the next secret is the same after that secret has been redacted."""
    return sum((any(c.isupper() for c in body), any(c.islower() for c in body), any(c.isdigit() for c in body))) >= 2


def _body_check(m: re.Match[str]) -> Span | None:
    """A token whose prefix words may follow: its body must look random."""
    return m.span() if _looks_random(m.group("body")) else None


def _openai_check(m: re.Match[str]) -> Span | None:
    """Legacy keys (`sk-` + 48) carry "T3BlbkFJ" (base64 of "OpenAI") in the middle. Current keys
    carry it too, 74 characters in (58 for admin keys); the body need not, so that a key cut
    short before the marker is still caught, but it must look random."""
    legacy = m.group("legacy")
    if legacy is not None:
        return m.span() if "T3BlbkFJ" in legacy else None
    return _body_check(m)


def _path_check(m: re.Match[str]) -> Span | None:
    """The secret is the path: the host stays, so a reader still sees where the URL pointed."""
    return m.span("v")


# Model providers.
_OPENAI = _token("openai_key", "sk-", "[A-Za-z0-9_-]", 260, 3, ("sk-",), _openai_check,
                 pattern=rf"sk-(?:(?:proj|svcacct|admin|None)-(?P<body>{_URLSAFE}{{40,240}})"
                         r"|(?P<legacy>[A-Za-z0-9]{48}))")
_ANTHROPIC = _token("anthropic_key", "sk-ant-", "[A-Za-z0-9_-]", 264, 7, ("sk-ant-",),
                    pattern=rf"sk-ant-(?:api|admin|oat|ort)\d{{2}}-{_URLSAFE}{{32,240}}")
_OPENROUTER = _token("openrouter_key", "sk-or-v1-", "[0-9a-f]", 73, 9, ("sk-or-v1-",),
                     pattern=r"sk-or-v1-[0-9a-f]{64}")
_GROQ = _token("groq_key", "gsk_", "[A-Za-z0-9]", 255, 4, ("gsk_",), pattern=r"gsk_[A-Za-z0-9]{52,251}")
_XAI = _token("xai_key", "xai-", "[A-Za-z0-9]", 255, 4, ("xai-",), pattern=r"xai-[A-Za-z0-9]{80,251}")
_HUGGINGFACE = _token("huggingface_token", "hf_", "[A-Za-z0-9]", 255, 3, ("hf_",),
                      pattern=r"hf_[A-Za-z0-9]{34,252}")

# Code hosts and package registries. GitLab: a classic token is 20 characters; a routable one
# (GitLab 17.x) is a longer base64url payload, a dot and 9 characters (its length and a CRC32).
_GITHUB = _token("github_token", "gh[pousr]_|github_pat_", "[A-Za-z0-9_]", 255, 11,
                 ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
                 pattern=r"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{82,240}")
_GITLAB = _token("gitlab_token", "glpat-", "[A-Za-z0-9_.-]", 6 + 300 + 10, 6, ("glpat-",), _body_check,
                 pattern=rf"glpat-(?P<body>{_URLSAFE}{{20,300}})(?:\.[0-9a-z]{{9}})?")
_NPM = _token("npm_token", "npm_", "[A-Za-z0-9]", 255, 4, ("npm_",), pattern=r"npm_[A-Za-z0-9]{36,251}")

# Messaging, payments, mail. An incoming-webhook URL is a credential by itself: whoever has it
# can post to the channel. Webhook signing secrets: Stripe's are letters and digits; Svix (which
# many webhook senders use) issues the same prefix on base64, so "+", "/" and padding are allowed.
_SLACK = _token("slack_token", "xox[abeoprs]-|xapp-", "[A-Za-z0-9-]", 275, 5, ("xox", "xapp-"),
                pattern=rf"xox[abeoprs]-\d{{1,20}}-{_ALNUM_DASH}{{8,240}}|xapp-\d{{1,3}}-{_ALNUM_DASH}{{20,240}}")
_SLACK_WEBHOOK = _token(
    "slack_webhook", r"hooks\.slack\.com/services/", "[A-Za-z0-9/]", 25 + 15 + 1 + 15 + 1 + 64, 25,
    ("hooks.slack.com/services/",), _path_check,
    pattern=r"hooks\.slack\.com/services/(?P<v>T[A-Z0-9]{6,14}/B[A-Z0-9]{6,14}/[A-Za-z0-9]{20,64})")
_STRIPE = _token("stripe_key", "[rs]k_(?:live|test)_", "[0-9A-Za-z]", 255, 8, ("k_live_", "k_test_"),
                 pattern=r"[rs]k_(?:live|test)_[0-9A-Za-z]{20,247}")  # secret and restricted keys, not pk_
_STRIPE_WEBHOOK = _token("stripe_webhook_secret", "whsec_", "[A-Za-z0-9+/=]", 248, 6, ("whsec_",),
                         pattern=r"whsec_[A-Za-z0-9+/]{32,240}={0,2}")
_SENDGRID = _token("sendgrid_key", r"SG\.", "[A-Za-z0-9_.-]", 3 + 22 + 1 + 43 + 9, 3, ("SG.",),
                   pattern=rf"SG\.{_URLSAFE}{{22}}\.{_URLSAFE}{{43}}")

# Cloud.
_AWS = Detector("aws_access_key_id", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Za-z0-9])"),
                21, ("AKIA", "ASIA", "ABIA", "ACCA"))
_GOOGLE = Detector("google_api_key", re.compile(rf"(?<![A-Za-z0-9])AIza{_URLSAFE}{{35}}"), 48, ("AIza",))

# Issued by anyone: signed tokens and private keys.
_JWT = Detector("jwt", re.compile(rf"(?<![A-Za-z0-9])eyJ{_URLSAFE}{{8,1024}}"  # header: base64url of '{"'
                                  rf"\.{_URLSAFE}{{2,8192}}\.{_URLSAFE}{{16,1024}}"),
                10_254, ("eyJ",), opener=re.compile("eyJ"), opener_len=3,
                closed=re.compile(r"eyJ[A-Za-z0-9_.-]*[^A-Za-z0-9_.-]"))

_PEM_HEADER = r"-----BEGIN (?:[A-Z0-9]{1,10} ){0,2}PRIVATE KEY(?: BLOCK)?-----"
_PEM_FOOTER = r"-----END (?:[A-Z0-9]{1,10} ){0,2}PRIVATE KEY(?: BLOCK)?-----"
_PEM_BLOCK = rf"{_PEM_HEADER}[\s\S]{{0,{PEM_BODY_MAX}}}?{_PEM_FOOTER}"
# A block with no END line within the bound is redacted up to the bound (or the end of the text).
_PEM = Detector("private_key", re.compile(rf"{_PEM_BLOCK}|{_PEM_HEADER}[\s\S]{{0,{PEM_BODY_MAX}}}"),
                55 + PEM_BODY_MAX + 53, ("PRIVATE KEY",), opener=re.compile(_PEM_HEADER), opener_len=55,
                closed=re.compile(_PEM_BLOCK), closer_hint="-----END", looks_back=False)

_BEARER_RUN = "[A-Za-z0-9._~+/=-]"
_BEARER_OPENER = "[Bb]earer|BEARER"


def _scheme_closed(opener: str) -> re.Pattern[str]:
    """An authorization scheme's value has visibly ended: after the spaces (all of them) either
    no value begins, or the value's characters (all of them) are followed by any other one, a
    space included. Possessive, so that a space cannot be read as the end of a value not begun."""
    run = _BEARER_RUN
    return re.compile(rf"(?:{opener})(?:[^ \t]|[ \t]++(?:[^ \t{run[1:-1]}]|{run}++[^{run[1:-1]}]))")


_BEARER = Detector(
    "bearer_token",
    re.compile(rf"(?<![A-Za-z0-9_])(?:{_BEARER_OPENER})[ \t]{{1,16}}(?P<v>{_BEARER_CHAR}{{16,4096}})"),
    6 + 16 + 4096 + 9,
    ("earer", "EARER"),
    opener=re.compile(_BEARER_OPENER),
    closed=_scheme_closed(_BEARER_OPENER),
    opener_len=6,
)


def _bearer_check(others: tuple[Detector, ...]) -> Check:
    """A bearer token is one with a digit in it (prose says "Bearer authentication"); when the
    token is itself a key another active detector reports whole, that detector reports it instead.
    Only if it reports it: "Bearer sk-" + 48 characters without "T3BlbkFJ" is still a bearer token."""

    def check(m: re.Match[str]) -> Span | None:
        token = m.group("v")
        if not any(c.isdigit() for c in token) or any(_reports_whole(d, token) for d in others):
            return None
        return m.span("v")

    return check


def _reports_whole(det: Detector, token: str) -> bool:
    """Whether `det`, given `token` alone, reports all of it."""
    m = det.pattern.fullmatch(token)
    return m is not None and (det.check is None or det.check(m) == m.span())


# The Basic scheme sends base64("user:password"): the check decodes it, which tells a credential
# from prose ("Basic authentication") and from a challenge ('WWW-Authenticate: Basic realm="api"').
# The value must end where a header value ends (a space, a quote, punctuation, the end), not run
# on into a longer token: a JWT's header ("eyJhbGciOi...") also decodes to text with a colon, and
# its payload must not be left behind. No finding starts with such an ending, and "[" (where a
# redacted secret glued to the value begins) is none, so redacting again gives the same verdict.
_BASIC_OPENER = "[Bb]asic|BASIC"
_BASIC_MAX = 1024
_B64 = "[A-Za-z0-9+/]"  # in groups of four, the last one padded: most words fail the pattern itself
_VALUE_END = r"""[\s"'`,;:!?)\]}>|\\]"""
_BASIC_END = rf"(?={_VALUE_END}|\.(?:{_VALUE_END}|\Z)|\Z)"


def _basic_check(m: re.Match[str]) -> Span | None:
    """The value decodes (strict base64, padded: "a:" is "YTo=") to printable text with a colon."""
    value = m.group("v")
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return m.span("v") if ":" in decoded and decoded.isprintable() else None


_BASIC = Detector(
    "basic_auth",
    re.compile(rf"(?<![A-Za-z0-9_])(?:{_BASIC_OPENER})[ \t]{{1,16}}(?P<v>(?:{_B64}{{4}}){{0,{_BASIC_MAX // 4 - 1}}}"
               rf"(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)){_BASIC_END}"),
    5 + 16 + _BASIC_MAX + 2,
    ("asic", "ASIC"),
    check=_basic_check,
    opener=re.compile(_BASIC_OPENER),  # held like a bearer token, until the value has visibly ended
    closed=_scheme_closed(_BASIC_OPENER),
    opener_len=5,
)


# --- personal data ----------------------------------------------------------------------------
_EMAIL = Detector(
    "email",
    re.compile(r"(?<![A-Za-z0-9_.%+-])(?!git@)[A-Za-z0-9_.%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}"
               r"(?![A-Za-z0-9])"),  # not "git@github.com:org/repo.git"
    64 + 1 + 8 * 64 + 24 + 1,
    ("@",),
    opener=re.compile("@"),
    lead=64,
    closed=re.compile(r"@[A-Za-z0-9.-]*[^A-Za-z0-9.-]"),
    opener_len=1,
)

_DIGIT_CLUSTER = re.compile(r"\d(?:\D{0,2}\d){6}")
"""Seven digits, at most two other characters apart: in every card, phone and IBAN match."""
_SEPARATORS = re.compile(r"[ -]")


def _card_check(m: re.Match[str]) -> Span | None:
    """13-19 digits passing Luhn. A grouped match may have swallowed a trailing group (an expiry
    year, a CVC): drop up to two trailing groups before giving up."""
    groups = _SEPARATORS.split(m.group())
    start, end = m.span()
    for drop in range(3 if len(groups) > 3 else 1):
        kept = groups[:len(groups) - drop]
        digits = "".join(kept)
        if 13 <= len(digits) <= 19 and digits.count(digits[0]) != len(digits) and _luhn.is_valid(digits):
            return start, end - sum(len(g) + 1 for g in groups[len(kept):])
    return None


# The card and IBAN patterns consume their first character before checking what precedes it
# (`\d(?<![A-Za-z0-9_]\d)`): a pattern that opens with a character class lets the regex engine
# skip quickly to the positions where a match can start.
_CARD = Detector(
    "card",
    re.compile(r"\d(?<![A-Za-z0-9_]\d)(?<!\d\.\d)(?:\d{12,18}|\d{3}(?P<sep>[ -])\d{4,6}(?:(?P=sep)\d{1,5}){1,3})"
               r"(?![A-Za-z0-9_])(?!\.\d)"),  # not a decimal: 1234567890123.45
    4 + 1 + 6 + 3 * 6 + 2,
    needs_digits=True,
    check=_card_check,
)


def _iban_check(m: re.Match[str]) -> Span | None:
    """Country format and mod-97 checksum; a spaced match may end in a word it swallowed."""
    groups = m.group().split(" ")
    start = m.start()
    if _DIGIT_CLUSTER.search(m.group()) is None:  # keeps `needs_digits` an exact shortcut
        return None
    while len(groups) >= 3 or len(groups) == 1:
        candidate = " ".join(groups)
        if _iban.is_valid(candidate, check_country=False):
            return start, start + len(candidate)
        if len(groups) == 1:
            break
        groups.pop()
    return None


_IBAN = Detector(
    "iban",
    re.compile(r"[A-Z](?<![A-Za-z0-9_][A-Z])[A-Z]\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
               r"(?![A-Za-z0-9_])"),
    4 + 7 * 5 + 5 + 1,
    needs_digits=True,
    check=_iban_check,
)

_PHONE_PATTERN = re.compile(r"(?<![A-Za-z0-9_+#/.-])(?:\+ ?)?\(?\d(?:[ .()/-]{0,2}\d){6,14}(?![A-Za-z0-9_])")
"""7 to 15 digits (E.164 allows 15), at most two separators apart, not glued to a word."""
_DATE_LIKE = re.compile(r"(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)")
_PHONE_GROUP_END = re.compile(r"[ .()/-]+\d+\)?$")
_LENIENCIES = (Leniency.POSSIBLE, Leniency.VALID, Leniency.STRICT_GROUPING, Leniency.EXACT_GROUPING)
DEFAULT_PHONE_REGIONS: tuple[str | None, ...] = ("US",)
"""Regions whose national formats are recognised. Numbers written with "+" and a country code
are found whatever the regions; on the labelled corpus adding GB and DE found three national
numbers more but cost precision and half again the time, so a deployment names its own.
Leniency VALID (the matcher's default) was kept: POSSIBLE flagged ten more ids and dates, and
the stricter groupings changed nothing on the corpus."""


def _phone_check(regions: tuple[str | None, ...], leniency: int) -> Check:
    """Hands each candidate to `phonenumbers.PhoneNumberMatcher`, trying `regions` in turn; the
    finding is the first number it accepts. A candidate may have run on into the next number
    ("415 555 0132 4111 ..."), so up to three trailing digit groups are dropped before giving
    up. The candidate alone, without the text around it: the pattern's lookarounds judged the
    context, and a check that read past the candidate could change its mind once a neighbour
    is redacted. Dates are turned away before the (slower) matcher."""

    def check(m: re.Match[str]) -> Span | None:
        candidate = m.group()
        if _DATE_LIKE.match(candidate):
            return None
        start = m.start()
        for _ in range(4):
            for region in regions:
                for number in PhoneNumberMatcher(candidate, region, leniency=leniency):
                    return start + number.start, start + number.end
            shorter = _PHONE_GROUP_END.sub("", candidate)
            if shorter == candidate or sum(c.isdigit() for c in shorter) < 7:
                break
            candidate = shorter
        return None

    return check


_PHONE = Detector("phone", _PHONE_PATTERN, 2 + 1 + 15 + 14 * 2 + 1, needs_digits=True,
                  check=_phone_check(DEFAULT_PHONE_REGIONS, Leniency.VALID))

DETECTORS: tuple[Detector, ...] = (
    _PEM, _JWT, _OPENAI, _ANTHROPIC, _OPENROUTER, _GROQ, _XAI, _HUGGINGFACE, _AWS, _GITHUB, _GITLAB, _NPM, _SLACK,
    _SLACK_WEBHOOK, _GOOGLE, _STRIPE, _STRIPE_WEBHOOK, _SENDGRID, _BEARER, _BASIC, _EMAIL, _CARD, _IBAN, _PHONE,
)
"""Every detector, in the order that settles ties (a match starting first always wins)."""
KINDS: tuple[str, ...] = tuple(d.kind for d in DETECTORS)
CREDENTIAL_KINDS: frozenset[str] = frozenset(KINDS) - {"email", "card", "iban", "phone"}


def _holdback(detectors: Iterable[Detector]) -> int:
    """What a stream must hold back so that every match starting before it is final: the
    longest short match, and for a long detector the text before its marker plus the marker."""
    return max([d.lead + d.opener_len if d.opener is not None else d.max_len for d in detectors], default=0)


HOLDBACK = _holdback(DETECTORS)
"""Characters a stream holds back when no long match is pending (65, see the module docstring)."""


def placeholder(kind: str) -> str:
    """What replaces a finding of `kind`."""
    return f"[REDACTED:{kind}]"


# --- the scan, shared by whole texts and streams ----------------------------------------------
Head = tuple[int, "re.Match[str]", int]
"""A detector's next match: (start in the text, the match, the offset from match to text). The
match's check runs only if it comes first: most candidates lose to an earlier finding."""


@dataclass(slots=True)
class _Scan:
    """Where each detector searches on from, and the end of the last finding, whose placeholder
    the detectors must see in its place (so that redacting again finds nothing new)."""

    resume: list[int]
    boundary: int | None = None
    tail: str = ""
    """The last two characters of that finding's placeholder."""

    def shift(self, by: int) -> None:
        self.resume = [r - by for r in self.resume]
        if self.boundary is not None:
            self.boundary -= by


def _search(det: Detector, text: str, pos: int, scan: _Scan, beyond: bool = True) -> Head | None:
    """The detector's first match at or after `pos`. Just after a finding the detector reads the
    placeholder's characters instead of the secret's, as it will when the output is redacted
    again; lookbehinds reach at most two characters back, so two positions are affected."""
    boundary = scan.boundary
    if boundary is not None and pos <= boundary + 1 and det.looks_back:
        view = scan.tail + text[boundary:boundary + det.max_len + 2]
        for at in range(max(pos, boundary), boundary + 2):
            m = det.pattern.match(view, at - boundary + 2)
            if m is not None:
                return m.start() + boundary - 2, m, boundary - 2
        pos = boundary + 2
    if not beyond:
        return None
    m = det.pattern.search(text, pos)
    return None if m is None else (m.start(), m, 0)


def _scan(detectors: tuple[Detector, ...], text: str, scan: _Scan, cut: int) -> list[Finding]:
    """Findings that start before `cut`, left to right: the match that starts first wins (ties:
    the detector listed first); after it every detector searches on from its end. A stream
    passes the cut before which every match is final; a whole text passes its length."""
    resume = scan.resume
    active: list[int] = []  # detectors whose hints occur: most lines hold no hint of anything
    digits: bool | None = None
    for i, det in enumerate(detectors):
        if det.needs_digits:
            if digits is None:
                digits = _DIGIT_CLUSTER.search(text) is not None
            if digits:
                active.append(i)
        else:
            for hint in det.hints:
                if hint in text:
                    active.append(i)
                    break
    kept: list[Finding] = []
    heads: dict[int, Head | None] = {i: _search(detectors[i], text, resume[i], scan) if resume[i] < cut else None
                                     for i in active}
    while True:
        best, first = -1, cut
        for i in active:  # in detector order, so a tie goes to the detector listed first
            head = heads[i]
            if head is not None and head[0] < first:
                best, first = i, head[0]
        if best < 0:
            break
        det = detectors[best]
        _, m, shift = heads[best]  # type: ignore[misc]
        span = det.check(m) if det.check is not None else m.span()
        resume[best] = m.end() + shift
        if span is None:
            heads[best] = _search(det, text, resume[best], scan)
            continue
        kind, end = det.kind, span[1] + shift
        kept.append(Finding(kind, span[0] + shift, end))
        scan.boundary, scan.tail = end, placeholder(kind)[-2:]
        for i in range(len(detectors)):  # every detector starts afresh after the placeholder
            searched_from, resume[i] = resume[i], end
            if i not in heads:
                continue
            head = heads[i]
            if i == best or searched_from > end or (head is not None and head[0] < end + 2):
                heads[i] = _search(detectors[i], text, end, scan)
            else:  # the head (or its absence) stands; only the placeholder's edge can add an earlier one
                heads[i] = _search(detectors[i], text, end, scan, beyond=False) or head
    if cut < len(text):  # a stream comes back with more text: skip what is known to hold no match
        for i in range(len(detectors)):
            head = heads.get(i)
            if (head is None or head[0] >= cut) and resume[i] < cut:
                resume[i] = cut
    return kept


def _replace(text: str, findings: list[Finding], start: int, end: int) -> str:
    parts: list[str] = []
    at = start
    for f in findings:
        parts.append(text[at:f.start])
        parts.append(placeholder(f.kind))
        at = f.end
    parts.append(text[at:end])
    return "".join(parts)


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be str, got {type(value).__name__}")
    return value


# --- the public face --------------------------------------------------------------------------
class Redactor:
    """Holds the options: which kinds to look for, where events go, the clock that stamps them,
    and how phone numbers are read (`phone_regions`: regions whose national formats are
    recognised, tried in order; numbers written with "+" and a country code are found with any)."""

    def __init__(
        self,
        kinds: Iterable[str] | None = None,
        *,
        on_event: EventSink | None = None,
        clock: Clock | None = None,
        name: str = "redactor",
        phone_regions: Iterable[str | None] = DEFAULT_PHONE_REGIONS,
        phone_leniency: int = Leniency.VALID,
    ) -> None:
        self.kinds = _check_kinds(kinds)
        self.on_event = on_event
        self.clock = clock
        self.name = name
        self.phone_regions = tuple(phone_regions)
        for region in self.phone_regions:
            if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"phone_regions must hold region codes such as 'US' or None, got {region!r}")
        if not self.phone_regions:
            raise ValueError("phone_regions must hold at least one region code (or None), got ()")
        if phone_leniency not in _LENIENCIES:
            raise ValueError(f"phone_leniency must be one of phonenumbers.Leniency's values, got {phone_leniency!r}")
        self.phone_leniency = phone_leniency
        self.detectors = _build(self.kinds, self.phone_regions, phone_leniency)
        self.holdback = _holdback(self.detectors)

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings, sorted by position."""
        text = _check_text(text, "text")
        return _scan(self.detectors, text, _Scan([0] * len(self.detectors)), len(text))

    def redact(self, text: str) -> str:
        """`text` with each finding replaced by `[REDACTED:<kind>]`; one `Redacted` event per kind."""
        return self._redact(text, self.on_event, self.clock)

    def redact_then_truncate(self, text: str, max_chars: int) -> str:
        """Redact, then keep at most `max_chars` characters (never half a placeholder). In the
        other order a secret cut short matches no detector and its first part leaks."""
        return self._redact_then_truncate(text, max_chars, self.on_event, self.clock)

    def _find_and_report(self, text: str, on_event: EventSink | None, clock: Clock | None) -> list[Finding]:
        findings = self.find(text)
        if findings and on_event is not None:
            self._emit(Counter(f.kind for f in findings), on_event, clock)
        return findings

    def _redact(self, text: str, on_event: EventSink | None, clock: Clock | None) -> str:
        findings = self._find_and_report(text, on_event, clock)
        return _replace(text, findings, 0, len(text)) if findings else text

    def _redact_then_truncate(self, text: str, max_chars: int, on_event: EventSink | None, clock: Clock | None) -> str:
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
            raise ValueError(f"max_chars must be an int >= 0, got {max_chars!r}")
        findings = self._find_and_report(text, on_event, clock)
        out = _replace(text, findings, 0, len(text))
        if len(out) <= max_chars:
            return out
        shift = 0  # where each placeholder lands in `out`
        for f in findings:
            start = f.start + shift
            shift += len(placeholder(f.kind)) - (f.end - f.start)
            if start < max_chars < f.end + shift:
                return out[:start]  # the cut falls inside this placeholder: keep none of it
        return out[:max_chars]

    def stream(self) -> StreamRedactor:
        """A StreamRedactor with these options."""
        return StreamRedactor(self)

    def _emit(self, counts: Counter[str], on_event: EventSink, clock: Clock | None) -> None:
        now = clock.now() if clock is not None else time.monotonic()
        for kind, count in counts.items():
            on_event(Redacted(now, self.name, kind, count))

    def __repr__(self) -> str:
        return f"Redactor(name={self.name!r}, kinds={sorted(self.kinds)!r})"


class StreamRedactor:
    """Redacts text that arrives in chunks (a streamed model reply, a log being written).

    `feed(chunk)` returns the text that is final and safe to send now; `close()` returns the
    rest. The concatenation equals `redact(whole text)` for every chunking. It keeps back the
    last `holdback` characters, and, while a long secret may be arriving, everything from its
    opening marker (`sk-`, `eyJ`, `Bearer`, a private-key header, "@") until the token ends or
    the detector's bound is reached. `Redacted` events (one per kind, totals) go out on close,
    as `redact` would emit them for the whole text."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor or _default()
        self.holdback = self.redactor.holdback
        """Characters held back when no long secret is pending (65 with every detector on)."""
        self._detectors = self.redactor.detectors
        self._long = [(i, d) for i, d in enumerate(self._detectors) if d.opener is not None]
        self._buf = ""  # text received and not yet dropped; positions below are relative to it
        self._base = 0  # where _buf starts in the whole stream
        self._emitted = 0
        self._scan = _Scan([0] * len(self._detectors))
        self._counts: Counter[str] = Counter()
        self._blocked: tuple[int, int] | None = None  # (detector, stream position of its opener) holding the cut
        self.closed = False

    @property
    def pending(self) -> int:
        """Characters received but not yet released."""
        return len(self._buf) - self._emitted

    def feed(self, chunk: str) -> str:
        """The text that is now final, redacted (often ""; never part of a secret)."""
        _check_text(chunk, "chunk")
        if self.closed:
            raise RuntimeError("feed() after close(): this stream is finished")
        if not chunk:
            return ""
        self._buf += chunk
        if self._blocked is not None and self._still_blocked(*self._blocked, len(chunk)):
            return ""
        return self._advance(final=False)

    def close(self) -> str:
        """The rest of the text, redacted; emits the `Redacted` events."""
        if self.closed:
            return ""
        out = self._advance(final=True)
        self.closed = True
        if self._counts and self.redactor.on_event is not None:
            self.redactor._emit(self._counts, self.redactor.on_event, self.redactor.clock)
        return out

    def _still_blocked(self, i: int, opener_at: int, added: int) -> bool:
        """The long match that held the last cut is still open, so nothing new can be released
        (checked without a full scan: a held private key may be thousands of characters)."""
        det, buf = self._detectors[i], self._buf
        at = opener_at - self._base
        if at + det.max_len <= len(buf):
            return False
        hint = det.closer_hint
        if hint and hint not in buf[max(at, len(buf) - added - len(hint)):]:
            return True  # the closer's marker has not arrived in the new text
        assert det.closed is not None
        return det.closed.match(buf, at) is None

    def _open_from(self, buf: str, cut: int) -> int:
        """Lower `cut` to the start of the earliest long match not yet decided."""
        self._blocked = None
        for i, det in self._long:
            if not any(h in buf for h in det.hints):
                continue
            pos = self._scan.resume[i]
            assert det.opener is not None and det.closed is not None
            for o in det.opener.finditer(buf, pos):
                start = max(pos, o.start() - det.lead)
                if start >= cut:
                    break
                if o.start() + det.max_len <= len(buf) or det.closed.match(buf, o.start()):
                    continue
                cut = start
                self._blocked = (i, self._base + o.start())
                break
        return cut

    def _advance(self, final: bool) -> str:
        buf = self._buf
        cut = len(buf) if final else self._open_from(buf, len(buf) - self.holdback)
        if cut <= self._emitted:
            return ""
        kept = _scan(self._detectors, buf, self._scan, cut)
        upto = max(cut, kept[-1].end) if kept else cut
        out = _replace(buf, kept, self._emitted, upto)
        self._counts.update(f.kind for f in kept)
        drop = max(0, min(upto, *self._scan.resume) - CONTEXT)
        self._buf = buf[drop:]
        self._base += drop
        self._emitted = upto - drop
        self._scan.shift(drop)
        return out

    def __repr__(self) -> str:
        return f"StreamRedactor(holdback={self.holdback}, pending={self.pending})"


def _check_kinds(kinds: Iterable[str] | None) -> frozenset[str]:
    if kinds is None:
        return frozenset(KINDS)
    if isinstance(kinds, str):
        kinds = (kinds,)
    chosen = frozenset(kinds)
    unknown = sorted(chosen - set(KINDS))
    if unknown or not chosen:
        raise ValueError(f"kinds must be a non-empty subset of {', '.join(KINDS)}; got {sorted(chosen)!r}")
    return chosen


def _build(kinds: frozenset[str], regions: tuple[str | None, ...], leniency: int) -> tuple[Detector, ...]:
    """The chosen detectors, in priority order, with the checks that depend on the options."""
    chosen = [d for d in DETECTORS if d.kind in kinds]
    others = tuple(d for d in chosen if d.kind in CREDENTIAL_KINDS - {"bearer_token", "basic_auth", "private_key"})
    built = []
    for d in chosen:
        if d.kind == "bearer_token":
            d = replace(d, check=_bearer_check(others))
        elif d.kind == "phone" and (regions, leniency) != (DEFAULT_PHONE_REGIONS, Leniency.VALID):
            d = replace(d, check=_phone_check(regions, leniency))
        built.append(d)
    return tuple(built)


_DEFAULT: Redactor | None = None
_BY_KINDS: dict[frozenset[str], Redactor] = {}


def _default() -> Redactor:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Redactor()
    return _DEFAULT


def _for(kinds: Iterable[str] | None) -> Redactor:
    if kinds is None:
        return _default()
    chosen = _check_kinds(kinds)
    if chosen not in _BY_KINDS:
        _BY_KINDS[chosen] = Redactor(chosen)
    return _BY_KINDS[chosen]


def find(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Non-overlapping findings in `text`, sorted by position (all kinds, or only `kinds`)."""
    return _for(kinds).find(text)


def redact(text: str, *, kinds: Iterable[str] | None = None, on_event: EventSink | None = None,
           clock: Clock | None = None) -> str:
    """`text` with every finding replaced by `[REDACTED:<kind>]`; emits one `Redacted(kind,
    count)` per kind found to `on_event`, stamped by `clock` (monotonic time without one)."""
    return _for(kinds)._redact(text, on_event, clock)


def redact_then_truncate(text: str, max_chars: int, *, kinds: Iterable[str] | None = None,
                         on_event: EventSink | None = None, clock: Clock | None = None) -> str:
    """Redact first, then cut to `max_chars`: no prefix of a secret survives."""
    return _for(kinds)._redact_then_truncate(text, max_chars, on_event, clock)
