"""The M2-her client against httpx.MockTransport (the network boundary): retries, fold, quirks, errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from service.settings import UpstreamRetry, UpstreamTimeout
from service.upstream import (
    NATIVE_PATH,
    OPENAI_PATH,
    Stream,
    Upstream,
    UpstreamError,
    base_resp_error,
    fold_advanced,
    http_error,
    with_names,
)
from tests.conftest import free_port

BODY = {
    "model": "M2-her",
    "messages": [{"role": "system", "content": "You are Mira."}, {"role": "user", "content": "hi"}],
}
CHUNK = {"choices": [{"index": 0, "delta": {"content": "Hello ", "role": ""}}], "usage": None}
FAST = UpstreamRetry(attempts=3, backoff=0.001, max_backoff=0.002)


def client(
    handler: Callable[[httpx.Request], Any],
    timeout: UpstreamTimeout | None = None,
    retry: UpstreamRetry = FAST,
) -> Upstream:
    return Upstream(
        "http://m2her.test",
        "k",
        timeout or UpstreamTimeout(first_byte=1.0, idle=1.0),
        retry,
        transport=httpx.MockTransport(handler),
    )


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def sse_response(content: bytes | AsyncIterator[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)


def test_error_shapes_keep_the_minimax_code() -> None:
    assert (
        base_resp_error({"base_resp": {"status_code": 1002, "status_msg": "rate limit"}}).minimax_code == 1002
    )
    assert base_resp_error({"base_resp": {"status_code": 0}}) is None
    err = http_error(
        400, b'{"error": {"message": "invalid params, bad role (2013)", "type": "bad_request_error"}}', None
    )
    assert err.minimax_code == 2013 and err.status == 400 and not err.retryable
    err = http_error(429, b"", "3")
    assert err.minimax_code == 1002 and err.retryable and err.retry_after == 3.0
    assert http_error(429, b'{"error": {"message": "quota exhausted (1028)"}}', None).retryable is False
    assert http_error(500, b"<html>oops</html>", None).retryable is True
    assert http_error(401, b"", None).code == "upstream_auth_failed"  # not confused with Attune's own 401


def test_every_message_gets_a_name_and_advanced_roles_fold_into_system() -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user_system", "content": "I am Ren"},
        {"role": "group", "content": "Harbour", "name": "Scene 1"},
        {"role": "user", "content": "hi", "name": ""},
    ]
    named = with_names(msgs)
    assert all(m["name"] for m in named) and named[2]["name"] == "Scene 1"
    folded = fold_advanced({"messages": named})["messages"]
    assert [m["role"] for m in folded] == ["system", "user"]
    assert (
        folded[0]["content"].startswith("S\n\n")
        and "I am Ren" in folded[0]["content"]
        and "Harbour" in folded[0]["content"]
    )


async def test_retryable_status_is_retried_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(orjson.loads(request.content))
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy (1033)"}})
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "ok"}}], "base_resp": {"status_code": 0}}
        )

    up = client(handler)
    raw, parsed = await up.complete(OPENAI_PATH, BODY)
    await up.aclose()
    assert parsed["choices"][0]["message"]["content"] == "ok" and len(calls) == 3
    assert all(m["name"] for m in calls[0]["messages"])


async def test_retries_stop_after_the_budget_and_keep_the_last_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={"base_resp": {"status_code": 1002, "status_msg": "rate limit"}})

    up = client(handler)
    with pytest.raises(UpstreamError) as info:
        await up.complete(NATIVE_PATH, BODY)
    await up.aclose()
    assert info.value.minimax_code == 1002 and info.value.status == 429 and len(calls) == 3


async def test_non_retryable_code_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(402, json={"error": {"message": "insufficient balance (1008)"}})

    up = client(handler)
    with pytest.raises(UpstreamError) as info:
        await up.complete(OPENAI_PATH, BODY)
    await up.aclose()
    assert info.value.minimax_code == 1008 and len(calls) == 1


async def test_2013_with_advanced_roles_is_retried_once_folded() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        bodies.append(body)
        if any(m["role"] == "user_system" for m in body["messages"]):
            return httpx.Response(400, json={"error": {"message": "invalid params (2013)"}})
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "ok"}}], "base_resp": {"status_code": 0}}
        )

    up = client(handler)
    body = {
        **BODY,
        "messages": [
            BODY["messages"][0],
            {"role": "user_system", "content": "I am Ren"},
            BODY["messages"][1],
        ],
    }
    await up.complete(OPENAI_PATH, body)
    await up.aclose()
    assert len(bodies) == 2 and [m["role"] for m in bodies[1]["messages"]] == ["system", "user"]


async def test_2013_without_advanced_roles_is_not_folded_or_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "invalid params (2013)"}})

    up = client(handler)
    with pytest.raises(UpstreamError):
        await up.complete(OPENAI_PATH, BODY)
    await up.aclose()
    assert len(calls) == 1


async def test_stream_events_split_across_reads_and_crlf_are_reassembled_without_done() -> None:
    payload = sse(
        CHUNK,
        {**CHUNK, "choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"total_tokens": 3}},
    ).replace(b"\n", b"\r\n")

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 7):  # events cut at arbitrary bytes
            yield payload[i : i + 7]

    up = client(lambda r: sse_response(pieces()))
    stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})
    got = [p for batch in [b async for b in stream.batches()] for p in batch]
    await stream.aclose()
    await up.aclose()
    assert [orjson.loads(p) for p in got][1]["choices"][0]["finish_reason"] == "stop"
    assert len(got) == 3


async def test_a_compressed_stream_and_reply_are_decoded() -> None:
    import gzip  # noqa: PLC0415

    events = sse(CHUNK, {"choices": [{"index": 0, "delta": {"content": "there."}, "finish_reason": "stop"}]})
    reply = {"choices": [{"index": 0, "message": {"content": "Hi."}}], "base_resp": {"status_code": 0}}

    def handler(request: httpx.Request) -> httpx.Response:
        streamed = orjson.loads(request.content).get("stream")
        ctype = "text/event-stream" if streamed else "application/json"
        data = gzip.compress(events if streamed else orjson.dumps(reply))
        return httpx.Response(200, headers={"content-type": ctype, "content-encoding": "gzip"}, content=data)

    up = client(handler)
    stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})
    got = [orjson.loads(p) for batch in [b async for b in stream.batches()] for p in batch]
    await stream.aclose()
    raw, parsed = await up.complete(OPENAI_PATH, BODY)
    await up.aclose()
    assert "".join(c["choices"][0]["delta"]["content"] for c in got) == "Hello there."
    assert parsed == reply and orjson.loads(raw) == reply


async def test_an_error_as_the_first_stream_event_is_retried_before_the_first_byte() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return sse_response(
                sse({"choices": None, "base_resp": {"status_code": 1000, "status_msg": "unknown"}})
            )
        return sse_response(sse(CHUNK))

    up = client(handler)
    stream = await up.stream(NATIVE_PATH, {**BODY, "stream": True})
    await stream.aclose()
    await up.aclose()
    assert len(calls) == 2 and orjson.loads(stream.first[0])["choices"][0]["delta"]["content"] == "Hello "


async def test_silence_before_the_first_event_is_a_first_byte_timeout() -> None:
    async def slow() -> AsyncIterator[bytes]:
        await asyncio.sleep(5)
        yield sse(CHUNK)

    up = client(lambda r: sse_response(slow()), timeout=UpstreamTimeout(first_byte=0.2, idle=1.0))
    with pytest.raises(UpstreamError) as info:
        await up.stream(OPENAI_PATH, {**BODY, "stream": True})
    await up.aclose()
    assert (
        info.value.code == "upstream_timeout"
        and info.value.status == 504
        and "first byte" in info.value.message
    )


async def _stalls() -> AsyncIterator[bytes]:
    """One chunk, then five seconds of silence."""
    yield sse(CHUNK)
    await asyncio.sleep(5)
    yield sse(CHUNK)


async def test_silence_mid_stream_is_an_idle_timeout() -> None:
    up = client(lambda r: sse_response(_stalls()), timeout=UpstreamTimeout(first_byte=1.0, idle=0.2))
    stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})
    with pytest.raises(UpstreamError) as info:
        async for _ in stream.batches():
            pass
    await stream.aclose()
    await up.aclose()
    assert "silent" in info.value.message and info.value.minimax_code == 1001


async def test_a_slow_reader_is_not_taken_for_upstream_silence() -> None:
    """The idle limit counts only the time spent waiting for M2-her: a consumer that takes longer than
    it between chunks (a slow client) gets the whole reply, and a cancel not from the limit stays one."""

    async def steady() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield sse(CHUNK)
            await asyncio.sleep(0.02)

    up = client(lambda r: sse_response(steady()), timeout=UpstreamTimeout(first_byte=1.0, idle=0.5))
    stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})
    got = 0
    async for batch in stream.batches():
        got += len(batch)
        await asyncio.sleep(1.0)  # twice the idle limit, spent outside the wait for M2-her
    await stream.aclose()
    assert got == 4

    up = client(lambda r: sse_response(_stalls()), timeout=UpstreamTimeout(first_byte=1.0, idle=5.0))
    stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})

    async def drain() -> None:
        async for _ in stream.batches():
            pass

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    await up.aclose()


async def test_connection_errors_are_translated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    up = client(handler, retry=UpstreamRetry(attempts=2, backoff=0.001))
    with pytest.raises(UpstreamError) as info:
        await up.complete(OPENAI_PATH, BODY)
    await up.aclose()
    assert info.value.code == "upstream_unreachable" and "m2her.test" in info.value.message


async def test_a_json_answer_to_a_stream_request_is_relayed_as_one_event() -> None:
    reply = {
        "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
        "base_resp": {"status_code": 0},
    }
    up = client(lambda r: httpx.Response(200, json=reply))
    stream = await up.stream(NATIVE_PATH, {**BODY, "stream": True})
    got = [p for batch in [b async for b in stream.batches()] for p in batch]
    await stream.aclose()
    await up.aclose()
    assert [orjson.loads(p) for p in got] == [reply]


def test_canonical_sse_is_kept_verbatim_for_the_relay_and_anything_else_is_reframed() -> None:
    s = Stream(None, None, [])  # type: ignore[arg-type]
    assert s._feed(b'data: {"a":1}\n\ndata: {"b"') == [b'{"a":1}'] and s.raw == b'data: {"a":1}\n\n'
    assert s._feed(b":2}\n\ndata: [DONE]\n\n") == [b'{"b":2}', b"[DONE]"]
    assert s.raw == b'data: {"b":2}\n\ndata: [DONE]\n\n' and s.buffer == b""
    for odd in (b"data:{}\n\n", b"data: {}\r\n\r\n", b": ping\n\ndata: {}\n\n", b"data: {}\ndata: {}\n\n"):
        s._feed(odd)
        assert s.raw is None, odd
    assert s._feed(b"data: {") == [] and s.raw is None


@contextlib.asynccontextmanager
async def serving(handle: Callable[[Any], Any]) -> AsyncIterator[int]:
    """A real aiohttp server on loopback answering OPENAI_PATH with `handle`; yields its port."""
    from aiohttp import web  # noqa: PLC0415

    app = web.Application()
    app.router.add_post(OPENAI_PATH, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_what_m2her_receives_over_the_aiohttp_transport() -> None:
    """The request built without httpx's auto headers still carries Host, Content-Length and the client's
    headers on the wire (aiohttp sets the first two), and the body byte for byte."""
    from aiohttp import web  # noqa: PLC0415

    seen: list[tuple[Any, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.headers.copy(), await request.read()))
        reply = {"choices": [{"message": {"content": "ok"}}], "base_resp": {"status_code": 0}}
        return web.json_response(reply)

    async with serving(handle) as port:
        up = Upstream(f"http://127.0.0.1:{port}", "k3y", UpstreamTimeout(), FAST)
        try:
            raw, parsed = await up.complete(OPENAI_PATH, BODY)
        finally:
            await up.aclose()
    assert parsed["choices"][0]["message"]["content"] == "ok" and orjson.loads(raw) == parsed
    headers, body = seen[0]
    assert orjson.loads(body) == {**BODY, "messages": with_names(BODY["messages"])}
    assert headers["Content-Length"] == str(len(body))
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Authorization"] == "Bearer k3y" and headers["Content-Type"] == "application/json"
    assert "Transfer-Encoding" not in headers


async def test_an_error_answer_leaves_no_garbage_cycle_holding_the_request() -> None:
    # A served process collects garbage rarely (service/app.py tune_gc): a cycle through the raising frame
    # would keep each failed chat's body (up to 1 MiB) alive until the next collection.
    import gc

    big = {**BODY, "messages": [{"role": "system", "content": "x" * 50_000}, {"role": "user", "content": "hi"}]}
    answers = {
        "base_resp": lambda: httpx.Response(200, json={"base_resp": {"status_code": 1026, "status_msg": "flagged"}}),
        "stream_error": lambda: sse_response(sse({"base_resp": {"status_code": 1027, "status_msg": "flagged"}})),
    }
    for name, answer in answers.items():
        up = client(lambda req, answer=answer: answer())  # type: ignore[misc]
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                with pytest.raises(UpstreamError):
                    if name == "stream_error":
                        await up.stream(OPENAI_PATH, big)
                    else:
                        await up.complete(OPENAI_PATH, big)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            held = [o for o in gc.garbage if isinstance(o, dict) and o.get("messages") is not None]
            frames = [o for o in gc.garbage if type(o).__name__ == "frame"]
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
        await up.aclose()
        assert not held and not frames, (name, len(held), [f.f_code.co_name for f in frames])


async def test_over_the_aiohttp_transport_compressed_replies_and_errors_come_through() -> None:
    """The client over httpx's aiohttp transport against a real server (the MockTransport tests above do not
    reach aiohttp): a gzip reply and a gzip stream are decoded, a 429 keeps its Retry-After and is retried,
    and a port where nothing listens is `upstream_unreachable`."""
    import gzip  # noqa: PLC0415

    from aiohttp import web  # noqa: PLC0415

    events = sse(CHUNK, {"choices": [{"index": 0, "delta": {"content": "there."}, "finish_reason": "stop"}]})
    reply = {"choices": [{"index": 0, "message": {"content": "Hi."}}], "base_resp": {"status_code": 0}}
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        calls.append(body["messages"][-1]["content"])
        if body["messages"][-1]["content"] == "busy" and calls.count("busy") == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": "0"})
        streamed = body.get("stream")
        data = gzip.compress(events if streamed else orjson.dumps(reply))
        ctype = "text/event-stream" if streamed else "application/json"
        return web.Response(body=data, headers={"Content-Type": ctype, "Content-Encoding": "gzip"})

    async with serving(handle) as port:
        up = Upstream(f"http://127.0.0.1:{port}", "k3y", UpstreamTimeout(), FAST)
        gone = Upstream(f"http://127.0.0.1:{free_port()}", "k3y", UpstreamTimeout(), UpstreamRetry(attempts=1))
        try:
            stream = await up.stream(OPENAI_PATH, {**BODY, "stream": True})
            got = [orjson.loads(p) for batch in [b async for b in stream.batches()] for p in batch]
            await stream.aclose()
            raw, parsed = await up.complete(OPENAI_PATH, BODY)
            busy = {**BODY, "messages": [*BODY["messages"][:-1], {"role": "user", "content": "busy"}]}
            _, after_429 = await up.complete(OPENAI_PATH, busy)
            with pytest.raises(UpstreamError) as refused:
                await gone.complete(OPENAI_PATH, BODY)
        finally:
            await up.aclose()
            await gone.aclose()
    assert "".join(c["choices"][0]["delta"]["content"] for c in got) == "Hello there."
    assert parsed == reply and orjson.loads(raw) == reply
    assert after_429 == reply and calls.count("busy") == 2
    assert refused.value.code == "upstream_unreachable" and refused.value.minimax_code == 1000
