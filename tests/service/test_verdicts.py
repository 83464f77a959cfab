"""The key verdicts a chat falls back on while Redis is down (auth.RecentVerdicts): what they vouch for, for how
long, and how a revocation made while Redis answered takes them back."""

from __future__ import annotations

import time

import pytest
import redis

from service import keys
from service.auth import AppKey, RecentVerdicts, admit
from service.errors import Forbidden, RateLimited
from service.settings import Settings
from service.store import KeyCheck, Store, connect

OK = KeyCheck(True, ("condition",), 1, 3)


def test_a_verdict_vouches_for_its_own_key_and_scopes_for_the_grace_only(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: object) -> None:
    v = RecentVerdicts()
    key = AppKey("demo", "k1", "a" * 64)
    v.remember(key, OK)
    assert v.recall(key) == KeyCheck(True, ("condition",), -1, 3)  # counted by the process, not Redis
    assert v.recall(AppKey("demo", "k1", "b" * 64)) is None  # another secret
    assert v.recall(AppKey("other", "k1", "a" * 64)) is None  # another app
    settings = Settings(admin_key="x" * 24)
    with pytest.raises(Forbidden):
        admit(key, v.recall(key), "ingest", settings)  # type: ignore[arg-type]
    with pytest.raises(RateLimited):  # the app's limit (3 a second) holds in the process
        for _ in range(10):
            admit(key, v.recall(key), "condition", settings)  # type: ignore[arg-type]
    v.remember(key, KeyCheck(False))  # the store said no: never vouched for again
    assert v.recall(key) is None
    v.remember(key, OK)
    later = time.monotonic() + RecentVerdicts.KEY_GRACE_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert v.recall(key) is None


def test_the_cache_is_bounded_oldest_first() -> None:
    v = RecentVerdicts()
    v.MAX = 3
    made = [AppKey("demo", f"k{i}", "a" * 64) for i in range(5)]
    for k in made:
        v.remember(k, OK)
    assert [v.recall(k) is not None for k in made] == [False, False, True, True, True]


async def test_a_sweep_drops_keys_revoked_or_changed_in_the_store(redis_url: str, redis_sync: redis.Redis) -> None:
    kept, revoked, rekeyed = (AppKey("demo", f"k{i}", "a" * 64) for i in range(3))
    for k in (kept, rekeyed):
        redis_sync.hset(keys.api_key(k.app, k.key_id), mapping={"hash": k.secret_hash, "scopes": "condition"})
    redis_sync.hset(keys.api_key(rekeyed.app, rekeyed.key_id), "hash", "b" * 64)
    v = RecentVerdicts()
    for k in (kept, revoked, rekeyed):
        v.remember(k, OK)
    client = connect(redis_url)
    try:
        await v.sweep(Store(client, 4, 60))
    finally:
        await client.aclose()
    assert v.recall(kept) is not None and v.recall(revoked) is None and v.recall(rekeyed) is None
