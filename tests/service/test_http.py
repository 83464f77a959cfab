"""service/http.py: a response's head goes out with the bytes that follow it, in one write, and nothing
is lost, reordered or left behind."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from service.http import CoalescingHttpTools, _Coalescing
from service.settings import Settings
from tests.conftest import ApiServer, ThreadServer, raw_request, start_api
from tests.service.test_body import request_counts
from tests.service.test_events import ev

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def writelines(self, data: Any) -> None:
        self.sends.append(b"".join(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_the_head_goes_out_with_the_body_in_one_send() -> None:
    t = FakeTransport()
    c = _Coalescing(t, asyncio.get_running_loop())  # type: ignore[arg-type]
    c.write(HEAD)
    assert t.sends == []
    c.write(b"{}")
    c.write(b"more")
    assert t.sends == [HEAD + b"{}", b"more"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing held: nothing is sent twice
    assert t.sends == [HEAD + b"{}", b"more"]
    assert c.get_extra_info("peername") == "info:peername"


async def test_a_head_alone_goes_out_at_the_end_of_the_turn_and_before_a_close() -> None:
    t = FakeTransport()
    c = _Coalescing(t, asyncio.get_running_loop())  # type: ignore[arg-type]
    c.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0)
    assert t.sends == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    c.write(HEAD)
    c.close()
    assert t.sends[-1] == HEAD and t.closed
    gone = FakeTransport()
    c = _Coalescing(gone, asyncio.get_running_loop())  # type: ignore[arg-type]
    c.write(HEAD)
    gone.closed = True  # the client left before the turn ended: the head is dropped, not written
    await asyncio.sleep(0)
    assert gone.sends == []


def test_answers_through_the_served_protocol_are_whole(api: ApiServer) -> None:
    """The test servers run this protocol (conftest): answers on one kept-alive connection arrive whole
    and in order, fixed-length and chunked alike."""
    with httpx.Client(base_url=api.url) as c:
        first = c.get("/healthz")
        ready = c.get("/readyz")  # 503 here (no worker runs): an answer whose status is set late
        missing = c.get("/no-such-route")
        with c.stream("GET", "/metrics") as s:
            metrics = s.read()
        again = c.get("/healthz")
    assert first.json() == {"status": "ok"} == again.json()
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert missing.status_code == 404
    assert b"# HELP" in metrics


class Impatient(CoalescingHttpTools):
    """The served protocol with its deadlines short enough for a test to wait them out."""

    HEAD_TIMEOUT = 0.5
    BODY_TIMEOUT = 0.5
    SWEEP_EVERY = 0.05


@pytest.fixture
def impatient_api(settings: Settings) -> Iterator[ApiServer]:
    server, handle = start_api(settings, http=Impatient)
    try:
        yield handle
    finally:
        server.__exit__(None, None, None)


def answer(s: socket.socket) -> bytes:
    s.settimeout(10)  # far beyond the deadlines: before them, uvicorn never answered
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_head_over_the_bound_is_431_and_the_server_goes_on(api: ApiServer) -> None:
    """uvicorn's httptools protocol held any head in memory (300 MB in one header: +550 MB RSS)."""
    with raw_request(api, "GET /healthz HTTP/1.1\nHost: x\nX-Big: " + "a" * 100_000) as s:
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 431 "), got[:100]
    assert orjson.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    headers = {f"x-h{i}": "v" * 100 for i in range(100)}  # 10 KB of headers is fine
    assert httpx.get(f"{api.url}/healthz", headers=headers).json() == {"status": "ok"}


def test_a_head_whose_end_straddles_two_reads_before_a_large_body_is_served(api: ApiServer) -> None:
    """The head's end split across two reads, the second carrying over 64 KiB of body: the end was looked
    for in the second read alone, so a valid batch got a 431 now and then (as TCP segments fell)."""
    events = [ev() for _ in range(600)]
    body = orjson.dumps({"events": events})
    assert len(body) > CoalescingHttpTools.MAX_HEAD_BYTES
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.app_key()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
    where = urlsplit(api.url)
    with socket.create_connection((where.hostname, where.port)) as s:
        s.sendall(head[:-2])
        time.sleep(0.2)  # read apart by the server
        s.sendall(head[-2:] + body)
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 202 "), got[:200]
    assert orjson.loads(got.split(b"\r\n\r\n", 1)[1])["accepted"] == 600


def test_an_unfinished_head_is_408_and_a_silent_connection_closed(impatient_api: ApiServer) -> None:
    where = urlsplit(impatient_api.url)
    with socket.create_connection((where.hostname, where.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        got = answer(s)
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert b"head did not arrive within 0.5 s" in got
    with socket.create_connection((where.hostname, where.port)) as s:  # a pre-connect never used
        started = time.monotonic()
        assert answer(s) == b""  # closed without an answer a request sent just then could be taken for
        assert time.monotonic() - started < 9  # closed by the deadline, not by answer()'s 10 s timeout


def test_a_body_that_does_not_arrive_is_408_and_its_handler_ends(impatient_api: ApiServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    key = impatient_api.app_key()
    gone_before = request_counts(impatient_api, "post_events", 499)  # the metrics are the test process's
    with caplog.at_level(logging.ERROR), raw_request(
        impatient_api, f"POST /v1/events HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
                       "Content-Type: application/json\nContent-Length: 1000", b'{"events": [',
    ) as s:
        got = answer(s)
        deadline = time.monotonic() + 10  # the handler that waited for the body sees the disconnect
        while request_counts(impatient_api, "post_events", 499) == gone_before and time.monotonic() < deadline:
            time.sleep(0.02)
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert b"body did not arrive within 0.5 s" in got
    assert request_counts(impatient_api, "post_events", 499) == gone_before + 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_slow_answers_and_kept_alive_connections_are_not_cut() -> None:
    """The deadlines are the client's: a handler slower than them, and the next request on the connection
    after it, are served whole."""

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.2)  # over twice both deadlines
        port = str(scope["client"][1]).encode()  # the client's port: the same on a kept-alive connection
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(port)).encode())]})
        await send({"type": "http.response.body", "body": port})

    with ThreadServer(slow, http=Impatient) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as c:
        first = c.get("/")
        time.sleep(0.8)  # idle between requests is uvicorn's keep-alive (5 s), not the head deadline
        second = c.get("/")
    assert first.status_code == second.status_code == 200 and first.text.isdigit()
    assert second.text == first.text  # the same connection, not one made again after a cut
