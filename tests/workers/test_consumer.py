"""The worker loop in-process against real Redis: exactly once, dead letters, deletes, takeover, trimming."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import OutOfMemoryError, RedisError

from service import keys
from service import store as store_mod
from service.profiles import delete_user
from service.settings import Settings
from tests.conftest import full_redis, make_settings
from tests.workers.helpers import drain, ingest, run, session
from workers import apply as apply_mod
from workers import resp as resp_mod
from workers.consumer import BATCH_MAX, INITIAL_RATE, READ_GROUPS, Worker, read_groups


def _settings(redis_url: str, tmp_path: Any, **kw: Any) -> Settings:
    return make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0, **kw)


def _profile(r: redis.Redis, user: str, app: str = "demo") -> dict[str, Any] | None:
    raw = r.get(keys.profile(app, user))
    return orjson.loads(raw) if raw else None


def _undisturbed_then_queued_again(s: Settings, events: list[dict[str, Any]], users: list[str],
                                   redis_sync: redis.Redis) -> dict[str, Any]:
    """The profiles one worker learns from the events undisturbed; then a fresh Redis with the same events
    queued, for a run with something in the way to end in the same profiles."""
    run(ingest(s, "demo", events))
    assert run(drain(s)) == len(events)
    clean = {u: _strip(_profile(redis_sync, u)) for u in users}
    redis_sync.flushall()
    run(ingest(s, "demo", events))
    return clean


def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k not in ("version", "updated_at")}


def test_profiles_are_learned_from_the_streams(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    run(ingest(s, "demo", session("long", 40, pref=900) + session("short", 40, pref=220, seed=3)))
    assert run(drain(s)) == 160
    long_, short = _profile(redis_sync, "long"), _profile(redis_sync, "short")
    assert long_ and short
    assert long_["reply_length"]["target_chars"] > 1.8 * short["reply_length"]["target_chars"]
    assert long_["evidence"] == {"replies": 40, "events_used": 80, "events_discounted": {}}
    assert set(long_["pacing"]["posterior"]) == {"slow_burn", "balanced", "fast"}
    assert redis_sync.zcard(keys.app_users("demo")) == 2
    assert redis_sync.llen(keys.user_recent("demo", "long")) == 40
    hist = {k.decode(): int(v) for k, v in redis_sync.hgetall(keys.profile_hist("demo")).items()}
    assert hist["trust:normal"] == 2 and sum(v for k, v in hist.items() if k.startswith("pacing:")) == 2
    for p in range(s.partitions):  # consumed entries are trimmed once acknowledged
        assert redis_sync.xlen(keys.stream(p)) == 0


def test_the_redis_py_fallback_learns_the_same_profiles(redis_url: str, tmp_path: Any,
                                                        redis_sync: redis.Redis, monkeypatch: Any) -> None:
    events = [e for i in range(8) for e in session(f"fb{i}", 6, seed=i, pref=300 + 100 * i)]
    docs = []
    for lean in (True, False):  # False: what a TLS connection uses (workers/resp.py)
        monkeypatch.setattr(resp_mod, "lean_capable", lambda client, lean=lean: lean)
        redis_sync.flushall()
        s = _settings(redis_url, tmp_path, worker_batch_size=10)
        run(ingest(s, "demo", events))
        assert run(drain(s)) == len(events)
        docs.append({f"fb{i}": _strip(_profile(redis_sync, f"fb{i}")) for i in range(8)})
    assert all(docs[0].values()) and docs[0] == docs[1]


def test_redelivered_entry_changes_nothing(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    events = session("u1", 12)
    run(ingest(s, "demo", events))
    run(drain(s))
    before = redis_sync.get(keys.user_state("demo", "u1"))
    # The same entries delivered again (as after a crash between commit and XACK): same stream ids.
    p = keys.partition_of("demo", "u1", s.partitions)
    entries = redis_sync.xrange(keys.stream(p))
    assert entries == []  # trimmed; re-append the originals under their old ids into a fresh stream

    async def redeliver() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "again")
        state = orjson.loads(before.partition(b"|")[2])
        wm = state["wm"]
        from workers.apply import UserWork  # noqa: PLC0415

        work = UserWork("demo", "u1", p, [(wm, {**events[-1], "app": "demo"})])
        await w.applier.apply([work])
        await client.aclose()

    run(redeliver())
    assert redis_sync.get(keys.user_state("demo", "u1")) == before


def test_duplicate_action_under_new_event_id_counts_once(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    events = session("u1", 10)
    dup = {**events[1], "event_id": events[1]["event_id"] + "-retry"}
    run(ingest(s, "demo", [*events, dup]))
    run(drain(s))
    doc = _profile(redis_sync, "u1")
    assert doc is not None
    assert doc["evidence"]["events_used"] == 20
    assert doc["evidence"]["events_discounted"] == {"duplicate": 1}


def test_double_tap_is_discounted(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    t = 1_764_000_000_000
    evs = [{"type": "reply_shown", "event_id": "a", "user_id": "u", "reply_id": "r", "session_id": "s", "t": t,
            "rt": t, "reply": {"chars": 300}},
           {"type": "repeat", "event_id": "b", "user_id": "u", "reply_id": "r", "t": t + 5000, "rt": t},
           {"type": "repeat", "event_id": "c", "user_id": "u", "reply_id": "r", "t": t + 5400, "rt": t}]
    run(ingest(s, "demo", evs))
    run(drain(s))
    doc = _profile(redis_sync, "u")
    assert doc is not None and doc["evidence"]["events_discounted"] == {"double_tap": 1}
    recent = [orjson.loads(x) for x in redis_sync.lrange(keys.user_recent("demo", "u"), 0, -1)]
    assert recent[0]["outcomes"] == ["repeat"]


@pytest.mark.parametrize("lean", [True, False])  # False: the redis-py pipeline a TLS connection uses
def test_poison_entry_goes_to_dead_letters_and_partition_flows(redis_url: str, tmp_path: Any,
                                                                redis_sync: redis.Redis, monkeypatch: Any,
                                                                lean: bool) -> None:
    monkeypatch.setattr(resp_mod, "lean_capable", lambda client: lean)
    s = _settings(redis_url, tmp_path)
    p = keys.partition_of("demo", "u1", s.partitions)
    run(ingest(s, "demo", session("u1", 3)))
    redis_sync.xadd(keys.stream(p), {"e": b"{not json"})
    redis_sync.xadd(keys.stream(p), {"e": orjson.dumps({"app": "demo", "user_id": "u1", "type": "repeat", "t": "x"})})
    run(ingest(s, "demo", session("u1", 6, prefix="later-", start=1_764_100_000_000)))
    run(drain(s))
    dead = redis_sync.xrange(keys.dead_letters(p))
    assert len(dead) == 2
    reasons = sorted(d[1][b"reason"].decode() for d in dead)
    assert "not JSON" in reasons[1] and "'t'" in reasons[0]
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == 18  # everything after the poison applied
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_an_event_that_breaks_the_batched_estimate_is_dead_lettered_alone(redis_url: str, tmp_path: Any,
                                                                            redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    users = [f"est{i}" for i in range(6)]
    run(ingest(s, "demo", [e for i, u in enumerate(users) for e in session(u, 4, seed=i)]))
    p = keys.partition_of("demo", "est1", s.partitions)
    # Valid enough to pass parsing; its reply's length is text, which only the estimate trips over once the
    # repeat closes the reply.
    bad = {"app": "demo", "user_id": "est1", "type": "reply_shown", "reply_id": "bad", "session_id": "s9",
           "t": 1_764_000_500_000, "rt": 1_764_000_500_000, "reply": {"chars": "long"}}
    redis_sync.xadd(keys.stream(p), {"e": orjson.dumps(bad)})
    redis_sync.xadd(keys.stream(p), {"e": orjson.dumps({**bad, "type": "repeat", "t": bad["t"] + 5000})})
    run(drain(s))
    dead = redis_sync.xrange(keys.dead_letters(p))
    assert len(dead) == 1 and "TypeError" in dead[0][1][b"reason"].decode()
    for u in users:
        doc = _profile(redis_sync, u)
        assert doc is not None
        assert doc["evidence"]["events_used"] == (9 if u == "est1" else 8)  # est1: all but the repeat
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_entry_delivered_too_often_is_dead_lettered(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path, worker_dead_letter_deliveries=2)
    run(ingest(s, "demo", session("u1", 2)))
    p = keys.partition_of("demo", "u1", s.partitions)
    redis_sync.xgroup_create(keys.stream(p), keys.CONSUMER_GROUP, id="0", mkstream=True)
    for _ in range(3):  # three deliveries to a consumer that never acknowledged (it kept crashing)
        redis_sync.xreadgroup(keys.CONSUMER_GROUP, "crashy", {keys.stream(p): "0" if _ else ">"}, count=1)
    run(drain(s))
    dead = redis_sync.xrange(keys.dead_letters(p))
    assert len(dead) == 1 and b"delivered" in dead[0][1][b"reason"]
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == 3


def test_a_recovery_counts_one_delivery(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    """Entries read once by a worker that died: taking them over is their second delivery, not their third
    (the claim counts none), so with 2 deliveries allowed they are applied, not dead-lettered."""
    s = _settings(redis_url, tmp_path, worker_dead_letter_deliveries=2)
    run(ingest(s, "demo", session("u1", 2)))
    p = keys.partition_of("demo", "u1", s.partitions)
    redis_sync.xgroup_create(keys.stream(p), keys.CONSUMER_GROUP, id="0", mkstream=True)
    assert len(redis_sync.xreadgroup(keys.CONSUMER_GROUP, "died", {keys.stream(p): ">"}, count=100)[0][1]) == 4
    run(drain(s))
    assert sum(redis_sync.xlen(keys.dead_letters(q)) for q in range(s.partitions)) == 0
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == 4
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_delete_while_events_are_queued_leaves_nothing(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)
    run(ingest(s, "demo", session("gone", 10)))
    run(drain(s))
    assert _profile(redis_sync, "gone") is not None
    run(ingest(s, "demo", session("gone", 10, prefix="more-", start=1_764_100_000_000)))  # queued, not applied

    async def delete() -> dict[str, Any]:
        client = store_mod.connect(redis_url)
        try:
            return await delete_user(store_mod.Store(client, s.partitions, 86400), "demo", "gone", s.retention_days)
        finally:
            await client.aclose()

    res = run(delete())
    assert "profile" in res["removed"]["keys"] and res["removed"]["user_index"]
    run(drain(s))
    left = [k for k in redis_sync.keys("*gone*") if not k.endswith(b"deleted_at") and b":seen:" not in k]
    assert left == []
    assert redis_sync.zscore(keys.app_users("demo"), "gone") is None
    assert redis_sync.hget(keys.population_users("demo"), "gone") is None
    hist = {k.decode(): int(v) for k, v in redis_sync.hgetall(keys.profile_hist("demo")).items()}
    assert all(v == 0 for v in hist.values())


def test_takeover_claims_pending_entries_of_a_dead_worker(redis_url: str, tmp_path: Any,
                                                          redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path, worker_lease_seconds=0.3)
    events = session("u1", 15)
    run(ingest(s, "demo", events))

    async def crash_midway() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "doomed")
        await w.ensure_groups()
        await w.heartbeat()
        # Read a batch and die before applying or acknowledging it.
        await client.xreadgroup(keys.CONSUMER_GROUP, "doomed", {keys.stream(p): ">" for p in w.owned}, count=7)
        await client.aclose()

    run(crash_midway())
    redis_sync.zrem(keys.WORKERS, "doomed")
    run(asyncio.sleep(0.4))  # its leases expire
    run(drain(_settings(redis_url, tmp_path), "heir"))  # the usual lease: a slow machine must not cut it short
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == 30
    p = keys.partition_of("demo", "u1", s.partitions)
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_a_worker_whose_lease_may_have_lapsed_reads_nothing_new(redis_url: str, tmp_path: Any,
                                                                 redis_sync: redis.Redis) -> None:
    """A stalled heartbeat: the lease may be gone and the partition recovered by the next owner, so entries
    read now would sit pending behind the newer ones it applies. Reads wait for the lease to be renewed."""
    s = _settings(redis_url, tmp_path, worker_lease_seconds=5)
    run(ingest(s, "demo", session("u1", 6)))
    p = keys.partition_of("demo", "u1", s.partitions)

    async def scenario() -> tuple[int, int]:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "stalled")
        await w.ensure_groups()
        await w.heartbeat()
        assert w.readable() == sorted(w.owned)
        for q in w.owned:
            w.lease_until[q] -= 3  # less than half a lease left, as after a heartbeat stalled for 3 s
        stalled = await w.step()
        await w.heartbeat()
        renewed = await w.step()
        await w.applier.pipe.aclose()
        await client.aclose()
        return stalled, renewed

    assert run(scenario()) == (0, 12)
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_a_failed_round_is_applied_before_any_newer_entry(redis_url: str, tmp_path: Any,
                                                          redis_sync: redis.Redis, monkeypatch: Any) -> None:
    s = _settings(redis_url, tmp_path, worker_batch_size=4, worker_batch_seconds=0)
    events = session("u1", 10)
    run(ingest(s, "demo", events))
    real_apply = apply_mod.Applier.apply
    calls = {"n": 0}

    async def flaky(self: Any, *args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("Redis went away mid-round")
        return await real_apply(self, *args, **kw)

    monkeypatch.setattr(apply_mod.Applier, "apply", flaky)

    async def scenario() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "w")
        await w.ensure_groups()
        await w.heartbeat()
        try:
            await w.step()
        except ConnectionError:
            pass
        else:
            raise AssertionError("the first round should have failed")
        while await w.step():
            pass
        await w.applier.pipe.aclose()
        await client.aclose()

    run(scenario())
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == len(events)
    p = keys.partition_of("demo", "u1", s.partitions)
    assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_fair_share_of_partitions_between_workers(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = _settings(redis_url, tmp_path)

    async def two() -> tuple[set[int], set[int]]:
        c1, c2 = store_mod.connect(redis_url), store_mod.connect(redis_url)
        a, b = Worker(s, c1, "a"), Worker(s, c2, "b")
        await a.ensure_groups()
        await a.heartbeat()
        await b.heartbeat()
        await a.heartbeat()  # a sees two workers now and gives back the extra partitions
        await b.heartbeat()
        owned = (set(a.owned), set(b.owned))
        await a.release_all()
        await b.release_all()
        await c1.aclose()
        await c2.aclose()
        return owned

    oa, ob = run(two())
    assert not oa & ob and len(oa | ob) == s.partitions and len(oa) == len(ob) == s.partitions // 2


def test_reads_ask_for_about_batch_seconds_of_work_never_less_than_the_batch_size(redis_url: str,
                                                                                  tmp_path: Any) -> None:
    s = _settings(redis_url, tmp_path, worker_batch_size=50, worker_batch_seconds=2.0)
    w = Worker(s, store_mod.connect(redis_url), "w")
    assert w.read_count(4) == int(INITIAL_RATE * 2.0 / 4)  # before any full read: the assumed rate
    for _ in range(30):
        w.measured(40, 1.0)  # a slow worker: 40 entries per second
    assert w.read_count(4) == 50
    for _ in range(30):
        w.measured(1_000_000, 1.0)
    assert w.read_count(1) == BATCH_MAX
    fixed = Worker(_settings(redis_url, tmp_path, worker_batch_size=50, worker_batch_seconds=0),
                   store_mod.connect(redis_url), "f")
    assert fixed.read_count(4) == 50


def test_a_backlog_is_one_commit_per_user_and_the_same_profile_as_small_batches(redis_url: str, tmp_path: Any,
                                                                                redis_sync: redis.Redis) -> None:
    events = session("a", 25, pref=300) + session("b", 25, pref=900, seed=2)
    events.sort(key=lambda e: e["t"])  # interleaved, as users arrive
    docs = {}
    for seconds in (0.0, 5.0):
        redis_sync.flushall()
        s = _settings(redis_url, tmp_path, worker_batch_size=4, worker_batch_seconds=seconds)
        run(ingest(s, "demo", events))
        assert run(drain(s)) == 100
        docs[seconds] = {u: _profile(redis_sync, u) for u in ("a", "b")}
    for u in ("a", "b"):
        small, large = docs[0.0][u], docs[5.0][u]
        assert small and large
        assert small["version"] > 10 and large["version"] == 1
        assert _strip(small) == _strip(large)


def test_a_long_batch_lets_other_tasks_run(redis_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(apply_mod, "YIELD_SECONDS", 0.0)  # yield between every two users
    s = _settings(redis_url, tmp_path)
    run(ingest(s, "demo", [e for i in range(20) for e in session(f"u{i}", 3, seed=i)]))
    ticks = 0
    seen: list[int] = []  # the other task's progress at each user's update
    advance = apply_mod.Applier._advance

    def spy(self: Any, *a: Any) -> Any:
        seen.append(ticks)
        return advance(self, *a)

    monkeypatch.setattr(apply_mod.Applier, "_advance", spy)

    async def go() -> None:
        async def other() -> None:  # stands for the heartbeat that renews the leases
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(other())
        await drain(s)
        task.cancel()

    run(go())
    assert len(seen) == 20
    # Users are updated one after another without awaiting Redis in between: only the yield lets it run.
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))


def test_a_backlog_is_read_in_groups_and_a_failed_group_loses_nothing(redis_url: str, tmp_path: Any,
                                                                      redis_sync: redis.Redis,
                                                                      monkeypatch: Any) -> None:
    """Under a backlog the partitions are read in groups, the next group's read sent while one is applied.
    A round that fails in the second group leaves its entries and the next group's (read, not taken)
    pending; they are recovered and applied once, into the profiles an undisturbed run learns."""
    s = _settings(redis_url, tmp_path, partitions=8)
    events = [e for i in range(24) for e in session(f"g{i}", 8, seed=i, pref=250 + 60 * i)]
    users = [f"g{i}" for i in range(24)]
    assert len({keys.partition_of("demo", u, s.partitions) for u in users}) == s.partitions
    clean = _undisturbed_then_queued_again(s, events, users, redis_sync)
    real_apply = apply_mod.Applier.apply
    calls: list[int] = []

    async def flaky(self: Any, work: Any, *args: Any, **kw: Any) -> Any:
        calls.append(len({w.partition for w in work}))
        if len(calls) == 2:
            await kw["prefetch"]()  # the third group's read is out when the round fails
            raise ConnectionError("Redis went away mid-round")
        return await real_apply(self, work, *args, **kw)

    monkeypatch.setattr(apply_mod.Applier, "apply", flaky)

    async def scenario() -> int:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "w")
        await w.ensure_groups()
        await w.heartbeat()
        assert sorted(w.owned) == list(range(s.partitions))
        with pytest.raises(ConnectionError):
            await w.step()
        total = 0
        while n := await w.step():
            total += n
        await w.applier.pipe.aclose()
        await client.aclose()
        return total

    groups = read_groups(sorted(range(s.partitions)), READ_GROUPS)
    assert [len(g) for g in groups] == [1, 2, 2, 3]  # 8 partitions, the first group half the others
    last_group = {u for u in users if keys.partition_of("demo", u, s.partitions) in groups[3]}
    # After the failure the next step recovers the pending entries first, then reads the fourth group anew.
    assert run(scenario()) == sum(1 for e in events if e["user_id"] in last_group)
    assert calls[:2] == [1, 2]
    assert {u: _strip(_profile(redis_sync, u)) for u in users} == clean
    for p in range(s.partitions):
        assert redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0


def test_a_group_is_not_read_from_partitions_given_back_during_the_step(
        redis_url: str, tmp_path: Any, redis_sync: redis.Redis, monkeypatch: Any) -> None:
    # A second worker joins while the first works through a backlog in groups: the first gives partitions
    # back between its groups' reads. A later group must not read new entries there: the new owner has
    # recovered the partition and applies newer entries, whose watermark would pass the old read's by.
    s = _settings(redis_url, tmp_path, partitions=8, worker_batch_size=4, worker_batch_seconds=0)
    users = [f"r{i}" for i in range(24)]
    events = [e for i, u in enumerate(users) for e in session(u, 8, seed=i, pref=250 + 60 * i)]
    clean = _undisturbed_then_queued_again(s, events, users, redis_sync)
    real_apply = apply_mod.Applier.apply
    read_by_w1: list[list[int]] = []

    async def scenario() -> None:
        c1, c2 = store_mod.connect(redis_url), store_mod.connect(redis_url)
        w1, w2 = Worker(s, c1, "w1"), Worker(s, c2, "w2")

        async def patched(self: Any, work: Any, *a: Any, **kw: Any) -> Any:
            if self is w1.applier and kw.get("prefetch") is not None:
                read_by_w1.append(sorted({w.partition for w in work}))
                if len(read_by_w1) == 1:  # w2 starts: w1 gives partitions back, w2 takes and recovers them
                    redis_sync.zadd(keys.WORKERS, {"w2": int(time.time() * 1000)})
                    await w1.heartbeat()
                    await w2.heartbeat()
                    for p in sorted(w2.owned):
                        await w2.recover(p)
                    assert w2.owned and not (w1.owned & w2.owned)
                elif len(read_by_w1) >= 2:  # w2 goes on with its partitions meanwhile
                    await w2.step()
            return await real_apply(self, work, *a, **kw)

        monkeypatch.setattr(apply_mod.Applier, "apply", patched)
        await w1.ensure_groups()
        await w1.heartbeat()
        await w1.step()
        given_back = set(range(8)) - w1.owned
        assert not any(set(parts) & given_back for parts in read_by_w1[1:]), read_by_w1
        while await w2.step():
            pass
        while await w1.step():
            pass
        for w, c in ((w1, c1), (w2, c2)):
            await w.applier.pipe.aclose()
            await c.aclose()

    run(scenario())
    assert len(read_by_w1) >= 2  # the backlog was read in groups
    assert {u: _strip(_profile(redis_sync, u)) for u in users} == clean
    assert all(redis_sync.xpending(keys.stream(p), keys.CONSUMER_GROUP)["pending"] == 0 for p in range(8))


def test_a_full_redis_stalls_the_worker_without_dead_lettering_its_events(redis_url: str, tmp_path: Any,
                                                                         redis_sync: redis.Redis) -> None:
    """Redis at its memory bound (maxmemory, noeviction) refuses every commit. Reading the pending entries
    again each retry would count deliveries toward dead letters, so once memory is freed they would be
    dead-lettered instead of applied. The worker waits for Redis to take writes again, then applies them."""
    # A recovery counts a delivery (the read of the pending entries), so 4 retries would reach 5, over the 2
    # allowed.
    s = _settings(redis_url, tmp_path, worker_lease_seconds=60, worker_dead_letter_deliveries=2)
    run(ingest(s, "demo", session("u1", 5)))

    async def scenario() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "full")
        await w.ensure_groups()
        await w.heartbeat()
        with full_redis(redis_sync):
            task = asyncio.create_task(w.loop())
            await asyncio.sleep(4.5)  # four retries' worth
            assert _profile(redis_sync, "u1") is None
        await _stop_once_applied(w, task, redis_sync)
        await client.aclose()

    run(scenario())
    _assert_applied_once_without_dead_letters(redis_sync, s)


def test_a_redis_that_lost_its_data_gets_its_groups_again(redis_url: str, tmp_path: Any,
                                                         redis_sync: redis.Redis) -> None:
    """Redis restarted without persistence (or a FLUSHALL): every read failed with NOGROUP and was retried
    forever, so the events accepted afterwards were never applied. The worker makes the groups again."""
    s = _settings(redis_url, tmp_path, worker_lease_seconds=60)

    async def scenario() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "amnesia")
        await w.ensure_groups()
        await w.heartbeat()
        task = asyncio.create_task(w.loop())
        await asyncio.sleep(0.3)
        redis_sync.flushall()
        await ingest(s, "demo", session("u1", 5))
        await _stop_once_applied(w, task, redis_sync)
        await client.aclose()

    run(scenario())
    _assert_applied_once_without_dead_letters(redis_sync, s)


async def _stop_once_applied(w: Worker, task: asyncio.Task[None], redis_sync: redis.Redis) -> None:
    """Let the worker loop run until u1's profile appears (20 s at most), then stop it and hand back."""
    deadline = time.monotonic() + 20
    while _profile(redis_sync, "u1") is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    w.stopping.set()
    await task
    await w.release_all()
    assert not w.owned and not w.recovered and not w._oom_retries  # nothing owed carries over to a new lease


def _assert_applied_once_without_dead_letters(redis_sync: redis.Redis, s: Settings) -> None:
    """u1's 5 turns (10 events) all applied, none dead-lettered."""
    assert sum(redis_sync.xlen(keys.dead_letters(p)) for p in range(s.partitions)) == 0
    doc = _profile(redis_sync, "u1")
    assert doc is not None and doc["evidence"]["events_used"] == 10


def test_commits_refused_for_memory_again_and_again_do_not_dead_letter(redis_url: str, tmp_path: Any,
                                                                     redis_sync: redis.Redis) -> None:
    """Memory hovering at the bound: a probe write goes through, the next commit is refused again. Each retry
    recovers the pending entries (a delivery); retries the worker owes to Redis's memory do not count toward
    dead letters, and the entries are applied once commits go through."""
    s = _settings(redis_url, tmp_path, worker_lease_seconds=60, worker_dead_letter_deliveries=2)
    run(ingest(s, "demo", session("u1", 5)))

    async def scenario() -> None:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "hovering")
        await w.ensure_groups()
        await w.heartbeat()
        apply, refusals = w.applier.apply, [3]  # first read, then 3 retries: 4 deliveries, over the 2

        async def refused_at_first(*args: Any, **kw: Any) -> Any:
            if refusals[0]:
                refusals[0] -= 1
                raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
            return await apply(*args, **kw)

        w.applier.apply = refused_at_first  # type: ignore[method-assign]
        await _stop_once_applied(w, asyncio.create_task(w.loop()), redis_sync)
        await client.aclose()
        assert refusals == [0]

    run(scenario())
    _assert_applied_once_without_dead_letters(redis_sync, s)


def test_a_heartbeat_in_a_full_redis_still_renews_the_leases(redis_url: str, tmp_path: Any,
                                                             redis_sync: redis.Redis) -> None:
    """Redis refuses the announcement (a write) but not the renewal: the leases outlive the spell."""
    s = _settings(redis_url, tmp_path, worker_lease_seconds=30)

    async def scenario() -> list[int]:
        client = store_mod.connect(redis_url)
        w = Worker(s, client, "beating")
        await w.ensure_groups()
        await w.heartbeat()
        for p in w.owned:
            redis_sync.pexpire(keys.lease(p), 2_000)  # as if the last renewal were long ago
        with full_redis(redis_sync), pytest.raises(RedisError):
            await w.heartbeat()
        ttls = [redis_sync.pttl(keys.lease(p)) for p in sorted(w.owned)]
        await w.release_all()
        await client.aclose()
        return ttls

    ttls = run(scenario())
    assert len(ttls) == s.partitions and min(ttls) > 20_000, ttls
