"""The gateway's Recorder, which writes each reply's reply_shown after the answer went out: nothing queued is
lost at shutdown even mid-write, only the joined text is kept while queued, and a bad item is counted as lost
without stopping the recording."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import redis

from models.conditioning import decide
from service import keys
from service.gateway import Capture, Recorder, Regen, rejected_of
from service.store import Store, connect


class SlowStore(Store):
    """The real store, each write held up first: shutdown comes while writes are in flight."""

    async def ingest(self, app: str, events: list[dict[str, Any]]) -> list[bool]:
        await asyncio.sleep(0.3)
        return await super().ingest(app, events)


def stored(r: redis.Redis, partitions: int = 4) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"e"]) for p in range(partitions) for _, f in r.xrange(keys.stream(p))]


def capture_of(text: str) -> Capture:
    cap = Capture()
    cap.parts.extend(text.split(" "))
    cap.finish_reason = "stop"
    return cap


def test_shutdown_during_a_slow_write_loses_nothing(redis_url: str, redis_sync: redis.Redis) -> None:
    async def run() -> Recorder:
        client = connect(redis_url)
        rec = Recorder(SlowStore(client, 4, 60))
        try:
            async with rec.running():
                for i in range(10):
                    rec.shown("demo", (f"u{i}", None, None), f"r{i}", capture_of("Hello there."), None)
                await asyncio.sleep(0.1)  # the first flush has started and is waiting on the store
        finally:
            await client.aclose()
        return rec

    rec = asyncio.run(run())
    events = stored(redis_sync)
    assert sorted(e["reply_id"] for e in events) == sorted(f"r{i}" for i in range(10))
    assert rec.recorded == 10 and rec.lost == 0 and rec.queue == []


def test_a_queued_reply_keeps_its_text_not_the_capture(redis_url: str) -> None:
    async def run() -> Any:
        client = connect(redis_url)
        try:
            rec = Recorder(Store(client, 4, 60))
            rec.shown("demo", ("u1", None, None), "r1", capture_of("one two three"), None)
            return rec.queue[0][1][2]
        finally:
            await client.aclose()

    ended = asyncio.run(run())
    assert not isinstance(ended, Capture) and ended.text() == "onetwothree" and ended.finish_reason == "stop"


def test_a_bad_item_is_counted_lost_and_the_rest_is_written(redis_url: str, redis_sync: redis.Redis) -> None:
    async def run() -> Recorder:
        client = connect(redis_url)
        rec = Recorder(Store(client, 4, 60))
        try:
            async with rec.running():
                rec.queue.append(("demo", ("not", "a", "reply")))  # cannot be built into an event
                rec.shown("demo", ("u1", None, None), "good", capture_of("Fine."), None)
                await asyncio.sleep(0.3)
        finally:
            await client.aclose()
        return rec

    rec = asyncio.run(run())
    assert [e["reply_id"] for e in stored(redis_sync)] == ["good"]
    assert rec.lost == 1 and rec.recorded == 1


def test_a_regeneration_record_is_never_written_for_a_user_deleted_after_the_reply_was_asked_for(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    now = 1_900_000_000_000
    redis_sync.set(keys.deleted("demo", "gone"), now)
    decision = decide(None, random.Random(1))

    async def run() -> None:
        client = connect(redis_url)
        try:
            rec = Recorder(Store(client, 4, 60))
            rec.REGEN_CHUNK = 2  # three records: two script calls
            async with rec.running():
                # Asked for before the deletion (it ran while the reply streamed): nothing may stay.
                gone = keys.deleted("demo", "gone")
                rec.served(decision, Regen(keys.regen("demo", "gone", "a"), gone, now - 1))
                # Asked for after it (the user came back): remembered, with a TTL.
                rec.served(decision, Regen(keys.regen("demo", "gone", "b"), gone, now + 1))
                kept = keys.deleted("demo", "kept")
                rec.served(decision, Regen(keys.regen("demo", "kept", "c"), kept, now))
        finally:
            await client.aclose()

    asyncio.run(run())
    assert not redis_sync.exists(keys.regen("demo", "gone", "a"))
    assert orjson.loads(redis_sync.get(keys.regen("demo", "gone", "b"))) == [[decision.pacing, None]]
    assert 0 < redis_sync.pttl(keys.regen("demo", "kept", "c")) <= 300_000


def test_with_the_measurement_off_a_regeneration_record_keeps_only_the_pacing_asked_for(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    fast = '*She grabs your wrist.* "Run! Now!" The door bursts open! Boots thunder down the hall. No time!'
    decision = decide(None, random.Random(2))

    async def run(measure: bool, user: str) -> None:
        client = connect(redis_url)
        try:
            rec = Recorder(Store(client, 4, 60), pacing_from_text=measure)
            async with rec.running():
                cap = Capture()
                cap.parts.append(fast)  # one chunk: the text as streamed
                rec.shown("demo", (user, None, None), f"r-{user}", cap, decision,
                          regen=Regen(keys.regen("demo", user, "x"), keys.deleted("demo", user), 1))
        finally:
            await client.aclose()

    asyncio.run(run(True, "on"))
    asyncio.run(run(False, "off"))
    assert orjson.loads(redis_sync.get(keys.regen("demo", "on", "x"))) == [[decision.pacing, "fast"]]
    assert orjson.loads(redis_sync.get(keys.regen("demo", "off", "x"))) == [[decision.pacing, None]]


def test_a_regeneration_before_the_flush_finds_the_record_in_the_process(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    # A "stop and regenerate" comes milliseconds after the reply ended, before the flush wrote its record:
    # the process's own record answers until then, and once written (or lost) Redis's does.
    first = decide(None, random.Random(3))
    regen = Regen(keys.regen("demo", "quick", "s"), keys.deleted("demo", "quick"), 1)
    seen: dict[str, Any] = {}

    async def run() -> Recorder:
        client = connect(redis_url)
        rec = Recorder(Store(client, 4, 60))
        rec.LINGER = 0.5  # the write comes well after the regeneration below
        try:
            async with rec.running():
                rec.shown("demo", ("quick", None, None), "r1", capture_of("Fine."), first, regen=regen)
                stored_now = redis_sync.get(regen.key)
                seen["before"] = (stored_now, rec.record_for(regen.key, stored_now))
                # A record in Redis listing as many replies wins over the process's own.
                seen["stale"] = rec.record_for(regen.key, orjson.dumps([["fast", "fast"]]))
                deadline = time.monotonic() + 15  # written 0.5 s later; on a loaded machine, later still
                while (rec.pending or redis_sync.get(regen.key) is None) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                seen["after"] = (redis_sync.get(regen.key), dict(rec.pending))
        finally:
            await client.aclose()
        return rec

    asyncio.run(run())
    stored_then, mine = seen["before"]
    assert stored_then is None and orjson.loads(mine) == [[first.pacing, None]]
    assert orjson.loads(seen["stale"]) == [["fast", "fast"]]
    written, pending = seen["after"]
    assert orjson.loads(written)[0][0] == first.pacing and pending == {}
    second = decide(None, random.Random(4), rejected_of(mine))
    assert second.rejected == ((first.pacing, None),)
