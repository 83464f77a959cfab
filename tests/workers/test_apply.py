"""The applier's per-user cache and incremental recent list against real Redis: never stale, never different."""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from models import profile as pm
from service import keys
from service import store as store_mod
from service.profiles import delete_user
from service.store import StatsBuffer
from tests.conftest import make_settings
from tests.workers.helpers import T0, drain, ingest, run, session
from workers.apply import Applier, UserWork, _recent_ops, parse, parse_grouped
from workers.consumer import Worker


def _state(r: redis.Redis, user: str) -> dict[str, Any]:
    raw = r.get(keys.user_state("demo", user))
    assert raw is not None
    return orjson.loads(raw.partition(b"|")[2])


def test_recent_ops_push_new_replies_and_replace_amended_ones() -> None:
    old_ids, old = ["b", "a"], [b"B", b"A"]
    assert _recent_ops(old_ids, old, ["c", "b", "a"], [b"C", b"B2", b"A"]) == (0, [b"C"], [(1, b"B2")], -1)
    assert _recent_ops(old_ids, old, ["b", "a"], [b"B", b"A"]) == (0, [], [], -1)
    # A late reply sorted between two stored ones: the list is rewritten.
    assert _recent_ops(old_ids, old, ["b", "x", "a"], [b"B", b"X", b"A"]) == (1, [b"B", b"X", b"A"], [], -1)
    # At the cap, pushing one drops the oldest.
    ids = [f"r{i}" for i in range(pm.MAX_RECENT, 0, -1)]
    items = [i.encode() for i in ids]
    full, push, pairs, keep = _recent_ops(ids, items, ["new", *ids[:-1]], [b"new", *items[:-1]])
    assert (full, push, pairs, keep) == (0, [b"new"], [], pm.MAX_RECENT)


def test_incremental_recent_list_equals_a_full_rewrite(redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0, worker_batch_size=3,
                      worker_batch_seconds=0)
    run(ingest(s, "demo", session("u", 70, seed=4)))

    async def go() -> int:
        client = store_mod.connect(redis_url)
        try:
            w = Worker(s, client, "w")
            n = await w.drain()
            assert w.applier.cache, "the worker should have kept the user it committed"
            return n
        finally:
            await client.aclose()

    assert run(go()) == 140
    stored = redis_sync.lrange(keys.user_recent("demo", "u"), 0, -1)
    expected = [orjson.dumps(item) for item in pm.recent_items(_state(redis_sync, "u"))]
    assert len(stored) == pm.MAX_RECENT and stored == expected


def test_a_cached_user_deleted_meanwhile_is_reloaded_not_resurrected(redis_url: str, tmp_path: Any,
                                                                     redis_sync: redis.Redis) -> None:
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0)
    run(ingest(s, "demo", session("gone", 10)))

    async def go() -> None:
        client = store_mod.connect(redis_url)
        try:
            w = Worker(s, client, "w")
            await w.drain()
            assert ("demo", "gone") in w.applier.cache
            await delete_user(store_mod.Store(client, s.partitions, 86400), "demo", "gone", s.retention_days)
            after = session("gone", 3, prefix="after-", start=T0 + 86_400_000)
            for ev in after:  # received after the delete
                ev["rt"] = int(time.time() * 1000) + 1000
            await ingest(s, "demo", after)
            await w.drain()  # the cache says version N; Redis has no state: the commit fails and reloads
        finally:
            await client.aclose()

    run(go())
    doc = orjson.loads(redis_sync.get(keys.profile("demo", "gone")))
    assert doc["evidence"]["events_used"] == 6 and doc["evidence"]["replies"] == 3
    recent = [orjson.loads(x)["reply_id"] for x in redis_sync.lrange(keys.user_recent("demo", "gone"), 0, -1)]
    assert recent and all(r.startswith("after-") for r in recent)


def test_parse_names_the_first_invalid_field_and_accepts_what_it_accepted_before() -> None:
    good = {"app": "a", "user_id": "u", "type": "user_message", "t": 1, "rt": 2}
    assert parse(0, b"1-0", [b"e", orjson.dumps(good)]).problem is None
    assert parse(0, b"1-0", [b"e", orjson.dumps({**good, "t": True})]).problem is None  # bool is an int
    for name, bad in (("app", 1), ("user_id", None), ("type", 3), ("t", "1"), ("rt", 1.5)):
        ev = {**good, "user_id": 7, name: bad} if name == "rt" else {**good, name: bad}
        first = "user_id" if name == "rt" else name  # the first invalid field in the checking order
        assert parse(0, b"1-0", [b"e", orjson.dumps(ev)]).problem == f"event lacks a valid {first!r}"
    shown = {**good, "type": "reply_shown"}
    why = parse(0, b"1-0", [b"e", orjson.dumps(shown)]).problem
    assert why == "event of type 'reply_shown' lacks reply_id"
    assert parse(0, b"1-0", [b"e", orjson.dumps({**shown, "reply_id": "r"})]).problem is None


def _group(entries: list[Any]) -> list[UserWork]:
    """The reference: parse()d entries by user, each user's in stream order."""
    by: dict[tuple[str, str], UserWork] = {}
    for e in entries:
        k = (e.event["app"], e.event["user_id"])
        by.setdefault(k, UserWork(k[0], k[1], e.partition)).events.append((e.id, e.event))
    return list(by.values())


def test_a_read_parsed_and_grouped_at_once_equals_group_of_parse() -> None:
    good = {"app": "a", "user_id": "u1", "type": "user_message", "t": 1, "rt": 2}
    raw = [[b"e", orjson.dumps(good)], [b"e", b"{not json"], [b"e", orjson.dumps({**good, "user_id": "u2"})],
           [b"x", b"1", b"e", orjson.dumps({**good, "t": 3})], [], [b"e", orjson.dumps([1])],
           {b"e": orjson.dumps({**good, "app": "b"})}, [b"e", orjson.dumps({**good, "type": "repeat"})],
           [b"e", orjson.dumps({**good, "t": True, "app": "b"})], [b"e", orjson.dumps({**good, "t": "1"})]]
    batch = {3: [(f"1-{i}".encode(), f) for i, f in enumerate(raw[:5])],
             7: [(f"2-{i}".encode(), f) for i, f in enumerate(raw[5:])]}
    entries = [parse(p, eid, fields) for p, items in batch.items() for eid, fields in items]
    work, bad = parse_grouped(batch)
    want = _group([e for e in entries if e.problem is None])
    assert [(w.app, w.user_id, w.partition, w.events) for w in work] == \
        [(w.app, w.user_id, w.partition, w.events) for w in want]
    assert bad == [e for e in entries if e.problem is not None] and len(bad) == 5
    work, bad = parse_grouped(batch, {"1-0", "1-1"})  # skipped: in neither
    assert [e.id for e in bad] == ["1-4", "2-0", "2-2", "2-4"] and ("1-0", good) not in work[0].events


def test_stream_ids_order_by_milliseconds_then_sequence() -> None:
    ids = ["0-0", "5", "5-1", "5-2", "10-0", "10-10", "99-0"]
    assert [pm.stream_id_key(i) for i in ids] == sorted(pm.stream_id_key(i) for i in ids)
    key = pm.stream_id_key
    assert key("10-0") > key("9-99") and not key("5") > key("5-0") and key("5-1") > key("5")


def test_a_state_estimated_by_an_older_worker_is_re_estimated_not_dead_lettered(redis_url: str, tmp_path: Any,
                                                                                redis_sync: redis.Redis) -> None:
    # Estimates stored before the dialogue share's variance was kept have no "ds_var"; a batch that closes no
    # reply used to reuse them and fail in the population summary, dead-lettering a valid event.
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0)
    run(ingest(s, "demo", session("old", 6)))
    run(drain(s))
    key = keys.user_state("demo", "old")
    version, _, body = redis_sync.get(key).partition(b"|")
    state = orjson.loads(body)
    del state["est"]["ds_var"]
    redis_sync.set(key, version + b"|" + orjson.dumps(state))
    t = T0 + 3_600_000
    run(ingest(s, "demo", [{"type": "session_start", "event_id": "old-ss2", "user_id": "old", "session_id": "s2",
                            "t": t, "rt": t}]))
    run(drain(s, "another-worker"))
    assert sum(redis_sync.xlen(keys.dead_letters(p)) for p in range(s.partitions)) == 0
    assert "ds_var" in _state(redis_sync, "old")["est"]
    assert _state(redis_sync, "old")["sum"]["ds_var"] is not None


def test_a_user_message_that_answers_no_reply_is_applied_not_dead_lettered(redis_url: str, tmp_path: Any,
                                                                          redis_sync: redis.Redis) -> None:
    """The API takes a user_message without reply_id (a conversation's first message); the worker raised
    KeyError on it and dead-lettered it, so its length and typing time were never learned."""
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0)
    t = T0 + 3_600_000
    first = {"type": "user_message", "event_id": "opening", "user_id": "u1", "session_id": "s2", "t": t, "rt": t,
             "chars": 240, "compose_ms": 30_000}
    run(ingest(s, "demo", session("u1", 3) + [first]))
    run(drain(s))
    assert sum(redis_sync.xlen(keys.dead_letters(p)) for p in range(s.partitions)) == 0
    state = _state(redis_sync, "u1")
    assert state["msg"][1] > 3.0  # the three answers' lengths and the opening message's (weights ~0.95^k)
    doc = orjson.loads(redis_sync.get(keys.profile("demo", "u1")))
    assert doc["evidence"]["events_used"] == 7


def test_redelivered_events_are_skipped_by_id_whether_a_user_comes_from_one_read_or_two_partitions(
        redis_url: str) -> None:
    def entry(sid: str, i: int) -> tuple[bytes, list[bytes]]:
        ev = {"app": "a", "user_id": "u", "type": "user_message", "reply_id": f"r{i}", "t": 1000 * i,
              "rt": 1000 * i, "chars": 5}
        return sid.encode(), [b"e", orjson.dumps(ev)]

    applier = Applier(store_mod.connect(redis_url), StatsBuffer(), 120.0)

    def advance(batch: dict[int, list[Any]]) -> tuple[UserWork, dict[str, Any]]:
        (w,), bad = parse_grouped(batch)
        assert not bad
        state = pm.new_state()
        state["wm"] = "5-0"  # applied up to 5-0 already: entries at or below it are redeliveries
        ctx = applier._advance(w, None, None, T0, False, state)
        assert ctx is not None
        return w, ctx

    # One partition's read: its ids increase, the leading 4-0 and 5-0 are redelivered.
    w, ctx = advance({1: [entry("4-0", 1), entry("5-0", 2), entry("9-0", 3), entry("12-0", 4)]})
    assert w.one_read and ctx["applied"] == 2 and ctx["state"]["wm"] == "12-0"
    assert sorted(ctx["state"]["open"]) == ["r3", "r4"]
    # The same user in two partitions (their number changed): the one-read shortcut is off and the per-event
    # check against the running watermark runs. It passes by 3-0, which comes after 9-0: ids of two streams
    # do not order events, a known limitation of changing ATTUNE_PARTITIONS with events queued (README).
    w, ctx = advance({1: [entry("5-0", 1), entry("9-0", 2)], 2: [entry("3-0", 3), entry("12-0", 4)]})
    assert not w.one_read and ctx["applied"] == 2 and ctx["state"]["wm"] == "12-0"
    assert sorted(ctx["state"]["open"]) == ["r2", "r4"]
    # Everything redelivered: nothing applied, the watermark stays.
    (w,), _ = parse_grouped({1: [entry("4-0", 1), entry("5-0", 2)]})
    state = pm.new_state()
    state["wm"] = "5-0"
    assert applier._advance(w, None, None, T0, False, state) is None and state["wm"] == "5-0"


def test_characters_that_leave_the_window_lose_their_profile_so_a_users_keys_stay_bounded(
        redis_url: str, tmp_path: Any, redis_sync: redis.Redis) -> None:
    # One app key playing ever new characters must not grow a user's keys without end: a character whose
    # replies left the remembered window (MAX_CLOSED) has its profile removed; reads fall back to the user's.
    s = make_settings(redis_url, tmp_path, worker_block_ms=0, population_refresh_seconds=0)
    per = pm.CHARACTER_MIN_REPLIES
    characters = pm.MAX_CLOSED // per + 5
    events = [e for k in range(characters)
              for e in session("u", per, start=T0 + k * per * 60_000, prefix=f"c{k}-", character=f"c{k}")]
    for i in range(0, len(events), 2 * per):  # one character at a time, each drained before the next
        run(ingest(s, "demo", events[i:i + 2 * per]))
        run(drain(s))
    stored = {k.decode().rsplit(":profile:c:", 1)[1]
              for k in redis_sync.scan_iter(match=keys.profile("demo", "u", "*"))}
    ready = set(pm.characters_ready(_state(redis_sync, "u")))
    assert stored == ready == set(_state(redis_sync, "u")["chars"]), (stored, ready)
    assert 0 < len(stored) <= pm.MAX_CLOSED // per and "c0" not in stored and f"c{characters - 2}" in stored
