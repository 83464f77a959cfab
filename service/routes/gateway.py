"""The conditioning gateway: POST /v1/text/chatcompletion_v2, /v1/chat/completions and /v1/condition."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from models.conditioning import Decision
from service import gateway as gw
from service.auth import RecentVerdicts, admit, app_key, authenticate, require_app
from service.body import read_json
from service.errors import INTERNAL_ERROR_BODY, AttuneError, BadRequest, StoreUnavailable
from service.metrics import UPSTREAM, UPSTREAM_ERRORS
from service.metrics import _requests as request_histogram
from service.settings import Settings
from service.store import StatsBuffer, Store
from service.upstream import NATIVE_PATH, OPENAI_PATH, Stream, Upstream, UpstreamError

log = logging.getLogger("attune.gateway")
# X-Attune-Conditioning's values (lower case): off for a holdout, on (or no header) to condition.
CONDITIONING_MODES = {"": True, **dict.fromkeys(("on", "true", "1", "yes", "enabled"), True),
                      **dict.fromkeys(("off", "false", "0", "no", "none", "disabled"), False)}
# What to do about a chat body over the size limit (an event batch is split instead).
CHAT_TOO_LARGE = "shorten the conversation: send fewer or shorter messages"
router = APIRouter(tags=["conditioning"])

_ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad body, no user, or M2-her rejected the parameters (2013)"},
    401: {},
    403: {},
    429: {"description": "rate limited (Attune or M2-her)"},
    502: {"description": "M2-her failed or could not be reached; the MiniMax code is kept"},
    504: {"description": "M2-her sent no first byte in time"},
}


class Runtime:
    """Per-process gateway resources, made in lifespan(): the pooled M2-her client and the recorder."""

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        key = settings.minimax_api_key.get_secret_value() if settings.minimax_api_key else None
        self.standin = key is None
        self.upstream = Upstream(
            settings.minimax_base_url,
            key or "standin",
            settings.upstream_timeout,
            settings.upstream_retry,
            settings.upstream_connections,
        )
        self.recorder = gw.Recorder(app.state.store, settings.pacing_from_text)
        # The key check and profile read of every chat go through a bare RESP connection (gw.LeanRedis).
        store: Store = app.state.store
        self.lean = gw.LeanRedis.like(store.redis)
        lean: Any = self.lean
        self.checks = Store(lean, store.partitions, store.dedup_ttl) if lean is not None else store
        self.rng = random.Random()
        self.verdicts = RecentVerdicts()  # the fallback for a chat's key check when Redis is unavailable
        self.upstream_header = b"standin" if self.standin else b"minimax"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per M2-her call costs ~10% CPU
    runtime = Runtime(settings, app)
    if runtime.standin:
        log.warning("!" * 72)
        if "minimax" in settings.minimax_base_url:
            log.warning(
                "MINIMAX_API_KEY is unset but MINIMAX_BASE_URL is MiniMax (%s): chats will fail with "
                "upstream_auth_failed. Set MINIMAX_API_KEY, or start the offline stand-in "
                "(`attune standin`) and point MINIMAX_BASE_URL at it (`make run` does both)",
                settings.minimax_base_url,
            )
        else:
            log.warning(
                "MINIMAX_API_KEY is unset: chats go to the OFFLINE M2-her STAND-IN at %s, not to MiniMax;"
                " answers carry X-Attune-Upstream: standin",
                settings.minimax_base_url,
            )
        log.warning("!" * 72)
    app.state.gateway = runtime
    sweeping = asyncio.create_task(runtime.verdicts.sweeping(app.state.store))
    try:
        async with runtime.recorder.running():
            yield
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        await runtime.upstream.aclose()
        if runtime.lean is not None:
            await runtime.lean.aclose()


class Call:
    """One gateway call, from the request to what was applied."""

    __slots__ = ("app", "who", "prep", "decision", "body", "conditioned", "reply_id", "headers", "regen")

    def __init__(
        self,
        app: str,
        who: tuple[str, str | None, str | None],
        prep: gw.Prepared,
        decision: Decision | None,
        conditioned: bool,
        runtime: Runtime,
        regen: gw.Regen | None = None,
    ) -> None:
        self.app, self.who, self.prep, self.decision, self.conditioned = app, who, prep, decision, conditioned
        self.regen = regen if decision is not None else None
        self.body = gw.condition(prep.body, decision) if decision is not None else prep.body
        self.reply_id = gw.new_reply_id()
        version = decision.profile_version if decision is not None else None
        # ASGI's raw header list, built once here: Starlette's Response.init_headers is generic and slow.
        self.headers: list[tuple[bytes, bytes]] = [
            (b"x-attune-reply-id", self.reply_id.encode()),
            (b"x-attune-profile-version", str(version).encode() if version is not None else b"none"),
            (b"x-attune-conditioned", b"true" if conditioned else b"false"),
            (b"x-attune-upstream", runtime.upstream_header),
        ]
        if prep.dropped:
            self.headers.append((b"x-attune-dropped", _header_value(",".join(prep.dropped)[:512])))
        if prep.adjusted:
            self.headers.append((b"x-attune-adjusted", _header_value(",".join(prep.adjusted)[:512])))


_UNSAFE_IN_HEADER = re.compile(r"[^\x20-\x7e]")


def _header_value(text: str) -> bytes:
    """Field names an app sent, safe in a header: a control character there would make the server refuse
    the whole answer (a 500), a non-Latin-1 one would not encode."""
    return _UNSAFE_IN_HEADER.sub("?", text).encode()


class Reply(Response):
    """A JSON answer whose ASGI header list is built directly: Response.__init__ costs ~2% of a chat's CPU.
    `headers` are raw (lower-case name, value) byte pairs; `after` runs once the answer was handed to the
    server (sent, or failed to send), for bookkeeping the app need not wait for."""

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.body, self.status_code, self.background, self.after = body, status, None, after
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *(headers or ()),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            await send({"type": "http.response.body", "body": self.body})
        finally:
            if self.after is not None:
                self.after()


# Attune's own errors on the native route also carry M2-her's `base_resp`, with the MiniMax code of the same
# meaning (docs/m2her-api.md), so a client that checks base_resp.status_code (as MiniMax's samples do) sees
# the failure and whether to retry it; `error` stays for clients of Attune's other routes.
MINIMAX_CODES = {400: 2013, 401: 1004, 403: 1004, 404: 2013, 408: 1001, 413: 2013, 422: 2013, 429: 1002,
                 431: 2013, 500: 1000, 502: 1000, 503: 1033, 504: 1001}


def _error_reply(exc: AttuneError, native: bool = False) -> Reply:
    headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in exc.headers.items()]
    body = exc.body()
    if native:
        code = MINIMAX_CODES.get(exc.status, 1000)
        body = {**body, "base_resp": {"status_code": code, "status_msg": exc.message}}
    return Reply(orjson.dumps(body), exc.status, headers)


async def _prepare(request: Request) -> Call:
    """Body, user, key check and profile: one Redis round trip (Store.condition_checked) for an app key.

    The verdicts come in the order FastAPI's dependency gave them: 401, 403 and 429 before any body error.
    """
    state = request.app.state
    settings: Settings = state.settings
    runtime: Runtime = state.gateway
    problem: AttuneError | None = None
    try:
        raw = await read_json(request, settings.max_body_bytes, CHAT_TOO_LARGE)
        if not isinstance(raw, dict):
            raise BadRequest(
                'the body must be a JSON object like M2-her\'s: {"model", "messages", ...}',
                code="invalid_body",
            )
        who = gw.identify(request.headers, raw)
        prep = gw.prepare(raw)
    except AttuneError as exc:
        problem = exc
    key = app_key(request)  # None for the admin key; 401 for a missing or malformed one
    mode = CONDITIONING_MODES.get(request.headers.get("x-attune-conditioning", "").strip().lower())
    if mode is None and problem is None:
        # A word it does not know could mean either: conditioning a holdout without a word corrupts the A/B.
        problem = BadRequest("X-Attune-Conditioning must be 'on' or 'off' (or true/false, 1/0, yes/no), got "
                             f"{request.headers['x-attune-conditioning'][:20]!r}; 'off' forwards the chat "
                             "unconditioned (a holdout), 'on' or no header conditions it",
                             code="invalid_header")
    wanted = mode is not False
    if key is None or problem is not None:
        principal = await authenticate(request, "condition")
        if problem is not None:
            try:
                raise problem
            finally:
                problem = None  # else frame -> problem -> traceback -> frame: a cycle holding the body
        app = require_app(principal)
        decision, conditioned, regen = None, False, None
        if wanted:
            regen = gw.regen_for(app, who[0], prep.body)
            decision, conditioned = await gw.load_decision(state.store, app, who[0], who[1], runtime.rng,
                                                           regen.key, runtime.recorder)
        return Call(app, who, prep, decision, conditioned, runtime, regen)
    regen = gw.regen_for(key.app, who[0], prep.body) if wanted else None
    names = gw.profile_keys(key.app, who[0], who[1], regen.key) if regen is not None else []
    try:
        check, docs = await runtime.checks.condition_checked(
            key.app, key.key_id, key.secret_hash, "condition", settings.rate_limit_per_second, names
        )
    except StoreUnavailable:
        remembered = runtime.verdicts.recall(key)
        if remembered is None:
            raise  # no verdict on this key to go on
        # Fail open: the key passed moments ago; the chat goes out unconditioned, counted in this process.
        gw.fail_open(key.app, "store_unavailable", "Redis unavailable; the key's recent verdict stands")
        admit(key, remembered, "condition", settings)
        return Call(key.app, who, prep, None, False, runtime, regen)
    runtime.verdicts.remember(key, check)
    admit(key, check, "condition", settings)
    decision, conditioned = (None, False)
    if wanted:
        if docs and regen is not None:  # this process's own record may be newer than the one just read
            docs = [*docs[:-1], runtime.recorder.record_for(regen.key, docs[-1])]
        decision, conditioned = gw.decide_from(docs, key.app, runtime.rng, regen=True)
    return Call(key.app, who, prep, decision, conditioned, runtime, regen)


async def condition_body(request: Request) -> Response:
    call = await _prepare(request)
    if call.decision is not None and call.regen is not None:
        request.app.state.gateway.recorder.served(call.decision, call.regen)  # the app calls M2-her itself
    out = {
        "reply_id": call.reply_id,
        "request": call.body,
        "applied": call.decision.applied() if call.decision is not None else None,
        "conditioned": call.conditioned,
    }
    return Reply(orjson.dumps(out), headers=call.headers)


async def chat_native_body(request: Request) -> Response:
    return await _chat(request, "native")


async def chat_openai_body(request: Request) -> Response:
    return await _chat(request, "openai")


# The FastAPI routes below document the three routes in OpenAPI and serve them when FastPath is not
# installed; with it (create_app installs it) requests never reach them: see FastPath.
@router.post(
    "/v1/condition",
    summary="Condition an M2-her body without forwarding it (apps that call M2-her themselves)",
    responses={400: _ANSWERS[400], 401: {}, 403: {}},
)
async def condition(request: Request) -> Response:
    return await condition_body(request)


@router.post(
    NATIVE_PATH,
    summary="M2-her's native chat route, conditioned (JSON or SSE as M2-her answers)",
    responses=_ANSWERS,
)
async def chat_native(request: Request) -> Response:
    return await chat_native_body(request)


@router.post(
    OPENAI_PATH, summary="OpenAI-compatible chat route, conditioned (JSON or SSE)", responses=_ANSWERS
)
async def chat_openai(request: Request) -> Response:
    return await chat_openai_body(request)


class _Request(Request):
    """Starlette's Request with its headers read into a dict once: Headers.get scans the whole list at
    each call, and a chat reads seven headers (~6 us saved). The first of a repeated name wins, as in
    Headers.get; only .get is used on the fast path."""

    @property
    def headers(self) -> Any:
        try:
            return self._fast_headers
        except AttributeError:
            raw = self.scope["headers"]
            self._fast_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}
            return self._fast_headers


class FastPath:
    """Serves the three gateway routes ahead of FastAPI: no Starlette middleware, routing, dependency
    injection or request parsing (app.py's AttuneApp calls it first for every request); every other
    request goes on to `inner`, FastAPI itself.

    Errors are rendered as app.py's handlers render them, an unexpected one as its 500 handler does
    (logged on the same logger). The latency histogram is observed here under the FastAPI endpoint's
    name, as LatencyMiddleware would.
    """

    ROUTES = {
        OPENAI_PATH: (chat_openai_body, "chat_openai"),
        NATIVE_PATH: (chat_native_body, "chat_native"),
        "/v1/condition": (condition_body, "condition"),
    }
    INTERNAL = orjson.dumps(INTERNAL_ERROR_BODY)

    def __init__(self, app: FastAPI, inner: Callable[..., Any]) -> None:
        self.app, self.inner = app, inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        http_post = scope["type"] == "http" and scope["method"] == "POST"
        route = self.ROUTES.get(scope["path"]) if http_post else None
        if route is None:
            await self.inner(scope, receive, send)
            return
        start = time.perf_counter()
        scope["app"] = self.app  # what Starlette sets: Request.app reads it
        handler, name = route
        try:
            response = await handler(_Request(scope, receive))
        except AttuneError as exc:
            response = _error_reply(exc, native=name == "chat_native")
        except Exception as exc:  # noqa: BLE001 - rendered as app.py's 500 handler renders it
            logging.getLogger("attune.api").exception("unexpected error: %s", type(exc).__name__)
            response = Reply(self.INTERNAL, 500)
        await response(scope, receive, send)
        request_histogram(name, "POST", response.status_code).observe(time.perf_counter() - start)


async def _chat(request: Request, route: str) -> Response:
    call = await _prepare(request)
    runtime: Runtime = request.app.state.gateway
    stats: StatsBuffer = request.app.state.stats
    stats.add(call.app, "upstream:requests")
    path = NATIVE_PATH if route == "native" else OPENAI_PATH
    start = time.perf_counter()
    watch = Watch(request.receive)
    try:
        if call.prep.stream:
            stream = await runtime.upstream.stream(path, call.body)
        else:
            raw, parsed = await runtime.upstream.complete(path, call.body)
    except asyncio.CancelledError:
        if not watch.gone():
            raise
        # The app hung up before the reply came: nothing was shown, so nothing is recorded; the status
        # (nginx's "client closed request") is for the latency histogram only, no one reads the answer.
        return Reply(b"", CLIENT_GONE, call.headers)
    except UpstreamError as exc:
        watch.close()
        _observe(stats, call.app, route, time.perf_counter() - start, exc)
        body = exc.openai_body() if route == "openai" else exc.native_body()
        headers = call.headers
        if exc.retry_after:
            headers = [*headers, (b"retry-after", str(max(1, round(exc.retry_after))).encode())]
        return Reply(orjson.dumps(body), exc.status, headers)
    except BaseException:
        watch.close()  # armed past the answer, its wake-up at the response's end would cancel this task
        raise
    if not call.prep.stream:
        watch.close()
        seconds = time.perf_counter() - start

        def after() -> None:
            # Once the answer is on its way (Reply.after), off the latency the app sees: ~0.1 ms at 100/s,
            # where each step runs with cold caches. It runs right after the write (no wait between them
            # unless the app reads slowly), so a regeneration sent the moment the answer arrives still
            # finds what was asked for (Recorder.record_for).
            _observe(stats, call.app, route, seconds, None)
            capture = gw.Capture()
            capture.take_full(parsed)
            # Only queued here: the Recorder measures the reply and writes it after the answer went out.
            runtime.recorder.shown(
                call.app, call.who, call.reply_id, capture, call.decision, regen=call.regen
            )

        return Reply(raw, headers=call.headers, after=after)
    _observe(stats, call.app, route, stream.first_byte_s, None)
    capture = gw.Capture()

    def finished(disconnected: bool) -> None:
        if capture.error is not None:
            _count_error(stats, call.app, capture.error)
        if capture.text() or not capture.error:
            finish = "client_disconnected" if disconnected else None
            runtime.recorder.shown(call.app, call.who, call.reply_id, capture, call.decision, finish,
                                   call.regen)

    return SSEResponse(stream, gw.Relay(capture, route), [*call.headers, *SSE_HEADERS], finished, watch)


CLIENT_GONE = 499


class Watch:
    """Cancels the calling task when the client disconnects, from the moment the chat goes upstream
    until close(): a client that hangs up stops its upstream request, streamed or not, also before the
    first byte. One task awaits `receive` (after the body was read it returns only http.disconnect);
    a done callback, not a coroutine looping on it, so the watcher costs one task step per chat.

    That task is made two loop turns from now, not here: for a chat, once its request to M2-her was
    written (aiohttp writes the body from a task of its own, started in the next turn on Python 3.11),
    so making it is off the latency (~50 us at 100/s, where caches are cold). A disconnect before then
    is not missed: `receive` returns it at once when the watcher starts."""

    __slots__ = ("task", "base", "watcher", "disconnected", "armed", "receive")

    def __init__(self, receive: Callable[[], Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.base = task, task.cancelling()
        self.disconnected, self.armed, self.receive = False, True, receive
        self.watcher: asyncio.Future[Any] | None = None
        loop = task.get_loop()
        loop.call_soon(loop.call_soon, self._start)

    def _start(self) -> None:
        if self.armed:
            self.watcher = asyncio.ensure_future(self.receive())
            self.watcher.add_done_callback(self._done)

    def _done(self, watcher: asyncio.Future[Any]) -> None:
        if not self.armed or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect":
            self.disconnected = True
            self.task.cancel()
        # Anything else (a server or middleware that replays the body) ends the watch: asking again
        # could spin on a receive that never waits.

    def gone(self) -> bool:
        """For a CancelledError caught in the watched task: True (and the cancel undone) if it came from
        a disconnect, False if someone else cancelled, also on top of the disconnect's (re-raise it then:
        a server shutting down must not see its cancel swallowed), as asyncio.timeout decides."""
        self.close()
        return self.disconnected and self.task.uncancel() <= self.base

    def close(self) -> None:
        """The answer is about to end (or went out): a disconnect from here on changes nothing."""
        if self.armed:
            self.armed = False
            if self.watcher is not None:
                self.watcher.cancel()


SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


def _observe(stats: StatsBuffer, app: str, route: str, seconds: float, err: UpstreamError | None) -> None:
    _upstream_histogram(route, "error" if err else "ok").observe(seconds)
    stats.add(app, f"upstream:lat:{gw.latency_bucket(seconds * 1000)}")
    if err is not None:
        _count_error(stats, app, err)


@functools.lru_cache(maxsize=64)
def _upstream_histogram(route: str, outcome: str) -> Any:
    """The labelled histogram, looked up once (labels() takes a lock and checks its arguments per call)."""
    return UPSTREAM.labels(route, outcome)


def _count_error(stats: StatsBuffer, app: str, err: UpstreamError) -> None:
    UPSTREAM_ERRORS.labels(str(err.minimax_code)).inc()
    stats.add(app, f"upstream:error:{err.minimax_code}")


class SSEResponse(Response):
    """Passes the stream through as it arrives; a client that disconnects cancels the upstream request
    at once (the Watch armed when the chat went upstream), even while M2-her is silent. The batches of
    the upstream stream go through the relay in this loop (no generator between them: one fewer async
    layer per chunk)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        stream: Stream,
        relay: gw.Relay,
        headers: list[tuple[bytes, bytes]],
        on_end: Callable[[bool], None],
        watch: Watch | None = None,
    ) -> None:
        self.stream, self.relay, self.on_end, self.watch = stream, relay, on_end, watch
        self.status_code = 200
        self.background = None
        self.raw_headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watch = self.watch or Watch(receive)
        stream, relay = self.stream, self.relay
        batches = stream.batches()
        disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            last = b""  # what ends the stream goes out with its end: one write fewer
            try:
                async for batch in batches:
                    block, end = relay.feed(batch, stream.raw)
                    if end:
                        last = block
                        break
                    await send({"type": "http.response.body", "body": block, "more_body": True})
                else:
                    last = relay.end()
            except UpstreamError as exc:
                last = relay.fail(exc)
            watch.close()
            await send({"type": "http.response.body", "body": last, "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone():
                raise
            disconnected = True
        except OSError:  # the client went away while we wrote
            disconnected = True
        finally:
            watch.close()
            with contextlib.suppress(Exception):
                await batches.aclose()  # type: ignore[attr-defined]
            await stream.aclose()
            self.on_end(disconnected or watch.disconnected)
