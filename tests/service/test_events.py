"""POST /v1/events against a real Attune server and a real Redis."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import orjson
import pytest
import redis

from service import keys
from tests.conftest import ApiServer, now_iso


def ev(etype: str = "repeat", user: str = "u1", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": uuid.uuid4().hex, "type": etype, "user_id": user, "timestamp": now_iso(-5)}
    if etype in {"reply_shown", "repeat", "reply_selected", "continue", "stop", "edit", "rating"}:
        base["reply_id"] = "r1"
    if etype in {"session_start", "session_end"}:
        base["session_id"] = "s1"
    extra = {"reply_shown": {"reply": {"chars": 412}}, "reply_selected": {"alternatives": ["r1", "r2"]},
             "user_message": {"chars": 40, "compose_ms": 9000}, "edit": {"chars_before": 400, "chars_after": 300},
             "rating": {"value": 0.5}, "stop": {"shown_chars": 120}}
    base.update(extra.get(etype, {}))
    base.update(kw)
    return base


def stored(r: redis.Redis, partitions: int = 4) -> list[dict[str, Any]]:
    out = []
    for p in range(partitions):
        for _, fields in r.xrange(keys.stream(p)):
            out.append(orjson.loads(fields[b"e"]))
    return out


def post(api: ApiServer, body: Any, key: str | None = None, **kw: Any) -> Any:
    with api.client(key or api.app_key()) as c:
        return c.post("/v1/events", json=body, **kw)


ALL_TYPES = ["reply_shown", "repeat", "reply_selected", "user_message", "continue", "stop", "edit", "rating",
             "session_start", "session_end"]


def test_batch_of_every_type_is_accepted_and_stored(api: ApiServer, redis_sync: redis.Redis) -> None:
    events = [ev(t) for t in ALL_TYPES]
    r = post(api, {"sent_at": now_iso(), "events": events})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(ALL_TYPES), "duplicates": 0, "rejected": []}
    got = stored(redis_sync)
    assert sorted(e["type"] for e in got) == sorted(ALL_TYPES)
    assert all(e["app"] == "demo" and "rt" in e and "t" in e for e in got)


def test_single_event_may_be_posted_alone(api: ApiServer, redis_sync: redis.Redis) -> None:
    r = post(api, ev("reply_shown"))
    assert r.status_code == 202
    assert r.json()["accepted"] == 1
    assert len(stored(redis_sync)) == 1


def test_reply_text_is_replaced_by_features(api: ApiServer, redis_sync: redis.Redis) -> None:
    text = '"Stay," she whispered. *The rain kept falling.* Will you?'
    r = post(api, ev("reply_shown", reply={"text": text}))
    assert r.status_code == 202
    [e] = stored(redis_sync)
    assert e["reply"]["chars"] == len(text)
    assert 0 < e["reply"]["dialogue_share"] < 1 and e["reply"]["hook"] is True
    assert "pacing" not in e["reply"]  # nine words: too few to tell the pace
    assert text not in json.dumps(e) and "rain" not in json.dumps(e)
    fast = '*She grabs your wrist.* "Run! Now!" The door bursts open! Boots thunder down the hall. No time!'
    r = post(api, ev("reply_shown", event_id="e-fast", reply={"text": fast}))
    assert r.status_code == 202
    assert stored(redis_sync)[-1]["reply"]["pacing"] == "fast"


@pytest.mark.parametrize(("event", "code", "words"), [
    (ev("repeat", reply_id=None), "missing_field", "reply_id"),
    (ev("nonsense"), "unknown_type", "reply_shown, repeat"),
    ({k: v for k, v in ev().items() if k != "event_id"}, "missing_field", "event_id"),
    (ev(user="bad id with spaces"), "invalid_field", "user_id"),
    (ev(event_id="x" * 129), "invalid_field", "event_id"),
    (ev("reply_shown", reply={"chars": -1}), "invalid_field", "reply.chars"),
    (ev("reply_shown", reply=None), "missing_field", "reply"),
    (ev("user_message", chars=-5), "invalid_field", "chars"),
    (ev("user_message", compose_ms=-1), "invalid_field", "compose_ms"),
    (ev("rating", value=1.5), "invalid_field", "-1 to 1"),
    (ev("rating", value=True), "invalid_field", "-1 to 1"),
    (ev("reply_selected", alternatives=[]), "missing_field", "alternatives"),
    (ev("reply_selected", alternatives=["r2", "r3"]), "invalid_field", "contain the kept reply_id"),
    (ev("edit", chars_after=None), "missing_field", "chars_after"),
    (ev("session_start", session_id=None), "missing_field", "session_id"),
    (ev(timestamp="yesterday"), "invalid_timestamp", "ISO 8601"),
    (ev(timestamp=1764000000), "invalid_timestamp", "epoch seconds"),
    (ev(timestamp=now_iso(+25 * 3600)), "timestamp_in_future", "24 h in the future"),
    (ev(timestamp=now_iso(-8 * 86400)), "timestamp_too_old", "retention"),
    (ev("reply_shown", conditioning={"pacing": "turbo"}), "invalid_field", "slow_burn"),
    (ev("reply_shown", conditioning={"propensity": 0}), "invalid_field", "propensity"),
    (ev("reply_shown", conditioning={"dialogue": "chatty"}), "invalid_field", "mostly_dialogue"),
    ("not an object", "not_an_object", "JSON object"),
    (ev(type=["repeat"]), "unknown_type", "is not known"),  # unhashable: was a 500 for the whole batch
    (ev(type={"name": "repeat"}), "unknown_type", "is not known"),
    # A sent_at far from the timestamps: the message named the device clock and asked for a sent_at it had.
    (ev(sent_at="0001-01-01T00:00:00Z"), "timestamp_in_future", "h after sent_at: an event cannot happen"),
    (ev(sent_at="9999-12-31T23:59:59-14:00"), "timestamp_too_old", "days before sent_at"),
])
def test_each_rule_rejects_with_a_code_and_a_clear_message(api: ApiServer, redis_sync: redis.Redis,
                                                           event: Any, code: str, words: str) -> None:
    if isinstance(event, dict):
        event = {k: v for k, v in event.items() if v is not None}
    good = ev("continue")
    r = post(api, {"events": [good, event]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1
    [rej] = body["rejected"]
    assert rej["index"] == 1 and rej["code"] == code
    assert words in rej["message"] and rej["message"].startswith("event 1:")
    assert [e["event_id"] for e in stored(redis_sync)] == [good["event_id"]]


def test_batch_with_no_valid_event_is_422_with_every_reason(api: ApiServer, redis_sync: redis.Redis) -> None:
    r = post(api, {"events": [ev(value=3, type="rating"), ev(type="nope")]})
    assert r.status_code == 422
    body = r.json()
    assert body["error"]["code"] == "no_valid_event"
    assert [x["code"] for x in body["rejected"]] == ["invalid_field", "unknown_type"]
    assert stored(redis_sync) == []


@pytest.mark.parametrize(("content", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_body"),
    (b'{"hello": 1}', "invalid_body"),
    (b'{"events": {}}', "invalid_body"),
    (b'{"events": []}', "empty_batch"),
    (b'{"sent_at": "soon", "events": [{}]}', "invalid_sent_at"),
    (b"", "empty_body"),
])
def test_body_that_is_not_json_or_not_this_shape_is_400(api: ApiServer, content: bytes, code: str) -> None:
    with api.client(api.app_key()) as c:
        r = c.post("/v1/events", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_limits_give_413(api: ApiServer, redis_sync: redis.Redis) -> None:
    r = post(api, {"events": [ev() for _ in range(1001)]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_events"
    big = ev("reply_shown", reply={"text": "x" * 60000})
    r = post(api, {"events": [dict(big, event_id=str(i)) for i in range(20)]})
    assert r.status_code == 413 and "1048576 bytes" in r.json()["error"]["message"]
    assert stored(redis_sync) == []


def test_gzip_body_is_accepted_and_a_gzip_bomb_is_refused(api: ApiServer, redis_sync: redis.Redis) -> None:
    events = [ev() for _ in range(50)]
    with api.client(api.app_key()) as c:
        r = c.post("/v1/events", content=gzip.compress(orjson.dumps({"events": events})),
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == 50
        bomb = gzip.compress(b'{"events": [' + b" " * (5 * 1024 * 1024) + b"]}")
        assert len(bomb) < 64 * 1024
        r = c.post("/v1/events", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        r = c.post("/v1/events", content=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_gzip"
    assert len(stored(redis_sync)) == 50


def test_a_gzip_body_in_several_members_is_read_whole_and_a_cut_one_is_refused(
        api: ApiServer, redis_sync: redis.Redis) -> None:
    """Before: only the first member was read (a batch split across two gave invalid_json), and a body cut
    before its checksum was accepted as far as it went."""
    events = [ev() for _ in range(20)]
    body = orjson.dumps({"events": events})
    half = len(body) // 2
    with api.client(api.app_key()) as c:
        r = c.post("/v1/events", content=gzip.compress(body[:half]) + gzip.compress(body[half:]),
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == 20, r.text
        cut = gzip.compress(orjson.dumps({"events": [ev()]}))[:-8]  # the JSON whole, the trailer gone
        r = c.post("/v1/events", content=cut, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_gzip"
        assert "cut short" in r.json()["error"]["message"]
        padded = [ev() for _ in range(2)]  # zero padding after the last member, as gzip -d takes it
        r = c.post("/v1/events", content=gzip.compress(orjson.dumps({"events": padded})) + b"\0" * 512,
                   headers={"Content-Encoding": "gzip"})
        assert r.status_code == 202 and r.json()["accepted"] == 2, r.text
        # Tens of thousands of empty members cost the event loop quadratic time: refused past 64.
        many = gzip.compress(b"{}") + gzip.compress(b"") * 50_000
        r = c.post("/v1/events", content=many, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "more than 64 members" in r.json()["error"]["message"], r.text
    assert sorted(e["event_id"] for e in stored(redis_sync)) == sorted(e["event_id"] for e in events + padded)


def test_duplicate_in_same_batch_and_in_a_retry_is_stored_once(api: ApiServer, redis_sync: redis.Redis) -> None:
    a, b = ev(), ev()
    r = post(api, {"events": [a, b, dict(a)]})
    assert r.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    r = post(api, {"events": [a, b, ev()]})
    assert r.json() == {"accepted": 1, "duplicates": 2, "rejected": []}
    assert len(stored(redis_sync)) == 3


def test_an_event_id_seen_before_is_a_duplicate_whatever_user_it_names(
    api: ApiServer, redis_sync: redis.Redis
) -> None:
    """Contract: "an event_id seen before from the same app counts as a duplicate". The dedup marks were kept
    per user's partition, so an id resent under another user (an app bug, a retry that rebuilt its events)
    went in again whenever the two users fell in different partitions."""
    firsts = [ev(user=f"first-{i}") for i in range(12)]
    assert post(api, {"events": firsts}).json()["accepted"] == 12
    again = [{**e, "user_id": f"other-{i}"} for i, e in enumerate(firsts)]  # 4 partitions: most move
    assert post(api, {"events": again}).json() == {"accepted": 0, "duplicates": 12, "rejected": []}
    with api.admin() as c:  # the admin key's path (Store.ingest) too
        r = c.post("/v1/events", json={"events": [{**e, "user_id": "admin-moved"} for e in firsts]},
                   headers={"X-Attune-App": "demo"})
    assert r.json() == {"accepted": 0, "duplicates": 12, "rejected": []}, r.text
    assert sorted(e["user_id"] for e in stored(redis_sync)) == sorted(e["user_id"] for e in firsts)


def test_same_event_id_from_two_apps_is_two_events(api: ApiServer, redis_sync: redis.Redis) -> None:
    e = ev()
    assert post(api, e, api.app_key(app="alpha")).json()["accepted"] == 1
    assert post(api, e, api.app_key(app="beta")).json()["accepted"] == 1
    assert sorted(x["app"] for x in stored(redis_sync)) == ["alpha", "beta"]


def test_dedup_keys_expire_after_the_retention_window(api: ApiServer, redis_sync: redis.Redis) -> None:
    e = ev()
    post(api, e)
    [key] = redis_sync.keys("attune:*:seen:*")
    ttl = redis_sync.ttl(key)
    assert 7 * 86400 < ttl <= 8 * 86400


def test_sent_at_corrects_clock_skew(api: ApiServer, redis_sync: redis.Redis) -> None:
    # A device whose clock runs 2 hours ahead: its timestamp and sent_at are both 2 h ahead.
    skew = 2 * 3600
    e = ev(timestamp=now_iso(skew - 10))
    before = time.time() * 1000
    r = post(api, {"sent_at": now_iso(skew), "events": [e]})
    after = time.time() * 1000
    assert r.json()["accepted"] == 1
    [got] = stored(redis_sync)
    assert before - 10_000 - 50 <= got["t"] <= after - 10_000 + 50
    # sent_at is taken before the request (a key is made, a connection opened): seconds on a loaded machine.
    assert abs(got["skew_ms"] - skew * 1000) < 5000


def test_far_future_is_rejected_even_without_sent_at_but_skew_corrected_events_pass(api: ApiServer) -> None:
    far = now_iso(30 * 3600)
    r = post(api, {"events": [ev(timestamp=far), ev(timestamp=far)]})
    assert r.status_code == 422
    r = post(api, {"sent_at": now_iso(30 * 3600 + 5), "events": [ev(timestamp=far)]})
    assert r.status_code == 202 and r.json()["accepted"] == 1


def test_a_user_always_lands_in_one_partition_in_order(api: ApiServer, redis_sync: redis.Redis) -> None:
    events = [ev(user=f"user{i % 5}", event_id=f"e{i:03d}") for i in range(100)]
    assert post(api, {"events": events}).json()["accepted"] == 100
    parts: dict[str, set[int]] = {}
    for p in range(4):
        for _, fields in redis_sync.xrange(keys.stream(p)):
            e = orjson.loads(fields[b"e"])
            parts.setdefault(e["user_id"], set()).add(p)
    assert all(len(v) == 1 for v in parts.values())
    for p in range(4):
        ids = [orjson.loads(f[b"e"])["event_id"] for _, f in redis_sync.xrange(keys.stream(p))]
        assert ids == sorted(ids)
    assert len({next(iter(v)) for v in parts.values()}) > 1  # users spread over partitions


def test_rate_limit_gives_429_with_retry_after(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    from tests.conftest import make_settings, start_api

    server, handle = start_api(make_settings(redis_url, tmp_path, rate_limit_per_second=20))
    try:
        key = handle.app_key(("ingest",))
        with handle.client(key) as c:
            # 4 x 12 events against 20 per second: two posts in one second are over it, however the posts
            # fall across a second's boundary on a slow machine.
            codes = [c.post("/v1/events", json={"events": [ev() for _ in range(12)]}).status_code for _ in range(4)]
            assert 429 in codes, codes
            r = c.post("/v1/events", json={"events": [ev() for _ in range(30)]})
            assert r.status_code == 429
            assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "rate_limited"
            time.sleep(1.1)
            assert c.post("/v1/events", json=ev()).status_code == 202
    finally:
        server.__exit__(None, None, None)


def test_admin_key_ingests_for_the_app_it_names(api: ApiServer, redis_sync: redis.Redis) -> None:
    with api.admin() as c:
        r = c.post("/v1/events", json=ev())
        assert r.status_code == 400 and r.json()["error"]["code"] == "app_required"
        r = c.post("/v1/events", json=ev(), headers={"X-Attune-App": "ops"})  # no such app yet: a typo?
        assert r.status_code == 404 and r.json()["error"]["code"] == "app_not_found", r.text
        assert "no app named 'ops'" in r.json()["error"]["message"]
        assert stored(redis_sync) == []
        assert c.post("/v1/admin/apps/ops/keys", json={"scopes": ["read"]}).status_code == 201
        r = c.post("/v1/events", json=ev(), headers={"X-Attune-App": "ops"})
        assert r.status_code == 202
        # a mistyped name reads nothing and creates nothing, on every app route
        for method, path in (("GET", "/v1/users/u1/profile"), ("DELETE", "/v1/users/u1"),
                             ("GET", "/v1/users/u1/export"), ("POST", "/v1/chat/completions")):
            r = c.request(method, path, headers={"X-Attune-App": "opps"}, params={"user": "u1"},
                          json={"messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None)
            assert r.status_code == 404 and "known apps: ops" in r.json()["error"]["message"], (path, r.text)
    assert [e["app"] for e in stored(redis_sync)] == ["ops"]
    assert "opps" not in {a.decode() for a in redis_sync.smembers(keys.APPS)}


def test_metrics_count_accepted_duplicate_and_rejected(api: ApiServer) -> None:
    e = ev("stop")
    post(api, {"events": [e, e, ev("rating", value=9)]})
    with api.client() as c:
        text = c.get("/metrics").text
    assert 'attune_events_total{outcome="accepted",reason="",type="stop"}' in text
    assert 'outcome="duplicate"' in text and 'reason="invalid_field"' in text
    assert "attune_http_request_duration_seconds_bucket" in text and 'route="post_events"' in text
    assert "u1" not in text  # no user data


def test_stats_buffer_reaches_redis(api: ApiServer, redis_sync: redis.Redis) -> None:
    post(api, {"events": [ev("continue"), ev("continue")]})
    deadline = time.time() + 20
    fields: dict[bytes, bytes] = {}
    while time.time() < deadline and not fields:
        for key in redis_sync.keys("attune:stats:demo:m:*"):
            fields = redis_sync.hgetall(key)
        time.sleep(0.1)
    assert fields.get(b"accepted:continue") == b"2"


def test_openapi_documents_every_event_type(api: ApiServer) -> None:
    with api.client() as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/v1/events"]["post"]
    assert "example" in op["requestBody"]["content"]["application/json"]
    schemas = spec["components"]["schemas"]
    for name in ("Batch", "ReplyShown", "Repeat", "ReplySelected", "UserMessage", "Continue", "Stop", "Edit",
                 "Rating", "SessionStart", "SessionEnd", "IngestResult"):
        assert name in schemas, name
    assert "202" in op["responses"] and "413" in op["responses"]


def test_an_id_with_a_trailing_newline_is_rejected(api: ApiServer) -> None:
    r = post(api, {"events": [ev(), ev(user="u1\n")]})
    assert r.status_code == 202
    assert [x["code"] for x in r.json()["rejected"]] == ["invalid_field"]
    with api.admin() as c:
        assert c.post("/v1/admin/apps/demo%0A/keys", json={"scopes": ["read"]}).status_code == 400


def test_an_echoed_applied_keeps_its_balance_of_speech(api: ApiServer, redis_sync: redis.Redis) -> None:
    """An app echoes /v1/condition's `applied` whole in its reply_shown, the balance of speech included."""
    applied = {"pacing": "fast", "target_chars": 300, "explored": False, "propensity": 0.8,
               "profile_version": 3, "dialogue": "mostly_dialogue"}
    r = post(api, {"events": [ev("reply_shown", conditioning=applied)]})
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    assert stored(redis_sync)[0]["conditioning"]["dialogue"] == "mostly_dialogue"
