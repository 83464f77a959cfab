"""Profile routes over a real API and an in-process worker: 404s, scopes, app isolation, character fallback."""

from __future__ import annotations

from typing import Any

import redis

from service import keys
from tests.conftest import ApiServer, now_iso
from tests.workers.helpers import drain, run


def _turns(user: str, n: int, character: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        rid = f"{prefix}{user}-{i}"
        shown: dict[str, Any] = {"event_id": f"{rid}-s", "type": "reply_shown", "user_id": user, "session_id": "s1",
                                 "reply_id": rid, "timestamp": now_iso(-600 + 20 * i), "reply": {"chars": 300 + 10 * i}}
        if character:
            shown["character_id"] = character
        out.append(shown)
        out.append({"event_id": f"{rid}-m", "type": "user_message", "user_id": user, "reply_id": rid,
                    "timestamp": now_iso(-590 + 20 * i), "chars": 40})
    return out


def _post(api: ApiServer, events: list[dict[str, Any]], app: str = "demo") -> None:
    with api.client(api.app_key(("ingest",), app=app)) as c:
        r = c.post("/v1/events", json={"sent_at": now_iso(), "events": events})
        assert r.status_code == 202, r.text


def _learn(api: ApiServer) -> None:
    s = api.settings.model_copy(update={"worker_block_ms": 0, "population_refresh_seconds": 0})
    run(drain(s))


def test_unknown_user_is_404_and_a_user_with_events_has_a_profile(api: ApiServer) -> None:
    with api.client(api.app_key(("read",))) as c:
        r = c.get("/v1/users/nobody/profile")
        assert r.status_code == 404 and r.json()["error"]["code"] == "user_not_found"
    _post(api, _turns("u1", 3))
    _learn(api)
    with api.client(api.app_key(("read",))) as c:
        doc = c.get("/v1/users/u1/profile").json()
    assert doc["app"] == "demo" and doc["user_id"] == "u1" and doc["character_id"] is None
    assert doc["evidence"]["replies"] == 3 and doc["reply_length"]["confidence"] < 0.75  # few events: low confidence
    assert doc["pacing"]["label"] in ("slow_burn", "balanced", "fast") and doc["trust"] == "normal"
    assert set(doc) >= {"version", "updated_at", "style", "engagement", "conditioning"}


def test_another_apps_key_sees_404(api: ApiServer) -> None:
    _post(api, _turns("shared", 2))
    _learn(api)
    with api.client(api.app_key(("read", "manage"), app="other")) as c:
        assert c.get("/v1/users/shared/profile").status_code == 404
        assert c.get("/v1/users/shared/export").status_code == 404
    with api.client(api.app_key(("read",))) as c:
        assert c.get("/v1/users/shared/profile").status_code == 200


def test_scopes_read_for_profile_manage_for_delete_and_export(api: ApiServer) -> None:
    _post(api, _turns("u2", 2))
    _learn(api)
    with api.client(api.app_key(("ingest",))) as c:
        assert c.get("/v1/users/u2/profile").status_code == 403
    with api.client(api.app_key(("read",))) as c:
        assert c.delete("/v1/users/u2").status_code == 403
        assert c.get("/v1/users/u2/export").status_code == 403
    with api.client() as c:
        assert c.get("/v1/users/u2/profile").status_code == 401


def test_character_profile_falls_back_to_the_users(api: ApiServer) -> None:
    _post(api, _turns("u3", 14, character="knight") + _turns("u3", 2, character="witch", prefix="w"))
    _learn(api)
    with api.client(api.app_key(("read",))) as c:
        knight = c.get("/v1/users/u3/profile", params={"character_id": "knight"}).json()
        witch = c.get("/v1/users/u3/profile", params={"character_id": "witch"}).json()
    assert knight["character_id"] == "knight" and "fallback" not in knight
    assert knight["evidence"]["replies"] >= 12
    assert witch["character_id"] == "witch" and witch["fallback"] == "user"
    assert witch["evidence"]["replies"] == 16


def test_export_returns_everything_and_delete_removes_it(api: ApiServer, redis_sync: redis.Redis) -> None:
    _post(api, _turns("u4", 14, character="knight"))
    _learn(api)
    key = api.app_key(("read", "manage"))
    with api.client(key) as c:
        exported = c.get("/v1/users/u4/export").json()
        assert exported["profile"]["user_id"] == "u4" and len(exported["recent_replies"]) == 14
        assert "knight" in exported["character_profiles"] and exported["state"]["n"] == 28
        r = c.delete("/v1/users/u4")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["deleted"] is True and "profile" in body["removed"]["keys"]
        assert "profile:c:knight" in body["removed"]["keys"] and body["removed"]["user_index"] is True
        assert c.get("/v1/users/u4/profile").status_code == 404
        assert c.get("/v1/users/u4/export").status_code == 404
    assert redis_sync.zscore(keys.app_users("demo"), "u4") is None


def test_events_queued_before_delete_never_bring_the_profile_back(api: ApiServer, redis_sync: redis.Redis) -> None:
    _post(api, _turns("u5", 5))
    with api.client(api.app_key(("read", "manage"))) as c:
        assert c.delete("/v1/users/u5").status_code == 200  # before any worker ran: all its events are queued
        _learn(api)
        assert c.get("/v1/users/u5/profile").status_code == 404
    _post(api, _turns("u5", 2, prefix="new"))  # events after the delete start a fresh profile
    _learn(api)
    with api.client(api.app_key(("read",))) as c:
        doc = c.get("/v1/users/u5/profile").json()
    assert doc["evidence"]["replies"] == 2


def test_identity_provider_ids_work_end_to_end_and_unsafe_ones_are_refused(api: ApiServer) -> None:
    """auth0's "auth0|..." and e-mail-like "a+b@x" ids were refused with 422: apps had to invent a mapping."""
    users = ["auth0|5f7c8ec7a1", "google-oauth2|1234", "a+b@example.com"]
    _post(api, [e for u in users for e in _turns(u, 2)])
    _learn(api)
    with api.client(api.app_key(("read", "manage", "ingest"))) as c:
        for u in users:
            path = f"/v1/users/{u.replace('|', '%7C')}"  # | percent-encoded as a URL library would
            doc = c.get(f"{path}/profile").json()
            assert doc["user_id"] == u and doc["evidence"]["replies"] == 2, doc
            assert c.get(f"{path}/export").status_code == 200
        bad = [{**_turns("x", 1)[0], "user_id": u, "event_id": f"bad-{i}"}
               for i, u in enumerate(["a b", "a{b}", "a/b", "a%b", "a\nb", "é"])]
        r = c.post("/v1/events", json={"events": bad})
        assert r.status_code == 422 and len(r.json()["rejected"]) == len(bad), r.text
        assert all("ASCII letters, digits or . _ : @ | + -" in x["message"] for x in r.json()["rejected"])
        assert c.get("/v1/users/a%7Bb%7D/profile").status_code == 400
        assert c.delete("/v1/users/auth0%7C5f7c8ec7a1").status_code == 200
        assert c.get("/v1/users/auth0%7C5f7c8ec7a1/profile").status_code == 404
