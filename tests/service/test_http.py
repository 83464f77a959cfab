"""service/http.py: a response's head goes out with the bytes that follow it, in one write, and nothing
is lost, reordered or left behind."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.http import _Coalescing
from tests.conftest import ApiServer

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
