"""Redis unreachable: 503 with Retry-After, nothing half-written, and a retry completes the batch."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from service import keys
from service.embedded import EmbeddedRedis
from service.gateway import LeanRedis
from service.metrics import FAIL_OPEN
from service.standin import StandIn, running
from tests.conftest import ApiServer, full_redis, make_settings, start_api
from tests.service.test_events import ev


def _entries(client: redis.Redis) -> list[dict[str, object]]:
    return [orjson.loads(f[b"e"]) for p in range(4) for _, f in client.xrange(keys.stream(p))]


def test_redis_stopped_mid_traffic_gives_503_and_nothing_half_written(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    api_server, api = start_api(make_settings(url, tmp_path))
    try:
        key = api.app_key(("ingest",))
        batches = [[ev(user=f"u{i % 7}", event_id=uuid.uuid4().hex) for i in range(50)] for _ in range(60)]

        def send(batch: list[dict[str, object]]) -> int:
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=20) as c:
                r = c.post("/v1/events", json={"events": batch})
                if r.status_code == 503:
                    assert r.headers["Retry-After"] and r.json()["error"]["code"] == "store_unavailable"
                return r.status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(send, b) for b in batches]
            futures[10].result()
            server.stop()  # SIGTERM while requests are in flight
            codes = [f.result() for f in futures]
        assert 202 in codes and 503 in codes, codes
        assert set(codes) <= {202, 503}

        server = EmbeddedRedis(tmp_path / "redis")
        server.start()
        check = redis.Redis.from_url(url)
        entries = _entries(check)
        stored_ids = {e["event_id"] for e in entries}
        assert len(entries) == len(stored_ids)  # no event twice
        seen_keys = check.keys("attune:*:seen:*")
        assert len(seen_keys) == len(entries)  # every dedup mark has its event and vice versa
        for batch, code in zip(batches, codes, strict=True):
            if code == 202:
                assert {e["event_id"] for e in batch} <= stored_ids

        # Retrying the refused batches: what got in counts as duplicates, the rest is appended once.
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=20) as c:
            for batch, code in zip(batches, codes, strict=True):
                if code == 503:
                    r = c.post("/v1/events", json={"events": batch})
                    assert r.status_code == 202
                    assert r.json()["accepted"] + r.json()["duplicates"] == len(batch)
        final = _entries(check)
        assert len(final) == len({e["event_id"] for e in final}) == sum(len(b) for b in batches)
        check.close()
    finally:
        api_server.__exit__(None, None, None)
        server.stop()


def test_a_full_redis_gives_a_503_that_says_so_and_nothing_half_written(tmp_path: Path) -> None:
    """maxmemory reached under noeviction (deploy/ sets it): Redis refuses every write. The answer says the
    store is full, not unreachable, and once memory is freed the same batch goes in whole, once."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    api_server, api = start_api(make_settings(url, tmp_path))
    check = redis.Redis.from_url(url)
    try:
        key = api.app_key(("ingest",))
        batch = [ev(user=f"u{i}", event_id=uuid.uuid4().hex) for i in range(20)]
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=20) as c:
            with full_redis(check):
                r = c.post("/v1/events", json={"events": batch})
            assert r.status_code == 503, r.text
            assert "out of memory" in r.json()["error"]["message"] and int(r.headers["Retry-After"]) >= 2
            assert _entries(check) == [] and check.keys("attune:*:seen:*") == []
            r = c.post("/v1/events", json={"events": batch})
            assert r.status_code == 202 and r.json()["accepted"] == len(batch), r.text
        assert len(_entries(check)) == len(batch)
    finally:
        check.close()
        api_server.__exit__(None, None, None)
        server.stop()


def test_a_redis_that_refuses_the_password_is_named_in_the_503(tmp_path: Path) -> None:
    """A wrong password in ATTUNE_REDIS_URL read "unreachable; retry shortly": an operator looked for a down
    server. The app keys' check, the admin key's ingest and the chat route's lean connection all say it."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    right = redis.Redis.from_url(url)
    right.config_set("requirepass", "the-right-one")
    api_server, api = start_api(make_settings(f"{url}?password=not-the-right-one", tmp_path))
    try:
        key = "atk_demo_0123456789ab_" + "0" * 64
        with httpx.Client(base_url=api.url, timeout=20) as c:
            answers = [
                c.post("/v1/events", json=ev(), headers={"Authorization": f"Bearer {api.admin_key}",
                                                         "X-Attune-App": "demo"}),
                c.get("/v1/users/u1/profile", headers={"Authorization": f"Bearer {key}"}),
                c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"messages": [{"role": "user", "content": "hi"}], "user": "u1"}),
            ]
            ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        assert ready.json()["problems"][0].startswith("redis refuses Attune's credentials"), ready.text
        for r in answers:
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert "refuses Attune's credentials" in r.json()["error"]["message"]
            assert "not-the-right-one" not in r.text
    finally:
        api_server.__exit__(None, None, None)
        right.config_set("requirepass", "")
        right.close()
        server.stop()


SHORT_CHAT = {"model": "M2-her", "user": "u1", "messages": [{"role": "user", "name": "User", "content": "Hi"}]}


@contextlib.contextmanager
def gateway_on_own_redis(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, str, ApiServer, StandIn]]:
    """An API on an embedded Redis of its own (the test may stop or hang it) with the stand-in as M2-her."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    with running(first_byte_ms=0, chunk_ms=0, seed=3) as (si, si_url):
        api_server, api = start_api(make_settings(url, tmp_path, minimax_base_url=si_url))
        try:
            yield server, url, api, si
        finally:
            api_server.__exit__(None, None, None)
            server.stop()


def test_a_chat_fails_open_when_redis_goes_down_for_a_key_it_verified_moments_ago(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract: conditioning fails open, never an error for the chat; issue 4: "if Redis or the profile cannot
    be read, the chat still goes out unconditioned". The key check needs Redis too: a key the store verified
    moments ago stands on that verdict; a key never verified still gets the 503, and a hung Redis holds the
    chat about a second (the chat path's Redis connection gives up then: LeanRedis.TIMEOUT), not 3 s."""
    body = {"model": "M2-her", "user": "u1",
            "messages": [{"role": "system", "name": "Mira", "content": "You are Mira."},
                         {"role": "user", "name": "User", "content": "Where does the map lead?"}]}
    with gateway_on_own_redis(tmp_path) as (server, url, api, si):
        key, other = api.app_key(("condition",)), api.app_key(("condition", "read"))
        with api.client(key) as c:
            first = c.post("/v1/chat/completions", json=body)
            assert first.status_code == 200 and first.headers["x-attune-conditioned"] == "true", first.text
            # The API runs in this process: a shorter reply timeout leaves a slow machine 2 s of slack, and
            # redis-py's own 3 s wait (what this guards against) still fails the bound below.
            monkeypatch.setattr(LeanRedis, "TIMEOUT", 0.5)
            pid = int(redis.Redis.from_url(url).info("server")["process_id"])
            os.kill(pid, signal.SIGSTOP)  # hung: connects hang too, nothing is refused
            try:
                started = time.monotonic()
                hung = c.post("/v1/chat/completions", json=body)
                waited = time.monotonic() - started
                with api.admin() as a:  # the admin key's app check gives up too, then the chat fails open
                    started = time.monotonic()
                    admin_hung = a.post("/v1/chat/completions", json=body, headers={"X-Attune-App": "demo"})
                    admin_waited = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
            server.stop()  # gone: refused at once
            gone = c.post("/v1/chat/completions", json={**body, "stream": True})
            native = c.post("/v1/text/chatcompletion_v2", json=body)
        with api.client(other) as c:  # created, never used: no verdict to go on
            unknown = c.post("/v1/chat/completions", json=body)
    for r in (hung, gone, native):
        assert r.status_code == 200 and r.headers["x-attune-conditioned"] == "false", r.text
        assert r.headers["x-attune-reply-id"]
    assert waited < 2.5, waited  # LeanRedis.TIMEOUT plus the reply; it waited 3 s before (redis-py's)
    assert admin_hung.status_code == 200 and admin_hung.headers["x-attune-conditioned"] == "false", admin_hung.text
    assert admin_waited < 2.5, admin_waited  # the app check's 0.5 s and the profile's 0.25 s, not 3 s
    assert hung.json()["choices"][0]["message"]["content"] == si.log[-4]["reply"]
    assert "data:" in gone.text and native.json()["base_resp"]["status_code"] == 0
    for entry in list(si.log)[-4:]:  # forwarded unconditioned: no note, no length cap
        assert all(m.get("name") != "reader_preferences" for m in entry["body"]["messages"])
        assert "max_completion_tokens" not in entry["body"]
    assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "store_unavailable"


def test_a_key_revoked_before_the_outage_is_not_vouched_for(tmp_path: Path) -> None:
    """The verdict a chat fails open on must not outlive a revocation made while Redis answered."""
    with gateway_on_own_redis(tmp_path) as (server, _, api, _):
        key, kept = api.app_key(("condition",)), api.app_key(("condition", "read"))
        for k in (key, kept):
            with api.client(k) as c:
                assert c.post("/v1/chat/completions", json=SHORT_CHAT).status_code == 200
        with api.admin() as a:
            assert a.delete(f"/v1/admin/keys/{key.split('_')[2]}").status_code == 200
        server.stop()
        with api.client(key) as c:
            revoked = c.post("/v1/chat/completions", json=SHORT_CHAT)
        with api.client(kept) as c:
            still = c.post("/v1/chat/completions", json=SHORT_CHAT)
    assert revoked.status_code == 503, revoked.text
    assert still.status_code == 200 and still.headers["x-attune-conditioned"] == "false"


def test_an_outage_is_counted_and_logged_once_per_ten_seconds_not_per_chat(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At a thousand chats a second, a log line each would flood the logs: one line per reason per 10 s says
    how many went the same way, and attune_gateway_fail_open_total counts every one."""
    from service import gateway as gw  # noqa: PLC0415

    gw._FAIL_OPEN_LOGGED.clear()
    before = FAIL_OPEN.labels("store_unavailable")._value.get()
    with gateway_on_own_redis(tmp_path) as (server, _, api, _):
        with api.client(api.app_key(("condition",))) as c:
            assert c.post("/v1/chat/completions", json=SHORT_CHAT).status_code == 200
            server.stop()
            with caplog.at_level(logging.WARNING, logger="attune.gateway"):
                codes = [c.post("/v1/chat/completions", json=SHORT_CHAT).status_code for _ in range(20)]
    assert codes == [200] * 20
    assert FAIL_OPEN.labels("store_unavailable")._value.get() - before == 20
    lines = [r for r in caplog.records if "fail open" in r.getMessage()]
    assert len(lines) == 1 and "1 chat(s) since" in lines[0].getMessage()
