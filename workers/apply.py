"""Apply a batch of stream entries to per-user state: load, run the pure models, commit atomically per user.

Exactly once: each user's state remembers the last stream entry id applied (a partition is read in
order by one worker at a time, see consumer.py), and the commit is a compare-and-set on the state's
version inside one Lua script over the user's hash-tagged keys. A redelivered entry is at or below the
watermark and changes nothing; a commit that lost a race (a delete, a stale worker) is reloaded and redone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from models import profile as pm
from models.events import format_time
from models.population import Population, RepeatModelTrainer
from service import keys
from service.store import Script, StatsBuffer
from workers.errors import CommitConflict
from workers.resp import Pipe, raise_first

log = logging.getLogger("attune.worker")

# KEYS: state, profile, recent, tombstone, per-character profile keys written, then those deleted.
# ARGV: expected version, tombstone value seen at load ('' none), state, profile,
#       full (1: rewrite the recent list with the items; 0: push the items onto its head), n items,
#       n replaced (index, item) pairs, length to trim to (-1: none), items..., pairs..., char docs...,
#       last the number of per-character profile keys to delete (the last KEYS).
# A version prefix on the state ("17|{...}") lets the script compare without decoding JSON. The recent
# list changes incrementally when the worker knows what it holds (its cache of the user, valid while the
# version matches): a new reply is pushed, an amended one replaced in place, instead of 50 rewrites.
COMMIT_LUA = """
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+)|')) end
if v ~= tonumber(ARGV[1]) then return -1 end
local del = redis.call('GET', KEYS[4]) or ''
if del ~= ARGV[2] then return -2 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[4])
local full, n, m, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local i = 9
if full == 1 then
  redis.call('DEL', KEYS[3])
  if n > 0 then redis.call('RPUSH', KEYS[3], unpack(ARGV, i, i + n - 1)) end
elseif n > 0 then
  redis.call('LPUSH', KEYS[3], unpack(ARGV, i, i + n - 1))
end
i = i + n
for _ = 1, m do
  redis.call('LSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if keep >= 0 then redis.call('LTRIM', KEYS[3], 0, keep - 1) end
local gone = tonumber(ARGV[#ARGV])
for k = 5, #KEYS - gone do
  redis.call('SET', KEYS[k], ARGV[i])
  i = i + 1
end
for k = #KEYS - gone + 1, #KEYS do redis.call('DEL', KEYS[k]) end
return 1
"""
COMMIT = Script(COMMIT_LUA)
YIELD_SECONDS = 0.05
# Users per chunk of a round (their estimates batched, their commits sent together): big enough to batch
# well, small enough that Redis runs a chunk's commits while the next is computed.
ESTIMATE_CHUNK = 256
SEND_USERS = 32  # commits written at a time as a chunk is completed, so Redis starts on them at once


@dataclass
class Entry:
    partition: int
    id: str
    event: dict[str, Any] | None
    problem: str | None = None


@dataclass
class UserWork:
    app: str
    user_id: str
    partition: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (stream id, event), stream order
    poison: dict[str, str] = field(default_factory=dict)  # stream id -> why applying it failed
    # The events all come from one read of one partition: their stream ids increase (see Applier._advance).
    one_read: bool = False


def parse(partition: int, entry_id: Any, fields: Any) -> Entry:
    """A stream entry as an event, or with the reason it cannot be one (it goes to dead letters)."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if not fields:
        return Entry(partition, eid, None, "entry has no fields (trimmed or empty)")
    if type(fields) is list:  # a raw reply (workers/resp.py): field, value, field, value, ...
        if len(fields) == 2 and fields[0] == b"e":  # what the API writes
            raw = fields[1]
        else:
            raw = next((fields[i + 1] for i in range(0, len(fields) - 1, 2) if fields[i] == b"e"), None)
    else:
        raw = fields.get(b"e") if b"e" in fields else fields.get("e")
    if raw is None:
        return Entry(partition, eid, None, "entry has no 'e' field")
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Entry(partition, eid, None, f"field 'e' is not JSON: {exc}")
    if not isinstance(ev, dict):
        return Entry(partition, eid, None, "field 'e' is not a JSON object")
    if not _well_formed(ev):  # the loop below names what is wrong
        get = ev.get
        for name, kind in (("app", str), ("user_id", str), ("type", str), ("t", int), ("rt", int)):
            if not isinstance(get(name), kind):
                return Entry(partition, eid, None, f"event lacks a valid {name!r}")
        return Entry(partition, eid, None, f"event of type {ev['type']!r} lacks reply_id")
    return Entry(partition, eid, ev)


_NO_REPLY_ID = frozenset(("session_start", "session_end", "user_message"))


def _well_formed(ev: dict[str, Any]) -> bool:
    """Whether a decoded event has what applying it needs: one expression, true for nearly every event."""
    get = ev.get
    return (isinstance(get("app"), str) and isinstance(get("user_id"), str) and isinstance(get("type"), str)
            and isinstance(get("t"), int) and isinstance(get("rt"), int)
            and (ev["type"] in _NO_REPLY_ID or isinstance(get("reply_id"), str)))


def parse_grouped(batch: Mapping[int, list[Any]], skip: Container[str] = ()
                  ) -> tuple[list[UserWork], list[Entry]]:
    """A whole read (partition -> raw entries, in order) parsed and grouped by user, each user's events in
    stream order, and the entries that cannot be applied (with parse()'s verdict); entries whose id is in
    skip are left out of both. No Entry per valid event: a read under a backlog holds tens of thousands."""
    by: dict[tuple[str, str], UserWork] = {}
    bad: list[Entry] = []
    loads, json_error = orjson.loads, orjson.JSONDecodeError
    for p, items in batch.items():
        for entry_id, fields in items:
            eid = entry_id.decode() if type(entry_id) is bytes else str(entry_id)
            if eid in skip:
                continue
            ev = None
            if type(fields) is list and len(fields) == 2 and fields[0] == b"e":  # what the API writes
                try:
                    ev = loads(fields[1])
                except json_error:
                    pass
            # _well_formed(ev), inline: once per event
            if type(ev) is not dict or not (
                    type(ev.get("app")) is str and type(ev.get("user_id")) is str
                    and type(kind := ev.get("type")) is str and type(ev.get("t")) is int
                    and type(ev.get("rt")) is int
                    and (kind in _NO_REPLY_ID or type(ev.get("reply_id")) is str)):
                # anything else (a subclass included) gets parse()'s verdict
                e = parse(p, entry_id, fields)
                if e.problem is not None:
                    bad.append(e)
                    continue
                ev = e.event
                assert ev is not None
            key = (ev["app"], ev["user_id"])
            w = by.get(key)
            if w is None:
                w = by[key] = UserWork(key[0], key[1], p, one_read=True)
            elif w.partition != p:
                w.one_read = False  # a user in two partitions (their number changed): ids may go back
            w.events.append((eid, ev))
    return list(by.values()), bad


def decode_state(raw: bytes | None) -> tuple[int, dict[str, Any]]:
    if not raw:
        return 0, pm.new_state()
    head, _, body = raw.partition(b"|")
    return int(head), orjson.loads(body)


@dataclass
class Cached:
    """What this worker last committed for a user: valid while the stored version is still `version`."""

    version: int
    tomb: bytes | None
    body: bytes  # the stored state value ("version|json"), to decode afresh when the object cannot be reused
    state: dict[str, Any] | None  # the decoded state, reused by the next update (None once it was mutated)
    recent_ids: list[str]  # the recent list as stored: reply ids and JSON items, newest first
    recent: list[bytes]
    partition: int


class Applier:
    """Per-process: population snapshots per app, the repeat-model trainer, the stats buffer, a user cache.

    The cache keeps the state of users this worker committed lately, so an update needs no read and no
    JSON decoding and the recent list can be changed incrementally. It is only a hint: the commit is a
    compare-and-set on the version (and the tombstone), so an entry another writer made stale (a delete,
    a worker that took the partition over) fails its commit and the user is reloaded from Redis.
    """

    CACHE_USERS = 4096
    CACHE_BYTES = 32 << 20  # encoded state bytes; the decoded objects take several times more

    def __init__(self, client: aioredis.Redis, stats: StatsBuffer, close_after_s: float,
                 pacing_from_text: bool = True) -> None:
        self.pacing_from_text = pacing_from_text
        self.redis = client
        self.stats = stats
        self.close_after_ms = int(close_after_s * 1000)
        self.populations: dict[str, Population] = {}
        self.trainers: dict[str, RepeatModelTrainer] = {}
        self.applied_total = 0
        self.cache: OrderedDict[tuple[str, str], Cached] = OrderedDict()
        self._cache_bytes = 0
        self._script_loaded = False
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout") or 10.0
        self.pipe = Pipe(client, float(timeout))
        self._tick = time.perf_counter()  # when the loop last yielded to other tasks (see _yield)

    def population(self, app: str) -> Population:
        pop = self.populations.get(app)
        if pop is None:
            pop = self.populations[app] = Population()
        return pop

    # --- cache --------------------------------------------------------------------------------------
    def _take(self, key: tuple[str, str]) -> Cached | None:
        hit = self.cache.pop(key, None)
        if hit is not None:
            self._cache_bytes -= len(hit.body)
        return hit

    def _keep(self, key: tuple[str, str], entry: Cached) -> None:
        self.cache[key] = entry
        self._cache_bytes += len(entry.body)
        while self.cache and (len(self.cache) > self.CACHE_USERS or self._cache_bytes > self.CACHE_BYTES):
            _, old = self.cache.popitem(last=False)
            self._cache_bytes -= len(old.body)

    def forget_partition(self, partition: int) -> None:
        """Drop cached users of a partition this worker no longer reads (another worker may write them)."""
        for key in [k for k, v in self.cache.items() if v.partition == partition]:
            self._take(key)

    # --- applying -----------------------------------------------------------------------------------
    async def apply(self, work: list[UserWork], sweep: bool = False,
                    prefetch: Callable[[], Awaitable[None]] | None = None) -> dict[str, str]:
        """Commit every user's events; returns {stream id: reason} of events that could not be applied (poison).

        A poison event is skipped (the watermark passes it) and the user's other events are applied.
        prefetch is awaited once the users' states are loaded, before they are computed: the worker sends
        its next read then, for Redis to run while this process computes.
        """
        pending = list(work)
        for _ in range(5):
            if not pending:
                break
            pending = await self._round(pending, sweep, prefetch)
            prefetch = None
        if pending:
            raise CommitConflict(f"{len(pending)} user updates kept conflicting; the batch will be redelivered")
        return {sid: why for w in work for sid, why in w.poison.items()}

    def _compute_isolating(self, w: UserWork, raw: bytes | None, tomb: bytes | None, now_ms: int,
                           sweep: bool, state: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            return self._compute(w, raw, tomb, now_ms, sweep, state)
        except Exception:  # noqa: BLE001 - find the event that breaks it; the rest of the user must go on
            log.exception("applying %d events of %s/%s failed; isolating the culprit", len(w.events), w.app, w.user_id)
        for i in range(len(w.events)):  # from the stored bytes: the failed attempt may have mutated `state`
            trial = UserWork(w.app, w.user_id, w.partition, w.events[: i + 1], dict(w.poison))
            try:
                self._compute(trial, raw, tomb, now_ms, sweep, None)
            except Exception as exc:  # noqa: BLE001
                w.poison[w.events[i][0]] = f"applying it raised {type(exc).__name__}: {exc}"[:500]
        return self._compute(w, raw, tomb, now_ms, sweep, None)

    async def _yield(self) -> None:
        """Let the heartbeat that renews the leases run when this batch has held the loop YIELD_SECONDS, and
        the loop hand Redis more of the commits sent when some are still waiting for the socket. A chunk's
        commits are megabytes, more than the socket takes at once: they would otherwise sit in this process
        while it computes, and Redis run them all at the end instead of alongside."""
        if self.pipe.backlog() or time.perf_counter() - self._tick > YIELD_SECONDS:
            await asyncio.sleep(0)
            self._tick = time.perf_counter()

    async def _round(self, work: list[UserWork], sweep: bool,
                     prefetch: Callable[[], Awaitable[None]] | None = None) -> list[UserWork]:
        hits = {id(w): self._take((w.app, w.user_id)) for w in work}
        need = [w for w in work if hits[id(w)] is None]
        loaded: dict[int, tuple[bytes | None, bytes | None]] = {}
        if need:
            replies = await self.pipe.execute([(b"MGET", keys.user_state(w.app, w.user_id),
                                                keys.deleted(w.app, w.user_id)) for w in need])
            for w, reply in zip(need, raise_first(replies), strict=True):
                loaded[id(w)] = (reply[0], reply[1])
        if prefetch is not None:
            await prefetch()
        now_ms = int(time.time() * 1000)
        self._tick = time.perf_counter()
        # By chunks of users: their events, then the estimates of all who need one together (their grid
        # posteriors are computed at once, see models/profile.py estimate_many), then the documents; the
        # chunk's commits are sent at once, so Redis runs them while the next chunk is computed. A user
        # whose update raises anywhere is redone alone from the stored bytes to isolate the culprit event.
        commits: list[dict[str, Any]] = []
        sent: list[Awaitable[list[Any]]] = []

        async def send(chunk: list[dict[str, Any]]) -> None:
            if not self._script_loaded:  # else a fresh Redis answers a whole batch with NOSCRIPT
                await self.redis.script_load(COMMIT.source)
                self._script_loaded = True
            commits.extend(chunk)
            sent.append(await self.pipe.send([_commit_call(c) for c in chunk]))

        for i in range(0, len(work), ESTIMATE_CHUNK):
            await self._compute_chunk(work[i:i + ESTIMATE_CHUNK], hits, loaded, now_ms, sweep, send)
        if not commits:
            return []
        results = await self._commit_results(commits, [r for waiter in sent for r in await waiter])
        retry = []
        after = _BatchAggregates()
        for c, res in zip(commits, results, strict=True):
            w = c["work"]
            if int(res) != 1:
                retry.append(w)  # lost the compare-and-set: the next round reloads the user from Redis
                continue
            self._keep((w.app, w.user_id), Cached(c["version"], c["tomb"], c["body"], c["state"], c["recent_ids"],
                                                  c["recent"], w.partition))
            self._after_commit(after, c, now_ms)
        raise_first(await self.pipe.execute(after.commands()))
        return retry

    async def _commit_results(self, commits: list[dict[str, Any]], results: list[Any]) -> list[Any]:
        """The COMMIT scripts' replies (1, or -1 / -2: lost the race); any refused for NOSCRIPT sent again."""
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if again:  # the script cache was flushed (a restart): load it and send those again
            await self.redis.script_load(COMMIT.source)
            replies = await self.pipe.execute([_commit_call(commits[i]) for i in again])
            for i, r in zip(again, replies, strict=True):
                results[i] = r
        return raise_first(results)

    async def _compute_chunk(self, work: list[UserWork], hits: dict[int, Cached | None],
                             loaded: dict[int, tuple[bytes | None, bytes | None]], now_ms: int, sweep: bool,
                             send: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        """The commits of some users, handed to send by SEND_USERS as they are made (Redis runs them while
        the rest are completed); keeps the bytes of cached users left alone."""
        done: dict[int, dict[str, Any] | None] = {}
        ctxs: dict[int, dict[str, Any]] = {}
        for w in work:
            await self._yield()
            hit = hits[id(w)]
            raw, tomb = (hit.body, hit.tomb) if hit is not None else loaded[id(w)]
            try:
                ctx = self._advance(w, raw, tomb, now_ms, sweep, hit.state if hit is not None else None)
            except Exception:  # noqa: BLE001 - redone alone from the stored bytes (the state may be changed)
                done[id(w)] = self._compute_isolating(w, raw, tomb, now_ms, sweep, None)
                continue
            if ctx is None:
                done[id(w)] = None
            else:
                ctxs[id(w)] = ctx
        due = [ctx for ctx in ctxs.values() if ctx["due"]]
        if due:
            await self._yield()
            try:
                ests = pm.estimate_many([(ctx["state"]["closed"], ctx["pop"], ctx["state"]["msg"], None)
                                         for ctx in due])
            except Exception:  # noqa: BLE001 - one user's bad data: estimate each alone to find whose
                ests = []
                for ctx in due:
                    try:
                        ests.append(pm.estimate(ctx["state"]["closed"], ctx["pop"], ctx["state"]["msg"]))
                    except Exception:  # noqa: BLE001
                        ests.append(None)
            for ctx, est in zip(due, ests, strict=True):
                if est is None:
                    ctx["failed"] = True
                else:
                    self._store_estimate(ctx["state"], est)
        out = []
        for w in work:
            hit = hits[id(w)]
            ctx = ctxs.get(id(w))
            if ctx is not None:
                await self._yield()
                c = None
                if not ctx.get("failed"):
                    try:
                        c = self._complete(ctx)
                    except Exception:  # noqa: BLE001 - redone alone below
                        c = None
                if c is None:
                    raw, tomb = (hit.body, hit.tomb) if hit is not None else loaded[id(w)]
                    c = self._compute_isolating(w, raw, tomb, now_ms, sweep, None)
            else:
                c = done[id(w)]
            if hit is not None:
                if c is None:  # nothing to commit; the object may carry uncommitted changes: keep the bytes
                    self._keep((w.app, w.user_id),
                               Cached(hit.version, hit.tomb, hit.body, None, hit.recent_ids, hit.recent,
                                      hit.partition))
                else:
                    c["recent_ops"] = _recent_ops(hit.recent_ids, hit.recent, c["recent_ids"], c["recent"])
            elif c is not None:
                c["recent_ops"] = (1, c["recent"], [], -1)
            if c is not None:
                out.append(c)
                if len(out) >= SEND_USERS:
                    await send(out)
                    out = []
        if out:
            await send(out)

    def _compute(self, w: UserWork, raw: bytes | None, tomb: bytes | None, now_ms: int, sweep: bool,
                 cached_state: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One user's update start to end (the path that isolates a failing event); None: nothing to do."""
        ctx = self._advance(w, raw, tomb, now_ms, sweep, cached_state)
        if ctx is None:
            return None
        if ctx["due"]:
            state = ctx["state"]
            self._store_estimate(state, pm.estimate(state["closed"], ctx["pop"], state["msg"]))
        return self._complete(ctx)

    def _advance(self, w: UserWork, raw: bytes | None, tomb: bytes | None, now_ms: int, sweep: bool,
                 cached_state: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Apply the user's events to their state; None if there is nothing to commit, else what _complete
        needs ("due": the estimate must be recomputed first)."""
        if cached_state is not None:
            version, state = int(raw.partition(b"|")[0]) if raw else 0, cached_state
        else:
            version, state = decode_state(raw)
        deleted_at = int(tomb) if tomb else None
        pop = self.population(w.app)
        ap = pm.Applier(state, pop, self.close_after_ms, self.pacing_from_text)
        applied = skipped_deleted = 0
        wm = pm.stream_id_key(state["wm"])
        # Loop invariants hoisted (once per event otherwise): no event handler changes the trust, and the
        # watermark is stored once, after the loop (a failure discards this state object anyway).
        suspect, poison, apply, newest = state["trust"] != "normal", w.poison, ap.apply, None
        events = w.events
        if w.one_read:
            # Stream ids increase within a partition's read: only a leading run of the events can be at or
            # below the watermark (redelivered), so only those ids are parsed, not every event's.
            start = 0
            while start < len(events) and pm.stream_id_key(events[start][0]) <= wm:
                start += 1
            if start < len(events):
                newest = events[-1][0]
                events = events[start:] if start else events
            else:
                events = []
        else:
            todo = []
            for sid, ev in events:
                ms, _, seq = sid.partition("-")  # pm.stream_id_key, inline: once per event
                key = (int(ms), int(seq or 0))
                if key <= wm:
                    continue  # redelivered: already in this state
                wm = key
                newest = sid
                todo.append((sid, ev))
            events = todo
        for sid, ev in events:
            if poison and sid in poison:
                continue
            if deleted_at is not None and ev["rt"] <= deleted_at:
                skipped_deleted += 1
                continue
            if suspect:
                ap.discount("bot_suspect")
            if apply(ev):
                applied += 1
        if newest is not None:
            state["wm"] = newest
        if applied:
            state["lw"] = now_ms
        ap.close_due(now_ms if sweep else None, state.get("lw") if sweep else None)
        if not ap.changed and not (applied or skipped_deleted):
            return None
        if raw is None and not applied:
            # Only events of a deleted user (or nothing): keep nothing about them.
            if skipped_deleted:
                self.stats.add(w.app, "denoise:deleted", skipped_deleted)
            return None
        feats = pm.update_trust(state, pop)
        # An estimate stored by an older worker lacks the dialogue share's variance the summary now carries:
        # it is redone once rather than served or summarised without it.
        est = state.get("est")
        due = (est is None or "ds_var" not in est or bool(ap.amended_repeats)
               or bool(ap.closed_now and self._due(state)))
        return {"work": w, "state": state, "pop": pop, "ap": ap, "feats": feats, "version": version,
                "tomb": tomb, "now_ms": now_ms, "applied": applied, "deleted": skipped_deleted, "due": due}

    def _complete(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """The documents and the commit of an advanced user whose estimate is current."""
        w, state, pop, ap, tomb = ctx["work"], ctx["state"], ctx["pop"], ctx["ap"], ctx["tomb"]
        est = state["est"]
        version = ctx["version"] + 1
        updated = _format_time(ctx["now_ms"])
        doc = pm.profile_document(w.app, w.user_id, None, version, updated, state, est, state["replies"], state["n"])
        char_keys, char_docs = [], []
        ready = pm.characters_ready(state)
        for cid, recs in ready.items():
            cest = pm.estimate(recs, pop, prior=pm.character_prior(est))
            cdoc = pm.profile_document(w.app, w.user_id, cid, version, updated, state, cest,
                                       sum(1 for r in recs), state["n"])
            char_keys.append(keys.profile(w.app, w.user_id, cid))
            char_docs.append(orjson.dumps(cdoc))
        # A character that left the window of remembered replies loses its profile (reads fall back to the
        # user's): its evidence is gone from the state, and kept keys would pile up one per character ever
        # played (one app key could grow a user's keys without bound). At most MAX_CLOSED /
        # CHARACTER_MIN_REPLIES characters have one.
        gone = [keys.profile(w.app, w.user_id, cid) for cid in state["chars"] if cid not in ready]
        state["chars"] = sorted(ready)
        old_hist = state["hist"]
        state["hist"] = pm.hist_buckets(doc)
        state["sum"] = pm.summary(state, est, ctx["feats"])
        items = pm.recent_items(state)
        body = str(version).encode() + b"|" + orjson.dumps(state, default=_default)
        return {
            "work": w, "state": state, "closed": ap.closed_now, "amended": ap.amended_repeats,
            "discounted": ap.discounted, "applied": ctx["applied"], "deleted": ctx["deleted"],
            "old_hist": old_hist, "new_hist": state["hist"], "has_open": bool(state["open"]),
            "version": version, "tomb": tomb, "body": body,
            "recent_ids": [item["reply_id"] for item in items], "recent": [orjson.dumps(item) for item in items],
            "keys": [keys.user_state(w.app, w.user_id), keys.profile(w.app, w.user_id),
                     keys.user_recent(w.app, w.user_id), keys.deleted(w.app, w.user_id), *char_keys, *gone],
            "head": [version - 1, tomb.decode() if tomb else "", body, orjson.dumps(doc)], "char_docs": char_docs,
            "gone": len(gone),
        }

    @staticmethod
    def _due(state: dict[str, Any]) -> bool:
        """Re-estimate on every closed reply while evidence is thin, then every few (one reply moves little)."""
        closed = len(state["closed"])
        since = closed - state.get("est_n", 0) if closed < pm.MAX_CLOSED else state.get("est_stale", 0) + 1
        state["est_stale"] = since
        return closed < 30 or since >= 3 or since < 0

    @staticmethod
    def _store_estimate(state: dict[str, Any], est: dict[str, Any]) -> dict[str, Any]:
        state["est"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in est.items()}
        state["est_n"] = len(state["closed"])
        state["est_stale"] = 0
        return state["est"]

    def _after_commit(self, agg: _BatchAggregates, c: dict[str, Any], now_ms: int) -> None:
        w: UserWork = c["work"]
        app = w.app
        self.applied_total += c["applied"]
        fields: list[tuple[str, int]] = [(f"denoise:{k}", n) for k, n in c["discounted"].items()]
        if c["applied"]:
            fields.append(("worker:applied", c["applied"]))
        if c["deleted"]:
            fields.append(("denoise:deleted", c["deleted"]))
        trusted = c["state"]["trust"] == "normal"
        trainer = self.trainers.get(app)
        if trainer is None and trusted and c["closed"]:
            trainer = self.trainers[app] = RepeatModelTrainer()
        # Counted per reply, added once per user (the same sums: the IPS terms are truncated one by one).
        replies = {"cond": 0, "uncond": 0}
        repeats = {"cond": 0, "uncond": 0}
        ips_num = ips_den = ips_n = 0
        train = trainer if trusted else None
        for rec in c["closed"]:
            repeated = "repeat" in rec["o"]
            ap = rec.get("ap")
            arm = "cond" if ap else "uncond"
            replies[arm] += 1
            if repeated:
                repeats[arm] += 1
            if ap and not ap.get("explored") and ap.get("propensity"):
                # Self-normalised IPS of the greedy (non-exploring) policy: sum(r / p) / sum(1 / p).
                ips_num += int((0 if repeated else 1) / ap["propensity"] * 1e6)
                ips_den += int(1 / ap["propensity"] * 1e6)
                ips_n += 1
            if train is not None and rec.get("t") is not None:
                train.add(rec, repeated)
        for arm in ("cond", "uncond"):
            if replies[arm]:
                fields.append((f"replies:{arm}", replies[arm]))
            if repeats[arm]:
                fields.append((f"repeats:{arm}", repeats[arm]))
        if ips_n:
            fields.append(("ips:num", ips_num))
            fields.append(("ips:den", ips_den))
        for rec in c["amended"]:
            arm = "cond" if rec.get("ap") else "uncond"
            fields.append((f"repeats:{arm}", 1))
            ap = rec.get("ap") or {}
            if arm == "cond" and not ap.get("explored") and ap.get("propensity"):
                fields.append(("ips:num", -int(1 / ap["propensity"] * 1e6)))
        if fields:
            self.stats.add_many(app, fields)
        agg.hist_change(app, c["old_hist"], c["new_hist"])
        agg.users[app][w.user_id] = now_ms
        agg.summaries[app][w.user_id] = orjson.dumps(c["state"]["sum"])
        member = f"{app}\x00{w.user_id}"
        if c["has_open"]:
            agg.open_due[w.partition][member] = now_ms + self.close_after_ms
            agg.not_open[w.partition].discard(member)
        else:
            agg.not_open[w.partition].add(member)
            agg.open_due[w.partition].pop(member, None)


class _BatchAggregates:
    """The shared (not per-user) writes of one commit round, merged: a few commands for the whole batch."""

    def __init__(self) -> None:
        self.hist: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.users: dict[str, dict[str, int]] = defaultdict(dict)
        self.summaries: dict[str, dict[str, bytes]] = defaultdict(dict)
        self.open_due: dict[int, dict[str, int]] = defaultdict(dict)
        self.not_open: dict[int, set[str]] = defaultdict(set)

    def hist_change(self, app: str, old: list[str], new: list[str]) -> None:
        if old == new:
            return
        h = self.hist[app]
        for b in old:
            if b not in new:
                h[b] -= 1
        for b in new:
            if b not in old:
                h[b] += 1

    def commands(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for app, deltas in self.hist.items():
            for bucket, n in deltas.items():
                if n:
                    out.append((b"HINCRBY", keys.profile_hist(app), bucket, n))
        for app, users in self.users.items():
            out.append((b"ZADD", keys.app_users(app), *[x for m, t in users.items() for x in (t, m)]))
        for app, sums in self.summaries.items():
            out.append((b"HSET", keys.population_users(app), *[x for kv in sums.items() for x in kv]))
        for p, due in self.open_due.items():
            if due:
                out.append((b"ZADD", keys.open_users(p), *[x for m, t in due.items() for x in (t, m)]))
        for p, gone in self.not_open.items():
            if gone:
                out.append((b"ZREM", keys.open_users(p), *gone))
        return out


def _commit_call(c: dict[str, Any]) -> tuple[Any, ...]:
    return (b"EVALSHA", COMMIT.sha, len(c["keys"]), *c["keys"], *_commit_args(c))


def _commit_args(c: dict[str, Any]) -> list[Any]:
    full, items, pairs, keep = c["recent_ops"]
    flat = [x for i, item in pairs for x in (i, item)]
    return [*c["head"], full, len(items), len(pairs), keep, *items, *flat, *c["char_docs"], c["gone"]]


def _recent_ops(old_ids: list[str], old: list[bytes], new_ids: list[str], new: list[bytes]
                ) -> tuple[int, list[bytes], list[tuple[int, bytes]], int]:
    """How to turn the stored recent list into the new one: (full rewrite?, items, replaced pairs, trim length).

    Usually a few new replies went on top and a few shown ones gained an outcome: push those, replace
    these in place. Anything else (a late reply sorted into the middle) rewrites the list.
    """
    for k in range(min(len(new_ids), 8) + 1):  # k new replies on top, the rest shifted down by k
        tail = new_ids[k:]
        if tail == old_ids[: len(tail)] and (len(tail) == len(old_ids) or len(new_ids) == pm.MAX_RECENT):
            pairs = [(i, new[i]) for i in range(k, len(new)) if new[i] != old[i - k]]
            if len(pairs) > 8:
                break
            keep = len(new) if len(old) + k > len(new) else -1
            return 0, list(reversed(new[:k])), pairs, keep
    return 1, new, [], -1


@functools.lru_cache(maxsize=4)
def _format_time(ms: int) -> str:
    return format_time(ms)  # every user of a round is stamped with the same time: format it once


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a user state")
