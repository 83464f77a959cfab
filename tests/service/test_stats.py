"""service/stats.py and GET /v1/admin/stats: figures from the aggregates, windows, resolution, auth."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from service import keys, stats
from service.errors import BadRequest
from service.settings import Settings
from service.store import StatsBuffer, Store, connect
from tests.conftest import ApiServer
from tests.dashboard_data import fill_counters, fill_users, fill_workers, post_events


def collect(settings: Settings, app: str, window: str, now: float | None = None) -> dict:
    async def go() -> dict:
        client = connect(settings.redis_url)
        try:
            store = Store(client, settings.partitions, settings.dedup_ttl_seconds)
            return await stats.collect(store, app, stats.parse_window(window), partitions=settings.partitions,
                                       heartbeat_s=settings.worker_heartbeat_seconds, now=now)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(("label", "seconds", "resolution", "step"), [
    ("15m", 900, 60, 60), ("1h", 3600, 60, 60), ("6h", 21600, 60, 180), ("24h", 86400, 3600, 3600),
    ("7d", 604800, 3600, 7200), ("90m", 5400, 60, 60),
])
def test_windows_pick_minute_buckets_up_to_6h_and_hours_beyond(label: str, seconds: int, resolution: int, step: int) -> None:
    w = stats.parse_window(label)
    assert (w.seconds, w.resolution, w.step) == (seconds, resolution, step)
    assert w.seconds / w.step <= stats.MAX_POINTS


@pytest.mark.parametrize(("text", "fragment"), [("1w", "not understood"), ("abc", "not understood"),
                                                ("1m", "between 5m and 7d"), ("8d", "between 5m and 7d")])
def test_bad_windows_are_refused_with_a_message_saying_what_to_send(text: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        stats.parse_window(text)
    assert info.value.code == "invalid_window"
    assert fragment in info.value.message


def test_percentiles_come_from_histogram_bucket_bounds() -> None:
    buckets = {"50": 50, "100": 40, "250": 9, "inf": 1}
    assert stats.percentile_from_histogram(buckets, 0.5) == 50
    assert stats.percentile_from_histogram(buckets, 0.9) == 100
    assert stats.percentile_from_histogram(buckets, 0.99) == 250
    assert stats.percentile_from_histogram(buckets, 1.0) == 250  # overflow reports the largest finite bound
    assert stats.percentile_from_histogram({}, 0.5) is None


def test_stats_buffer_flush_writes_the_hour_hash_too(settings: Settings, redis_sync: redis.Redis) -> None:
    now = time.time()

    async def go() -> None:
        client = connect(settings.redis_url)
        buf = StatsBuffer()
        buf.add("demo", "accepted:repeat", 3, now=now)
        buf.add("demo", "accepted:repeat", 4, now=now - 60)
        await buf.flush(client)
        await client.aclose()

    asyncio.run(go())
    hour = int(now // 3600)
    minute_total = sum(int(redis_sync.hget(keys.stats_minute("demo", m), "accepted:repeat") or 0)
                       for m in (int(now // 60), int(now // 60) - 1))
    hour_total = sum(int(redis_sync.hget(keys.stats_hour("demo", h), "accepted:repeat") or 0) for h in (hour, hour - 1))
    assert minute_total == hour_total == 7
    assert 0 < redis_sync.ttl(keys.stats_hour("demo", int((now - 60) // 3600))) <= keys.STATS_TTL_SECONDS


def test_minute_and_hour_resolutions_agree_on_totals(settings: Settings, redis_sync: redis.Redis) -> None:
    now = (int(time.time() // 3600) * 3600) + 1800  # mid-hour, so 3 h of minutes fall in whole hours + this one
    totals = fill_counters(redis_sync, "demo", minutes=150, now=now)
    short = collect(settings, "demo", "6h", now=now)
    long = collect(settings, "demo", "24h", now=now)
    assert short["resolution"] == "minute" and long["resolution"] == "hour"
    for doc in (short, long):
        assert sum(doc["workers"]["applied"]) == totals["worker:applied"]
        assert doc["denoising"]["totals"]["double_tap"] == totals["denoise:double_tap"]
        assert doc["loop"]["totals"]["replies_cond"] == totals["replies:cond"]
        assert doc["loop"]["upstream"]["totals"]["errors_by_code"]["1002"] == totals["upstream:error:1002"]
        assert len(doc["t"]) == len(doc["workers"]["applied"])
    assert len(short["t"]) in (120, 121) and len(long["t"]) in (24, 25)  # + a partial point when unaligned


def test_loop_figures_repeat_rates_ips_and_latency(settings: Settings, redis_sync: redis.Redis) -> None:
    now = time.time()
    totals = fill_counters(redis_sync, "demo", minutes=30, now=now)
    doc = collect(settings, "demo", "1h", now=now)
    loop = doc["loop"]
    rate_c = totals["repeats:cond"] / totals["replies:cond"]
    rate_u = totals["repeats:uncond"] / totals["replies:uncond"]
    assert loop["totals"]["rate_cond"] == pytest.approx(rate_c, abs=1e-4)
    assert loop["totals"]["delta"] == pytest.approx(rate_c - rate_u, abs=2e-4)
    assert loop["ips"]["estimate"] == pytest.approx(totals["ips:num"] / totals["ips:den"], abs=1e-4)
    # Latency buckets 50:2 100:8 250:12 500:6 1000:1 2500:1 per minute: p50 in 250, p99 in 2500... of 30 samples.
    assert loop["upstream"]["p50_ms"] == 250
    assert loop["upstream"]["p99_ms"] == 2500
    assert loop["repeat_rate"]["cond"][-1] is not None and loop["repeat_rate"]["cond"][0] is None
    assert loop["upstream"]["error_rate"] == pytest.approx(
        (totals["upstream:error:1002"] + totals["upstream:error:1008"]) / totals["upstream:requests"], abs=1e-4)


def test_profile_distributions_come_from_the_histogram_hash(settings: Settings, redis_sync: redis.Redis) -> None:
    users = fill_users(redis_sync, "demo", 200, recent=0)
    doc = collect(settings, "demo", "1h")
    p = doc["profiles"]
    assert p["users"] == len(users) == p["active_users"]
    assert sum(p["pacing"].values()) == 200 and set(p["pacing"]) <= {"slow_burn", "balanced", "fast"}
    assert sum(p["confidence"]) == 200 and len(p["confidence"]) == 10
    assert sum(b["count"] for b in p["length"]) == 200
    assert p["bots"] == p["trust"]["bot_suspect"] == sum(1 for i in range(200) if i % 97 == 3)
    assert [int(b["bucket"]) for b in p["length"]] == sorted(int(b["bucket"]) for b in p["length"])


def test_workers_lag_pending_and_dead_letters_from_the_streams(settings: Settings, redis_sync: redis.Redis) -> None:
    for i in range(5):
        redis_sync.xadd(keys.stream(0), {"e": b"{}"})
    redis_sync.xadd(keys.stream(2), {"e": b"{}"})  # a partition whose group does not exist yet
    redis_sync.xgroup_create(keys.stream(0), keys.CONSUMER_GROUP, id="0")
    fill_workers(redis_sync, 1)  # reads 2 of partition 0's 5 entries; one dead letter on partition 1
    doc = collect(settings, "demo", "15m")
    w = doc["workers"]
    assert (w["alive"], w["known"]) == (1, 2)
    assert w["throughput_eps"] == 850.5
    assert w["pending"] == 2
    assert w["lag"] == 3 + 1
    assert w["dead_letters"] == 1
    assert w["oldest_unprocessed_age_s"] is not None and w["oldest_unprocessed_age_s"] < 60
    assert [x["id"] for x in w["workers"]] == ["w-alive", "w-dead"]
    checks = {c["name"]: c["status"] for c in doc["health"]["checks"]}
    assert checks["Workers"] == "ok" and checks["Dead letters"] == "warn"
    assert doc["health"]["status"] == "warn" and doc["health"]["reasons"] == ["Dead letters: 1"]


def test_health_is_bad_without_a_live_worker(settings: Settings, redis_sync: redis.Redis) -> None:
    fill_counters(redis_sync, "demo", minutes=5)
    doc = collect(settings, "demo", "15m")
    assert doc["health"]["status"] == "bad"
    assert any(c["name"] == "Workers" and c["status"] == "bad" for c in doc["health"]["checks"])


# --- the route ---------------------------------------------------------------------------------


def test_stats_route_counts_events_posted_through_the_api(api: ApiServer, redis_sync: redis.Redis) -> None:
    key = api.app_key(("ingest",), app="demo")
    with api.client(key) as c:
        result = post_events(c, ["u1", "u2"], per_user=3, bad=2)
    assert result["accepted"] == 12 and result["duplicates"] == 1
    deadline = time.monotonic() + 20  # the counters are flushed about once a second, on a loaded machine later
    with api.admin() as admin:
        while True:
            r = admin.get("/v1/admin/stats", params={"app": "demo", "window": "15m"})
            assert r.status_code == 200, r.text
            doc = r.json()
            if doc["traffic"]["totals"]["accepted"] == 12 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    t = doc["traffic"]["totals"]
    assert t["accepted_by_type"] == {"reply_shown": 6, "repeat": 2, "user_message": 4}
    assert t["duplicate"] == 1 and t["rejected_by_reason"] == {"unknown_type": 2}
    assert r.headers["cache-control"] == "no-store"


def test_stats_route_refuses_app_keys_and_anonymous_callers(api: ApiServer) -> None:
    key = api.app_key(("ingest", "read", "condition", "manage"), app="demo")
    with api.client(key) as c:
        r = c.get("/v1/admin/stats", params={"app": "demo"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "admin_only" and "admin key" in r.json()["error"]["message"]
    with api.client() as c:
        r = c.get("/v1/admin/stats", params={"app": "demo"})
    assert r.status_code == 401 and "/dashboard" in r.json()["error"]["message"]


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"app": "demo", "window": "3 days"}, 400, "invalid_window"),
    ({"window": "1h"}, 400, "app_required"),
    ({"app": "Bad App"}, 400, "invalid_app"),
    ({"app": "nosuchapp"}, 404, "app_not_found"),
])
def test_stats_route_explains_bad_parameters(api: ApiServer, params: dict, status: int, code: str) -> None:
    api.app_key(("ingest",), app="demo")
    with api.admin() as admin:
        r = admin.get("/v1/admin/stats", params=params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_stats_never_mix_apps(api: ApiServer, redis_sync: redis.Redis) -> None:
    fill_counters(redis_sync, "alpha", minutes=10)
    fill_users(redis_sync, "alpha", 30, recent=0)
    fill_users(redis_sync, "beta", 7, recent=0)
    with api.admin() as admin:
        beta = admin.get("/v1/admin/stats", params={"app": "beta", "window": "1h"}).json()
    assert beta["app"] == "beta"
    assert beta["profiles"]["users"] == 7
    assert sum(beta["workers"]["applied"]) == 0 and beta["denoising"]["totals"] == {}
