"""The M2-her client: one pooled httpx client (aiohttp transport) per process, timeouts, retries, quirks.

Every foreign exception (httpx, aiohttp, asyncio timeouts) is translated here into UpstreamError,
which keeps the MiniMax code. Retries (backoff with full jitter) happen only for retryable codes and
statuses and only before the first event of a reply was handed to the caller; a 2013 or 1000 answer
to a request with advanced roles is retried once with those roles folded into `system`.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from service.settings import UpstreamRetry, UpstreamTimeout

NATIVE_PATH = "/v1/text/chatcompletion_v2"
OPENAI_PATH = "/v1/chat/completions"
ADVANCED_ROLES = frozenset({"user_system", "group", "sample_message_user", "sample_message_ai"})
DEFAULT_NAMES = {
    "system": "Character",
    "user_system": "User",
    "group": "Scene",
    "sample_message_user": "User",
    "sample_message_ai": "Character",
    "user": "User",
    "assistant": "Character",
}
RETRYABLE_CODES = frozenset({1000, 1001, 1002, 1024, 1033, 1039, 1041, 2045})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
FOLD_CODES = frozenset({2013, 1000})
MAX_ERROR_BODY = 64 * 1024
_CODE_IN_MESSAGE = re.compile(r"\((\d{3,5})\)\s*$")
# When an HTTP error carries no MiniMax code, the nearest one by status.
_STATUS_CODES = {400: 2013, 401: 1004, 403: 1004, 402: 1008, 408: 1001, 422: 1026, 429: 1002, 504: 1001}

# MiniMax code -> (HTTP status for the app, Attune error code, OpenAI error type).
_MAPPING: dict[int, tuple[int, str, str]] = {
    1000: (502, "upstream_error", "api_error"),
    1001: (504, "upstream_timeout", "timeout_error"),
    1002: (429, "upstream_rate_limited", "rate_limit_error"),
    1004: (502, "upstream_auth_failed", "api_error"),
    2049: (502, "upstream_auth_failed", "api_error"),
    1008: (402, "upstream_insufficient_balance", "insufficient_quota"),
    1024: (502, "upstream_error", "api_error"),
    1033: (502, "upstream_error", "api_error"),
    1026: (422, "upstream_input_flagged", "invalid_request_error"),
    1027: (422, "upstream_output_flagged", "invalid_request_error"),
    1028: (429, "upstream_quota_exhausted", "insufficient_quota"),
    1030: (429, "upstream_quota_exhausted", "insufficient_quota"),
    1039: (400, "upstream_token_limit", "invalid_request_error"),
    1041: (429, "upstream_connection_limit", "rate_limit_error"),
    1042: (400, "upstream_invalid_characters", "invalid_request_error"),
    2013: (400, "upstream_invalid_params", "invalid_request_error"),
    2045: (429, "upstream_rate_limited", "rate_limit_error"),
}


class UpstreamError(Exception):
    """M2-her failed; `minimax_code` is MiniMax's code (or the nearest one for timeouts and resets)."""

    def __init__(
        self,
        minimax_code: int,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.minimax_code = minimax_code
        self.message = message
        self.retryable = minimax_code in RETRYABLE_CODES if retryable is None else retryable
        self.retry_after = retry_after
        status, default_code, self.openai_type = _MAPPING.get(
            minimax_code, (502, "upstream_error", "api_error")
        )
        self.status = status
        self.code = code or default_code

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "type": self.openai_type,
                "minimax_code": self.minimax_code,
            }
        }

    def native_body(self) -> dict[str, Any]:
        return {
            "choices": None,
            "base_resp": {"status_code": self.minimax_code, "status_msg": self.message},
            "error": {"code": self.code, "message": self.message, "minimax_code": self.minimax_code},
        }


def base_resp_error(obj: Any) -> UpstreamError | None:
    """The error a chunk or reply carries in `base_resp` (HTTP 200 included), or None."""
    if not isinstance(obj, dict):
        return None
    base = obj.get("base_resp")
    if isinstance(base, dict):
        code = base.get("status_code")
        if isinstance(code, int) and code != 0:
            return UpstreamError(
                code,
                f"M2-her: {base.get('status_msg') or 'error'} ({code})"
                if not _CODE_IN_MESSAGE.search(str(base.get("status_msg") or ""))
                else f"M2-her: {base.get('status_msg')}",
            )
    err = obj.get("error")
    if isinstance(err, dict):
        msg = str(err.get("message") or "error")
        m = _CODE_IN_MESSAGE.search(msg)
        return UpstreamError(int(m.group(1)) if m else 1000, f"M2-her: {msg}")
    return None


def http_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    err = base_resp_error(parsed)
    if err is None:
        code = _STATUS_CODES.get(status, 1000)
        err = UpstreamError(code, f"M2-her answered HTTP {status} ({code})")
    if status in RETRYABLE_STATUSES and err.minimax_code not in (1028, 1030):
        err.retryable = True
    if retry_after:
        try:
            err.retry_after = float(retry_after)
        except ValueError:
            pass
    return err


def with_names(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every message gets a non-empty name: advanced roles fail without one (2013 or 1000)."""
    out = []
    for m in messages:
        if m.get("name"):
            out.append(m)
        else:
            out.append({**m, "name": DEFAULT_NAMES.get(m.get("role", ""), "User")})
    return out


def has_advanced(body: dict[str, Any]) -> bool:
    return any(m.get("role") in ADVANCED_ROLES for m in body.get("messages", ()))


def fold_advanced(body: dict[str, Any]) -> dict[str, Any]:
    """The advanced roles folded into the system text, for an upstream that refuses them."""
    labels = {
        "user_system": "The user's persona",
        "group": "Scene",
        "sample_message_user": "Example, user",
        "sample_message_ai": "Example, character",
    }
    extra = [
        f"{labels[m['role']]} ({m.get('name')}): {m['content']}"
        for m in body["messages"]
        if m.get("role") in ADVANCED_ROLES
    ]
    kept = [m for m in body["messages"] if m.get("role") not in ADVANCED_ROLES]
    systems = [i for i, m in enumerate(kept) if m.get("role") == "system"]
    if systems:
        i = systems[0]
        kept[i] = {**kept[i], "content": kept[i]["content"] + "\n\n" + "\n".join(extra)}
    else:
        kept.insert(0, {"role": "system", "name": DEFAULT_NAMES["system"], "content": "\n".join(extra)})
    return {**body, "messages": kept}


def _backoff(attempt: int, policy: UpstreamRetry, retry_after: float | None) -> float:
    delay = random.uniform(0, min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_backoff))
    return delay


@dataclass(slots=True)
class Stream:
    """An open streamed reply whose first event already arrived (and carried no error)."""

    response: httpx.Response
    chunks: AsyncIterator[bytes]
    first: list[bytes]  # complete SSE data payloads read so far, first one included
    buffer: bytes = b""
    idle: float | None = None  # per-chunk timeout when the socket read timeout is longer
    first_byte_s: float = 0.0
    attempts: int = 1
    folded: bool = False
    closed: bool = field(default=False)
    raw: bytes | None = None  # the last batch's SSE bytes as received, when they can be relayed verbatim

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Lists of SSE data payloads as they arrive (the first events included), until the body ends."""
        if self.first:
            self.raw = None
            yield self.first
            self.first = []
        watchdog = _Watchdog(self.idle) if self.idle is not None else None
        try:
            while True:
                if watchdog is None:
                    chunk = await anext(self.chunks, None)
                else:
                    watchdog.since = watchdog.loop.time()
                    chunk = await anext(self.chunks, None)
                    watchdog.since = None
                if chunk is None:
                    break
                events = self._feed(chunk)
                if events:
                    yield events
        except asyncio.CancelledError:
            if watchdog is None or not watchdog.expired():
                raise
            raise UpstreamError(
                1001,
                f"M2-her went silent for over {self.idle:g} s mid-reply (1001)",
                code="upstream_timeout",
                retryable=False,
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                1000,
                f"M2-her's stream broke off: {type(exc).__name__} {exc} (1000)",
                code="upstream_stream_broken",
                retryable=False,
            ) from exc
        finally:
            if watchdog is not None:
                watchdog.handle.cancel()
        tail = self._feed(b"\n\n") if self.buffer.strip() else []
        if tail:
            yield tail

    def _feed(self, chunk: bytes) -> list[bytes]:
        """The data payloads of the events completed by chunk; self.raw is set to those events' bytes
        when each reads exactly `data: <payload>` (so relaying them needs no re-framing), else None."""
        data = self.buffer + chunk
        verbatim = b"\r" not in data
        if not verbatim:
            data = data.replace(b"\r\n", b"\n")
        *blocks, self.buffer = data.split(b"\n\n")
        out = []
        for block in blocks:
            payload = _data_of(block)
            if payload is None:
                verbatim = False  # a comment or an empty event: relayed events drop it
                continue
            out.append(payload)
            if verbatim and (len(block) != len(payload) + 6 or block[5:6] != b" " or b"\n" in block):
                verbatim = False
        self.raw = data[: len(data) - len(self.buffer)] if verbatim and out else None
        return out

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.response.aclose()


def _data_of(block: bytes) -> bytes | None:
    """The data of one SSE event (data lines joined), or None for comments and empty events."""
    if block.startswith(b"data:") and b"\n" not in block:
        return block[5:].strip()
    lines = [ln[5:].strip() for ln in block.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class Upstream:
    """The one pooled M2-her client of a process; create it in the lifespan, close it at shutdown."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: UpstreamTimeout,
        retry: UpstreamRetry,
        connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.retry = retry
        read = max(timeout.first_byte, timeout.idle)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        own = None
        if transport is None:
            limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

            def session() -> aiohttp.ClientSession:
                # The session httpx-aiohttp would make (its get_client), with the client's headers (httpx's
                # defaults and ours) as its defaults: the httpx requests then carry none, and aiohttp skips
                # turning an httpx.Headers into its own on every call (a decode of each header, two copies).
                # They are listed as httpx hands them to aiohttp (lower-case names, in order): the request
                # is the same bytes on the wire.
                connector = aiohttp.TCPConnector(
                    keepalive_timeout=limits.keepalive_expiry, ssl=own.ssl_context, limit=connections  # type: ignore[union-attr]
                )
                return aiohttp.ClientSession(connector=connector, headers=list(self.client.headers.items()))

            own = transport = AiohttpTransport(limits=limits, client=session)
        self._transport = transport
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(connect=timeout.connect, read=read, write=read, pool=timeout.pool),
        )
        # The socket read timeout covers the first byte; a shorter idle limit needs its own timer per chunk.
        self._idle = timeout.idle if timeout.idle < read else None
        # Absolute URLs parsed once: merging a path into base_url costs more than the rest of build_request.
        self._urls = {p: httpx.URL(base_url.rstrip("/") + p) for p in (NATIVE_PATH, OPENAI_PATH)}
        # Requests built directly from these: build_request merges headers, cookies and timeouts per call
        # (4% of a chat's CPU) to the same result, as this client never sets per-request values or cookies.
        # (Another transport, a test's, gets the headers on each request as httpx would send them.)
        self._headers = httpx.Headers() if own is not None else self.client.headers
        self._extensions = {"timeout": self.client.timeout.as_dict()}
        # ...and sent straight through the client's transport (httpx's transport API): AsyncClient.send
        # only adds what this client never uses (auth flows, redirects, cookies, event hooks, a logging
        # call), ~5% of a chat's CPU; the client still owns the transport and closes it.
        self._send = transport.handle_async_request

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, path: str, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """A non-streamed reply: (raw body, parsed body), after retries."""
        result: tuple[bytes, dict[str, Any]] = await self._with_retries(path, body, stream=False)
        return result

    async def stream(self, path: str, body: dict[str, Any]) -> Stream:
        """A streamed reply, open, with its first event read and checked, after retries."""
        result: Stream = await self._with_retries(path, body, stream=True)
        return result

    async def _with_retries(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        body = {**body, "messages": with_names(body["messages"])}
        attempt, folded = 0, False
        while True:
            attempt += 1
            try:
                result = await self._once(path, body, stream)
            except UpstreamError as exc:
                if exc.minimax_code in FOLD_CODES and not folded and has_advanced(body):
                    body, folded = fold_advanced(body), True
                    continue  # one extra try, not counted against the retry budget
                if not exc.retryable or attempt >= self.retry.attempts:
                    raise
                await asyncio.sleep(_backoff(attempt, self.retry, exc.retry_after))
                continue
            if isinstance(result, Stream):
                result.attempts, result.folded = attempt, folded
            return result

    async def _once(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        start = time.perf_counter()
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(str(self.client.base_url).rstrip("/") + path)
        # The body as a ready stream, read at once (request.content is what the transport sends): content=
        # would also add Host and Content-Length, copying and re-scanning the headers twice (~23 us of a
        # chat's CPU), for the values aiohttp itself sets from the URL and the bytes.
        request = httpx.Request(
            "POST", url, headers=self._headers, stream=httpx.ByteStream(orjson.dumps(body)),
            extensions=self._extensions,
        )
        request.read()
        response: httpx.Response | None = None
        deadline = _Deadline(self.timeout.first_byte)
        try:
            response = await self._send(request)
            if response.status_code != 200:
                raw = await _read_capped(response)
                raise http_error(response.status_code, raw, response.headers.get("retry-after"))
            is_sse = (_header(response, "content-type") or "").startswith("text/event-stream")
            if not stream or not is_sse:
                raw = await _read_all(response)
                parsed = _json(raw)
                err = base_resp_error(parsed)
                if err is not None:
                    try:
                        raise err
                    finally:
                        del err  # else frame -> err -> traceback -> frame: a cycle holding the body
                if stream:  # a JSON answer to a stream request: relay it as a one-event stream
                    return Stream(response, _empty(), [raw], first_byte_s=time.perf_counter() - start)
                return raw, parsed
            chunks = _body(response)
            out = Stream(response, chunks, [], idle=self._idle)
            while not out.first:
                chunk = await anext(chunks, None)
                if chunk is None:
                    raise UpstreamError(1000, "M2-her closed the stream before sending anything (1000)")
                out.first = [p for p in out._feed(chunk) if p != b"[DONE]"]
            err = base_resp_error(_json(out.first[0]))
            if err is not None:
                try:
                    raise err
                finally:
                    del err  # no cycle through this frame (see above)
            out.first_byte_s = time.perf_counter() - start
            response = None  # handed over to the Stream
            return out
        except asyncio.CancelledError:
            if not deadline.expired():
                raise
            raise UpstreamError(
                1001,
                f"M2-her sent no first byte within {self.timeout.first_byte:g} s; "
                "retry later, or raise first_byte in ATTUNE_UPSTREAM_TIMEOUT (1001)",
                code="upstream_timeout",
                retryable=False,
            ) from None
        except httpx.ConnectTimeout as exc:  # the aiohttp transport reports a refused connection this way too
            raise UpstreamError(
                1000,
                f"M2-her at {self.client.base_url} could not be reached (refused or timed "
                f"out: {exc}); check MINIMAX_BASE_URL (1000)",
                code="upstream_unreachable",
                retryable=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                1001, f"M2-her timed out ({type(exc).__name__}); retry later (1001)", code="upstream_timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamError(
                1000,
                f"M2-her at {self.client.base_url} could not be reached: "
                f"{type(exc).__name__} {exc}; check MINIMAX_BASE_URL (1000)",
                code="upstream_unreachable",
                retryable=True,
            ) from exc
        finally:
            deadline.cancel()
            if response is not None and not response.is_closed:
                await response.aclose()


class _Deadline:
    """asyncio.timeout's job for one call, for less CPU (no context manager, no rescheduling): a timer
    that cancels the task; expired() tells, where the CancelledError is caught, whether it was ours."""

    __slots__ = ("task", "base", "fired", "handle")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.base, self.fired = task, task.cancelling(), False
        self.handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def expired(self) -> bool:
        """True if the deadline cancelled the task (the cancel is then undone); False for any other
        cancel, or when another came on top of ours (as asyncio.timeout decides)."""
        self.handle.cancel()
        return self.fired and self.task.uncancel() <= self.base

    def cancel(self) -> None:
        self.handle.cancel()


class _Watchdog:
    """The silence limit between chunks, one timer per stream instead of an asyncio.timeout per chunk:
    the consumer notes when it starts waiting (`since`, None while it is not waiting: time spent writing
    to a slow client is not M2-her's silence); the timer, when due, cancels the task if it has waited
    `idle` seconds, else sets itself again for when that could next be true."""

    __slots__ = ("task", "base", "fired", "handle", "idle", "loop", "since")

    def __init__(self, idle: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.base, self.fired, self.idle = task, task.cancelling(), False, idle
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None
        self.handle = self.loop.call_later(idle, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        # The same sum as `due` below: uvloop's clock has whole milliseconds, and `now - since` could come
        # out a hair under `idle` when the timer fires on time, re-arming it at once until the next ms.
        if self.since is not None and now >= self.since + self.idle:
            self.fired = True
            self.task.cancel()
            return
        due = (self.since if self.since is not None else now) + self.idle
        self.handle = self.loop.call_at(due, self._check)

    def expired(self) -> bool:
        self.handle.cancel()
        return self.fired and self.task.uncancel() <= self.base


def _header(response: httpx.Response, name: str) -> str | None:
    """response.headers.get(name) (a repeated header's values joined by ", "), read from the headers aiohttp
    parsed when the response came through its transport: httpx's Headers decode the whole list again on
    the first look-up and on each one (~2% of a chat's path to its answer for the two a reply needs)."""
    inner = getattr(response.stream, "_aiohttp_response", None)
    if inner is None:
        return response.headers.get(name)
    values = inner.headers.getall(name, ())
    return ", ".join(values) if values else None


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's chunks: the transport's stream itself when nothing needs decoding (aiter_bytes adds
    two generator layers and a re-chunker per chunk), decoded by httpx when M2-her compressed it."""
    encoding = _header(response, "content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        return response.aiter_bytes()
    return aiter(response.stream)  # type: ignore[arg-type]


async def _read_capped(response: httpx.Response, limit: int | None = MAX_ERROR_BODY) -> bytes:
    parts, size = [], 0
    async for chunk in _body(response):
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)


async def _read_all(response: httpx.Response) -> bytes:
    """A whole reply body: one read from the aiohttp response behind the httpx one when nothing needs
    decoding (iterating the httpx stream costs two generator layers and a context per chunk)."""
    inner = getattr(response.stream, "_aiohttp_response", None)
    encoding = _header(response, "content-encoding")
    if inner is None or (encoding and encoding.strip().lower() != "identity"):
        return await _read_capped(response, limit=None)
    with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as the stream would raise them
        body: bytes = await inner.read()
    # Read whole, so aiohttp has handed the connection back to its pool: closing is only bookkeeping, done
    # here without the layers of Response.aclose (two context managers and two awaits, ~5% of a chat's
    # path to its answer). What aclose does: aiohttp's release() (its __aexit__, whose wait for the
    # request's writer has nothing to wait for once the answer came whole), then the httpx flag.
    inner.release()
    response.is_closed = True
    return body


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(1000, f"M2-her sent something that is not JSON: {raw[:80]!r} (1000)") from exc


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator
