"""Input validation: shape, hygiene, exact token counts, fitting to the window, worst-case cost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.clock import VirtualClock
from course_lib.events import InputRejected, Recorder, TextCleaned, TurnsDropped
from course_lib.input_validation import (InputError, InputPolicy, InputValidator, clean_text, message_tokens,
                                         prompt_tokens, worst_case_cost_usd)
from course_lib.llm import make_client
from course_lib.sim import SimProvider


def user(text: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def validator(policy: InputPolicy | None = None) -> tuple[InputValidator, Recorder]:
    recorder = Recorder()
    return InputValidator(policy, clock=VirtualClock(), on_event=recorder, name="in"), recorder


def hello(n: int) -> str:
    """Exactly n tokens on both encodings (checked below)."""
    return " hello" * n


def provider_prompt_tokens(provider: SimProvider, kwargs: dict[str, Any]) -> int:
    """What the simulated provider bills, asked directly (no SDK, no HTTP)."""
    reply = provider.handle("POST", "/v1/chat/completions", {"authorization": "Bearer k"}, json.dumps(kwargs).encode())
    assert reply.status == 200, reply.body
    return int(json.loads(reply.body)["usage"]["prompt_tokens"])


# --- exact token counts against the provider's bill -----------------------------------------------
SPECIAL = ("\t\n\r \u3000\u00a0abc.,"                                  # whitespace and ASCII around it
           "\U0001f468\U0001f469\U0001f3f3\U0001f308\U0001f44d\U0001f3fd\ufe0f"  # emoji and modifiers
           "\u65e5\u672c\u8a9e\u6c49\u5b57\u3067\u0645\u06cc\u062e"          # CJK, kana, Persian
           "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u202e\u2066\u200f\u061c\U000e0041\U000e007f"  # invisible
           "\ufb01\uff21\u00b2\u0301")                                           # NFKC rewrites these
SEQUENCES = ["\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f3f3\ufe0f\u200d\U0001f308",
             "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "<|endoftext|>", " don't", "\r\n\r\n"]
# Runs are joined as strings: an alphabet mixing both would be one code-point set, in which the few special
# characters are almost never drawn. Three fixed draws per text keep generation cheap.
TEXT = st.builds(lambda run, sequence, special: run + sequence + special, st.text(
    st.characters(exclude_categories=("Cc", "Cs")), max_size=16), st.sampled_from(["", *SEQUENCES]),
    st.text(SPECIAL, max_size=16))
CONTENT = TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=3)
NAME = st.none() | st.text("ABCXYZabcxyz0189_-", min_size=1, max_size=64)
MESSAGE = st.builds(lambda role, content, name: {"role": role, "content": content, **({"name": name} if name else {})},
                    st.sampled_from(["system", "developer", "user", "assistant"]), CONTENT, NAME)
CONVERSATION = st.lists(MESSAGE, min_size=1, max_size=8)


MODELS_CHECKED = ("gpt-4o", "gpt-3.5-turbo")  # o200k_base and cl100k_base


def test_count_before_the_call_equals_the_providers_bill() -> None:
    """1,000 generated conversations, each checked on both encodings (so 1,000 per encoding, for
    half the generating). Every 10th goes through the real SDK (`usage.prompt_tokens` of the parsed
    reply: 100 per encoding), the others to `SimProvider.handle` directly, the same provider without
    the SDK and HTTP layers (about 10x faster)."""
    provider = SimProvider(clock=VirtualClock())
    client, check = make_client(provider), InputValidator()
    seen = [0]

    @settings(max_examples=1000, deadline=None, database=None)
    @given(messages=CONVERSATION)
    def same_count(messages: list[dict[str, Any]]) -> None:
        seen[0] += 1
        for model in MODELS_CHECKED:
            valid = check.validate({"model": model, "messages": messages, "max_tokens": 1})
            assert valid.dropped == 0
            if seen[0] % 10 == 0:
                reply = client.chat.completions.create(**valid.kwargs_for_api())
                assert reply.usage is not None and reply.usage.prompt_tokens == valid.prompt_tokens
            else:
                assert provider_prompt_tokens(provider, valid.kwargs_for_api()) == valid.prompt_tokens

    same_count()
    assert seen[0] >= 1000 and [provider.calls(model=m, status=200) for m in MODELS_CHECKED] == [seen[0]] * 2


def test_framing_overhead_by_hand() -> None:
    valid = InputValidator().validate({"model": "gpt-4o", "messages": [
        {"role": "system", "content": hello(5)}, user([{"type": "text", "text": hello(2)},
                                                       {"type": "text", "text": hello(3)}], name="ann")]})
    # 3 to prime the reply; per message 3 + role (1) + content; a name adds its tokens + 1
    assert valid.prompt_tokens == 3 + (3 + 1 + 5) + (3 + 1 + 5 + 1 + 1) == 23
    assert [message_tokens(m, "gpt-4o") for m in valid.request.messages] == [9, 11]
    assert prompt_tokens(valid.request.messages, "gpt-4o") == 23


# --- refusals name the field and the limit ------------------------------------------------------------
def ok(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [user("hi")], **fields}


REFUSALS = [
    (ok(model="gpt-5"), "model", "unknown_model",
     "model: 'gpt-5' is not a known model; known: gpt-4o, gpt-4o-mini, gpt-4.1, gpt-4.1-mini, gpt-3.5-turbo"),
    (ok(max_tokens=20_000), "max_tokens", "out_of_range", "max_tokens: 20,000 is over gpt-4o's limit of 16,384"),
    (ok(model="gpt-3.5-turbo", max_tokens=5000), "max_tokens", "out_of_range",
     "max_tokens: 5,000 is over gpt-3.5-turbo's limit of 4,096"),
    (ok(max_tokens=0), "max_tokens", "out_of_range", "max_tokens: 0 is under the minimum of 1"),
    (ok(messages=[user("a"), user("b"), user("x" * 41_000)]), "messages[2].content", "too_long",
     "messages[2].content: 41,000 characters, over the limit of 32,000"),
    (ok(messages=[user([{"type": "text", "text": "x" * 20_000}, {"type": "text", "text": "y" * 12_001}])]),
     "messages[0].content", "too_long", "messages[0].content: 32,001 characters, over the limit of 32,000"),
    (ok(messages=[user("hi", name="a" * 65)]), "messages[0].name", "too_long",
     "messages[0].name: 65 characters, over the limit of 64"),
    (ok(messages=[user("hi", name="Ann Lee")]), "messages[0].name", "bad_character",
     "messages[0].name: character ' ' (U+0020) at position 3 is not allowed; use A-Z, a-z, 0-9, _ and -"),
    (ok(user="u" * 70), "user", "too_long", "user: 70 characters, over the limit of 64"),
    (ok(user="ann@example.com"), "user", "bad_character",
     "user: character '@' (U+0040) at position 3 is not allowed; use A-Z, a-z, 0-9, _ . : and -"),
    (ok(messages=[]), "messages", "invalid", "messages: is empty; at least 1 required"),
    (ok(messages=[user("hi")] * 257), "messages", "too_long", "messages: 257 messages, over the limit of 256"),
    (ok(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "invalid",
     "messages[0].role: 'tool' is not one of 'system', 'developer', 'user' or 'assistant'"),
    (ok(messages=[user(42)]), "messages[0].content", "invalid",
     "messages[0].content: expected a string or a list of text parts"),
    (ok(messages=[user([{"type": "text", "text": 7}])]), "messages[0].content[0].text", "invalid",
     "messages[0].content[0].text: input should be a valid string"),
    (ok(messages=[user([])]), "messages[0].content", "invalid",
     "messages[0].content: is empty; at least 1 required"),
    (ok(messages=[user("hi", tone="kind")]), "messages[0].tone", "unknown_field",
     "messages[0].tone: is not an accepted field; accepted: role, content, name"),
    (ok(temperature=0.2), "temperature", "unknown_field",
     "temperature: is not an accepted field; accepted: messages, model, max_tokens, user"),
    ({"messages": [user("hi")]}, "model", "missing", "model: is required"),
    (ok(max_tokens=True), "max_tokens", "invalid", "max_tokens: input should be a valid integer"),
    ([user("hi")], "request", "invalid", "request: expected an object, got list"),
]


@pytest.mark.parametrize(("raw", "field", "code", "message"), REFUSALS, ids=[f"{r[1]}-{r[2]}" for r in REFUSALS])
def test_refusal_names_field_and_limit(raw: Any, field: str, code: str, message: str) -> None:
    check, recorder = validator()
    with pytest.raises(InputError) as caught:
        check.validate(raw)
    error = caught.value
    assert (str(error), error.field, error.code, error.reason) == (message, field, code, code)
    assert isinstance(caught.value, ValueError)
    assert len(recorder) == 1  # nothing but the refusal
    assert [(e.source, e.field, e.reason) for e in recorder.of(InputRejected)] == [("in", field, code)]


def test_refusal_carries_limit_and_value() -> None:
    with pytest.raises(InputError) as caught:
        InputValidator().validate(ok(max_tokens=20_000))
    assert (caught.value.limit, caught.value.value) == (16_384, 20_000)
    with pytest.raises(InputError) as caught:
        InputValidator().validate(ok(messages=[user("x" * 41_000)]))
    assert (caught.value.limit, caught.value.value) == (32_000, 41_000)


def test_policy_limits_apply_and_are_checked() -> None:
    check = InputValidator(InputPolicy(max_messages=2, max_message_chars=10))
    with pytest.raises(InputError, match=r"^messages: 3 messages, over the limit of 2$"):
        check.validate(ok(messages=[user("a")] * 3))
    with pytest.raises(InputError, match=r"^messages\[0\].content: 11 characters, over the limit of 10$"):
        check.validate(ok(messages=[user("x" * 11)]))
    with pytest.raises(ValueError, match=r"^default_reserve must be >= 1, got 0$"):
        InputPolicy(default_reserve=0)
    with pytest.raises(ValueError, match=r"^invisible must be 'remove' or 'refuse', got 'strip'$"):
        InputPolicy(invisible="strip")  # type: ignore[arg-type]


# --- fitting the conversation to the window -----------------------------------------------------------
BIG = InputPolicy(max_message_chars=100_000)  # " hello" is 6 characters a token: let the token limit decide


def conversation(*sizes: int, last: str = "user") -> list[dict[str, Any]]:
    """system, then alternating user/assistant messages of `sizes` tokens of content each."""
    roles = ["user", "assistant"] * len(sizes)
    messages = [{"role": "system", "content": hello(100)}]
    messages += [{"role": role, "content": hello(n)} for role, n in zip(roles, sizes)]
    if last == "assistant":
        messages.append({"role": "assistant", "content": hello(50)})
    return messages


def test_oldest_messages_dropped_first_system_and_latest_kept() -> None:
    # gpt-3.5-turbo: 16,385 - 4,096 reserved = 12,289. Each message costs 4 tokens + its content.
    messages = conversation(4000, 4000, 4000, 4000, 1000)  # user, assistant, user, assistant, user
    check, recorder = validator()
    valid = check.validate({"model": "gpt-3.5-turbo", "messages": messages, "max_tokens": 4096})
    before = 3 + 104 + 4 * 4004 + 1004
    after = before - 2 * 4004
    assert (before, after) == (17_127, 9_119)
    assert (valid.dropped, valid.prompt_tokens, valid.limit, valid.max_tokens) == (2, after, 12_289, 4_096)
    assert [(e.source, e.dropped, e.tokens_before, e.tokens_after, e.limit) for e in recorder.of(TurnsDropped)] == [
        ("in", 2, before, after, 12_289)]
    assert valid.messages_for_api() == [messages[0]] + messages[3:]
    provider = SimProvider(clock=VirtualClock())
    reply = make_client(provider).chat.completions.create(**valid.kwargs_for_api())
    assert reply.usage is not None and reply.usage.prompt_tokens == after


def test_question_of_a_trailing_assistant_message_is_kept() -> None:
    messages = conversation(500, 3000, 9500, last="assistant")  # system, user, assistant, user, assistant
    check, recorder = validator(BIG)
    valid = check.validate({"model": "gpt-3.5-turbo", "messages": messages, "max_tokens": 4096})
    assert [m["content"] for m in valid.messages_for_api()] == [hello(100), hello(9500), hello(50)]
    event = recorder.of(TurnsDropped)[0]  # 3 + 104 + 504 + 3,004 + 9,504 + 54; minus the first two
    assert (event.dropped, event.tokens_before, event.tokens_after, event.limit) == (2, 13_173, 9_665, 12_289)
    # The question is part of the latest turn: when only dropping it would fit, the request is refused instead.
    with pytest.raises(InputError) as caught:
        check.validate({"model": "gpt-3.5-turbo", "messages": conversation(500, 500, 12_200, last="assistant"),
                        "max_tokens": 4096})
    assert (caught.value.value, caught.value.limit) == (3 + 104 + 12_204 + 54, 12_289)
    assert str(caught.value).startswith("messages: 12,365 tokens after dropping 2 older messages, over the limit "
                                        "of 12,289")


def test_a_conversation_that_fits_is_untouched() -> None:
    check, recorder = validator()
    valid = check.validate({"model": "gpt-3.5-turbo", "messages": conversation(3000, 3000, 3000)})
    assert (valid.dropped, len(recorder), valid.prompt_tokens) == (0, 0, 3 + 104 + 3 * 3004)


def test_latest_message_alone_too_long_is_refused_with_count_and_limit() -> None:
    check, recorder = validator(BIG)
    with pytest.raises(InputError) as caught:
        check.validate({"model": "gpt-3.5-turbo", "messages": conversation(500, 500, 15_300)})
    assert str(caught.value) == ("messages: 15,411 tokens after dropping 2 older messages, over the limit of 15,361 "
                                 "for gpt-3.5-turbo (16,385 context window minus 1,024 reserved for the answer)")
    assert (caught.value.code, caught.value.value, caught.value.limit) == ("too_many_tokens", 15_411, 15_361)
    assert len(recorder) == 1 and [e.reason for e in recorder.of(InputRejected)] == ["too_many_tokens"]


def test_fit_refuse_policy_drops_nothing() -> None:
    check, recorder = validator(InputPolicy(fit="refuse"))
    with pytest.raises(InputError) as caught:
        check.validate({"model": "gpt-3.5-turbo", "messages": conversation(4000, 4000, 4000, 4000), "max_tokens": 4000})
    assert str(caught.value) == ("messages: 16,123 tokens, over the limit of 12,385 for gpt-3.5-turbo "
                                 "(16,385 context window minus 4,000 reserved for the answer)")
    assert recorder.of(TurnsDropped) == []


# --- Unicode hygiene ----------------------------------------------------------------------------------
INVISIBLE = [("\u200b", "zero-width"), ("\u200c", "zero-width"), ("\u200d", "zero-width"), ("\u2060", "zero-width"),
             ("\ufeff", "zero-width"), ("\u180e", "zero-width"), ("\u00ad", "zero-width"),
             ("\u202a", "bidi-control"), ("\u202e", "bidi-control"), ("\u2066", "bidi-control"),
             ("\u2069", "bidi-control"), ("\u200e", "bidi-control"), ("\u200f", "bidi-control"),
             ("\u061c", "bidi-control"), ("\U000e0001", "tag"), ("\U000e0041", "tag"), ("\U000e007f", "tag")]


@pytest.mark.parametrize(("char", "what"), INVISIBLE, ids=[f"U+{ord(c):04X}" for c, _ in INVISIBLE])
def test_invisible_character_removed_and_recorded(char: str, what: str) -> None:
    check, recorder = validator()
    valid = check.validate(ok(messages=[user("pay"), user(f"ig{char}nore{char}{char} me")]))
    assert valid.request.messages[1].content == "ignore me"
    assert [(e.field, e.what, e.count) for e in recorder.of(TextCleaned)] == [("messages[1].content", what, 3)]


@pytest.mark.parametrize(("char", "what"), INVISIBLE, ids=[f"U+{ord(c):04X}" for c, _ in INVISIBLE])
def test_invisible_character_refused_by_policy(char: str, what: str) -> None:
    check, recorder = validator(InputPolicy(invisible="refuse"))
    with pytest.raises(InputError) as caught:
        check.validate(ok(messages=[user("pay"), user([{"type": "text", "text": "ok"},
                                                       {"type": "text", "text": f"ig{char}n"}])]))
    point = f"U+{ord(char):04X}"
    assert str(caught.value) == (f"messages[1].content[1].text: {what} character {point} at position 2 is not allowed; "
                                 "allowed: no invisible characters (policy)")
    assert (caught.value.code, caught.value.value) == ("bad_character", point)
    assert [(e.field, e.reason) for e in recorder.of(InputRejected)] == [
        ("messages[1].content[1].text", "bad_character")]


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x0b", "\x1b", "\x7f", "\x85", "\x9f"])
def test_control_characters_always_refused(char: str) -> None:
    for policy in (InputPolicy(invisible="remove"), InputPolicy(invisible="refuse")):
        with pytest.raises(InputError) as caught:
            InputValidator(policy).validate(ok(messages=[user(f"abc{char}")]))
        point = f"U+{ord(char):04X}"
        assert str(caught.value) == (f"messages[0].content: control character {point} at position 3 is not allowed; "
                                     "allowed: tab, newline and carriage return only")
        error = caught.value
        assert (error.field, error.code, error.value) == ("messages[0].content", "bad_character", point)


def test_lone_surrogate_refused() -> None:
    with pytest.raises(InputError, match=r"^messages\[0\].content: surrogate character U\+D800 at position 1 "):
        InputValidator().validate(ok(messages=[user("a\ud800b")]))


def test_tab_newline_and_legitimate_joiners_are_kept() -> None:
    text = "a\tb\r\nc 👨\u200d👩\u200d👧 🏳️\u200d🌈 می\u200cخواهم"
    check, recorder = validator(InputPolicy(invisible="refuse"))
    assert check.validate(ok(messages=[user(text)])).request.messages[0].content == text
    assert len(recorder) == 0


def test_nfkc_rewrites_are_recorded() -> None:
    check, recorder = validator()
    valid = check.validate(ok(messages=[user("\uff21\uff22 \ufb01le x\u00b2 cafe\u0301")]))
    assert valid.request.messages[0].content == "AB file x2 caf\u00e9"
    assert [(e.what, e.count) for e in recorder.of(TextCleaned)] == [("nfkc", 4)]  # A, B, fi, superscript two


def test_clean_text_counts_each_kind() -> None:
    text, removed = clean_text("a\u200bb\u202ec\U000e0041d\u200b", "x")
    assert (text, dict(removed)) == ("abcd", {"zero-width": 2, "bidi-control": 1, "tag": 1})


# --- worst-case cost ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "max_tokens", "expected"), [
    ("gpt-4o", 500, (1007 * 2.50 + 500 * 10.00) / 1e6),
    ("gpt-3.5-turbo", None, (1007 * 0.50 + 1024 * 1.50) / 1e6),
])
def test_worst_case_cost(model: str, max_tokens: int | None, expected: float) -> None:
    raw = {"model": model, "messages": [user(hello(1000))], **({"max_tokens": max_tokens} if max_tokens else {})}
    valid = InputValidator().validate(raw)
    assert valid.prompt_tokens == 1007 and valid.max_tokens == (max_tokens or 1024)
    assert valid.cost_usd == pytest.approx(expected, rel=1e-12)
    assert valid.cost_usd == pytest.approx(worst_case_cost_usd(model, 1007, valid.max_tokens), rel=1e-12)
    assert valid.kwargs_for_api()["max_tokens"] == valid.max_tokens  # the reserve is enforced, not hoped for


def test_default_reserve_is_capped_by_the_model() -> None:
    valid = InputValidator(InputPolicy(default_reserve=10_000)).validate(ok(model="gpt-3.5-turbo"))
    assert (valid.max_tokens, valid.limit) == (4_096, 16_385 - 4_096)


def test_kwargs_for_api_carry_user_and_parts() -> None:
    raw = ok(messages=[user([{"type": "text", "text": "a"}], name="ann")], user="team-1:u.42")
    assert InputValidator().validate(raw).kwargs_for_api() == {
        "model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}], "name": "ann"}],
        "max_tokens": 1024, "user": "team-1:u.42"}


@pytest.mark.parametrize("char, kind", [("\u2062", "format"), ("\u206b", "format"), ("\ufffa", "format"),
                                        ("\U0001d175", "format"), ("\U000e0101", "variation-selector")])
def test_other_invisible_format_characters_are_removed_and_named(char: str, kind: str) -> None:
    cleaned, removed = clean_text(f"a{char}b")
    assert cleaned == "ab" and removed == {kind: 1}
    with pytest.raises(InputError, match=f"U\\+{ord(char):04X} at position 1"):
        clean_text(f"a{char}b", refuse_invisible=True)


def test_helpers_refuse_an_unknown_model_by_name() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        worst_case_cost_usd("gpt-5", 10, 10)
    with pytest.raises(ValueError, match="default_reserve must be >= 1, got True"):
        InputPolicy(default_reserve=True)


def test_a_whole_turn_goes_so_no_answer_is_kept_without_its_question() -> None:
    # system, user 12000, assistant 100, user 100, assistant 100, user 100: dropping the first user
    # message alone would fit, but its answer goes with it.
    messages = conversation(12_000, 100, 100, 100, 100)
    check, recorder = validator(BIG)
    valid = check.validate({"model": "gpt-3.5-turbo", "messages": messages, "max_tokens": 4096})
    assert [m["content"] for m in valid.messages_for_api()] == [hello(100)] * 4
    assert valid.dropped == 2 and recorder.of(TurnsDropped)[0].dropped == 2
