"""The catch-up check reads the streams and the consumer group of a real Redis."""

from __future__ import annotations

import redis

from bench.sim.cluster import backlog
from service import keys


def test_backlog_counts_undelivered_and_pending_until_acknowledged(redis_sync: redis.Redis) -> None:
    assert backlog(redis_sync, 2).drained  # no stream yet: nothing to wait for
    stream = keys.stream(1)
    redis_sync.xadd(stream, {"e": "{}"})
    assert backlog(redis_sync, 2).entries == 1  # no consumer group yet
    redis_sync.xgroup_create(stream, keys.CONSUMER_GROUP, id="0")
    redis_sync.xadd(stream, {"e": "{}"})
    assert backlog(redis_sync, 2).entries == 2
    got = redis_sync.xreadgroup(keys.CONSUMER_GROUP, "w1", {stream: ">"}, count=1)
    bl = backlog(redis_sync, 2)
    assert (bl.entries, bl.pending, bl.drained) == (1, 1, False)
    redis_sync.xreadgroup(keys.CONSUMER_GROUP, "w1", {stream: ">"})
    redis_sync.xack(stream, keys.CONSUMER_GROUP, got[0][1][0][0])
    assert (backlog(redis_sync, 2).entries, backlog(redis_sync, 2).pending) == (0, 1)
    pending = redis_sync.xpending_range(stream, keys.CONSUMER_GROUP, min="-", max="+", count=10)
    redis_sync.xack(stream, keys.CONSUMER_GROUP, *[p["message_id"] for p in pending])
    redis_sync.xadd(keys.dead_letters(0), {"e": "{}"})
    bl = backlog(redis_sync, 2)
    assert bl.drained and bl.dead == 1
