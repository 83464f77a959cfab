"""The conditioning gateway through a real Attune server and the real M2-her stand-in on loopback."""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from models.conditioning import after_rejections, label_probabilities, max_tokens_for
from models.features import CJK_CHARS_PER_TOKEN, pacing_of
from service import keys
from service import standin_zh as zh
from service.settings import Settings
from service.standin import StandIn, running
from tests.conftest import ApiServer, full_redis, make_settings

SYSTEM = "You are Mira, a cartographer in a rain-soaked harbour town. Never break character."
PACINGS = ("slow_burn", "balanced", "fast")
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where does the map lead?"}]


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[StandIn, str]]:
    with running(first_byte_ms=0, chunk_ms=0, seed=7) as pair:
        yield pair


@pytest.fixture
def si(standin: tuple[StandIn, str]) -> StandIn:
    s = standin[0]
    s.faults.clear()
    s.log.clear()
    s.config.update(
        first_byte_ms=0, chunk_ms=0, done="random", advanced_roles_error=2013, reject_advanced=False
    )
    return s


@pytest.fixture
def settings(
    redis_url: str, tmp_path: Path, redis_sync: redis.Redis, standin: tuple[StandIn, str]
) -> Settings:
    return make_settings(
        redis_url,
        tmp_path,
        minimax_base_url=standin[1],
        upstream_timeout={"first_byte": 1.0, "idle": 5.0},
        upstream_retry={"attempts": 3, "backoff": 0.01, "max_backoff": 0.05},
    )


def headers(user: str = "u1", **extra: str) -> dict[str, str]:
    return {"X-Attune-User": user, **extra}


def oai(api: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(api_key=api.app_key(), base_url=f"{api.url}/v1", max_retries=0, timeout=10)


def recorded(r: redis.Redis, reply_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The reply_shown the gateway appended for reply_id (polls: it is written off the response path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for part in range(4):
            for _, fields in r.xrange(keys.stream(part)):
                ev = orjson.loads(fields[b"e"])
                if ev.get("reply_id") == reply_id and ev["type"] == "reply_shown":
                    return ev
        time.sleep(0.02)
    raise AssertionError(f"no reply_shown recorded for {reply_id}")


def sse_payloads(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def native_text(payloads: list[str]) -> str:
    out = []
    for p in payloads:
        if p == "[DONE]":
            continue
        chunk = orjson.loads(p)
        for choice in chunk.get("choices") or []:
            if "delta" in choice:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


def put_profile(r: redis.Redis, user: str, **over: Any) -> dict[str, Any]:
    doc = {
        "app": "demo",
        "user_id": user,
        "character_id": None,
        "version": 17,
        "reply_length": {"target_chars": 300, "interval": [280, 320], "confidence": 0.9},
        "pacing": {
            "label": "slow_burn",
            "scores": {"slow_burn": 0.9, "balanced": 0.05, "fast": 0.05},
            "confidence": 0.9,
            "posterior": {"slow_burn": [90, 5], "balanced": [5, 30], "fast": [5, 30]},
        },
    }
    doc.update(over)
    r.set(keys.profile("demo", user), orjson.dumps(doc))
    return doc


def test_openai_sdk_non_streamed_returns_the_stand_in_reply_and_records_it(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    raw = oai(api).chat.completions.with_raw_response.create(model="M2-her", messages=MESSAGES, user="u1")
    completion = raw.parse()
    assert completion.choices[0].message.content == si.log[-1]["reply"]
    reply_id = raw.headers["x-attune-reply-id"]
    assert raw.headers["x-attune-upstream"] == "standin"
    ev = recorded(redis_sync, reply_id)
    assert ev["event_id"] == f"gw-{reply_id}" and ev["user_id"] == "u1"
    assert ev["reply"]["chars"] == len(si.log[-1]["reply"])
    assert "text" not in ev["reply"] and si.log[-1]["reply"][:30] not in orjson.dumps(ev).decode()
    assert ev["conditioning"]["pacing"] in ("slow_burn", "balanced", "fast")
    # What the reply reads as, measured from its text (the model follows the note only most of the time).
    assert ev["reply"].get("pacing") == pacing_of(si.log[-1]["reply"])


def test_openai_sdk_streamed_text_equals_the_stand_in_reply_exactly(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    stream = oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1", stream=True)
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == si.log[-1]["reply"]
    assert finish == si.log[-1]["finish_reason"]


def test_native_stream_passes_the_aggregate_chunk_once_and_measures_the_reply_once(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    with (
        api.client(api.app_key()) as c,
        c.stream(
            "POST",
            "/v1/text/chatcompletion_v2",
            headers=headers(),
            json={"model": "M2-her", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(r.read().decode())
        reply_id = r.headers["x-attune-reply-id"]
    reply = si.log[-1]["reply"]
    assert native_text(payloads) == reply
    aggregates = [
        p for p in payloads if p != "[DONE]" and "message" in (orjson.loads(p).get("choices") or [{}])[0]
    ]
    assert len(aggregates) == 1 and orjson.loads(aggregates[0])["choices"][0]["message"]["content"] == reply
    assert recorded(redis_sync, reply_id)["reply"]["chars"] == len(reply)  # not doubled by the aggregate


def test_native_non_streamed_answer_is_m2her_shaped(api: ApiServer, si: StandIn) -> None:
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/text/chatcompletion_v2", headers=headers(), json={"model": "M2-her", "messages": MESSAGES}
        )
    assert r.status_code == 200
    body = r.json()
    assert (
        body["base_resp"]["status_code"] == 0
        and body["choices"][0]["message"]["content"] == si.log[-1]["reply"]
    )


def test_error_inside_a_200_stream_reaches_the_openai_client_as_an_error(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"stream_error_after": 3, "code": 1027, "message": "output flagged (1027)"})
    stream = oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1", stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "1027" in info.value.message
    assert info.value.body["minimax_code"] == 1027  # type: ignore[index]
    assert len(seen) == 3 and len(si.log) == 1  # after the first byte: passed on, never retried


def test_error_inside_a_200_stream_reaches_the_native_client_as_base_resp(
    api: ApiServer, si: StandIn
) -> None:
    si.faults.append({"stream_error_after": 2, "code": 1000})
    with (
        api.client(api.app_key()) as c,
        c.stream(
            "POST",
            "/v1/text/chatcompletion_v2",
            headers=headers(),
            json={"model": "M2-her", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        payloads = sse_payloads(r.read().decode())
    last = orjson.loads(payloads[-1])
    assert last["base_resp"]["status_code"] == 1000 and last["choices"] is None
    assert len(si.log) == 1


def test_error_chunk_before_any_text_is_retried_when_retryable(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"stream_error_after": 0, "code": 1002})
    stream = oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1", stream=True)
    text = "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
    assert len(si.log) == 2 and text == si.log[-1]["reply"]


def test_non_retryable_error_before_first_byte_keeps_the_minimax_code_in_both_shapes(
    api: ApiServer, si: StandIn
) -> None:
    si.faults.extend([{"stream_error_after": 0, "code": 1026}, {"status": 200, "code": 1026}])
    with api.client(api.app_key()) as c:
        r1 = c.post(
            "/v1/chat/completions",
            headers=headers(),
            json={"model": "M2-her", "messages": MESSAGES, "stream": True},
        )
        r2 = c.post(
            "/v1/text/chatcompletion_v2", headers=headers(), json={"model": "M2-her", "messages": MESSAGES}
        )
    assert r1.status_code == 422 and r1.json()["error"]["minimax_code"] == 1026
    assert r1.json()["error"]["code"] == "upstream_input_flagged"
    assert r2.status_code == 422 and r2.json()["base_resp"]["status_code"] == 1026
    assert len(si.log) == 2  # neither retried
    assert r1.headers["x-attune-reply-id"]


def test_429_before_first_byte_is_retried(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"status": 429, "code": 1002, "message": "rate limit exceeded (1002)"})
    completion = oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1")
    assert len(si.log) == 2 and completion.choices[0].message.content == si.log[-1]["reply"]


def test_429_after_retries_run_out_reaches_the_app_as_429(api: ApiServer, si: StandIn) -> None:
    si.faults.extend([{"status": 429, "code": 1002, "message": "rate limit exceeded (1002)"}] * 3)
    with pytest.raises(openai.RateLimitError) as info:
        oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1")
    assert info.value.status_code == 429 and "1002" in info.value.message
    assert len(si.log) == 3


def test_429_after_the_first_byte_is_not_retried(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"stream_error_after": 2, "code": 1002})
    stream = oai(api).chat.completions.create(model="M2-her", messages=MESSAGES, user="u1", stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert len(si.log) == 1


def test_client_disconnect_stops_the_upstream_request(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    si.config.update(chunk_ms=30)
    long_history = [
        {"role": "system", "content": SYSTEM},
        {"role": "system", "name": "reader_preferences", "content": "Length: about 3000 characters."},
        {"role": "user", "content": "Tell me everything."},
    ]
    with (
        api.client(api.app_key()) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            headers=headers(**{"X-Attune-Conditioning": "off"}),
            json={"model": "M2-her", "messages": long_history, "stream": True},
        ) as r,
    ):
        reply_id = r.headers["x-attune-reply-id"]
        it = r.iter_raw()
        next(it)
    entry = si.log[-1]
    deadline = time.monotonic() + 15
    while not entry.get("disconnected") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert entry["disconnected"] and not entry["completed"]
    assert entry["chunks_sent"] < entry["chunks_total"] - 5
    ev = recorded(redis_sync, reply_id)
    assert ev["reply"]["finish_reason"] == "client_disconnected" and ev["conditioning"] is None


def test_slow_upstream_hits_the_first_byte_timeout_with_a_clear_error(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"delay_ms": 10_000})
    key = api.app_key()
    start = time.monotonic()
    with api.client(key) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    assert time.monotonic() - start < 6  # the 1 s timeout, not the upstream's 10 s
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "upstream_timeout" and "first byte within 1 s" in err["message"]


def test_unreachable_upstream_is_a_502_naming_the_base_url(
    redis_url: str, tmp_path: Path, redis_sync: redis.Redis
) -> None:
    from tests.conftest import free_port, start_api  # noqa: PLC0415

    base = f"http://127.0.0.1:{free_port()}"
    server, api = start_api(
        make_settings(
            redis_url, tmp_path, minimax_base_url=base, upstream_retry={"attempts": 2, "backoff": 0.01}
        )
    )
    try:
        with api.client(api.app_key()) as c:
            r = c.post(
                "/v1/text/chatcompletion_v2",
                headers=headers(),
                json={"model": "M2-her", "messages": MESSAGES},
            )
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unreachable" and base in r.json()["error"]["message"]
        assert r.json()["base_resp"]["status_code"] == 1000
    finally:
        server.__exit__(None, None, None)


def test_profile_conditions_the_request_without_touching_the_character(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    put_profile(redis_sync, "u1")
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    assert r.headers["x-attune-conditioned"] == "true" and r.headers["x-attune-profile-version"] == "17"
    sent = si.log[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": SYSTEM, "name": "Character"}
    note = sent["messages"][1]
    assert note["role"] == "system" and note["name"] == "reader_preferences" and "Pace:" in note["content"]
    assert sent["messages"][2]["content"] == MESSAGES[1]["content"]
    assert 100 <= sent["max_completion_tokens"] <= 140  # ~300 chars with headroom
    ev = recorded(redis_sync, r.headers["x-attune-reply-id"])
    cond = ev["conditioning"]
    assert (
        cond["profile_version"] == 17 and 250 <= cond["target_chars"] <= 350 and 0 < cond["propensity"] <= 1
    )
    assert cond["pacing"] in note["content"].lower().replace(" ", "_") or cond["explored"]
    assert "Dialogue:" not in note["content"] and cond.get("dialogue") is None  # no style in this profile


def test_a_chinese_conversation_gets_a_token_budget_for_chinese_and_its_reply_is_not_cut(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    # A Chinese character is about 1.5 tokens' worth of an English one's 0.25: a budget counted at 4
    # characters per token cut every reply of a 300-character reader at about 170 characters.
    put_profile(redis_sync, "u1", reply_length={"target_chars": 300, "interval": [290, 310], "confidence": 0.99})
    # The character's greeting is English (cards often are); the reader answers in Chinese, and so will the reply.
    messages = [{"role": "system", "name": "Character", "content": SYSTEM},
                {"role": "assistant", "name": "Character", "content": "Welcome, traveller. Sit by the fire."},
                {"role": "user", "name": "u", "content": "我们今晚就出发吗？外面的雨还没有停。"}]
    finishes = []
    with api.client(api.app_key()) as c:
        for _ in range(6):
            r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": messages})
            assert r.status_code == 200 and r.headers["x-attune-conditioned"] == "true", r.text
            finishes.append(r.json()["choices"][0]["finish_reason"])
            sent, reply = si.log[-1]["body"], si.log[-1]["reply"]
            target = recorded(redis_sync, r.headers["x-attune-reply-id"])["conditioning"]["target_chars"]
            assert sent["max_completion_tokens"] == max_tokens_for(target, CJK_CHARS_PER_TOKEN)
            assert sent["max_completion_tokens"] >= 1.1 * target  # room for the target, in Chinese tokens
            assert zh.cjk_count(reply) > 0.6 * len(reply)  # the stand-in answered in Chinese
    assert finishes.count("length") <= 1, finishes  # the stand-in writes 0.8-1.25x the target, rarely more
    # An English conversation keeps English's budget.
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    target = recorded(redis_sync, r.headers["x-attune-reply-id"])["conditioning"]["target_chars"]
    assert si.log[-1]["body"]["max_completion_tokens"] == max_tokens_for(target)


def test_a_sure_dialogue_taste_asks_for_mostly_dialogue_and_is_recorded(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    put_profile(redis_sync, "u1", style={"dialogue_share": {"value": 0.7, "confidence": 0.8}})
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
        cond = c.post("/v1/condition", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    note = si.log[-1]["body"]["messages"][1]
    assert note["name"] == "reader_preferences" and "Dialogue: mostly dialogue" in note["content"]
    assert recorded(redis_sync, r.headers["x-attune-reply-id"])["conditioning"]["dialogue"] == "mostly_dialogue"
    assert cond.json()["applied"]["dialogue"] == "mostly_dialogue"
    assert any("Dialogue: mostly dialogue" in m["content"] for m in cond.json()["request"]["messages"])


def test_profile_read_failure_fails_open(api: ApiServer, si: StandIn, redis_sync: redis.Redis) -> None:
    redis_sync.set(keys.profile("demo", "u1"), b"{half a profile")  # unreadable
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-attune-conditioned"] == "false"
    assert all(m.get("name") != "reader_preferences" for m in si.log[-1]["body"]["messages"])
    assert recorded(redis_sync, r.headers["x-attune-reply-id"])["conditioning"] is None


def test_conditioning_off_forwards_unconditioned_but_records_the_reply(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    put_profile(redis_sync, "u1")
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=headers(
                **{"X-Attune-Conditioning": "off", "X-Attune-Session": "s1", "X-Attune-Character": "c7"}
            ),
            json={"model": "M2-her", "messages": MESSAGES},
        )
    assert r.headers["x-attune-conditioned"] == "false"
    assert si.log[-1]["body"]["messages"] == [
        {**m, "name": n} for m, n in zip(MESSAGES, ("Character", "User"), strict=True)
    ]
    ev = recorded(redis_sync, r.headers["x-attune-reply-id"])
    assert ev["conditioning"] is None and ev["session_id"] == "s1" and ev["character_id"] == "c7"


def test_no_profile_explores_with_the_population_prior(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/chat/completions",
            headers=headers("newcomer"),
            json={"model": "M2-her", "messages": MESSAGES},
        )
    assert r.headers["x-attune-conditioned"] == "true" and r.headers["x-attune-profile-version"] == "none"
    cond = recorded(redis_sync, r.headers["x-attune-reply-id"])["conditioning"]
    assert (
        cond["propensity"] == pytest.approx(1 / 3, abs=1e-4)
        and cond["explored"]
        and cond["target_chars"] is None
    )
    assert "max_completion_tokens" not in si.log[-1]["body"]


def test_missing_user_is_a_400_that_says_how_to_name_one(api: ApiServer, si: StandIn) -> None:
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", json={"model": "M2-her", "messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["code"] == "user_required"
    assert "X-Attune-User" in r.json()["error"]["message"] and not si.log


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_chat_over_the_size_limit_says_to_shorten_the_conversation(
        api: ApiServer, si: StandIn, gzipped: bool) -> None:
    """The 413 said "split the batch", which is for event batches."""
    long = {"role": "user", "name": "u", "content": "x" * 1_100_000}
    body = orjson.dumps({"model": "M2-her", "messages": [long]})
    extra = {"Content-Encoding": "gzip"} if gzipped else {}
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", content=gzip.compress(body) if gzipped else body,
                   headers={**headers(), **extra, "Content-Type": "application/json"})
    message = r.json()["error"]["message"]
    assert r.status_code == 413 and "shorten the conversation" in message and "batch" not in message, message
    assert not si.log


def test_unsupported_params_are_dropped_and_out_of_range_clamped(api: ApiServer, si: StandIn) -> None:
    body = {
        "model": "M2-her",
        "messages": MESSAGES,
        "tools": [{"type": "function"}],
        "n": 2,
        "logprobs": True,
        "presence_penalty": 1,
        "response_format": {"type": "json_object"},
        "max_tokens": 5000,
        "temperature": 0,
        "top_p": 1.5,
        "user": "u1",
    }
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", json=body, headers={"X-Attune-Conditioning": "off"})
    assert r.status_code == 200, r.text  # the strict stand-in refuses any unknown field
    sent = si.log[-1]["body"]
    assert set(sent) == {"model", "messages", "stream", "max_completion_tokens", "temperature", "top_p"}
    assert sent["max_completion_tokens"] == 2048 and sent["temperature"] == 0.01 and sent["top_p"] == 1.0
    assert r.headers["x-attune-dropped"] == "logprobs,n,presence_penalty,response_format,tools"


def test_dropped_field_names_that_cannot_go_in_a_header_are_masked_not_a_500(
    api: ApiServer, si: StandIn
) -> None:
    body = {"model": "M2-her", "messages": MESSAGES, "bad\r\nSet-Cookie: x": 1, "ключ": 2}
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", json=body, headers=headers(**{"X-Attune-Conditioning": "off"}))
    assert r.status_code == 200, r.text
    assert r.headers["x-attune-dropped"] == "bad??Set-Cookie: x,????" and "set-cookie" not in r.headers


@pytest.mark.parametrize(
    "patch, where",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "role"),
        ({"messages": []}, "messages"),
        ({"model": "gpt-4o"}, "model"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_message_naming_the_field(
    api: ApiServer, si: StandIn, patch: dict[str, Any], where: str
) -> None:
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES, **patch}
        )
    assert r.status_code == 400 and where in r.json()["error"]["message"] and not si.log


def test_advanced_roles_get_names_and_fold_into_system_on_2013(api: ApiServer, si: StandIn) -> None:
    si.config.update(reject_advanced=True)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user_system", "content": "I am Ren, a courier."},
        {"role": "group", "content": "The harbour"},
        {"role": "sample_message_user", "content": "Hello?"},
        {"role": "sample_message_ai", "content": "*looks up* Yes?"},
        {"role": "user", "content": "Hi"},
    ]
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/text/chatcompletion_v2",
            headers=headers(**{"X-Attune-Conditioning": "off"}),
            json={"model": "M2-her", "messages": messages},
        )
    assert r.status_code == 200
    first, second = si.log[-2]["body"], si.log[-1]["body"]
    assert all(m.get("name") for m in first["messages"]) and si.log[-2]["rejected"] == 2013
    assert [m["role"] for m in second["messages"]] == ["system", "user"]
    assert (
        second["messages"][0]["content"].startswith(SYSTEM) and "I am Ren" in second["messages"][0]["content"]
    )


def test_condition_route_answers_the_conditioned_body_and_what_was_applied(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    put_profile(redis_sync, "u1")
    with api.client(api.app_key()) as c:
        r = c.post(
            "/v1/condition", headers=headers(), json={"model": "M2-her", "messages": MESSAGES, "stream": True}
        )
    assert r.status_code == 200
    out = r.json()
    assert out["reply_id"] == r.headers["x-attune-reply-id"]
    assert out["applied"]["profile_version"] == 17 and out["applied"]["pacing"] in (
        "slow_burn",
        "balanced",
        "fast",
    )
    assert out["request"]["messages"][0]["content"] == SYSTEM and out["request"]["stream"] is True
    assert any(m.get("name") == "reader_preferences" for m in out["request"]["messages"])
    assert not si.log  # nothing forwarded


def test_gateway_routes_need_the_condition_scope(api: ApiServer) -> None:
    with api.client(api.app_key(("ingest", "read"))) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"


def test_upstream_figures_reach_the_per_minute_aggregates(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    si.faults.append({"status": 400, "code": 2013})
    with api.client(api.app_key()) as c:
        c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
        c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    minute = int(time.time() // 60)
    deadline = time.monotonic() + 15
    fields: Counter[bytes] = Counter()
    while time.monotonic() < deadline:
        fields = Counter()
        for m in (minute - 1, minute):  # added up: the two chats may fall on either side of a minute
            fields.update({k: int(v) for k, v in redis_sync.hgetall(keys.stats_minute("demo", m)).items()})
        if fields[b"upstream:requests"] == 2:
            break
        time.sleep(0.05)
    assert fields[b"upstream:requests"] == 2 and fields[b"upstream:error:2013"] == 1
    assert any(k.startswith(b"upstream:lat:") for k in fields)


def test_transport_errors_are_mapped_not_leaked(api: ApiServer, si: StandIn) -> None:
    si.faults.append({"drop_after": 2})
    with (
        api.client(api.app_key()) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            headers=headers(),
            json={"model": "M2-her", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        payloads = sse_payloads(r.read().decode())
    err = orjson.loads(payloads[-1])["error"]
    assert err["code"] == "upstream_stream_broken" and err["minimax_code"] == 1000


def test_standin_header_says_where_chats_go(api: ApiServer, si: StandIn) -> None:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.app_key()}"}) as c:
        r = c.post("/v1/condition", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
    assert r.headers["x-attune-upstream"] == "standin"


def _checked(redis_url: str, app: str, key_id: str, secret_hash: str, names: list[str], rate: int = 100) -> Any:
    import asyncio  # noqa: PLC0415

    from service.store import Store, connect  # noqa: PLC0415

    async def run() -> Any:
        client = connect(redis_url)
        try:
            return await Store(client, 4, 60).condition_checked(app, key_id, secret_hash, "condition", rate, names)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_one_round_trip_checks_the_key_and_reads_the_profiles_in_order(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    redis_sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "read,condition"})
    redis_sync.set(keys.profile("demo", "u1"), b'{"version": 3}')
    names = [keys.profile("demo", "u1", "c9"), keys.profile("demo", "u1")]
    check, docs = _checked(redis_url, "demo", "k1", "h", names)
    assert check.valid and check.scopes == ("read", "condition") and check.used == 1
    assert docs == [None, b'{"version": 3}']  # the character's profile is absent, the user's read
    check, docs = _checked(redis_url, "demo", "k1", "wrong", names)
    assert not check.valid and docs is None
    check, docs = _checked(redis_url, "demo", "k1", "h", [])  # conditioning off: no profile asked
    assert check.valid and docs is None


def test_one_round_trip_reads_no_profile_without_the_scope_or_over_the_rate(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    redis_sync.hset(keys.api_key("demo", "k2"), mapping={"hash": "h", "scopes": "read"})
    redis_sync.hset(keys.api_key("demo", "k3"), mapping={"hash": "h", "scopes": "condition"})
    redis_sync.set(keys.profile("demo", "u1"), b"{}")
    check, docs = _checked(redis_url, "demo", "k2", "h", [keys.profile("demo", "u1")])
    assert check.valid and check.scopes == ("read",) and docs is None
    check, docs = _checked(redis_url, "demo", "k3", "h", [keys.profile("demo", "u1")], rate=0)
    assert check.valid and check.used >= 1 and docs is None  # over the limit: auth.admit answers 429


def test_a_revoked_key_is_refused_on_the_next_chat(api: ApiServer, si: StandIn) -> None:
    key = api.app_key(("condition",), app="revoked")
    body = {"model": "M2-her", "messages": MESSAGES}
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.post("/v1/condition", headers=headers(), json=body).status_code == 200
        key_id = key.split("_")[2]
        with api.admin() as admin:
            assert admin.delete(f"/v1/admin/keys/{key_id}").status_code in (200, 204)
        r = c.post("/v1/chat/completions", headers=headers(), json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key" and not si.log


def test_a_bad_body_with_a_bad_key_is_a_401_first(api: ApiServer, si: StandIn) -> None:
    bad = "atk_demo_0123456789ab_" + "0" * 64
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {bad}"}) as c:
        r = c.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 401 and r.json() == {
        "error": {"code": "invalid_key", "message": "unknown or revoked API key"}
    }


def _regen_record(r: redis.Redis, user: str, rows: int, timeout: float = 15.0) -> tuple[str, list[Any]]:
    """The user's one regeneration record once it lists `rows` replies (written off the response path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(r.scan_iter(match=keys.user_tag("demo", user).replace("{", "\\{") + ":regen:*"))
        if len(found) == 1:
            record = orjson.loads(r.get(found[0]) or b"[]")
            if len(record) == rows:
                return found[0].decode(), record
        time.sleep(0.02)
    raise AssertionError(f"no regeneration record of {rows} replies for {user}")


def test_a_regeneration_is_conditioned_away_from_the_replies_it_replaces(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    profile = put_profile(redis_sync, "u7")
    scores = tuple(profile["pacing"]["scores"][p] for p in ("slow_burn", "balanced", "fast"))
    client = oai(api)

    def chat(messages: list[dict[str, Any]]) -> dict[str, Any]:
        raw = client.chat.completions.with_raw_response.create(model="M2-her", messages=messages, user="u7")
        return recorded(redis_sync, raw.headers["x-attune-reply-id"])

    first = chat(MESSAGES)
    key, record = _regen_record(redis_sync, "u7", 1)
    assert record == [[first["conditioning"]["pacing"], first["reply"].get("pacing")]]
    # The same conversation again (the app's "repeat"): the arm is drawn from the scores weighed by the
    # refused reply, and the propensity logged is that draw's.
    again = chat(MESSAGES)
    weighed = after_rejections(scores, tuple(map(tuple, record)), 0.15)
    refused = PACINGS.index(record[0][1] or record[0][0])  # what it read as (else what was asked)
    assert weighed[refused] < scores[refused]
    arm = again["conditioning"]["pacing"]
    assert again["conditioning"]["propensity"] == round(label_probabilities(weighed)[arm], 6)
    assert _regen_record(redis_sync, "u7", 2)[1][1] == [arm, again["reply"].get("pacing")]
    # The next turn is another state of the conversation: a reply of its own, nothing refused yet.
    turn = [{"role": "assistant", "content": "It leads north."}, {"role": "user", "content": "Go"}]
    nxt = chat([*MESSAGES, *turn])
    fresh = label_probabilities(scores)[nxt["conditioning"]["pacing"]]
    assert nxt["conditioning"]["propensity"] == round(fresh, 6)
    assert 0 < redis_sync.pttl(key) <= 300_000
    # Deleting the user deletes what the gateway remembers of the conversation too.
    with api.client(api.app_key()) as c:
        assert c.delete("/v1/users/u7").status_code == 200
    assert not list(redis_sync.scan_iter(match=keys.user_tag("demo", "u7").replace("{", "\\{") + ":regen:*"))


def test_the_condition_route_remembers_what_it_asked_for_as_a_regeneration_record(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis
) -> None:
    put_profile(redis_sync, "u8")
    body = {"model": "M2-her", "messages": MESSAGES}
    with api.client(api.app_key()) as c:
        first = c.post("/v1/condition", headers=headers("u8"), json=body).json()["applied"]
        _, record = _regen_record(redis_sync, "u8", 1)
        assert record == [[first["pacing"], None]]  # the app calls M2-her itself: no text, no measured pacing
        second = c.post("/v1/condition", headers=headers("u8"), json=body).json()["applied"]
    scores = (0.9, 0.05, 0.05)
    weighed = after_rejections(scores, ((first["pacing"], None),), 0.15)
    assert second["propensity"] == round(label_probabilities(weighed)[second["pacing"]], 6)



def test_a_full_redis_still_serves_profiles_and_chats(api: ApiServer, si: StandIn, redis_sync: redis.Redis) -> None:
    """maxmemory reached under noeviction: Redis refuses the key check's rate count (a write), but the key
    record and the profile can still be read, so a chat is conditioned and answered and a profile served;
    events are refused whole (503) until memory is freed."""
    put_profile(redis_sync, "u1")
    key = api.app_key()
    with full_redis(redis_sync), api.client(key) as c:
        chat = c.post("/v1/chat/completions", headers=headers(), json={"model": "M2-her", "messages": MESSAGES})
        profile = c.get("/v1/users/u1/profile")
        events = c.post("/v1/events", json={"events": [{
            "event_id": "full-1", "type": "repeat", "user_id": "u1", "reply_id": "r1",
            "timestamp": int(time.time() * 1000)}]})
    assert chat.status_code == 200 and chat.headers["x-attune-conditioned"] == "true", chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    assert profile.status_code == 200 and profile.json()["user_id"] == "u1"
    assert events.status_code == 503 and "out of memory" in events.json()["error"]["message"]
    assert redis_sync.keys("attune:*:seen:demo:full-1") == []


def test_a_mistyped_conditioning_header_is_a_400_not_a_conditioned_holdout(api: ApiServer, si: StandIn) -> None:
    """on/off and their usual spellings (true/false, 1/0, yes/no, any case) mean what they say; anything else is
    a 400: 'false' or '0' meant off to the app that sent it and was conditioned without a word, which
    corrupts the holdout arm of an A/B."""
    with api.client(api.app_key()) as c:
        bad = [c.post("/v1/chat/completions", headers=headers(**{"X-Attune-Conditioning": v}),
                      json={"model": "M2-her", "messages": MESSAGES}) for v in ("of", "holdout", "2")]
        spelled = ("OFF", "on", "Off", "false", "0", "no", "None", "disabled", "true", "1", "YES", "enabled")
        good = {v: c.post("/v1/condition", headers=headers(**{"X-Attune-Conditioning": v}),
                          json={"model": "M2-her", "messages": MESSAGES}) for v in spelled}
        wrong_key = httpx.post(f"{api.url}/v1/chat/completions", headers={
            "Authorization": "Bearer atk_demo_0123456789ab_" + "0" * 64, "X-Attune-Conditioning": "of",
            "X-Attune-User": "u1"}, json={"model": "M2-her", "messages": MESSAGES})
    for r in bad:
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header", r.text
        assert "'on' or 'off'" in r.json()["error"]["message"]
    assert not si.log  # nothing went upstream
    assert [good[v].json()["conditioned"] for v in spelled] == [False, True, False, False, False, False, False,
                                                                 False, True, True, True, True]
    assert wrong_key.status_code == 401  # the key's verdict comes first, as for a bad body


def test_attunes_own_errors_on_the_native_route_carry_base_resp(api: ApiServer, si: StandIn) -> None:
    """A MiniMax client checks base_resp.status_code: Attune's own refusals on the native route carry it too,
    with the MiniMax code of the same meaning (2013 invalid parameters, 1004 bad key, 1002 rate limit)."""
    native = "/v1/text/chatcompletion_v2"
    with api.client(api.app_key()) as c:
        no_user = c.post(native, json={"model": "M2-her", "messages": MESSAGES})
        bad_header = c.post(native, headers=headers(**{"X-Attune-Conditioning": "maybe"}),
                            json={"model": "M2-her", "messages": MESSAGES})
        openai_route = c.post("/v1/chat/completions", json={"model": "M2-her", "messages": MESSAGES})
    wrong = {"Authorization": "Bearer atk_demo_0123456789ab_" + "0" * 64, **headers()}
    bad_key = httpx.post(f"{api.url}{native}", headers=wrong, json={"model": "M2-her", "messages": MESSAGES})
    for r, status, code in ((no_user, 400, 2013), (bad_header, 400, 2013), (bad_key, 401, 1004)):
        body = r.json()
        assert r.status_code == status and body["base_resp"]["status_code"] == code, r.text
        assert body["base_resp"]["status_msg"] == body["error"]["message"] and body["error"]["code"]
    assert "base_resp" not in openai_route.json() and openai_route.json()["error"]["code"] == "user_required"
    assert not si.log
