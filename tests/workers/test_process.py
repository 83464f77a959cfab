"""Real worker processes (python -m workers): kill -9 mid-batch, SIGTERM, readiness heartbeat."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from service import keys
from service.embedded import EmbeddedRedis, url_for
from tests.conftest import make_settings, spawn_service
from tests.workers.helpers import drain, ingest, run, session

pytestmark = pytest.mark.slow


def _env(redis_url: str, **kw: str) -> dict[str, str]:
    env = {"ATTUNE_REDIS_URL": redis_url, "ATTUNE_PARTITIONS": "4", "ATTUNE_WORKER_BATCH_SIZE": "10",
           "ATTUNE_WORKER_LEASE_SECONDS": "1", "ATTUNE_POPULATION_REFRESH_SECONDS": "0", "ATTUNE_CLOSE_AFTER": "3600",
           "ATTUNE_WORKER_BLOCK_MS": "50", "ATTUNE_WORKER_BATCH_SECONDS": "0"}  # small batches: kill one midway
    env.update(kw)
    return env


def _events(replies: int = 15) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(24):
        out += session(f"u{i}", replies, pref=200 + 40 * i, seed=i)
    return out


def _profiles(r: redis.Redis, n: int = 24) -> dict[str, Any]:
    out = {}
    for i in range(n):
        raw = r.get(keys.profile("demo", f"u{i}"))
        doc = orjson.loads(raw) if raw else None
        if doc:
            doc.pop("version"), doc.pop("updated_at")
        out[f"u{i}"] = (doc, r.lrange(keys.user_recent("demo", f"u{i}"), 0, -1))
    return out


def _wait(cond: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


def _applied(r: redis.Redis) -> int:
    total = 0
    for i in range(24):
        raw = r.get(keys.profile("demo", f"u{i}"))
        if raw:
            total += orjson.loads(raw)["evidence"]["events_used"]
    return total


def _pending(r: redis.Redis) -> int:
    return sum(r.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] for p in range(4))


def test_kill_9_mid_batch_ends_with_the_profiles_of_a_crash_free_run(redis_url: str, tmp_path: Path,
                                                                    redis_sync: redis.Redis) -> None:
    # Enough events that the worker (batches of 10 per partition) is still at it when the polls below look:
    # with 720 a fast worker applied and acknowledged them all between two looks.
    events = _events(replies=60)
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0, close_after=3600)
    run(ingest(s, "demo", events))
    run(drain(s))
    reference = _profiles(redis_sync)
    assert _applied(redis_sync) == len(events)

    redis_sync.flushall()
    run(ingest(s, "demo", events))
    log = tmp_path / "worker.log"
    # Kill while a batch is read but not yet acknowledged. Between two batches nothing is pending and the
    # kill would test nothing, so a kill that lands there is followed by another worker and another kill.
    for _attempt in range(5):
        first = spawn_service(["-m", "workers"], _env(redis_url), log)
        try:
            _wait(lambda: (_applied(redis_sync) > len(events) // 4 and _pending(redis_sync) > 0)
                  or _applied(redis_sync) == len(events), what="a quarter applied and a batch in flight")
            assert _pending(redis_sync) > 0 or _applied(redis_sync) < len(events), \
                "the worker applied and acknowledged everything before a kill could land"
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
            first.wait(10)
        if _pending(redis_sync) > 0:
            break
    assert _pending(redis_sync) > 0, "every kill landed between two batches"
    second = spawn_service(["-m", "workers"], _env(redis_url), log)
    try:
        _wait(lambda: _applied(redis_sync) == len(events) and _pending(redis_sync) == 0, 90, "all applied")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert _profiles(redis_sync) == reference
    assert b"recovered" in log.read_bytes()


def test_sigterm_finishes_the_batch_exits_0_and_loses_nothing(redis_url: str, tmp_path: Path,
                                                             redis_sync: redis.Redis) -> None:
    events = _events()
    s = make_settings(redis_url, tmp_path)
    log = tmp_path / "worker.log"
    proc = spawn_service(["-m", "workers"], _env(redis_url), log)
    try:
        _wait(lambda: redis_sync.zcard(keys.WORKERS) == 1, what="heartbeat")
        run(ingest(s, "demo", events[: len(events) // 2]))
        _wait(lambda: _applied(redis_sync) > 0, what="first applied")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert redis_sync.zcard(keys.WORKERS) == 0  # removed itself at clean shutdown
    assert not any(redis_sync.exists(keys.lease(p)) for p in range(4))
    run(ingest(s, "demo", events[len(events) // 2:]))
    proc = spawn_service(["-m", "workers"], _env(redis_url), log)
    try:
        _wait(lambda: _applied(redis_sync) == len(events) and _pending(redis_sync) == 0, 90, "all applied")
        info = redis_sync.hgetall(keys.worker_info(redis_sync.zrange(keys.WORKERS, 0, 0)[0].decode()))
        assert int(info[b"applied_total"]) > 0 and b"pid" in info
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "SIGTERM: stopping" in text and "stopped:" in text


@pytest.mark.embedded_only  # starts its own embedded server: once is enough
def test_a_worker_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    """A worker started before its Redis (no start order in Kubernetes) says so and waits, instead of exiting
    with a traceback; once Redis answers it takes its partitions and applies what arrives."""
    data = tmp_path / "redis-later"
    url = url_for(data)
    log = tmp_path / "worker.log"
    worker = spawn_service(["-m", "workers"], _env(url, ATTUNE_WORKER_NAME="early"), log)
    server = EmbeddedRedis(data)
    try:
        _wait(lambda: b"cannot start: the event store (Redis) is unreachable" in log.read_bytes(), 30, "the worker's warning")
        assert worker.poll() is None
        server.start()
        r = redis.Redis.from_url(url)
        _wait(lambda: r.zscore(keys.WORKERS, "early") is not None, 30, "the worker's announcement")
        s = make_settings(url, tmp_path, partitions=4)
        run(ingest(s, "demo", session("u0", 3)))
        _wait(lambda: _applied(r) == 6, 30, "the events applied")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        r.close()
    finally:
        if worker.poll() is None:
            worker.kill()
        server.stop()
