"""Fill the dashboard's aggregates the way the API, the workers and the gateway write them.

The events go through the real API where a test can (POST /v1/events); the fields other processes
own (workers, gateway, profile distributions, heartbeats) are written here in their documented
shapes (service/keys.py), so the dashboard's tests do not wait on those processes.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import httpx
import orjson
import redis

from service import keys

PACING = ("slow_burn", "balanced", "fast")
LAT_BUCKETS = (50, 100, 250, 500, 1000, 2500)


def post_events(client: httpx.Client, users: list[str], per_user: int = 3, bad: int = 2) -> dict[str, Any]:
    """Replies shown with outcomes, one duplicate and `bad` invalid events, through POST /v1/events."""
    now = int(time.time() * 1000)
    events: list[dict[str, Any]] = []
    for u in users:
        for i in range(per_user):
            rid = f"{u}-r{i}"
            events.append({"event_id": uuid.uuid4().hex, "type": "reply_shown", "user_id": u, "reply_id": rid,
                           "session_id": "s1", "timestamp": now - 5000, "reply": {"chars": 200 + 40 * i},
                           "conditioning": {"pacing": PACING[i % 3], "target_chars": 300, "explored": i == 2,
                                            "propensity": 0.8}})
            events.append({"event_id": uuid.uuid4().hex, "type": "repeat" if i == 0 else "user_message",
                           "user_id": u, "reply_id": rid, "timestamp": now - 4000,
                           **({} if i == 0 else {"chars": 50})})
    events.append(dict(events[0]))  # same event_id: a duplicate
    for _ in range(bad):
        events.append({"event_id": uuid.uuid4().hex, "type": "no_such_type", "user_id": users[0], "timestamp": now})
    r = client.post("/v1/events", json={"sent_at": now, "events": events})
    assert r.status_code == 202, r.text
    return r.json()


def fill_counters(r: redis.Redis, app: str, minutes: int = 90, now: float | None = None, scale: int = 1,
                  hours: bool = True) -> dict[str, int]:
    """Worker and gateway counters for the last `minutes`, in minute and hour hashes; returns the totals."""
    now = time.time() if now is None else now
    rng = random.Random(app)
    totals: dict[str, int] = {}
    pipe = r.pipeline(transaction=False)
    for back in range(minutes):
        minute = int(now // 60) - back
        fields = {
            "denoise:double_tap": rng.randint(0, 3) * scale, "denoise:implausible_timing": rng.randint(0, 4) * scale,
            "denoise:bot_suspect": rng.randint(0, 2) * scale, "denoise:late": rng.randint(0, 1) * scale,
            "worker:applied": rng.randint(40, 60) * scale,
            "replies:cond": 20 * scale, "repeats:cond": rng.randint(1, 3) * scale,
            "replies:uncond": 10 * scale, "repeats:uncond": rng.randint(2, 4) * scale,
            "ips:num": rng.randint(600_000, 800_000) * scale, "ips:den": 1_000_000 * scale,
            "upstream:requests": 30 * scale, "upstream:error:1002": (1 if back % 7 == 0 else 0) * scale,
            "upstream:error:1008": (1 if back % 23 == 0 else 0) * scale,
        }
        for bound in LAT_BUCKETS:
            fields[f"upstream:lat:{bound}"] = {50: 2, 100: 8, 250: 12, 500: 6, 1000: 1, 2500: 1}[bound] * scale
        for k, v in fields.items():
            if not v:
                continue
            totals[k] = totals.get(k, 0) + v
            pipe.hincrby(keys.stats_minute(app, minute), k, v)
            if hours:
                pipe.hincrby(keys.stats_hour(app, minute // 60), k, v)
        pipe.expire(keys.stats_minute(app, minute), keys.STATS_TTL_SECONDS)
    pipe.sadd(keys.APPS, app)
    pipe.execute()
    return totals


def fill_hours(r: redis.Redis, app: str, hours: int = 168, now: float | None = None, per_minute_scale: int = 1) -> None:
    """Hour hashes for long windows: an hour of fill_counters' minutes summed, without the 60x write cost."""
    now = time.time() if now is None else now
    minute_totals = fill_counters(r, f"{app}-scratch", minutes=60, now=now, scale=per_minute_scale, hours=False)
    pipe = r.pipeline(transaction=False)
    for back in range(hours):
        hour = int(now // 3600) - back
        for k, v in minute_totals.items():
            pipe.hincrby(keys.stats_hour(app, hour), k, v * (1 + back % 3))
    pipe.execute()
    for key in r.scan_iter(match=f"{keys.PREFIX}:stats:{app}-scratch:*", count=1000):
        r.delete(key)
    r.srem(keys.APPS, f"{app}-scratch")


def fill_users(r: redis.Redis, app: str, n: int, prefix: str = "user", recent: int = 8,
               now: float | None = None) -> list[str]:
    """n users with a profile document, recent replies, an index entry and the profile histogram."""
    now = time.time() if now is None else now
    rng = random.Random(f"{app}:{n}")
    users = [f"{prefix}-{i:05d}" for i in range(n)]
    hist: dict[str, int] = {}
    pipe = r.pipeline(transaction=False)
    for i, u in enumerate(users):
        target = int(rng.lognormvariate(5.8, 0.4))
        pacing = PACING[rng.randrange(3)] if i % 5 else "balanced"
        conf = round(min(0.99, rng.betavariate(4, 3)), 2)
        trust = "bot_suspect" if i % 97 == 3 else "normal"
        doc = {"app": app, "user_id": u, "character_id": None, "version": 5 + i % 9,
               "updated_at": "2026-11-25T18:00:00Z",
               "evidence": {"replies": 12 + i % 30, "events_used": 40 + i % 50,
                            "events_discounted": {"double_tap": i % 3, "bot_suspect": int(trust != "normal")}},
               "reply_length": {"target_chars": target, "interval": [int(target * 0.8), int(target * 1.2)],
                                "confidence": conf},
               "pacing": {"label": pacing, "scores": {p: round(1 / 3, 2) for p in PACING}, "confidence": conf},
               "engagement": {"repeat_rate": 0.1, "repeat_rate_interval": [0.05, 0.16]}, "trust": trust,
               "conditioning": {"instructions": "keep replies short", "max_completion_tokens": 200}}
        pipe.set(keys.profile(app, u), orjson.dumps(doc))
        pipe.zadd(keys.app_users(app), {u: int((now - i) * 1000)})
        for j in range(recent):
            item = {"reply_id": f"{u}-r{j}", "t": int((now - 60 * j) * 1000), "chars": target + 10 * j,
                    "dialogue_share": 0.4,
                    "applied": {"pacing": pacing, "target_chars": target, "explored": j == 1, "propensity": 0.85}
                    if j % 3 else None,
                    "outcomes": ["repeat"] if j % 4 == 0 else [{"type": "user_message", "chars": 40}]}
            pipe.rpush(keys.user_key(app, u, "recent"), orjson.dumps(item))
        bucket = min(1600, (target // 100) * 100)
        for field in (f"len:{bucket}", f"pacing:{pacing}", f"conf:{min(9, int(conf * 10))}", f"trust:{trust}"):
            hist[field] = hist.get(field, 0) + 1
        if i % 1000 == 999:
            pipe.execute()
    for k, v in hist.items():
        pipe.hincrby(keys.profile_hist(app), k, v)
    pipe.sadd(keys.APPS, app)
    pipe.execute()
    return users


def fill_workers(r: redis.Redis, partitions: int, now: float | None = None) -> None:
    """Two workers (one alive, one whose heartbeat stopped), a consumer group with pending entries, dead letters."""
    now = time.time() if now is None else now
    now_ms = int(now * 1000)
    r.zadd(keys.WORKERS, {"w-alive": now_ms - 1000, "w-dead": now_ms - 600_000})
    r.hset(keys.worker_info("w-alive"), mapping={"pid": 4242, "started_at": now_ms - 3_600_000, "applied_total": 123456,
                                                 "events_per_second": 850.5, "pending": 3, "last_seen": now_ms - 1000})
    r.hset(keys.worker_info("w-dead"), mapping={"pid": 4141, "started_at": now_ms - 7_200_000, "applied_total": 999,
                                                "events_per_second": 0, "pending": 0, "last_seen": now_ms - 600_000})
    for p in range(partitions):
        stream = keys.stream(p)
        try:
            r.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError:
            pass  # the group exists already
    r.xreadgroup(keys.CONSUMER_GROUP, "w-alive", {keys.stream(0): ">"}, count=2)
    r.xadd(keys.dead_letters(1), {"e": b"{}", "error": "poison"})
