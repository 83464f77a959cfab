"""The worker's bulk Redis traffic (stream reads, state loads, commits, acks) as raw RESP pipelines.

A commit round sends thousands of commands. redis-py's asyncio pipeline costs tens of microseconds per
command on top of Redis (command objects, response callbacks, a coroutine per reply), as much as the
worker's own per-user work; here a round is packed with hiredis, written at once, and its replies are
parsed in C as they arrive and handed back as one list. Replies come raw, in RESP2 shapes: bytes,
ints, nested lists (an XREADGROUP is [[stream, [[id, [field, value, ...]], ...]], ...]). Errors are
redis-py's: a reply error is returned in its place as ResponseError (NoScriptError for NOSCRIPT); a
lost or stalled connection raises ConnectionError or TimeoutError (both OSError: the worker loop
retries), and the connection is then replaced. TLS connections keep redis-py's pipeline (the same
replies, with its overhead).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ResponseError

from service.store import check_hello, hello_commands, reply_error


def error_of(reply: Any) -> ResponseError | None:
    """The redis-py exception a reply stands for (raw, or already one from redis-py), or None."""
    return reply if isinstance(reply, ResponseError) else reply_error(reply)


def raise_first(replies: list[Any]) -> list[Any]:
    """The replies, unless one is an error: then that error is raised (as redis-py's pipelines do)."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def lean_capable(client: aioredis.Redis) -> bool:
    """Whether the raw connection can reach the server redis-py's client talks to (not over TLS)."""
    return not issubclass(client.connection_pool.connection_class, SSLConnection)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Pipe:
    """One connection of the worker's own, for many commands at a time (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        kw = client.connection_pool.connection_kwargs
        self._lean = lean_capable(client)
        self._kw = kw
        self._proto: _Replies | None = None

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Every command's reply, in order; a reply error is returned in its place (see error_of)."""
        return await (await self.send(commands))

    async def send(self, commands: list[tuple[Any, ...]]) -> Awaitable[list[Any]]:
        """Write the commands now and return what awaits their replies: Redis runs them while the caller
        goes on computing (the replies wait in the socket until the event loop next runs)."""
        if not self._lean:
            return asyncio.ensure_future(self._redis_py(commands))
        proto = self._proto
        if proto is None or proto.closed:
            proto = self._proto = await self._open()
        if not commands:
            future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            future.set_result([])
            return future
        future = proto.send(b"".join([hiredis.pack_command(c) for c in commands]), len(commands))
        future.add_done_callback(_retrieved)  # a read dropped unawaited (a failed step) logs no stray error
        return self._replies(proto, future)

    async def _replies(self, proto: _Replies, future: asyncio.Future[list[Any]]) -> list[Any]:
        try:
            async with asyncio.timeout(self.timeout):
                replies = await future
        except BaseException:
            # A stalled, broken or cancelled exchange leaves replies owed on the connection: never reuse it.
            proto.close()
            if self._proto is proto:
                self._proto = None
            raise
        return [error_of(r) or r for r in replies]

    def backlog(self) -> int:
        """Bytes written but not yet handed to the socket: they go out only while the event loop runs."""
        proto = self._proto
        transport = proto.transport if proto is not None and not proto.closed else None
        return transport.get_write_buffer_size() if transport is not None else 0

    async def aclose(self) -> None:
        if self._proto is not None:
            self._proto.close()
            self._proto = None

    async def _redis_py(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.response_callbacks = {}  # raw replies, as the lean path gives them
        for c in commands:
            pipe.execute_command(*c)
        # redis-py speaks RESP3, where XREADGROUP answers a map: back to RESP2's [[stream, entries], ...].
        return [[[k, v] for k, v in r.items()] if isinstance(r, dict) else r
                for r in await pipe.execute(raise_on_error=False)]

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()
        kw = self._kw
        proto: _Replies | None = None
        try:
            async with asyncio.timeout(float(kw.get("socket_connect_timeout") or 2.0)):
                if kw.get("path"):
                    _, proto = await loop.create_unix_connection(_Replies, kw["path"])
                else:
                    _, proto = await loop.create_connection(_Replies, kw.get("host", "127.0.0.1"),
                                                            int(kw.get("port", 6379)))
                    sock = proto.transport.get_extra_info("socket") if proto.transport else None
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hello = hello_commands(kw.get("username"), kw.get("password"), kw.get("db"))
                if hello:
                    check_hello(await proto.send(b"".join(hiredis.pack_command(c) for c in hello), len(hello)))
        except BaseException:
            if proto is not None:
                proto.close()  # never leak the socket of a half-made connection
            raise
        return proto


class _Replies(asyncio.Protocol):
    """RESP replies parsed by hiredis, handed back a whole exchange at a time, exchanges in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes, n: int) -> asyncio.Future[list[Any]]:
        if self.closed or self.transport is None:
            raise ConnectionError("the worker's Redis connection is closed")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((n, [], future))
        self.transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while self.waiting:
                n, out, future = self.waiting[0]
                while len(out) < n:
                    reply = self.reader.gets()
                    if reply is False:
                        return
                    out.append(reply)
                self.waiting.popleft()
                if not future.done():
                    future.set_result(out)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"unreadable reply from Redis: {exc}"))

    def _fail(self, exc: Exception) -> None:
        self.close()
        while self.waiting:
            _, _, future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis closed the worker's connection ({exc})"))
