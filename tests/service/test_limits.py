"""Per-app rate limits: an operator gives one app its own limit without touching the others'."""

from __future__ import annotations

import time

import redis

from service import keys
from tests.conftest import ApiServer, full_redis
from tests.service.test_events import ev


def batch(n: int, user: str = "u1") -> dict[str, object]:
    return {"events": [ev(user=user) for _ in range(n)]}


def test_an_app_limit_applies_to_its_keys_old_and_new_and_not_to_other_apps(api: ApiServer) -> None:
    slow_old, other = api.app_key(("ingest",), app="slow"), api.app_key(("ingest",), app="other")
    with api.admin() as a:
        assert a.get("/v1/admin/apps/slow/limits").json() == {
            "app": "slow", "rate_limit_per_second": api.settings.rate_limit_per_second,
            "default_rate_limit_per_second": api.settings.rate_limit_per_second, "custom": False}
        r = a.put("/v1/admin/apps/slow/limits", json={"rate_limit_per_second": 5})
        assert r.status_code == 200 and r.json()["rate_limit_per_second"] == 5 and r.json()["custom"] is True
        assert a.get("/v1/admin/apps/slow/limits").json()["rate_limit_per_second"] == 5
        slow_new = a.post("/v1/admin/apps/slow/keys", json={"scopes": ["ingest"]}).json()["key"]
    for key in (slow_old, slow_new):
        with api.client(key) as c:
            r = c.post("/v1/events", json=batch(6))  # one call costing 6 events: over 5 whatever the second
        assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
        assert "rate limit of 5 events per second" in r.json()["error"]["message"]
    with api.client(other) as c:
        assert c.post("/v1/events", json=batch(6)).status_code == 202
    with api.admin() as a:
        r = a.delete("/v1/admin/apps/slow/limits")
        assert r.status_code == 200 and r.json()["custom"] is False
    for key in (slow_old, slow_new):
        with api.client(key) as c:
            assert c.post("/v1/events", json=batch(6)).status_code == 202


def test_an_app_limit_holds_for_chat_requests_too(api: ApiServer, redis_sync: redis.Redis) -> None:
    key = api.app_key(("condition",), app="chatty")
    with api.admin() as a:
        assert a.put("/v1/admin/apps/chatty/limits", json={"rate_limit_per_second": 3}).status_code == 200
    now = int(time.time())
    for second in range(now - 1, now + 30):  # every second the chat could count in, however slow the machine
        redis_sync.set(keys.rate("chatty", second), 3, ex=60)
    with api.client(key) as c:
        r = c.post("/v1/chat/completions", headers={"X-Attune-User": "u1"},
                   json={"model": "M2-her", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and "rate limit of 3" in r.json()["error"]["message"], r.text


def test_limits_refuse_bad_values_and_app_keys(api: ApiServer) -> None:
    with api.admin() as a:
        for body in ({}, {"rate_limit_per_second": 0}, {"rate_limit_per_second": -3},
                     {"rate_limit_per_second": 2.5}, {"rate_limit_per_second": True},
                     {"rate_limit_per_second": "100"}, [], {"rate_limit_per_second": 10**9}):
            r = a.put("/v1/admin/apps/demo/limits", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_limit", (body, r.text)
            assert "whole number" in r.json()["error"]["message"]
        assert a.put("/v1/admin/apps/Bad_App/limits", json={"rate_limit_per_second": 5}).status_code == 400
        r = a.put("/v1/admin/apps/demo/limits", json={"rate_limit_per_second": None})
        assert r.status_code == 200 and r.json()["custom"] is False
    with api.client(api.app_key()) as c:
        assert c.put("/v1/admin/apps/demo/limits", json={"rate_limit_per_second": 10**6}).status_code == 403
        assert c.get("/v1/admin/apps/demo/limits").status_code == 403


def test_limits_are_described_in_the_openapi_document(api: ApiServer) -> None:
    with api.client() as c:
        doc = c.get("/openapi.json").json()
    put = doc["paths"]["/v1/admin/apps/{app}/limits"]["put"]
    schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert "rate_limit_per_second" in schema["properties"] and "null" in str(schema["properties"])
    assert set(doc["paths"]["/v1/admin/apps/{app}/limits"]) == {"get", "put", "delete"}


def test_a_full_redis_does_not_lift_the_rate_limit(api: ApiServer, redis_sync: redis.Redis) -> None:
    """Redis at its memory bound refuses the rate count (a write) and the call goes on uncounted there; the API
    process counts it itself, so an app cannot spend the shared upstream quota without bound meanwhile."""
    key = api.app_key(("read",), app="full")
    with api.admin() as a:
        assert a.put("/v1/admin/apps/full/limits", json={"rate_limit_per_second": 3}).status_code == 200
    with full_redis(redis_sync), api.client(key) as c:
        answers = [c.get("/v1/users/u1/profile") for _ in range(8)]  # at least 4 within one second
    codes = [r.status_code for r in answers]
    assert 429 in codes and codes.count(404) >= 3 and set(codes) == {404, 429}, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert "rate limit of 3" in refused.json()["error"]["message"] and refused.headers["Retry-After"] == "1"
    assert redis_sync.keys(keys.rate("full", "*")) == []  # type: ignore[arg-type]  # Redis counted none
