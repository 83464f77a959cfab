"""The worker's raw RESP pipelines against real Redis: replies in order, errors in place, lost connections."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError, ResponseError

from service import store as store_mod
from tests.workers.helpers import run
from workers.resp import Pipe, raise_first


async def _exchange(url: str, lean: bool) -> list[Any]:
    client = store_mod.connect(url)
    pipe = Pipe(client, 3.0)
    pipe._lean = lean
    try:
        await pipe.execute([(b"DEL", "s"), (b"XGROUP", b"CREATE", "s", "g", "0", b"MKSTREAM")])
        await pipe.execute([(b"XADD", "s", "1-1", "e", b"{}"), (b"XADD", "s", "1-2", "e", "x", "f", 7)])
        read = (b"XREADGROUP", b"GROUP", "g", "c", b"COUNT", 10, b"STREAMS", "s", ">")
        return await pipe.execute([
            (b"SET", "k", "v"), (b"MGET", "k", "nope"), (b"INCRBY", "n", 2), (b"HINCRBY", "k", "f", 1),
            (b"EVALSHA", "0" * 40, 0), read, read])
    finally:
        await pipe.aclose()
        await client.aclose()


@pytest.mark.parametrize("lean", [True, False], ids=["raw", "redis-py"])
def test_replies_come_raw_in_order_with_errors_in_place(redis_url: str, redis_sync: redis.Redis,
                                                        lean: bool) -> None:
    ok, got, n, wrong, noscript, read, empty = run(_exchange(redis_url, lean))
    assert ok == b"OK" and got == [b"v", None] and n == 2
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    assert isinstance(noscript, NoScriptError)
    assert read == [[b"s", [[b"1-1", [b"e", b"{}"]], [b"1-2", [b"e", b"x", b"f", b"7"]]]]]
    assert empty is None
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        raise_first([ok, wrong])


def test_a_killed_connection_fails_the_exchange_in_flight_and_is_replaced(redis_url: str,
                                                                          redis_sync: redis.Redis) -> None:
    async def go() -> list[Any]:
        client = store_mod.connect(redis_url)
        pipe = Pipe(client, 3.0)
        ids = []
        try:
            (mine,) = await pipe.execute([(b"CLIENT", b"ID")])
            ids.append(mine)
            redis_sync.client_kill_filter(_id=mine)  # while idle: the next exchange connects afresh
            await asyncio.sleep(0.05)
            (mine,) = await pipe.execute([(b"CLIENT", b"ID")])
            ids.append(mine)
            blocked = asyncio.create_task(pipe.execute([(b"BLPOP", "nothing", 2)]))
            await asyncio.sleep(0.1)
            redis_sync.client_kill_filter(_id=mine)  # in flight: that exchange fails
            with pytest.raises(ConnectionError):
                await blocked
            ids.extend(await pipe.execute([(b"CLIENT", b"ID")]))
            return ids
        finally:
            await pipe.aclose()
            await client.aclose()

    ids = run(go())
    assert len(set(ids)) == 3


def test_a_silent_server_times_out_and_the_connection_is_replaced() -> None:
    async def go() -> list[int]:
        accepted: list[int] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            await reader.read(1 << 16)  # takes the command, never answers
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = store_mod.connect(f"redis://127.0.0.1:{port}")
        pipe = Pipe(client, 0.2)
        try:
            for _ in range(2):
                with pytest.raises(TimeoutError):
                    await pipe.execute([(b"PING",)])
        finally:
            await pipe.aclose()
            await client.aclose()
            server.close()
        return accepted

    assert len(run(go())) == 2  # the stalled connection was not reused


def test_sent_commands_run_before_their_replies_are_awaited(redis_url: str, redis_sync: redis.Redis) -> None:
    async def go() -> tuple[Any, list[Any], list[Any]]:
        client = store_mod.connect(redis_url)
        pipe = Pipe(client, 3.0)
        try:
            first = await pipe.send([(b"SET", "k", "v"), (b"INCR", "n")])
            second = await pipe.send([(b"INCR", "n")])
            await asyncio.sleep(0.05)  # the caller computing; Redis has run both exchanges meanwhile
            seen = redis_sync.mget("k", "n")
            return seen, await first, await second
        finally:
            await pipe.aclose()
            await client.aclose()

    seen, first, second = run(go())
    assert seen == [b"v", b"2"] and first == [b"OK", 1] and second == [2]
