"""Liveness and readiness."""

from __future__ import annotations

import time

import redis

from service import keys
from tests.conftest import ApiServer


def test_healthz_needs_no_auth(api: ApiServer) -> None:
    with api.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_live_worker_heartbeat(api: ApiServer, redis_sync: redis.Redis) -> None:
    with api.client() as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["problems"] == ["no worker alive"]
        redis_sync.zadd(keys.WORKERS, {"w-old": int((time.time() - 60) * 1000)})
        assert c.get("/readyz").status_code == 503
        redis_sync.zadd(keys.WORKERS, {"w1": int(time.time() * 1000)})
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["workers_alive"] == 1


def test_unknown_route_and_method_use_the_error_shape(api: ApiServer) -> None:
    with api.client() as c:
        r = c.get("/v1/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.get("/v1/events")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_an_unknown_route_says_where_the_routes_are_and_a_wrong_method_which_are_allowed(
        api: ApiServer) -> None:
    """The router's own "Not Found" and "Method Not Allowed" said nothing a caller could act on."""
    with api.client() as c:
        message = c.get("/v1/nope").json()["error"]["message"]
        assert "/v1/nope" in message and "/v1/events" in message and "/docs" in message, message
        # The OpenAI SDK with a base_url that lacks /v1 posts here.
        r = c.post("/chat/completions", json={"model": "M2-her", "messages": []})
        hint = "did you mean /v1/chat/completions? (OpenAI SDK: base_url must end in /v1)"
        assert r.status_code == 404 and hint in r.json()["error"]["message"], r.json()
        assert "did you mean /v1/events?" in c.post("/events", json={}).json()["error"]["message"]
        r = c.get("/v1/events")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["message"] == "GET is not allowed on /v1/events; use POST"
