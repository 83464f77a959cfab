"""The conditioning gateway's logic: who the user is, the M2-her body cleaned and conditioned, the reply
captured on its way through, and the reply_shown Attune records for it (never the text).

Routes live in service/routes/gateway.py; the M2-her client in service/upstream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import os
import random
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import hiredis
import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection

from models.conditioning import Decision, decide, max_tokens_for
from models.events import _ID, ID_RULE
from models.features import CHARS_PER_TOKEN, chars_per_token, reply_features
from service import keys
from service.errors import BadRequest
from service.metrics import ATTRIBUTION_LOST, FAIL_OPEN
from service.profiles import read_profile
from service.store import Script, Store, check_hello, hello_commands, reply_error
from service.upstream import UpstreamError, base_resp_error

log = logging.getLogger("attune.gateway")

ROLES = ("system", "user_system", "group", "sample_message_user", "sample_message_ai", "user", "assistant")
FORWARDED = ("model", "messages", "stream", "max_completion_tokens", "temperature", "top_p")
MODEL = "M2-her"
NOTE_NAME = "reader_preferences"
PROFILE_TIMEOUT_S = 0.25  # a slow profile read must not hold a chat: fail open instead
LAT_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


@dataclass(slots=True)
class Prepared:
    body: dict[str, Any]  # what goes to M2-her (names are added by the client)
    stream: bool
    dropped: list[str]
    adjusted: list[str]


def identify(headers: Mapping[str, str], raw: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(user, character, session) from the X-Attune-* headers or the OpenAI body field `user`."""
    user = headers.get("x-attune-user") or raw.get("user")
    if not user:
        raise BadRequest(
            'name the user: send the header X-Attune-User or the body field "user"', code="user_required"
        )
    out = []
    for what, value in (
        ("user", user),
        ("X-Attune-Character", headers.get("x-attune-character")),
        ("X-Attune-Session", headers.get("x-attune-session")),
    ):
        if value is not None and (not isinstance(value, str) or not _ID.fullmatch(value)):
            raise BadRequest(
                f"{what} {str(value)[:60]!r} must be {ID_RULE}", code="invalid_id"
            )
        out.append(value)
    return out[0], out[1], out[2]


def _content(i: int, m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise BadRequest(f"messages[{i}] must be an object with role and content", code="invalid_message")
    role = m.get("role")
    if role not in ROLES:
        raise BadRequest(
            f"messages[{i}].role {str(role)[:40]!r} is not an M2-her role; use one of {', '.join(ROLES)}",
            code="invalid_message",
        )
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: M2-her takes text only
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise BadRequest(
                    f"messages[{i}].content: M2-her takes text only; send a string or text parts",
                    code="invalid_message",
                )
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string", code="invalid_message")
    out = {"role": role, "content": content}
    name = m.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise BadRequest(f"messages[{i}].name must be a string", code="invalid_message")
        if name:
            out["name"] = name
    return out


def _unit(body: dict[str, Any], field_: str, adjusted: list[str]) -> None:
    """temperature and top_p live in (0, 1] on M2-her: above is clamped to 1, zero or below to 0.01."""
    v = body.get(field_)
    if v is None:
        body.pop(field_, None)
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadRequest(f"{field_} must be a number in (0, 1], got {v!r}", code="invalid_parameter")
    clamped = min(1.0, max(0.01, float(v)))
    if clamped != v:
        adjusted.append(f"{field_}={clamped:g}")
    body[field_] = clamped


def prepare(raw: Any) -> Prepared:
    """The body M2-her takes: known fields only, roles checked, ranges clamped, max_tokens renamed."""
    if not isinstance(raw, dict):
        raise BadRequest(
            'the body must be a JSON object like M2-her\'s: {"model", "messages", ...}', code="invalid_body"
        )
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content, name?}", code="invalid_body")
    adjusted: list[str] = []
    body: dict[str, Any] = {
        "model": raw.get("model") or MODEL,
        "messages": [_content(i, m) for i, m in enumerate(messages)],
    }
    if body["model"] != MODEL:
        raise BadRequest(
            f"model {str(body['model'])[:40]!r} is not served here; use {MODEL!r}", code="invalid_model"
        )
    stream = raw.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", code="invalid_parameter")
    body["stream"] = stream
    mt = raw.get("max_completion_tokens", raw.get("max_tokens"))
    if mt is not None:
        if isinstance(mt, bool) or not isinstance(mt, int | float) or not math.isfinite(mt) or int(mt) != mt:
            raise BadRequest(
                f"max_completion_tokens must be a whole number from 1 to 2048, got {mt!r}",
                code="invalid_parameter",
            )
        clamped = min(2048, max(1, int(mt)))
        if clamped != mt:
            adjusted.append(f"max_completion_tokens={clamped}")
        body["max_completion_tokens"] = clamped
    for name in ("temperature", "top_p"):
        body[name] = raw.get(name)
        _unit(body, name, adjusted)
    # `user` names the user to Attune; max_tokens was renamed; the rest M2-her does not take.
    dropped = sorted(k for k in raw if k not in FORWARDED and k not in ("user", "max_tokens"))
    return Prepared(body, stream, dropped, adjusted)


def condition(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The note goes in its own system message just before the last user turn, and the character's
    system message stays as it is: the conversation before it stays byte-identical from turn to turn
    (prompt caches keep working while the sampled note changes), and the note sits where a model
    heeds it. max_completion_tokens never exceeds what the app asked for."""
    messages = list(body["messages"])
    note = {"role": "system", "name": NOTE_NAME, "content": decision.note}
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages))
    messages.insert(last_user, note)
    out = {**body, "messages": messages}
    if decision.target_chars:  # the budget at the conversation's rate (decide() assumed English's)
        budget = max_tokens_for(decision.target_chars, _reply_chars_per_token(body["messages"]))
        asked = body.get("max_completion_tokens")
        out["max_completion_tokens"] = min(asked, budget) if asked else budget
    return out


def _reply_chars_per_token(messages: list[dict[str, Any]]) -> float:
    """Characters per token of the reply to come, judged by the conversation, not the character card: the
    lower of the last user message's and the last assistant message's (a reader who writes Chinese after an
    English greeting gets a Chinese answer; a budget too loose costs nothing, one too tight cuts the reply)."""
    per_token = CHARS_PER_TOKEN
    for role in ("user", "assistant"):
        last = next((m["content"] for m in reversed(messages) if m["role"] == role and m["content"]), "")
        if last and not last.isascii():
            per_token = min(per_token, chars_per_token(last[-400:]))
    return per_token


async def load_decision(
    store: Store, app: str, user: str, character: str | None, rng: random.Random, regen: str | None = None,
    recorder: Recorder | None = None,
) -> tuple[Decision | None, bool]:
    """(decision, ok): ok False when the profile could not be read; the chat then goes out unconditioned.
    regen: the key of the conversation's regeneration record (regen_for), read with the profile; recorder:
    the process's Recorder, whose record of it may be newer than Redis's (Recorder.record_for)."""
    try:
        async with asyncio.timeout(PROFILE_TIMEOUT_S):  # no extra task, unlike wait_for
            profile = await read_profile(store, app, user, character)
            record = await store.redis.get(regen) if regen else None
            if regen and recorder is not None:
                record = recorder.record_for(regen, record)
        return decide(profile, rng, rejected_of(record)), True
    except Exception as exc:  # noqa: BLE001 - fail open on anything: the chat matters more than the note
        fail_open(app, "profile_error", f"{type(exc).__name__}: {exc}")
        return None, False


def profile_keys(app: str, user: str, character: str | None, regen: str | None = None) -> list[str]:
    """The profile documents to read, most specific first (as service/profiles.read_profile reads them),
    then the conversation's regeneration record when `regen` is given (read in the same call)."""
    out = [keys.profile(app, user, character)] if character else []
    out.append(keys.profile(app, user))
    if regen:
        out.append(regen)
    return out


_FAIL_OPEN_LOGGED: dict[str, list[float]] = {}  # reason -> [when last logged, chats since]
FAIL_OPEN_LOG_EVERY_S = 10.0


def fail_open(app: str, reason: str, detail: str) -> None:
    """Count a chat that goes out unconditioned (attune_gateway_fail_open_total{reason}) and log it, at most
    once per FAIL_OPEN_LOG_EVERY_S per reason with how many went the same way since: an outage at a
    thousand chats a second must not become a thousand log lines a second."""
    FAIL_OPEN.labels(reason).inc()
    seen = _FAIL_OPEN_LOGGED.setdefault(reason, [0.0, 0])
    seen[1] += 1
    now = time.monotonic()
    if now - seen[0] >= FAIL_OPEN_LOG_EVERY_S:
        log.warning("conditioning skipped (fail open), %d chat(s) since the last such line; this one of app %s:"
                    " %s", seen[1], app, detail)
        seen[0], seen[1] = now, 0


def decide_from(
    docs: list[bytes | None] | None, app: str, rng: random.Random, regen: bool = False
) -> tuple[Decision | None, bool]:
    """load_decision for documents already read (Store.condition_checked): None means they could not be;
    regen: the last of them is the regeneration record (profile_keys)."""
    if docs is None:
        fail_open(app, "profile_unreadable", "the profile could not be read")
        return None, False
    try:
        record = docs[-1] if regen else None
        raw = next((d for d in (docs[:-1] if regen else docs) if d), None)
        return decide(orjson.loads(raw) if raw is not None else None, rng, rejected_of(record)), True
    except Exception as exc:  # noqa: BLE001 - fail open on anything: the chat matters more than the note
        fail_open(app, "profile_error", f"{type(exc).__name__}: {exc}")
        return None, False


# --- regenerations: the same conversation sent again -------------------------------------------------
# An app's "repeat" button sends the conversation again, unchanged. The gateway remembers, for a few
# minutes, which pacing it asked for and measured in the replies it served for each state of a user's
# conversation (keyed by a digest of the messages as M2-her gets them, before the note): the same
# messages again mean those replies were not kept, and the next one is conditioned away from them
# (models/conditioning.py after_rejections) without waiting for the app's repeat event to be learnt from.
REGEN_TTL_MS = 300_000
MAX_REJECTED = 4  # replies remembered per state: a fifth regeneration in a row is rare
# Every record of a flush in one call: KEYS record, tombstone, record, tombstone, ...; ARGV[1] the ttl (ms),
# then per record its value and when its reply was asked for (ms). A user deleted after that keeps nothing
# (the deletion may have run while the reply streamed). Like the ingest script, it needs one Redis node.
REGEN_SET = Script("""
local n = 0
for i = 1, #KEYS, 2 do
  local j = i + 1
  local d = redis.call('GET', KEYS[j])
  if not (d and tonumber(d) >= tonumber(ARGV[j + 1])) then
    redis.call('SET', KEYS[i], ARGV[j], 'PX', ARGV[1])
    n = n + 1
  end
end
return n
""")


@dataclass(frozen=True, slots=True)
class Regen:
    """Where a reply's regeneration record goes: its key, the user's tombstone, when it was asked for (ms)."""

    key: str
    tombstone: str
    asked_ms: int


def regen_for(app: str, user: str, body: dict[str, Any]) -> Regen:
    """The regeneration record of this state of the user's conversation (its messages, before the note)."""
    digest = hashlib.blake2b(orjson.dumps(body["messages"]), digest_size=12).hexdigest()
    return Regen(keys.regen(app, user, digest), keys.deleted(app, user), int(time.time() * 1000))


def rejected_of(record: bytes | None) -> tuple[tuple[str | None, str | None], ...]:
    """The replies a regeneration record lists ([[pacing asked, pacing measured], ...]); () if none/junk."""
    if not record:
        return ()
    return _rejected_of(record)


@functools.lru_cache(maxsize=4096)
def _rejected_of(record: bytes) -> tuple[tuple[str | None, str | None], ...]:
    """rejected_of for a record, remembered: records are few short byte strings (a handful of pacing
    pairs), read on every regeneration and again when the process holds a newer one (record_for)."""
    try:
        rows = orjson.loads(record)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(rows, list):
        return ()
    out = []
    for row in rows[-MAX_REJECTED:]:
        if isinstance(row, list) and len(row) == 2:
            out.append(tuple(x if isinstance(x, str) else None for x in row))
    return tuple(out)  # type: ignore[return-value]


def _rows(decision: Decision, measured: str | None) -> bytes:
    """A conversation state's regeneration record once this decision's reply was served."""
    rows = [list(r) for r in decision.rejected[-(MAX_REJECTED - 1):]] + [[decision.pacing, measured]]
    return orjson.dumps(rows)


def new_reply_id() -> str:
    """'r' and 32 random hex digits, as uuid4().hex gave, without building a UUID (a quarter of the cost)."""
    return "r" + os.urandom(16).hex()


def latency_bucket(ms: float) -> str:
    for b in LAT_BUCKETS_MS:
        if ms <= b:
            return str(b)
    return "inf"


# --- capture: the reply measured on its way through ------------------------------------------------
@dataclass(slots=True)
class Capture:
    parts: list[str] = field(default_factory=list)
    aggregate: str | None = None  # the native route's whole-reply chunk: a fallback, never appended
    finish_reason: str | None = None
    error: UpstreamError | None = None
    saw_done: bool = False

    def text(self) -> str:
        return "".join(self.parts) if self.parts else (self.aggregate or "")

    def take(self, payload: bytes) -> Any:
        """Note what one SSE data payload carries; returns the parsed chunk (None for [DONE])."""
        if payload == b"[DONE]":
            self.saw_done = True
            return None
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        err = base_resp_error(chunk)
        if err is not None:
            self.error = err
            return chunk
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                piece = delta.get("content")
                if isinstance(piece, str) and piece:
                    self.parts.append(piece)
            else:
                message = choice.get("message")
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    self.aggregate = message["content"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return chunk

    def take_full(self, parsed: dict[str, Any]) -> None:
        choices = parsed.get("choices") or []
        if choices and isinstance(choices[0], dict):
            message = choices[0].get("message") or {}
            if isinstance(message.get("content"), str):
                self.aggregate = message["content"]
            self.finish_reason = choices[0].get("finish_reason")


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class Relay:
    """SSE bytes for the app, one block per batch of upstream events, as they arrive; an error chunk ends
    the stream in the route's error shape. A batch the stream received as canonical SSE (its `raw`) is
    passed on as the same bytes. A plain object driven by the response loop: an async generator here
    would add a layer of suspension per chunk."""

    __slots__ = ("capture", "route")

    def __init__(self, capture: Capture, route: str) -> None:
        self.capture, self.route = capture, route

    def feed(self, batch: list[bytes], raw: bytes | None) -> tuple[bytes, bool]:
        """(bytes to send, whether the stream ends here: an error chunk came)."""
        capture = self.capture
        take = capture.take
        for i, payload in enumerate(batch):
            take(payload)
            if capture.error is not None:
                head = b"".join(sse(p) for p in batch[:i])
                return head + sse(orjson.dumps(error_chunk(capture.error, self.route))), True
        return (raw if raw is not None else b"".join([sse(p) for p in batch])), False

    def fail(self, exc: UpstreamError) -> bytes:
        """The stream broke off or went silent: the error chunk that ends it."""
        self.capture.error = exc
        return sse(orjson.dumps(error_chunk(exc, self.route)))

    def end(self) -> bytes:
        """What follows the last upstream event."""
        if self.route == "openai" and not self.capture.saw_done:
            return b"data: [DONE]\n\n"  # OpenAI clients may wait for it; M2-her sends it only sometimes
        return b""


def error_chunk(err: UpstreamError, route: str) -> dict[str, Any]:
    return err.openai_body() if route == "openai" else err.native_body()


# --- attribution: reply_shown recorded by Attune itself ----------------------------------------------
def reply_shown(
    app_user: tuple[str, str | None, str | None],
    reply_id: str,
    capture: Capture,
    decision: Decision | None,
    finish_override: str | None = None,
    now: int | None = None,
) -> dict[str, Any]:
    """The event; `now` (ms) is when the reply ended, if it was measured later."""
    user, character, session = app_user
    text = capture.text()
    now = now if now is not None else int(time.time() * 1000)
    reply: dict[str, Any] = {"chars": len(text), **reply_features(text)}
    finish = finish_override or capture.finish_reason or ("error" if capture.error else None)
    if finish:
        reply["finish_reason"] = finish
    event: dict[str, Any] = {
        "type": "reply_shown",
        "event_id": f"gw-{reply_id}",
        "user_id": user,
        "reply_id": reply_id,
        "t": now,
        "rt": now,
        "reply": reply,
        "conditioning": decision.applied() if decision else None,
    }
    if session:
        event["session_id"] = session
    if character:
        event["character_id"] = character
    return event


@dataclass(slots=True)
class _Ended:
    """What the Recorder keeps of a reply that ended: the joined text and how it ended (a Capture's shape)."""

    joined: str
    finish_reason: str | None
    error: Any

    def text(self) -> str:
        return self.joined


class Recorder:
    """Appends gateway reply_shown events off the response path: a reply is only queued while the
    answer goes out, measured (reply_features) and written later, batched (LINGER gathers the replies
    of a quiet moment into one Redis call), retried; losses are logged and counted
    (attune_attribution_lost_total), never silent."""

    RETRIES = 5
    MAX_QUEUE = 100_000
    LINGER = 0.05  # seconds a first queued reply waits for others before the write
    BUILD_SLICE = 200  # replies measured between two turns of the event loop
    DRAIN_SECONDS = 10.0  # at shutdown, how long the queued replies may take to be written
    REGEN_CHUNK = 500  # regeneration records per script call
    MAX_PENDING = 50_000  # records held in memory until written (see pending)

    def __init__(self, store: Store, pacing_from_text: bool = True) -> None:
        self.store = store
        self.pacing_from_text = pacing_from_text  # else a regeneration weighs only the pacing asked for
        # (app, event) or (app, the reply_shown arguments, to measure at the flush)
        self.queue: list[tuple[str, Any]] = []
        self.regens: list[tuple[Regen, bytes]] = []  # records to write at the next flush
        # The newest record of each conversation state until its write was tried: a regeneration sent a few
        # milliseconds after the reply it replaces ends (a "stop and regenerate", a client's retry) comes
        # before the flush has written the record, and would otherwise be conditioned as a new reply.
        self.pending: dict[str, bytes] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.recorded = 0
        self.lost = 0
        self.stopping = False

    def record(self, app: str, event: dict[str, Any]) -> None:
        self._queue(app, event)

    def shown(
        self,
        app: str,
        who: tuple[str, str | None, str | None],
        reply_id: str,
        capture: Capture,
        decision: Decision | None,
        finish_override: str | None = None,
        regen: Regen | None = None,
    ) -> None:
        """Queue the reply_shown of a reply that just ended; it is built at the flush. Only the joined text
        and the finish are kept (the capture holds one string per token: several times the memory).
        regen: the conversation's regeneration record, which the reply joins."""
        ended = _Ended(capture.text(), capture.finish_reason, capture.error)
        self._queue(app, (who, reply_id, ended, decision, finish_override, int(time.time() * 1000), regen))
        if regen is not None and decision is not None:
            # What was asked for is known now; the measured pacing replaces it at the flush.
            self._remember(regen, _rows(decision, None))

    def served(self, decision: Decision, regen: Regen, measured: str | None = None) -> None:
        """Add a reply to its conversation's regeneration record (written at the next flush, off the request
        path): /v1/condition's, whose text Attune never sees, and the chat routes' through shown()."""
        record = _rows(decision, measured)
        self.regens.append((regen, record))
        self._remember(regen, record)
        self.wake.set()

    def _remember(self, regen: Regen, record: bytes) -> None:
        if len(self.pending) >= self.MAX_PENDING and regen.key not in self.pending:
            return  # writes are failing or far behind: Redis alone decides until they catch up
        self.pending[regen.key] = record

    def record_for(self, key: str, stored: bytes | None) -> bytes | None:
        """The regeneration record of a conversation state: the one read from Redis, or this process's own
        newer one whose write is still to come (it lists more replies)."""
        mine = self.pending.get(key)
        if mine is None or (stored is not None and len(rejected_of(stored)) >= len(rejected_of(mine))):
            return stored
        return mine

    def _queue(self, app: str, item: Any) -> None:
        if len(self.queue) >= self.MAX_QUEUE:
            self._lose(1, "the attribution queue is full (Redis too slow or down)")
            return
        self.queue.append((app, item))
        self.wake.set()

    def _lose(self, n: int, why: str) -> None:
        self.lost += n
        ATTRIBUTION_LOST.inc(n)
        log.error("lost %d gateway reply_shown event(s): %s", n, why)

    async def _flush(self) -> None:
        batch, self.queue = self.queue, []
        by_app: dict[str, list[dict[str, Any]]] = defaultdict(list)
        try:
            for i, (app, item) in enumerate(batch):
                if i and i % self.BUILD_SLICE == 0:
                    await asyncio.sleep(0)  # a backlog after an outage is measured without stalling the streams
                try:
                    event = item if isinstance(item, dict) else reply_shown(*item[:5], now=item[5])
                    by_app[app].append(event)
                    if not isinstance(item, dict) and item[6] is not None and item[3] is not None:
                        measured = event["reply"].get("pacing") if self.pacing_from_text else None
                        self.served(item[3], item[6], measured)
                except Exception as exc:  # noqa: BLE001 - one bad item must not stop the recording
                    self._lose(1, f"building it failed: {type(exc).__name__}: {exc}")
                    regen = item[6] if isinstance(item, tuple) and len(item) > 6 else None
                    if isinstance(regen, Regen):
                        self.pending.pop(regen.key, None)
        except asyncio.CancelledError:
            self.queue[:0] = batch  # nothing of it was written: all of it goes back
            raise
        await self._write_regens()
        apps = list(by_app)
        try:
            for app in apps:
                events = by_app[app]
                for attempt in range(self.RETRIES):
                    try:
                        await self.store.ingest(app, events)  # dedup by event id: a retry never counts twice
                        self.recorded += len(events)
                        break
                    except Exception as exc:  # noqa: BLE001 - retried, then counted as lost
                        if attempt == self.RETRIES - 1:
                            self._lose(len(events), f"{type(exc).__name__}: {exc}")
                        else:
                            await asyncio.sleep(0.1 * 2**attempt)
                del by_app[app]
        except asyncio.CancelledError:
            # Stopped mid-write (shutdown): what was not written goes back for the final flush.
            self.queue[:0] = [(app, ev) for app, events in by_app.items() for ev in events]
            raise

    async def _write_regens(self) -> None:
        """Best effort: a record lost to an outage only means a regeneration is conditioned as a new reply."""
        regens, self.regens = self.regens, []
        if not regens:
            return
        try:
            await self._set_regens(regens)
        finally:
            for r, record in regens:  # written or lost: either way Redis answers for it from now on
                if self.pending.get(r.key) == record:
                    del self.pending[r.key]

    async def _set_regens(self, regens: list[tuple[Regen, bytes]]) -> None:
        try:
            for i in range(0, len(regens), self.REGEN_CHUNK):  # a backlog after an outage: no long script
                chunk = regens[i:i + self.REGEN_CHUNK]
                await REGEN_SET(self.store.redis, [k for r, _ in chunk for k in (r.key, r.tombstone)],
                                [REGEN_TTL_MS, *[x for r, record in chunk for x in (record, r.asked_ms)]])
        except Exception as exc:  # noqa: BLE001 - never worth failing the reply_shown writes for
            log.warning("%d regeneration record(s) not written: %s: %s", len(regens), type(exc).__name__, exc)

    async def _loop(self) -> None:
        while not (self.stopping and not self.queue and not self.regens):
            await self.wake.wait()
            if not self.stopping:
                await asyncio.sleep(self.LINGER)
            self.wake.clear()
            try:
                await self._flush()
            except Exception:  # noqa: BLE001 - the recorder must outlive any one bad flush
                log.exception("recording gateway replies failed; going on")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Recorder]:
        self.task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            # Shutdown: drain what is queued (bounded by the retries), then stop; cancel only if it hangs.
            self.stopping = True
            self.wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), self.DRAIN_SECONDS)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
            if self.queue:
                await self._flush()


# --- the one Redis call per chat, over a bare RESP connection ------------------------------------------
class LeanRedis:
    """Just EVALSHA and EVAL, for Store.condition_checked (a Store made on this client): the gateway's
    one Redis round trip per chat (key check, rate, scope and profile read). redis-py's asyncio client
    takes ~0.56 ms per call here at low load against ~0.23 ms for this (its stream reader, pool checks
    and observability hooks), and 40 us more CPU. One connection per process: concurrent calls are
    pipelined on it and their replies come back in order. Errors are redis-py's (RedisError) or OSError
    (connection lost, timeout), so store._guard turns them into StoreUnavailable as before."""

    CONNECT_TIMEOUT = 2.0  # as store.connect's socket_connect_timeout (a lost SYN is resent after 1 s)
    # A chat's key check: a Redis silent this long is down for it (store.connect's redis-py waits 3 s); the
    # chat then fails open on its key's recent verdict (auth.RecentVerdicts) instead of waiting, and the
    # calls of the next FAIL_FAST seconds fail at once rather than wait out the same silence.
    TIMEOUT = 1.5
    MAX_IDLE = 30.0  # a connection idle longer is replaced (a NAT or firewall may have dropped it silently)
    FAIL_FAST = 1.0  # after a failed connect, calls within this many seconds fail at once (no queue of 2 s waits)

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self._proto: _Resp | None = None
        self._lock = asyncio.Lock()
        self._used = 0.0  # monotonic time of the last call
        self._failed: tuple[float, str] | None = None  # when the last connect failed, and why

    @classmethod
    def like(cls, client: Redis) -> LeanRedis | None:
        """A lean client for the server redis-py's client talks to; None for TLS (kept on redis-py)."""
        pool = client.connection_pool
        if issubclass(pool.connection_class, SSLConnection):
            return None
        kw = pool.connection_kwargs
        return cls(
            kw.get("host", "127.0.0.1"),
            int(kw.get("port", 6379)),
            kw.get("path"),
            int(kw.get("db", 0) or 0),
            kw.get("username"),
            kw.get("password"),
        )

    async def evalsha(self, *args: Any) -> Any:
        return await self._call((b"EVALSHA", *args))

    async def eval(self, *args: Any) -> Any:
        return await self._call((b"EVAL", *args))

    async def aclose(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None

    async def _call(self, args: tuple[Any, ...]) -> Any:
        packed = hiredis.pack_command(args)
        for attempt in (1, 2):
            proto = self._proto
            now = time.monotonic()
            if proto is not None and not proto.closed and now - self._used > self.MAX_IDLE:
                proto.close()
            self._used = now
            fresh = proto is None or proto.closed
            if fresh:
                proto = await self._connect()
            try:
                future = proto.call(packed)  # type: ignore[union-attr]
                # A timer on the reply's future: an asyncio.timeout context per call costs more.
                timer = asyncio.get_running_loop().call_later(self.TIMEOUT, _expire, future)
                try:
                    reply = await future
                finally:
                    timer.cancel()
                break
            except TimeoutError as exc:
                # A stalled connection is never trusted again: the calls queued on it fail now, and the
                # next call connects afresh instead of waiting out the same dead socket, after FAIL_FAST:
                # a hung server still takes connects (a unix socket at once), and each would wait again.
                proto.close()  # type: ignore[union-attr]
                self._failed = (time.monotonic(), f"no reply in {self.TIMEOUT} s ({exc})")
                raise
            except ConnectionError:
                # A connection that broke while idle (a Redis restart) is retried once on a new one, as
                # redis-py retries; a new one that breaks is an outage.
                if fresh or attempt == 2:
                    raise
        error = reply_error(reply)
        if error is not None:
            try:
                raise error
            finally:
                del error  # no cycle through this frame: collections are rare in a served process
        return reply

    async def _connect(self) -> _Resp:
        async with self._lock:
            if self._proto is not None and not self._proto.closed:
                return self._proto
            if self._failed is not None and time.monotonic() - self._failed[0] < self.FAIL_FAST:
                raise ConnectionError(f"Redis unreachable a moment ago: {self._failed[1]}")
            try:
                proto = await self._open()
            except (OSError, TimeoutError) as exc:
                self._failed = (time.monotonic(), f"{type(exc).__name__}: {exc}")
                raise
            self._failed = None
            self._proto = proto
            return proto

    async def _open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        proto: _Resp | None = None
        try:
            async with asyncio.timeout(self.CONNECT_TIMEOUT):
                if self.path:
                    _, proto = await loop.create_unix_connection(_Resp, self.path)
                else:
                    _, proto = await loop.create_connection(_Resp, self.host, self.port)
                    sock = proto.transport.get_extra_info("socket") if proto.transport else None
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                calls = [proto.call(hiredis.pack_command(c))
                         for c in hello_commands(self.username, self.password, self.db)]
                check_hello([await f for f in calls])
        except BaseException:
            if proto is not None:
                proto.close()  # never leak the socket of a half-made connection
            raise
        return proto


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis sent no reply in time"))


class _Resp(asyncio.Protocol):
    """RESP replies parsed by hiredis, handed to the waiting calls in order.

    The commands of one turn of the event loop go out in one write at its end: under load the chats
    that arrived together reach their Redis call in the same turn, and a send on loopback costs more
    than the rest of the call (Redis then also reads them at once and answers in one write). A lone
    call waits for nothing: the write is the next thing the loop does."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pending: list[bytes] = []  # commands to write at the end of this turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise ConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiters.append(future)
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append(packed)
        return future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.transport is not None and not self.closed and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        # Else the connection is gone: connection_lost fails the waiters of these commands too.

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                waiter = self.waiters.popleft()
                if not waiter.done():  # a call that timed out still has its reply come, in its turn
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            log.error("closing the gateway's Redis connection: %s", exc)
            if self.transport is not None:
                self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"Redis closed the connection ({exc})"))
