"""The gateway's bare RESP client (service/gateway.LeanRedis) against real Redis servers: the same verdicts
and documents as redis-py for Store.condition_checked, the script reloaded after a flush, a dropped
connection replaced, password and database honoured, an outage reported as StoreUnavailable."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from service import keys
from service.embedded import redis_executable
from service.errors import StoreUnavailable
from service.gateway import LeanRedis
from service.store import Store, connect
from tests.conftest import free_port


async def _both(url: str, names: list[str], secret: str = "h", rate: int = 100) -> tuple[Any, Any]:
    """(redis-py's answer, LeanRedis's answer) to the same condition_checked call."""
    client = connect(url)
    lean = LeanRedis.like(client)
    assert lean is not None
    try:
        via_py = await Store(client, 4, 60).condition_checked("demo", "k1", secret, "condition", rate, names)
        via_lean = await Store(lean, 4, 60).condition_checked(  # type: ignore[arg-type]
            "demo", "k1", secret, "condition", rate, names
        )
        return via_py, via_lean
    finally:
        await lean.aclose()
        await client.aclose()


def test_lean_client_answers_as_redis_py_does(redis_url: str, redis_sync: redis.Redis) -> None:
    redis_sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "read,condition"})
    redis_sync.set(keys.profile("demo", "u1"), b'{"version": 3}')
    names = [keys.profile("demo", "u1", "c9"), keys.profile("demo", "u1")]
    (py_check, py_docs), (check, docs) = asyncio.run(_both(redis_url, names))
    assert docs == py_docs == [None, b'{"version": 3}']
    assert check.valid and check.scopes == py_check.scopes == ("read", "condition")
    # Both calls counted against the same second's rate (1: the second turned between them, a slow machine).
    assert check.used in (py_check.used + 1, 1), (py_check.used, check.used)
    (_, py_docs), (check, docs) = asyncio.run(_both(redis_url, names, secret="wrong"))
    assert not check.valid and docs is None and py_docs is None


def test_lean_client_reloads_the_script_after_a_flush_and_replaces_a_dropped_connection(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    redis_sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "condition"})
    redis_sync.set(keys.profile("demo", "u1"), b"{}")

    async def run() -> list[Any]:
        client = connect(redis_url)
        lean = LeanRedis.like(client)
        store = Store(lean, 4, 60)  # type: ignore[arg-type]

        def check(names: list[str]) -> Any:
            return store.condition_checked("demo", "k1", "h", "condition", 100, names)

        out = []
        try:
            out.append(await check([keys.profile("demo", "u1")]))
            redis_sync.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
            out.append(await check([keys.profile("demo", "u1")]))
            redis_sync.client_kill_filter(_type="normal", skipme=True)  # every other client, the lean one too
            await asyncio.sleep(0.05)
            out.append(await check([keys.profile("demo", "u1")]))
            # Concurrent calls share the one connection; each gets its own reply.
            many = await asyncio.gather(*(check([f"doc{i}"]) for i in range(20)))
            out.append([docs for _, docs in many])
        finally:
            await lean.aclose()  # type: ignore[union-attr]
            await client.aclose()
        return out

    for i in range(20):
        redis_sync.set(f"doc{i}", str(i))
    first, flushed, reconnected, answers = asyncio.run(run())
    for check, docs in (first, flushed, reconnected):
        assert check.valid and docs == [b"{}"]
    # Each call got its own document (rate counts were compared before: they restart when a second ends).
    assert answers == [[str(i).encode()] for i in range(20)]


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:s3cret@127.0.0.1:{port}/2"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def test_lean_client_over_tcp_sends_the_password_and_selects_the_database(password_redis: str) -> None:
    sync = redis.Redis.from_url(password_redis)
    sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "condition"})
    sync.set(keys.profile("demo", "u1"), b'{"version": 9}')
    (_, py_docs), (check, docs) = asyncio.run(_both(password_redis, [keys.profile("demo", "u1")]))
    assert check.valid and docs == py_docs == [b'{"version": 9}']

    async def lean_only(url: str) -> None:
        client = connect(url)
        lean = LeanRedis.like(client)
        try:
            store = Store(lean, 4, 60)  # type: ignore[arg-type]
            await store.condition_checked("demo", "k1", "h", "condition", 100, [])
        finally:
            await lean.aclose()  # type: ignore[union-attr]
            await client.aclose()

    with pytest.raises(StoreUnavailable):
        asyncio.run(lean_only(password_redis.replace(":s3cret@", ":nope@")))


def test_lean_client_reports_an_outage_as_store_unavailable() -> None:
    async def run() -> None:
        store = Store(LeanRedis("127.0.0.1", free_port()), 4, 60)  # type: ignore[arg-type]
        await store.condition_checked("demo", "k1", "h", "condition", 100, [])

    with pytest.raises(StoreUnavailable):
        asyncio.run(run())


def test_a_stalled_connection_is_replaced_and_a_failed_connect_fails_the_next_calls_fast() -> None:
    # A peer that accepts and then says nothing (a connection a NAT or firewall dropped silently, a hung
    # Redis): after one call waited TIMEOUT, the calls of the next FAIL_FAST seconds fail at once (each would
    # wait again on a new connection); then a call tries a new connection, never the one that stalled.
    accepted: list[Any] = []

    async def run() -> tuple[list[str], int, str]:
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lean = LeanRedis("127.0.0.1", port)
        lean.TIMEOUT, lean.FAIL_FAST = 0.3, 0.5
        outcomes = []
        for pause in (0.0, 0.0, 0.6):
            await asyncio.sleep(pause)
            started = time.monotonic()
            try:
                await lean.evalsha("0" * 40, 0)
                outcomes.append("answered")
            except TimeoutError:
                outcomes.append("timeout")
            except ConnectionError:
                outcomes.append("fast" if time.monotonic() - started < 0.1 else "slow")
        connections = len(accepted)
        await lean.aclose()
        server.close()
        await server.wait_closed()
        # Nothing listens any more: the first call fails connecting, the next ones at once without waiting.
        refused = LeanRedis("127.0.0.1", port)
        with pytest.raises(OSError):
            await refused.evalsha("0" * 40, 0)
        with pytest.raises(ConnectionError) as fast:
            await refused.evalsha("0" * 40, 0)
        return outcomes, connections, str(fast.value)

    outcomes, connections, message = asyncio.run(run())
    assert outcomes == ["timeout", "fast", "timeout"]
    assert connections == 2, "the third call must not wait on the socket that stalled"
    assert "unreachable a moment ago" in message


def test_a_reply_that_came_while_the_loop_was_busy_is_not_a_timeout(redis_url: str,
                                                                     redis_sync: redis.Redis) -> None:
    """A process busy longer than TIMEOUT (overload, not a silent Redis) must still take the reply that came
    meanwhile instead of failing the call: on the API's loop (uvloop) the socket is read before the timer
    that would expire the call runs. Were it the other way round, a busy second would fail every chat."""
    redis_sync.set("attune:test:busy", b"here")

    async def run() -> bytes:
        client = connect(redis_url)
        lean = LeanRedis.like(client)
        assert lean is not None
        lean.TIMEOUT = 0.2
        try:
            await lean.eval("return redis.call('GET', KEYS[1])", 1, "attune:test:busy")  # connected
            call = asyncio.ensure_future(lean.eval("return redis.call('GET', KEYS[1])", 1, "attune:test:busy"))
            await asyncio.sleep(0)  # the command is written at the end of this turn
            await asyncio.sleep(0)
            time.sleep(0.5)  # the loop is blocked past TIMEOUT while the reply arrives
            return await call
        finally:
            await lean.aclose()
            await client.aclose()

    assert uvloop.run(run()) == b"here"  # the API's loop (service/cli.py)


def test_an_idle_connection_is_replaced_before_use(redis_url: str, redis_sync: redis.Redis) -> None:
    redis_sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "condition"})

    async def run() -> tuple[bool, bool]:
        client = connect(redis_url)
        lean = LeanRedis.like(client)
        assert lean is not None
        store = Store(lean, 4, 60)  # type: ignore[arg-type]
        try:
            await store.condition_checked("demo", "k1", "h", "condition", 100, [keys.profile("demo", "u1")])
            first = lean._proto
            lean._used -= LeanRedis.MAX_IDLE + 1  # as if it sat idle past the limit
            check, _ = await store.condition_checked("demo", "k1", "h", "condition", 100,
                                                     [keys.profile("demo", "u1")])
            return check.valid, lean._proto is not first and first is not None and first.closed
        finally:
            await lean.aclose()
            await client.aclose()

    assert asyncio.run(run()) == (True, True)


def test_the_calls_of_one_turn_go_out_in_one_write(redis_url: str, redis_sync: redis.Redis) -> None:
    """Concurrent chats reach Redis in the same turn of the loop: their commands share one send, and each
    still gets its own reply, in order."""
    redis_sync.hset(keys.api_key("demo", "k1"), mapping={"hash": "h", "scopes": "condition"})
    for i in range(12):
        redis_sync.set(f"doc{i}", str(i))

    async def run() -> tuple[list[Any], list[int]]:
        client = connect(redis_url)
        lean = LeanRedis.like(client)
        assert lean is not None
        store = Store(lean, 4, 60)  # type: ignore[arg-type]
        try:
            await store.condition_checked("demo", "k1", "h", "condition", 100, [])  # connected
            proto = lean._proto
            assert proto is not None and proto.transport is not None
            real, writes = proto.transport, []

            class Counting:
                def write(self, data: bytes) -> None:
                    writes.append(data.count(b"EVALSHA"))
                    real.write(data)

                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

            proto.transport = Counting()  # type: ignore[assignment]
            check = store.condition_checked
            many = await asyncio.gather(*(check("demo", "k1", "h", "condition", 100, [f"doc{i}"])
                                          for i in range(12)))
            one = await store.condition_checked("demo", "k1", "h", "condition", 100, ["doc3"])
            proto.transport = real
            return [docs for _, docs in [*many, one]], writes
        finally:
            await lean.aclose()
            await client.aclose()

    answers, writes = asyncio.run(run())
    assert answers == [[str(i).encode()] for i in range(12)] + [[b"3"]]
    assert writes == [12, 1]
