"""The worker loop: partition leases, pending-first recovery, reading, acking, dead letters, trimming, sweeps.

One worker reads a partition at a time (a lease with a TTL, renewed by the heartbeat), so each user's
events are applied in stream order and "last applied entry id" is a sound idempotency watermark. Any
number of workers may run: each takes a fair share of the partitions (ceil(partitions / alive workers)),
and a dead worker's partitions are taken over when its lease expires. Taking over a partition first
claims (XAUTOCLAIM) every entry still pending there and applies those before reading new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from models.population import Population, RepeatModelTrainer, refresh
from service import keys
from service.settings import Settings
from service.store import Script, StatsBuffer, check_server, out_of_memory, unavailable
from workers.apply import Applier, UserWork, parse, parse_grouped
from workers.resp import error_of, raise_first

log = logging.getLogger("attune.worker")

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW = Script(RENEW_LUA)
RELEASE = Script(RELEASE_LUA)

# A read asks each partition for about worker_batch_seconds of work (at the apply rate measured on earlier
# full reads, INITIAL_RATE before any), never fewer than worker_batch_size entries: under a backlog a user
# with many queued events then gets one commit and one estimate for all of them instead of one per small
# batch. Caught up, a read returns what arrived, so the size only matters when there is a backlog. The
# default 5 s stays well inside the lease and the shutdown grace (10 s), and the heartbeat still runs
# during a long batch (the applier yields to it). INITIAL_RATE is a little under what one worker process
# applies under a backlog (bench/worker.py --events 60000 measured 20-23k events/s on a busy 2-core machine):
# a lower guess sizes the first read too small, and its users are estimated and committed once per small
# read instead of once for all their events. The count is per partition and partitions hold unequal shares:
# at 12000 the bench's first read left ~550 entries of its larger partitions to a second read, and some 230
# of its 2000 users were estimated and committed twice.
INITIAL_RATE = 18000.0
BATCH_MAX = 10_000
READ_GROUPS = 4
START_RETRY_SECONDS = 2.0  # a worker started before Redis (or while it is full) tries again this often


def read_groups(owned: list[int], k: int) -> list[list[int]]:
    """The partitions in min(k, len(owned)) groups, in order, none empty, the first about half as large as
    the others: the worker waits idle for the first group's reply only (it computes a group while Redis
    builds the next), and a half-size read comes back in about half the time."""
    k = min(k, len(owned))
    weights = 2 * k - 1  # the first group weighs 1, the others 2
    bounds = [0]
    for i in range(1, k):
        cut = len(owned) * (2 * i - 1) // weights
        bounds.append(min(max(bounds[-1] + 1, cut), len(owned) - (k - i)))
    bounds.append(len(owned))
    return [owned[bounds[i]:bounds[i + 1]] for i in range(k)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def warm_up() -> None:
    """Import the heavy libraries now: the first closed reply would otherwise stall the loop for seconds."""
    RepeatModelTrainer()


def tune_gc() -> None:
    """For the worker process: a batch allocates thousands of event and state dicts (no cycles among them),
    and with the default thresholds the cyclic collector ran every 700 of them, each full pass walking
    numpy, scipy and scikit-learn as well: a quarter of the time of a large batch. Import those first and
    freeze them out of the collector, then collect less often."""
    warm_up()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 50)


class Worker:
    def __init__(self, settings: Settings, client: aioredis.Redis, worker_id: str | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.id = worker_id or settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = StatsBuffer()
        self.applier = Applier(client, self.stats, settings.close_after, settings.pacing_from_text)
        self.owned: set[int] = set()
        self.recovered: set[int] = set()
        # Per partition, the recoveries this process owes to Redis refusing its writes for memory: each one
        # counts a delivery (the read of the pending entries) that is not the entries' fault.
        self._oom_retries: dict[int, int] = {}
        # Per owned partition, until when (monotonic) its lease surely holds: the time before the renewal
        # or take that Redis acknowledged, plus the lease. See readable().
        self.lease_until: dict[int, float] = {}
        self.stopping = asyncio.Event()
        self.started_at = int(time.time() * 1000)
        self._rate = (time.monotonic(), 0)
        self.events_per_second = 0.0
        self.dead_lettered = 0
        self._last_trim = 0.0
        self._last_sweep = 0.0
        self._last_refresh = time.monotonic()
        self._apps: set[str] = set()
        self._apply_rate = INITIAL_RATE  # entries per second over full reads (a moving average)
        # Whether the last read filled a partition's count (more is waiting): the next is then made in groups
        # (see step). True at the start: a worker starting usually has a backlog.
        self._backlog = True

    # --- setup and leases ---------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.xgroup_create(keys.stream(p), keys.CONSUMER_GROUP, id="0", mkstream=True)
        for res in await pipe.execute(raise_on_error=False):
            if isinstance(res, ResponseError) and "BUSYGROUP" not in str(res):
                raise res

    async def heartbeat(self) -> None:
        """Announce this worker, renew owned leases, and take or give back partitions toward a fair share."""
        now_ms = int(time.time() * 1000)
        lease_ms = int(self.settings.worker_lease_seconds * 1000)
        # Leases first: a Redis at its memory bound refuses the announcement (ZADD) but not the renewal
        # (PEXPIRE), so the leases outlive an out-of-memory spell however long it lasts.
        for p in sorted(self.owned):
            asked = time.monotonic()
            if int(await RENEW(self.redis, [keys.lease(p)], [self.id, lease_ms])):
                self.lease_until[p] = asked + self.settings.worker_lease_seconds
            else:
                log.warning("lost the lease of partition %d; another worker reads it now", p)
                self._forget(p)
        await self.redis.zadd(keys.WORKERS, {self.id: now_ms})
        window = int(self.settings.worker_heartbeat_seconds * 1000)
        alive = max(1, int(await self.redis.zcount(keys.WORKERS, now_ms - window, "+inf")))
        share = math.ceil(self.settings.partitions / alive)
        while len(self.owned) > share:
            p = max(self.owned)
            self._forget(p)
            await RELEASE(self.redis, [keys.lease(p)], [self.id])
            log.info("gave back partition %d (fair share %d with %d workers)", p, share, alive)
        if len(self.owned) < share:
            start = hash(self.id) % self.settings.partitions  # spread first picks across workers
            for i in range(self.settings.partitions):
                p = (start + i) % self.settings.partitions
                if len(self.owned) >= share:
                    break
                asked = time.monotonic()
                if p not in self.owned and await self.redis.set(keys.lease(p), self.id, nx=True, px=lease_ms):
                    self.owned.add(p)
                    self.lease_until[p] = asked + self.settings.worker_lease_seconds
                    log.info("took partition %d (now %d of %d)", p, len(self.owned), self.settings.partitions)
        t0, n0 = self._rate
        now = time.monotonic()
        if now - t0 >= 1.0:
            self.events_per_second = (self.applier.applied_total - n0) / (now - t0)
            self._rate = (now, self.applier.applied_total)
        pending = 0
        for p in self.owned:
            info = await self.redis.xpending(keys.stream(p), keys.CONSUMER_GROUP)
            pending += int(info.get("pending", 0) if isinstance(info, dict) else 0)
        await self.redis.hset(keys.worker_info(self.id), mapping={
            "pid": os.getpid(), "started_at": self.started_at, "applied_total": self.applier.applied_total,
            "events_per_second": round(self.events_per_second, 1), "pending": pending, "last_seen": now_ms,
            "partitions": ",".join(map(str, sorted(self.owned))), "dead_lettered": self.dead_lettered})
        await self.redis.expire(keys.worker_info(self.id), int(self.settings.worker_heartbeat_seconds * 3) + 1)

    def _forget(self, p: int) -> None:
        """Partition p is no longer this worker's: if it comes back, it is recovered afresh, and the memory
        retries owed there (see _over_delivered) belong to the spell of that earlier ownership."""
        self.owned.discard(p)
        self.recovered.discard(p)
        self._oom_retries.pop(p, None)
        self.applier.forget_partition(p)

    async def release_all(self) -> None:
        for p in sorted(self.owned):
            await RELEASE(self.redis, [keys.lease(p)], [self.id])
            self._forget(p)
        await self.applier.pipe.aclose()
        await self.redis.zrem(keys.WORKERS, self.id)
        await self.redis.delete(keys.worker_info(self.id))

    # --- reading ------------------------------------------------------------------------------------
    async def recover(self, p: int) -> int:
        """Claim every entry still pending in partition p (a previous reader died or left) and apply them first."""
        stream, cursor, claimed = keys.stream(p), b"0-0", 0
        while True:
            # JUSTID: the claim does not count a delivery, so a recovery counts one (the read below), not two.
            # Over the raw connection: redis-py's reply parser drops the cursor of a JUSTID claim.
            (res,) = raise_first(await self.applier.pipe.execute([(
                b"XAUTOCLAIM", stream, keys.CONSUMER_GROUP, self.id, 0, cursor,
                b"COUNT", self.settings.worker_batch_size, b"JUSTID")]))
            cursor = res[0]
            claimed += len(res[1])
            if _s(cursor) == "0-0":
                break
        done, after = 0, "0-0"
        while not self.stopping.is_set():
            res = await self.redis.xreadgroup(keys.CONSUMER_GROUP, self.id, {stream: after},
                                              count=self.settings.worker_batch_size)
            items = res[0][1] if res else []
            if not items:
                break
            after = _s(items[-1][0])
            done += await self.process({p: items}, from_pending=True)
        self.recovered.add(p)
        self._oom_retries.pop(p, None)
        if claimed or done:
            log.info("partition %d: recovered %d pending entries (%d claimed from others)", p, done, claimed)
        return done

    async def step(self) -> int:
        """One round: recover new partitions, read and apply one batch, then housekeeping. Entries handled."""
        # The cyclic collector waits for the end of the round: a backlog's round holds tens of thousands of
        # parsed entries and events alive until it ends, and every collection during it walked them again
        # (about 4% of a 60,000-event round's CPU in 46 collections; held off, about 2% in two). Nearly all
        # the round allocates is freed by reference counting; the rest is collected after.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return await self._step()
        finally:
            if enabled:
                gc.enable()

    async def _step(self) -> int:
        for p in sorted(set(self.readable()) - self.recovered):  # a lease running short: after the renewal
            await self.recover(p)
        owned = self.readable()
        if not owned:
            await asyncio.sleep(min(1.0, self.settings.worker_block_ms / 1000 or 0.05))
            return 0
        count = self.read_count(len(owned))
        if self._backlog and len(owned) > 1:
            # Under a backlog: the partitions in READ_GROUPS groups, none of their reads waiting; a group is
            # applied while Redis builds the next group's reply (a read of tens of thousands of entries takes
            # Redis a good part of a second, idle time for the worker when it is one read). A user's events
            # all sit in one partition, so each group holds all of its users'.
            groups = read_groups(owned, READ_GROUPS)
            first = self._read_command(groups[0], count, False)
        else:
            groups = [owned]
            first = self._read_command(owned, count, True)
        n, full, t0 = 0, False, time.perf_counter()
        read: Awaitable[list[Any]] | None = None
        try:
            read = await self.applier.pipe.send([first])
            for i in range(len(groups)):
                taken, read = read, None
                if taken is None:
                    continue  # this group's partitions were given back or their lease ran short: not read
                (res,) = raise_first(await taken)
                following = groups[i + 1] if i + 1 < len(groups) else None

                async def send_next(group: list[int] | None = following) -> None:
                    nonlocal read, sent_next
                    if group is None or sent_next:
                        return
                    sent_next = True
                    # Checked again now, up to most of a step after the step's first read: the heartbeat may
                    # have given partitions back (a new worker joined) or found a lease short meanwhile, and
                    # a read of new entries there would be passed by the next owner (see readable()). No
                    # await between the check and the write (Pipe.send writes at once on an open connection).
                    live = set(self.readable())
                    if group := [p for p in group if p in live]:
                        read = await self.applier.pipe.send([self._read_command(group, count, False)])

                sent_next = False

                batch: dict[int, list[Any]] = {}
                for name, items in res or []:
                    p = int(_s(name).split("{p:")[1].split("}")[0])
                    batch[p] = items
                full = full or any(len(items) >= count for items in batch.values())
                # The next group's read goes out once this group's users are loaded (see Applier.apply), so
                # Redis builds it while they are computed; not with the first read (Redis runs a pipeline's
                # commands before it writes any reply) nor before the loads (they would wait behind it).
                n += await self.process(batch, prefetch=send_next) if batch else 0
                await send_next()
        except BaseException:
            # Its entries stay pending; recover them before any newer entry is read, or the users' watermarks
            # (the last entry applied) would pass them by as already applied. The entries of a read sent and
            # not yet taken are pending too: its reply is dropped.
            self.recovered.difference_update(owned)
            if asyncio.iscoroutine(read):
                read.close()
            elif isinstance(read, asyncio.Future):
                read.cancel()
            raise
        self._backlog = full
        if full:
            self.measured(n, time.perf_counter() - t0)
        await self.housekeeping()
        return n

    def _read_command(self, partitions: list[int], count: int, block: bool) -> tuple[Any, ...]:
        wait = (b"BLOCK", self.settings.worker_block_ms) if block and self.settings.worker_block_ms else ()
        return (b"XREADGROUP", b"GROUP", keys.CONSUMER_GROUP, self.id, b"COUNT", count, *wait, b"STREAMS",
                *[keys.stream(p) for p in partitions], *[b">"] * len(partitions))

    def readable(self) -> list[int]:
        """Owned partitions whose lease holds for at least half a lease more. A worker whose heartbeat stalled
        past its lease must not read new entries: the next owner may have recovered the partition already,
        and entries read now would be left pending behind newer ones it applies (and passed by)."""
        limit = time.monotonic() + self.settings.worker_lease_seconds / 2
        return [p for p in sorted(self.owned) if self.lease_until.get(p, 0.0) > limit]

    def read_count(self, streams: int) -> int:
        """Entries to ask each owned partition for: about worker_batch_seconds of work in all."""
        want = int(self._apply_rate * self.settings.worker_batch_seconds / max(streams, 1))
        return max(self.settings.worker_batch_size, min(BATCH_MAX, want))

    def measured(self, n: int, seconds: float) -> None:
        """A full read's apply rate (a full read is the only one that says how fast the worker can go)."""
        rate = n / max(seconds, 1e-3)
        self._apply_rate = 0.5 * self._apply_rate + 0.5 * rate

    async def process(self, batch: dict[int, list[Any]], from_pending: bool = False,
                      prefetch: Callable[[], Awaitable[None]] | None = None) -> int:
        """Apply a read (partition -> raw entries) and acknowledge it; prefetch: see Applier.apply."""
        over = await self._over_delivered(batch) if from_pending else {}
        work, bad = parse_grouped(batch, over)
        dead: dict[str, tuple[int, str]] = {e.id: (e.partition, e.problem or "") for e in bad}
        dead.update(over)
        for w in work:
            self._apps.add(w.app)
        await self.applier.apply(work, prefetch=prefetch)
        for w in work:  # the poison events (applying them raised): skipped, and dead-lettered
            for sid, why in w.poison.items():
                dead[sid] = (w.partition, why)
        acks = [(b"XACK", keys.stream(p), keys.CONSUMER_GROUP, *[eid for eid, _ in items])
                for p, items in batch.items() if items]
        # The live count with the acknowledgement (the heartbeat refreshes the rest of the info).
        info = [(b"HSET", keys.worker_info(self.id), b"applied_total", self.applier.applied_total),
                (b"EXPIRE", keys.worker_info(self.id), int(self.settings.worker_heartbeat_seconds * 3) + 1)]
        if dead:
            # A dead letter and the acknowledgement of its entry go together (MULTI/EXEC).
            raws = self._events_of(batch, dead, work)
            letters = [(b"XADD", keys.dead_letters(part), b"MAXLEN", b"~", 100_000, b"*", b"id", sid,
                        b"reason", why, b"e", orjson.dumps(raws[sid]) if raws.get(sid) is not None else b"",
                        b"worker", self.id, b"at", int(time.time() * 1000))
                       for sid, (part, why) in dead.items()]
            replies = raise_first(await self.applier.pipe.execute(
                [(b"MULTI",), *letters, *acks, *info, (b"EXEC",)]))
            raise_first([error_of(r) or r for r in replies[-1] or []])
        else:
            # Acknowledgements alone need no transaction: one lost to a crash means a redelivery, which the
            # users' watermarks turn into nothing.
            raise_first(await self.applier.pipe.execute([*acks, *info]))
        if dead:
            self.dead_lettered += len(dead)
            self.stats.add("_all", "worker:dead_letters", len(dead))
            log.warning("dead-lettered %d entries: %s", len(dead), "; ".join(f"{k}: {v[1]}" for k, v in list(dead.items())[:3]))
        return sum(len(items) for items in batch.values())

    @staticmethod
    def _events_of(batch: dict[int, list[Any]], dead: dict[str, tuple[int, str]], work: list[UserWork]
                   ) -> dict[str, dict[str, Any] | None]:
        """The events of entries going to dead letters, as parsed (None: the entry holds no event)."""
        out: dict[str, dict[str, Any] | None] = {}
        for w in work:
            for sid, ev in w.events:
                if sid in dead:
                    out[sid] = ev
        for p, items in batch.items():
            for eid, fields in items:
                sid = _s(eid)
                if sid in dead and sid not in out:
                    out[sid] = parse(p, eid, fields).event
        return out

    async def _over_delivered(self, batch: dict[int, list[Any]]) -> dict[str, tuple[int, str]]:
        """Pending entries already delivered too often (they crashed or stalled a worker each time)."""
        out: dict[str, tuple[int, str]] = {}
        for p, items in batch.items():
            if not items:
                continue
            # Recoveries after Redis refused this process's writes for memory are not the entries' fault.
            limit = self.settings.worker_dead_letter_deliveries + self._oom_retries.get(p, 0)
            rows = await self.redis.xpending_range(keys.stream(p), keys.CONSUMER_GROUP, min=_s(items[0][0]),
                                                   max=_s(items[-1][0]), count=len(items) + 10,
                                                   consumername=self.id)
            for row in rows:
                if int(row["times_delivered"]) > limit:
                    sid = _s(row["message_id"])
                    out[sid] = (p, f"delivered {int(row['times_delivered']) - 1} times without being acknowledged "
                                   "(it crashed or stalled the worker applying it)")
        return out

    # --- housekeeping -------------------------------------------------------------------------------
    async def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            await self.sweep()
        if now - self._last_trim >= self.settings.worker_trim_every_seconds:
            self._last_trim = now
            await self.trim()
        every = self.settings.population_refresh_seconds
        if every > 0 and now - self._last_refresh >= every:
            self._last_refresh = now
            await self.refresh_population()

    async def sweep(self) -> int:
        """Close replies of users idle for close_after (wall clock): their silence is now an outcome."""
        now_ms = int(time.time() * 1000)
        done = 0
        for p in sorted(self.owned):
            members = await self.redis.zrangebyscore(keys.open_users(p), "-inf", now_ms, start=0, num=200)
            if not members:
                continue
            work = []
            for m in members:
                app, _, user = _s(m).partition("\x00")
                work.append(UserWork(app, user, p))
            await self.applier.apply(work, sweep=True)
            done += len(work)
        return done

    async def trim(self) -> None:
        """Drop entries every reader of the group is done with: below the oldest pending and last delivered ids."""
        for p in sorted(self.owned):
            stream = keys.stream(p)
            groups = await self.redis.xinfo_groups(stream)
            if len(groups) != 1:
                continue  # another consumer group reads this stream too: never trim what it may still need
            last = _s(groups[0]["last-delivered-id"])
            summary = await self.redis.xpending(stream, keys.CONSUMER_GROUP)
            low = _s(summary["min"]) if summary.get("pending") else None
            if low is None:
                ms, _, seq = last.partition("-")
                minid = f"{ms}-{int(seq or 0) + 1}"
            else:
                minid = low
            if minid != "0-1":
                await self.redis.execute_command("XTRIM", stream, "MINID", minid)

    async def refresh_population(self) -> None:
        """Empirical Bayes: new priors from a sample of user summaries; merge this worker's repeat model."""
        for app in sorted(self._apps):
            raw = await self.redis.hrandfield(keys.population_users(app), 2000, withvalues=True)
            rows = []
            for i in range(1, len(raw or []), 2):
                with contextlib.suppress(orjson.JSONDecodeError):
                    rows.append(orjson.loads(raw[i]))
            cur_raw = await self.redis.get(keys.population(app))
            current = Population.from_dict(orjson.loads(cur_raw)) if cur_raw else Population()
            new = refresh(current, rows)
            trainer = self.applier.trainers.get(app)
            if trainer is not None:
                new.repeat_model = trainer.export(current.repeat_model)
            await self.redis.set(keys.population(app), orjson.dumps(new.to_dict()))
            self.applier.populations[app] = new
            log.info("population of %s refreshed from %d users: length prior %.0f chars (sd %.2f)",
                     app, new.users, math.exp(new.mu), new.mu_sd)

    async def load_populations(self) -> None:
        if self.settings.population_refresh_seconds <= 0:
            return
        for app in await self.redis.smembers(keys.APPS):
            raw = await self.redis.get(keys.population(_s(app)))
            if raw:
                self.applier.populations[_s(app)] = Population.from_dict(orjson.loads(raw))

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> bool:
        """Check the server, make the groups, load the populations, take partitions. A Redis that is not up
        yet or full (a worker started before it, or during a spell) is waited for, not a crash: retried every
        START_RETRY_SECONDS until it answers or the worker is stopped (then False)."""
        while True:
            try:
                await check_server(self.redis)  # UnsupportedRedis is not waited for: it will not change
                await self.ensure_groups()
                await self.load_populations()
                await self.heartbeat()
                return True
            except (OSError, RedisError) as exc:
                # The API's 503 says why (unreachable, full, or refusing the password): the same words here.
                log.warning("cannot start: %s (%s: %s); retrying every %g s", unavailable(exc).message,
                            type(exc).__name__, exc, START_RETRY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), START_RETRY_SECONDS)
                return False

    async def run(self) -> None:
        warm_up()
        if not await self.start():
            log.info("worker %s stopped before it started", self.id)
            return
        log.info("worker %s started: partitions %s of %d", self.id, sorted(self.owned), self.settings.partitions)
        beat = asyncio.create_task(self._beat_loop())
        try:
            async with self.stats.running(self.redis):
                await self.loop()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
            with contextlib.suppress(Exception):
                await self.release_all()
            log.info("worker %s stopped: %d events applied, %d dead-lettered", self.id,
                     self.applier.applied_total, self.dead_lettered)

    async def loop(self) -> None:
        """Steps until stopped; a Redis failure is retried after a pause."""
        while not self.stopping.is_set():
            try:
                await self.step()
            except (OSError, RedisError) as exc:
                if out_of_memory(exc):
                    for p in self.owned - self.recovered:
                        self._oom_retries[p] = self._oom_retries.get(p, 0) + 1
                    await self._until_writable(exc)
                    continue
                if "NOGROUP" in str(exc):
                    # Redis came back without its data (no persistence, a failover to an empty replica, a
                    # FLUSHALL): without the groups no event accepted from now on would ever be applied.
                    log.warning("Redis lost the consumer groups (restarted without its data?): made again")
                    with contextlib.suppress(OSError, RedisError):
                        await self.ensure_groups()
                        continue
                log.warning("redis error (%s: %s); retrying in 1 s", type(exc).__name__, exc)
                await asyncio.sleep(1)

    async def _until_writable(self, exc: BaseException) -> None:
        """Redis at its memory bound (maxmemory, noeviction) refuses every write, so no commit can succeed.
        Each read of the pending entries would count one more delivery toward dead letters, and once memory
        is freed they would be dead-lettered instead of applied: so no reading until a write goes through."""
        log.warning("Redis is out of memory and refuses writes (%s); reading again once it takes them", exc)
        while not self.stopping.is_set():
            await asyncio.sleep(1)
            try:
                await self.redis.set(f"{keys.worker_info(self.id)}:writable", 1, px=10_000)
                return
            except (OSError, RedisError) as again:
                if not out_of_memory(again):
                    return  # another failure: the step's own retry handles it

    async def _beat_loop(self) -> None:
        every = max(0.2, min(2.0, self.settings.worker_lease_seconds / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is logged, the next one retries
                log.warning("heartbeat failed: %s", exc)

    async def drain(self, max_rounds: int = 10_000) -> int:
        """Tests and benchmarks: apply until every owned partition is empty and nothing is open but due.
        No heartbeat task runs here: the leases are renewed whenever one runs short (a partition whose lease
        has less than half left is not read, and an empty step would look like the end)."""
        warm_up()
        await self.ensure_groups()
        await self.heartbeat()
        total = 0
        for _ in range(max_rounds):
            if len(self.readable()) < len(self.owned):
                await self.heartbeat()
            n = await self.step()
            total += n
            if n == 0 and len(self.readable()) == len(self.owned):
                break
        await self.stats.flush(self.redis)
        return total
