"""The simulated provider, through the real openai SDK: in-process on a virtual clock."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from course_lib.clock import VirtualClock
from course_lib.llm import make_async_client, make_client
from course_lib.sim import MODELS, FaultPlan, FaultPlanError, SimProvider, cost_usd, count_prompt_tokens, count_tokens

HELLO = [{"role": "user", "content": "Hello, what is your refund policy?"}]


def client_for(faults: list[dict], *, clock: VirtualClock | None = None, timeout: float = 30.0, seed: int = 0):
    clock = clock or VirtualClock()
    provider = SimProvider({"seed": seed, "faults": faults}, clock=clock)
    return make_client(provider, timeout=timeout), provider, clock


def ask(client: openai.OpenAI, model: str = "gpt-4o-mini", **options):
    return client.chat.completions.create(model=model, messages=HELLO, **options)


# --- answers --------------------------------------------------------------------------------
def test_completion_has_real_token_counts() -> None:
    client, provider, _ = client_for([])
    reply = ask(client, "gpt-4o")
    text = reply.choices[0].message.content
    assert reply.usage.prompt_tokens == count_prompt_tokens(HELLO, "gpt-4o") == 3 + 3 + count_tokens("user", "gpt-4o") + count_tokens(HELLO[0]["content"], "gpt-4o")
    assert reply.usage.completion_tokens == count_tokens(text, "gpt-4o")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason == "stop" and reply.model == "gpt-4o"
    assert [(c.model, c.status, c.completion_tokens) for c in provider.log] == [("gpt-4o", 200, reply.usage.completion_tokens)]


def test_reply_text_is_deterministic_per_seed() -> None:
    first = ask(client_for([], seed=1)[0]).choices[0].message.content
    again = ask(client_for([], seed=1)[0]).choices[0].message.content
    other = ask(client_for([], seed=2)[0]).choices[0].message.content
    assert first == again != other


def test_max_tokens_cuts_the_reply() -> None:
    client, _, _ = client_for([])
    reply = ask(client, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5 == count_tokens(reply.choices[0].message.content, "gpt-4o-mini")


def test_streaming_gives_the_same_text_and_a_usage_chunk() -> None:
    client, _, _ = client_for([])
    whole = ask(client)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len(chunks) > 3
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_models_endpoint_lists_the_model_table() -> None:
    client, _, _ = client_for([])
    assert [m.id for m in client.models.list()] == list(MODELS)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_listing_the_models_fails_in_a_whole_api_outage_but_not_in_one_models() -> None:
    client, provider, clock = client_for([{"kind": "outage", "start": 0, "end": 10},
                                          {"kind": "outage", "start": 10, "end": 20, "models": ["gpt-4o"]}])
    with pytest.raises(openai.InternalServerError):
        client.models.list()
    clock.advance(10)
    assert len(client.models.list().data) == len(MODELS)  # gpt-4o's outage is not the API's
    assert provider.log == []  # listing is not billed, so not logged


def test_listing_the_models_hangs_with_the_api() -> None:
    client, _, clock = client_for([{"kind": "hang", "seconds": 600}])
    with pytest.raises(openai.APITimeoutError):
        client.models.list(timeout=2.0)
    assert clock.now() == pytest.approx(2.0)


def test_prices_follow_the_model_table() -> None:
    assert cost_usd("gpt-4o", 1_000_000, 0) == 2.50
    assert cost_usd("gpt-4o-mini", 1_000, 1_000) == pytest.approx((0.15 + 0.60) / 1000)


# --- faults map to the SDK's real exception classes ---------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503])
def test_outage_raises_internal_server_error(status: int) -> None:
    client, _, _ = client_for([{"kind": "outage", "status": status}])
    with pytest.raises(openai.InternalServerError) as raised:
        ask(client)
    assert raised.value.status_code == status and raised.value.type == "server_error"


def test_rate_limit_sends_both_retry_after_headers() -> None:
    client, _, _ = client_for([{"kind": "rate_limit", "retry_after": 2.5}])
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client)
    headers = raised.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "2500")
    assert raised.value.code == "rate_limit_exceeded"


def test_quota_is_a_rate_limit_error_with_its_own_code_and_no_retry_after() -> None:
    client, _, _ = client_for([{"kind": "quota"}])
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client)
    assert raised.value.code == "insufficient_quota"
    assert "retry-after" not in raised.value.response.headers


def test_capacity_refuses_beyond_the_per_second_limit_and_refills_next_second() -> None:
    client, provider, clock = client_for([{"kind": "capacity", "per_second": 2, "status": 503}])
    outcomes = []
    for _ in range(3):
        try:
            ask(client)
            outcomes.append(200)
        except openai.InternalServerError as error:
            outcomes.append(error.status_code)
    clock.advance(1)
    ask(client)
    assert outcomes == [200, 200, 503]
    assert provider.calls(status=200) == 3


def test_hang_times_out_after_exactly_the_client_timeout() -> None:
    client, provider, clock = client_for([{"kind": "hang"}], timeout=7.5)
    with pytest.raises(openai.APITimeoutError):
        ask(client)
    assert clock.now() == 7.5
    assert provider.log[0].status is None and provider.log[0].fault == "hang"


def test_latency_delays_the_answer_on_the_clock() -> None:
    client, _, clock = client_for([{"kind": "latency", "seconds": 1.25}, {"kind": "latency", "seconds": 0.5, "models": ["gpt-4o"]}])
    ask(client, "gpt-4o-mini")
    assert clock.now() == 1.25
    ask(client, "gpt-4o")
    assert clock.now() == 1.25 + 1.75


def test_latency_longer_than_the_timeout_is_a_timeout() -> None:
    client, _, clock = client_for([{"kind": "latency", "seconds": 20}], timeout=5)
    with pytest.raises(openai.APITimeoutError):
        ask(client)
    assert clock.now() == 5


def test_drop_is_a_connection_error_not_a_timeout() -> None:
    client, _, _ = client_for([{"kind": "drop"}])
    with pytest.raises(openai.APIConnectionError) as raised:
        ask(client)
    assert not isinstance(raised.value, openai.APITimeoutError)


def test_faults_apply_in_their_window_and_to_their_models_only() -> None:
    client, _, clock = client_for([{"kind": "outage", "start": 10, "end": 20, "models": ["gpt-4o"]}])
    ask(client, "gpt-4o")  # before the window
    clock.advance(10)
    ask(client, "gpt-4o-mini")  # other model
    with pytest.raises(openai.InternalServerError):
        ask(client, "gpt-4o")
    clock.advance(10)
    ask(client, "gpt-4o")  # window over (end is exclusive)


def test_rate_hits_a_seeded_fraction_of_requests() -> None:
    def statuses(seed: int) -> list[int]:
        client, provider, _ = client_for([{"kind": "outage", "rate": 0.5}], seed=seed)
        for _ in range(200):
            try:
                ask(client)
            except openai.InternalServerError:
                pass
        return [c.status for c in provider.log]

    first = statuses(3)
    assert first == statuses(3) != statuses(4)
    assert 70 <= first.count(503) <= 130


# --- request errors ------------------------------------------------------------------------
def test_context_length_exceeded_names_both_numbers() -> None:
    client, _, _ = client_for([])
    long = [{"role": "user", "content": "refund " * 17_000}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=long)
    assert raised.value.code == "context_length_exceeded"
    assert "maximum context length is 16385 tokens" in raised.value.message
    client.chat.completions.create(model="gpt-4o", messages=long)  # a larger window takes it


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-3.5-turbo"])  # o200k and cl100k
def test_tokens_are_exactly_those_of_bpe_openais_public_encoder(model: str) -> None:
    import random

    import bpe_openai

    from course_lib.sim.models import encoding_for

    public = bpe_openai.get_encoding(MODELS[model].encoding)
    alphabet = ["the", "Refund", "HTTP", "don't", "it\u2019s", "42", "2026", "3.14", ",", ".", "!?", "'", "(", "/", "-",
                " ", "  ", "\n", "\n\n", "\t", "caf\u00e9", "\u4e2d\u6587", "\U0001f600", "e\u0301", "<|endoftext|>"]
    rng = random.Random(5)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        expected = public.encode(text, disallowed_special=())
        assert encoding_for(model).encode(text) == expected
        assert count_tokens(text, model) == len(expected)
        assert encoding_for(model).decode(expected) == text


def test_a_prompt_past_the_tokenizers_own_limits_is_counted_and_answered() -> None:
    client, _, _ = client_for([])
    prompt = "Clause 12: refunds are possible within thirty days. " * 23_000  # 253,001 tokens
    reply = client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": prompt}], max_tokens=5)
    assert reply.usage.prompt_tokens == count_prompt_tokens([{"role": "user", "content": prompt}], "gpt-4.1") > 250_000


def test_a_ten_megabyte_prompt_is_refused_for_its_length_not_as_a_server_error() -> None:
    client, provider, _ = client_for([])
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello world " * 900_000}])
    assert raised.value.code == "context_length_exceeded" and "1800008 in the messages" in raised.value.message
    assert provider.log[-1].status == 400


def test_requested_completion_counts_toward_the_context_window() -> None:
    client, _, _ = client_for([])
    prompt = [{"role": "user", "content": "refund " * 13_000}]
    assert count_prompt_tokens(prompt, "gpt-3.5-turbo") + 4_000 > MODELS["gpt-3.5-turbo"].context_window
    client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt)  # fits without the reservation
    with pytest.raises(openai.BadRequestError, match="4000 in the completion"):
        client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt, max_tokens=4_000)


def test_max_tokens_above_the_models_output_limit_is_refused() -> None:
    client, _, _ = client_for([])
    with pytest.raises(openai.BadRequestError, match="from 1 to 16384 for gpt-4o") as raised:
        ask(client, "gpt-4o", max_tokens=20_000)
    assert raised.value.param == "max_tokens"


def test_completion_ids_look_like_openais() -> None:
    client, _, _ = client_for([])
    assert ask(client).id.startswith("chatcmpl-sim-")


@pytest.mark.parametrize(
    ("request_options", "error", "param"),
    [
        ({"model": "gpt-5-turbo", "messages": HELLO}, openai.NotFoundError, None),
        ({"model": "gpt-4o", "messages": []}, openai.BadRequestError, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError, "messages[0].role"),
        ({"model": "gpt-4o", "messages": HELLO, "max_tokens": 0}, openai.BadRequestError, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_style_errors(request_options: dict, error: type, param: str | None) -> None:
    client, provider, _ = client_for([{"kind": "outage"}])  # request errors win over faults
    with pytest.raises(error) as raised:
        client.chat.completions.create(**request_options)
    assert raised.value.param == param
    if error is openai.NotFoundError:
        assert raised.value.code == "model_not_found"


def test_the_sdk_retries_on_its_own_unless_told_not_to() -> None:
    provider = SimProvider({"faults": [{"kind": "rate_limit", "retry_after": 0.01}]}, clock=VirtualClock())
    with pytest.raises(openai.RateLimitError):
        ask(make_client(provider, max_retries=2))
    assert provider.calls() == 3
    with pytest.raises(openai.RateLimitError):
        ask(make_client(provider))
    assert provider.calls() == 4


async def test_fresh_async_clients_replay_identically() -> None:
    """Many tasks on new clients at once: the SDK's first-request platform check must not let
    virtual time jump at a moment that depends on thread timing."""

    async def run() -> list[tuple[float, int | None]]:
        clock = VirtualClock()
        provider = SimProvider({"faults": [{"kind": "capacity", "per_second": 3}]}, clock=clock)

        async def user(i: int) -> None:
            client = make_async_client(provider)
            for _ in range(3):
                try:
                    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
                    return
                except openai.InternalServerError:
                    await clock.asleep(0.5 + (i % 4) * 0.25)

        await asyncio.gather(*(user(i) for i in range(12)))
        return [(c.t, c.status) for c in provider.log]

    first = await run()
    for _ in range(3):
        assert await run() == first


# --- async client ------------------------------------------------------------------------------
async def test_async_client_sees_the_same_answers_and_faults() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage", "end": 1}, {"kind": "hang", "start": 1, "end": 2},
                                       {"kind": "latency", "start": 5, "seconds": 0.5}]}, clock=clock)
    client = make_async_client(provider, timeout=3)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    clock.advance(1)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert clock.now() == 4
    clock.advance(1)
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert clock.now() == 5.5
    assert reply.choices[0].message.content == ask(make_client(SimProvider())).choices[0].message.content
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == reply.choices[0].message.content


# --- fault plans ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"faults": [{"kind": "outage"}, {"kind": "rate_limit", "retry_after": -1}]}, "faults[1] (rate_limit): retry_after: Input should be greater than 0, got -1"),
        ({"faults": [{"kind": "outage", "status": 404}]}, "faults[0] (outage): status: Input should be 500, 502 or 503, got 404"),
        ({"faults": [{"kind": "outage", "start": 5, "end": 2}]}, "faults[0] (outage): end (2) must be after start (5)"),
        ({"faults": [{"kind": "latency"}]}, "faults[0] (latency): seconds: Field required"),
        ({"faults": [{"kind": "outage", "models": ["gpt-5"]}]}, "faults[0] (outage): models: unknown model(s) ['gpt-5']"),
        ({"faults": [{"kind": "outage", "rate": 2}]}, "faults[0] (outage): rate: Input should be less than or equal to 1, got 2"),
        ({"faults": [{"kind": "meteor"}]}, "faults[0] (meteor): Input tag 'meteor'"),
        ({"faults": [{"kind": "drop", "colour": "red"}]}, "faults[0] (drop): colour: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_plan_names_the_entry_and_field(plan: dict, message: str) -> None:
    with pytest.raises(FaultPlanError) as raised:
        FaultPlan.parse(plan)
    assert message in str(raised.value)


def test_a_saved_plan_loads_back_unchanged(tmp_path) -> None:
    plan = FaultPlan.parse({"seed": 3, "faults": [{"kind": "outage", "start": 5}, {"kind": "latency", "seconds": 1, "end": 9}]})
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())  # the open end (infinity) is written as null
    assert FaultPlan.from_file(path) == plan


def test_plans_load_from_json_files(tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"seed": 4, "faults": [{"kind": "outage", "end": 3}]}))
    assert FaultPlan.from_file(path).faults[0].end == 3
    path.write_text("{not json")
    with pytest.raises(FaultPlanError, match="not valid JSON"):
        FaultPlan.from_file(path)


def test_real_endpoint_needs_an_explicit_opt_in_and_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("COURSE_LIB_REAL_LLM", raising=False)
    assert make_client().base_url.host == "sim.local"  # default: simulated
    monkeypatch.setenv("COURSE_LIB_REAL_LLM", "1")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY is not set"):
        make_client()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    real = make_client()
    assert (real.base_url.host, real.api_key, real.max_retries) == ("127.0.0.1", "sk-test", 0)


# --- regressions from review --------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": ["not a part"]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "hi", "name": 7}]}, "messages[0].name"),
        ({"messages": HELLO, "stream": True, "stream_options": True}, "stream_options"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
def test_malformed_fields_get_a_400_naming_them_not_a_crash(options: dict, param: str) -> None:
    client, _, _ = client_for([])
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", **{k: v for k, v in options.items() if k in ("messages", "stream")},
                                       extra_body={k: v for k, v in options.items() if k not in ("messages", "stream")} or None)
    assert raised.value.param == param


def test_latency_adds_up_wherever_it_stands_in_the_plan() -> None:
    client, _, clock = client_for([{"kind": "outage", "end": 4}, {"kind": "latency", "seconds": 0.3}])
    with pytest.raises(openai.InternalServerError):
        ask(client)
    assert clock.now() == 0.3


def test_the_sdks_own_retries_wait_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "outage", "end": 1}]}, clock=clock)
    started = time.monotonic()
    ask(make_client(provider, max_retries=3))
    times = [c.t for c in provider.log]
    assert times[0] == 0 and times == sorted(set(times))  # each retry later on the virtual clock
    assert provider.log[-1].status == 200 and len(times) >= 2
    assert time.monotonic() - started < 1  # and no real sleeping


async def test_the_async_sdks_own_retries_wait_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    provider = SimProvider({"faults": [{"kind": "rate_limit", "end": 2, "retry_after": 1.5}]}, clock=clock)
    await make_async_client(provider, max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert [(c.t, c.status) for c in provider.log] == [(0, 429), (1.5, 429), (3.0, 200)]


def test_capacity_is_shared_by_the_models_it_covers() -> None:
    client, _, _ = client_for([{"kind": "capacity", "per_second": 2}])
    ask(client, "gpt-4o")
    ask(client, "gpt-4o-mini")
    with pytest.raises(openai.InternalServerError):
        ask(client, "gpt-4.1")


def test_a_hang_the_client_outlasts_ends_with_a_closed_connection_as_over_http() -> None:
    client, _, clock = client_for([{"kind": "hang", "seconds": 3}], timeout=10)
    with pytest.raises(openai.APIConnectionError) as raised:
        ask(client)
    assert not isinstance(raised.value, openai.APITimeoutError)
    assert clock.now() == 3


def test_plan_and_factory_misuse_is_refused_with_the_reason(tmp_path) -> None:
    with pytest.raises(FaultPlanError, match=r"faults\[0\] \(outage\): models: List should have at least 1 item"):
        FaultPlan.parse({"faults": [{"kind": "outage", "models": []}]})
    latin1 = tmp_path / "plan.json"
    latin1.write_bytes('{"faults": [{"kind": "outage", "models": ["gpt-4o"]}], "note": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(FaultPlanError, match=r"plan.json: not UTF-8 text"):
        FaultPlan.from_file(latin1)
    with pytest.raises(ValueError, match="pass one or the other"):
        make_client(SimProvider(), real=True)


# --- the wire format matches the real API where the SDK reads it ----------------------------
def test_replies_carry_the_fields_the_real_api_sends() -> None:
    clock = VirtualClock(wall_start=1_800_000_000)
    client, _, _ = client_for([], clock=clock)
    clock.advance(90)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    reply = raw.parse()
    assert raw.headers["openai-version"] == "2020-10-01"
    assert reply.created == 1_800_000_090  # the clock's time, as a Unix timestamp
    assert reply.service_tier == "default"
    assert reply.choices[0].message.annotations == []
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0
    last = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True,
                                               stream_options={"include_usage": True}))[-1]
    assert last.service_tier == "default" and last.usage.prompt_tokens_details.cached_tokens == 0


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"temperature": "hot"}, "temperature", "expected a number"),
        ({"temperature": 2.5}, "temperature", "at most 2"),
        ({"top_p": -0.1}, "top_p", "at least 0"),
        ({"presence_penalty": True}, "presence_penalty", "expected a number"),
        ({"seed": 1.5}, "seed", "expected an integer"),
        ({"stop": 7}, "stop", "a string or an array of up to 4 strings"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "a string or an array of up to 4 strings"),
        ({"user": 42}, "user", "expected a string"),
        ({"logprobs": "yes"}, "logprobs", "expected a boolean"),
        ({"top_logprobs": 21}, "top_logprobs", "at most 20"),
        ({"logit_bias": {"50256": 200}}, "logit_bias", "from -100 to 100"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when 'stream' is enabled"),
        ({"temprature": 0.5}, None, "Unrecognized request argument supplied: temprature"),
    ],
)
def test_wrongly_typed_or_unknown_parameters_get_a_400_naming_them(extra: dict, param: str | None, message: str) -> None:
    client, provider, _ = client_for([])
    with pytest.raises(openai.BadRequestError, match=message) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_body=extra)
    assert raised.value.param == param
    assert provider.log[-1].status == 400


def test_well_typed_parameters_are_accepted() -> None:
    client, _, _ = client_for([])
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, temperature=0, top_p=1, presence_penalty=-2, frequency_penalty=2.0, seed=7,
        stop=["\n\n"], user="u-1", logprobs=False, top_logprobs=0, logit_bias={"50256": -100}, n=1, store=False,
        metadata={"team": "support"})
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("path", "shown"), [("/v1/embeddings", "/v1/embeddings"), ("/v1", "/v1"), ("/nothing", "/nothing")])
def test_an_unknown_path_is_reported_as_it_was_asked_for(path: str, shown: str) -> None:
    reply = SimProvider().handle("GET", path, {}, b"")
    assert reply.status == 404
    assert json.loads(reply.body)["error"]["message"] == f"Invalid URL (GET {shown})"


def test_text_pieces_end_where_characters_end() -> None:
    """An emoji takes several tokens; no piece may split one, and a cut inside one drops it."""
    from course_lib.sim.models import encoding_for, text_pieces

    text = "Here you go: 🦩🦩🦩🦩 done"
    tokens = encoding_for("gpt-4o-mini").encode(text)
    assert "".join(text_pieces(tokens, "gpt-4o-mini")) == text
    for end in range(len(tokens) + 1):
        joined = "".join(text_pieces(tokens[:end], "gpt-4o-mini"))
        assert text.startswith(joined) and "\ufffd" not in joined
    assert "".join(text_pieces(tokens[:6], "gpt-4o-mini")) == "Here you go:"  # 🦩 needs 3 tokens
