"""uvicorn's httptools protocol with each response's head and first body bytes sent in one write.

uvicorn writes a response's status line and headers on their own, then its body: two sends per answer,
and the client (an app, or M2-her's clients through Attune) may wake up once for each. Here the head
is held until the next write on the connection, which for every answer Attune gives comes in the same
turn of the event loop (a JSON body, or a stream's first events): one send instead of two. A head with
nothing after it in that turn (a 100 Continue, a stream whose handler waits) goes out at the end of the
turn. `attune serve` runs uvicorn with it (cli.py).

It also bounds what uvicorn's httptools protocol leaves open to a careless or hostile client: a request
head (request line and headers) is at most MAX_HEAD_BYTES (431), and must arrive within HEAD_TIMEOUT of the
connection's opening or of its first byte, a body within BODY_TIMEOUT of the end of its head (408). uvicorn
holds an unbounded head in memory and waits for a silent or trickling client forever (a handler task and a
socket each). Everything else about the protocol is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Coalescing:
    """The connection's transport, holding a response head until the write that follows it."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # one send (a vectored write), no copy
        elif isinstance(data, bytes) and data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # the client left meanwhile: nothing to write to
                self._transport.write(held)

    def writelines(self, data: Any) -> None:
        self._flush()
        self._transport.writelines(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class CoalescingHttpTools(HttpToolsProtocol):
    MAX_HEAD_BYTES = 64 * 1024  # nginx allows 32 KiB of headers by default; an app's are well under 4 KiB
    HEAD_TIMEOUT = 30.0  # seconds
    BODY_TIMEOUT = 60.0  # seconds for at most 1 MiB: a client sending under ~17 KB/s is refused
    SWEEP_EVERY = 1.0  # seconds between two looks at the server's connections for overdue ones

    # What the connection is reading: "head", "body", or None between requests (a response is being made,
    # or uvicorn's keep-alive timeout runs), and by when (loop time) it must have it.
    _reading: str | None
    _deadline: float | None
    _head_bytes: int

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport, self.loop))  # type: ignore[arg-type]
        self._reading, self._deadline, self._head_bytes = "head", self.loop.time() + self.HEAD_TIMEOUT, 0
        state = self.server_state
        if getattr(state, "attune_sweep", None) is None:  # one sweep per server, not a timer per request
            every = self.SWEEP_EVERY
            state.attune_sweep = self.loop.call_later(  # type: ignore[attr-defined]
                every, _sweep, state, self.loop, every)

    def data_received(self, data: bytes) -> None:
        if self._reading != "body":
            # Checked before parsing: httptools itself holds a head of any size until it is complete.
            room = self.MAX_HEAD_BYTES - self._head_bytes
            if len(data) > room:
                # Rare (a large body right behind its head, or a huge head): the parser gets what fits, and
                # the rest only if that completed the head. The parser finds the head's end even when it
                # straddles two reads, which a search of this chunk alone would miss.
                self._head_bytes = self.MAX_HEAD_BYTES
                super().data_received(data[:room])
                if self._reading == "head" and not self.transport.is_closing():
                    self._refuse(b"431 Request Header Fields Too Large", "headers_too_large",
                                 f"the request line and headers exceed {self.MAX_HEAD_BYTES} bytes; "
                                 "send fewer or smaller headers")
                    return
                if not self.transport.is_closing():
                    self.data_received(data[room:])
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading is None:  # the next request on a kept-alive connection: its head starts now
            self._reading, self._deadline = "head", self.loop.time() + self.HEAD_TIMEOUT

    def on_headers_complete(self) -> None:
        self._reading, self._deadline, self._head_bytes = "body", self.loop.time() + self.BODY_TIMEOUT, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = self._deadline = None

    def expire(self) -> None:
        """Past its deadline: refused with a 408 and closed. A handler waiting for the body then sees the
        disconnect (service/body.py: a 499 no one reads)."""
        reading = self._reading
        timeout = self.HEAD_TIMEOUT if reading == "head" else self.BODY_TIMEOUT
        if reading == "head" and self._head_bytes == 0:
            # A connection opened and never used (a browser's or a balancer's pre-connect): closed without an
            # answer, as nginx does; a 408 there could be read as the answer to a request sent just then.
            self._reading = self._deadline = None
            self.transport.close()
            return
        if self.pipeline:  # a pipelined request waits for the one before it: not the client's doing
            self._deadline = self.loop.time() + timeout  # the same allowance again once its turn comes near
            return
        self._refuse(b"408 Request Timeout", "request_timeout",
                     f"the request's {reading} did not arrive within {timeout:g} s; "
                     "send each request whole, at once")

    def _refuse(self, status: bytes, code: str, message: str) -> None:
        """Answer `status` with an error body and close; only close when an answer is already under way."""
        self._reading = self._deadline = None
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            body = orjson.dumps({"error": {"code": code, "message": message}})
            head = (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n")
            self.transport.write(head % (status, len(body)) + body)
        self.transport.close()


def _sweep(state: Any, loop: asyncio.AbstractEventLoop, every: float) -> None:
    """Expire the server's connections that are past their deadline; again in `every` s while any is open."""
    now = loop.time()
    for conn in list(state.connections):
        deadline = getattr(conn, "_deadline", None)
        if deadline is not None and now > deadline:
            conn.expire()
    state.attune_sweep = loop.call_later(every, _sweep, state, loop, every) if state.connections else None
