"""The one-round-trip ingest call (key check, rate count, dedup and append in one script) and the C packer."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
import pytest
import redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from service import keys
from service import store as store_module
from service.auth import hash_secret
from service.store import KeyCheck, Store, connect

APP = "demo"
KEY_ID = "0123456789ab"
SECRET = "s" * 64
TTL = 8 * 86400


def _event(i: int, user: str = "u1") -> dict[str, object]:
    now = int(time.time() * 1000)
    return {"type": "repeat", "event_id": f"e{i}", "user_id": user, "reply_id": "r1", "t": now, "rt": now}


def _stored(r: redis.Redis, partitions: int = 4) -> list[dict[str, object]]:
    return [orjson.loads(f[b"e"]) for p in range(partitions) for _, f in r.xrange(keys.stream(p))]


def _save_key(r: redis.Redis, scopes: str) -> None:
    r.hset(keys.api_key(APP, KEY_ID), mapping={"app": APP, "scopes": scopes, "hash": hash_secret(SECRET)})


async def _ingest(redis_url: str, events: list[dict[str, object]], *, secret: str = SECRET,
                  limit: int = 1000, cost: int | None = None) -> tuple[KeyCheck, list[bool]]:
    client = connect(redis_url)
    try:
        store = Store(client, 4, TTL)
        return await store.ingest_checked(APP, KEY_ID, hash_secret(secret), "ingest", limit,
                                          len(events) if cost is None else cost, events)
    finally:
        await client.aclose()


async def test_valid_key_appends_new_events_and_flags_duplicates(redis_url: str, redis_sync: redis.Redis,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    second = float(int(time.time()))  # both calls count in one rate second, however slow the machine
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: second))
    _save_key(redis_sync, "ingest,read")
    check, flags = await _ingest(redis_url, [_event(1), _event(2, "u2")])
    assert check == KeyCheck(True, ("ingest", "read"), 2, 1000) and flags == [True, True]
    check, flags = await _ingest(redis_url, [_event(2, "u2"), _event(3)])
    assert flags == [False, True] and check.used == 4
    stored = _stored(redis_sync)
    assert sorted(e["event_id"] for e in stored) == ["e1", "e2", "e3"]
    assert all(e["app"] == APP for e in stored)
    assert 0 < redis_sync.ttl(keys.dedup(APP, "e1", 4)) <= TTL


@pytest.mark.parametrize(("scopes", "secret", "limit", "expect_valid"), [
    ("ingest", "t" * 64, 1000, False),  # wrong secret: unknown key
    ("read", SECRET, 1000, True),  # lacks the scope
    ("ingest", SECRET, 1, True),  # over the rate limit
])
async def test_refused_key_writes_nothing(redis_url: str, redis_sync: redis.Redis, scopes: str, secret: str,
                                          limit: int, expect_valid: bool) -> None:
    _save_key(redis_sync, scopes)
    check, flags = await _ingest(redis_url, [_event(1), _event(2)], secret=secret, limit=limit)
    assert check.valid is expect_valid and flags == []
    assert _stored(redis_sync) == []
    assert not redis_sync.keys(f"attune:*:seen:{APP}:*")
    # The refused call still counts against the rate limit, as a separate key check does.
    counted = redis_sync.keys(keys.rate(APP, 0)[:-1] + "*")
    assert bool(counted) is expect_valid


async def test_revoked_key_is_refused_on_the_next_call(redis_url: str, redis_sync: redis.Redis) -> None:
    _save_key(redis_sync, "ingest")
    assert (await _ingest(redis_url, [_event(1)]))[1] == [True]
    redis_sync.delete(keys.api_key(APP, KEY_ID))
    check, flags = await _ingest(redis_url, [_event(2)])
    assert check.valid is False and flags == []
    assert [e["event_id"] for e in _stored(redis_sync)] == ["e1"]


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "k1", "k2", b"\x00\xffpayload", 3, 1.5, -7, "é"),
    ("SET", "k", 10**20, "EX", 5),
    ("CONFIG GET", "maxmemory"),
    (b"SCRIPT LOAD", "return 1"),
    ("SET", "k", memoryview(b"view"), bytearray(b"array")),
])
def test_c_packer_gives_the_bytes_redis_py_gives(redis_url: str, args: tuple[object, ...]) -> None:
    cls = connect(redis_url).connection_pool.connection_class
    assert issubclass(cls, UnixDomainSocketConnection | Connection) and cls is not UnixDomainSocketConnection
    fast = b"".join(bytes(p) for p in cls().pack_command(*args))
    slow = b"".join(bytes(p) for p in Connection().pack_command(*args))
    assert fast == slow


def test_c_packer_rejects_what_redis_py_rejects(redis_url: str) -> None:
    cls = connect(redis_url).connection_pool.connection_class
    with pytest.raises(DataError):
        cls().pack_command("SET", "k", None)
