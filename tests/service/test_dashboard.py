"""GET /dashboard over HTTP: login, session cookie, rate limit, CSRF, user search and app isolation."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr

from service import keys
from service.sessions import COOKIE, LOGIN_FAILURES_PER_MINUTE, TTL_SECONDS
from tests.conftest import ADMIN_KEY, ApiServer, make_settings, raw_request, start_api
from tests.dashboard_data import fill_users


@contextlib.contextmanager
def login(api: ApiServer, key: str = ADMIN_KEY) -> Iterator[httpx.Client]:
    with api.client(follow_redirects=False) as c:
        r = c.post("/dashboard/login", data={"key": key})
        assert r.status_code == 303, r.text
        yield c


def csrf_of(c: httpx.Client, app: str = "demo") -> str:
    import json
    import re

    page = c.get("/dashboard", params={"app": app}).text
    boot = re.search(r'<script id="boot" type="application/json">(.*?)</script>', page, re.S)
    assert boot, page[:300]
    return str(json.loads(boot.group(1))["csrf"])


def test_login_sets_a_strict_httponly_cookie_whose_token_is_stored_hashed(api: ApiServer, redis_sync: redis.Redis) -> None:
    api.app_key(("ingest",), app="demo")
    with api.client(follow_redirects=False) as c:
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain http on loopback; https requests get Secure
        token = c.cookies[COOKIE]
        stored = keys.dashboard_session(hashlib.sha256(token.encode()).hexdigest())
        assert redis_sync.exists(stored) and 0 < redis_sync.ttl(stored) <= TTL_SECONDS
        assert token.encode() not in b"".join(redis_sync.keys("attune:dash:*"))
        page = c.get("/dashboard")
        assert page.status_code == 200 and 'id="headline"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 200  # the cookie works on the JSON route
        c.post("/dashboard/logout")
        assert not redis_sync.exists(stored)
        c.cookies.set(COOKIE, token)  # a stolen cookie is useless after logout
        assert 'action="/dashboard/login"' in c.get("/dashboard").text
        assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 401


def test_https_requests_get_a_secure_cookie(api: ApiServer) -> None:
    with api.client(follow_redirects=False) as c:
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY}, headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["set-cookie"]


def test_wrong_key_gets_a_clear_message_and_is_rate_limited_per_ip(api: ApiServer) -> None:
    app_key = api.app_key(("ingest", "read", "manage"), app="demo")
    with api.client(follow_redirects=False) as c:
        r = c.post("/dashboard/login", data={"key": "not-the-key"})
        assert r.status_code == 401 and "wrong admin key" in r.text and COOKIE not in r.headers.get("set-cookie", "")
        r = c.post("/dashboard/login", data={"key": app_key})
        assert r.status_code == 401 and "this is an app key" in r.text
        for _ in range(LOGIN_FAILURES_PER_MINUTE):  # empty forms: a message, never a lockout
            r = c.post("/dashboard/login", data={"key": "  "})
            assert r.status_code == 401 and "type the admin key" in r.text
        for _ in range(LOGIN_FAILURES_PER_MINUTE - 2):
            assert c.post("/dashboard/login", data={"key": "guess"}).status_code == 401
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY})  # even the right key waits once locked
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
        assert "too many wrong admin keys" in r.text and 'action="/dashboard/login"' in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")
    with api.client(follow_redirects=False) as c:
        # Another client behind the trusted (loopback) proxy is not locked out: the limit is per IP.
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY}, headers={"X-Forwarded-For": "10.9.9.9"})
        assert r.status_code == 303


def test_app_keys_never_open_the_dashboard_or_its_data(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_users(redis_sync, "demo", 3, recent=1)
    key = api.app_key(("ingest", "read", "condition", "manage"), app="demo")
    with api.client(key) as c:
        page = c.get("/dashboard")
        assert page.status_code == 200 and 'action="/dashboard/login"' in page.text and 'id="headline"' not in page.text
        assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 403
        assert c.get("/dashboard/api/users", params={"app": "demo"}).status_code == 403
        assert c.get("/dashboard/api/users/user-00000", params={"app": "demo"}).status_code == 403
        assert c.post("/dashboard/api/users/user-00000/delete", params={"app": "demo"}).status_code == 401


def test_user_search_is_by_prefix_within_the_chosen_app_only(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_users(redis_sync, "alpha", 120, prefix="alice", recent=2)
    fill_users(redis_sync, "beta", 5, prefix="alice", recent=2)  # same ids, other app
    fill_users(redis_sync, "beta", 3, prefix="bob", recent=0)
    with login(api) as c:
        r = c.get("/dashboard/api/users", params={"app": "beta", "prefix": "ali"}).json()
        assert r["app"] == "beta" and r["complete"]
        assert [u["user_id"] for u in r["users"]] == [f"alice-{i:05d}" for i in range(5)]
        r = c.get("/dashboard/api/users", params={"app": "alpha", "prefix": "alice-0010"}).json()
        assert [u["user_id"] for u in r["users"]] == [f"alice-{i:05d}" for i in range(100, 110)]
        assert c.get("/dashboard/api/users", params={"app": "alpha", "prefix": "bob"}).json()["users"] == []
        recent = c.get("/dashboard/api/users", params={"app": "alpha"}).json()
        assert recent["mode"] == "recent" and len(recent["users"]) == 20
        glob = c.get("/dashboard/api/users", params={"app": "alpha", "prefix": "*"}).json()
        assert glob["users"] == []  # a glob character is matched literally
        user = c.get("/dashboard/api/users/bob-00001", params={"app": "beta"}).json()
        assert user["app"] == "beta" and user["profile"]["user_id"] == "bob-00001"
        missing = c.get("/dashboard/api/users/bob-00001", params={"app": "alpha"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "user_not_found"


def test_user_evidence_lists_recent_replies_with_what_was_applied(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_users(redis_sync, "demo", 2, recent=6)
    with login(api) as c:
        u = c.get("/dashboard/api/users/user-00001", params={"app": "demo"}).json()
    assert len(u["recent"]) == 6
    assert u["recent"][1]["applied"]["pacing"] in ("slow_burn", "balanced", "fast")
    assert u["recent"][0]["outcomes"] == ["repeat"]
    assert u["profile"]["reply_length"]["target_chars"] > 0 and u["last_update_ms"] > 0
    with login(api) as c:
        bad = c.get("/dashboard/api/users/user-00001", params={"app": "demo", "character_id": "{c7}"}).json()
    # Before: "user id '{c7}' is invalid" for a valid user id and a bad character id.
    assert bad["error"]["code"] == "invalid_character_id"
    assert bad["error"]["message"].startswith("character id '{c7}' is invalid")


def test_delete_needs_the_sessions_csrf_token_and_a_same_origin(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_users(redis_sync, "demo", 2, recent=1)
    with login(api) as c:
        token = csrf_of(c)
        no_token = c.post("/dashboard/api/users/user-00001/delete", params={"app": "demo"})
        assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "csrf_failed"
        wrong = c.post("/dashboard/api/users/user-00001/delete", params={"app": "demo"}, headers={"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        cross = c.post("/dashboard/api/users/user-00001/delete", params={"app": "demo"},
                       headers={"X-CSRF-Token": token, "Origin": "https://evil.example"})
        assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]["message"]
        assert c.get("/dashboard/api/users/user-00001/delete", params={"app": "demo"}).status_code in (404, 405)
        assert redis_sync.exists(keys.profile("demo", "user-00001"))  # nothing refused above did anything
        ok = c.post("/dashboard/api/users/user-00001/delete", params={"app": "demo"}, headers={"X-CSRF-Token": token})
        assert ok.status_code == 200 and ok.json()["deleted"] is True, ok.text
    assert not redis_sync.exists(keys.profile("demo", "user-00001"))
    assert redis_sync.zscore(keys.app_users("demo"), "user-00001") is None
    assert redis_sync.exists(keys.profile("demo", "user-00000"))  # only that user


def test_export_downloads_everything_about_the_user_of_the_chosen_app(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_users(redis_sync, "demo", 2, recent=3)
    fill_users(redis_sync, "other", 2, recent=0)
    with login(api) as c:
        r = c.get("/dashboard/api/users/user-00001/export", params={"app": "demo"})
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"] == 'attachment; filename="demo-user-00001-export.json"'
        doc = r.json()
        assert doc["app"] == "demo" and doc["profile"]["user_id"] == "user-00001" and len(doc["recent_replies"]) == 3
        assert c.get("/dashboard/api/users/nobody/export", params={"app": "demo"}).status_code == 404


def test_choosing_an_unknown_app_is_a_clear_404(api: ApiServer) -> None:
    api.app_key(("ingest",), app="demo")
    with login(api) as c:
        r = c.get("/dashboard", params={"app": "other"})
    assert r.status_code == 404 and "known apps: demo" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["dashboard.js", "charts.js", "dashboard.css"])
def test_assets_are_served_from_the_package_without_any_external_url(api: ApiServer, name: str) -> None:
    with api.client() as c:
        r = c.get(f"/dashboard/static/{name}")
        assert c.get("/dashboard/static/login.html.bak").status_code == 404
    assert r.status_code == 200 and len(r.content) > 1000
    assert b"http://" not in r.content.replace(b"http://www.w3.org/2000/svg", b"") and b"https://" not in r.content


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_login_body_is_refused_before_it_is_read(api: ApiServer, chunked: bool) -> None:
    """The login takes anyone's body: it is refused at 4 KiB, not buffered whole and then measured (a client
    announcing 50 MiB, or streaming without end, got no answer before while the server held all it sent)."""
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {50 * 1024 * 1024}"
    s = raw_request(api, f"POST /dashboard/login HTTP/1.1\nHost: x\n"
                         f"Content-Type: application/x-www-form-urlencoded\n{length}")
    with s:
        s.settimeout(10)
        piece = b"key=" + b"a" * 8188
        s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"the login form holds one key" in answer


def test_a_session_ends_when_the_admin_key_it_was_opened_with_is_replaced(
        api: ApiServer, redis_url: str, tmp_path: Path) -> None:
    # A leaked admin key is rotated by restarting with another: a session opened with the old one must not
    # keep reading and deleting every app's users for the rest of its 12 hours.
    api.app_key(("ingest",), app="demo")
    with login(api) as c:
        token = c.cookies[COOKIE]
        assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 200
    rotated = make_settings(redis_url, tmp_path, admin_key=SecretStr("rotated-admin-key-" + "9" * 20))
    server, other = start_api(rotated)
    try:
        with other.client(follow_redirects=False) as c:
            c.cookies.set(COOKIE, token)
            assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 401
            assert 'action="/dashboard/login"' in c.get("/dashboard").text
            assert c.get("/dashboard/api/users", params={"app": "demo"}).status_code in (401, 403)
        with login(other, "rotated-admin-key-" + "9" * 20) as c:  # the new key opens a session of its own
            assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 200
    finally:
        server.__exit__(None, None, None)
    with api.client(follow_redirects=False) as c:  # and the old key's server still honours its own session
        c.cookies.set(COOKIE, token)
        assert c.get("/v1/admin/stats", params={"app": "demo"}).status_code == 200
