"""Profile documents (written by the workers): read, delete everything about a user, export it."""

from __future__ import annotations

import time
from typing import Any

import orjson

from service import keys
from service.store import Script, Store, _guard

# KEYS: tombstone, then the user's keys to delete. ARGV: tombstone ms, tombstone ttl seconds.
# The tombstone and the deletion are one atomic step: a worker's commit that loaded the user before it
# fails its compare-and-set afterwards and reloads (seeing the tombstone).
DELETE_LUA = """
local removed = {}
for i = 2, #KEYS do
  if redis.call('DEL', KEYS[i]) == 1 then removed[#removed + 1] = KEYS[i] end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return removed
"""
DELETE = Script(DELETE_LUA)


async def read_profile(store: Store, app: str, user_id: str, character_id: str | None = None) -> dict[str, Any] | None:
    """The contract-shaped profile, or None when the user has no events.

    With a character: that character's profile when it exists, else the user's own (the worker decides
    when a per-character profile has enough evidence to be written).
    """
    names = [keys.profile(app, user_id, character_id), keys.profile(app, user_id)] if character_id else [keys.profile(app, user_id)]
    raw = await _guard(store.redis.mget(names))
    for value in raw:
        if value:
            doc: dict[str, Any] = orjson.loads(value)
            return doc
    return None


async def _user_keys(store: Store, app: str, user_id: str) -> list[str]:
    """Every key of the user: the known ones, per-character profiles from the state, and a scan of the hash tag."""
    found = {keys.user_state(app, user_id), keys.profile(app, user_id), keys.user_recent(app, user_id)}
    raw = await _guard(store.redis.get(keys.user_state(app, user_id)))
    if raw:
        state = orjson.loads(raw.partition(b"|")[2])
        found |= {keys.profile(app, user_id, c) for c in state.get("chars", [])}
    async for k in store.redis.scan_iter(match=_pattern(app, user_id) + ":*", count=500):
        found.add(k.decode() if isinstance(k, bytes) else k)
    found.discard(keys.deleted(app, user_id))
    return sorted(found)


def _pattern(app: str, user_id: str) -> str:
    """The user's hash tag as a SCAN pattern (its glob characters escaped)."""
    return keys.user_tag(app, user_id).replace("[", "\\[").replace("?", "\\?").replace("*", "\\*")


async def delete_user(store: Store, app: str, user_id: str, retention_days: int) -> dict[str, Any]:
    """Remove everything kept about the user; events accepted before now never bring it back.

    Always leaves the tombstone, even when nothing was kept yet: the user's events may still be queued.
    """
    names = await _user_keys(store, app, user_id)
    raw_state = await _guard(store.redis.get(keys.user_state(app, user_id)))
    in_index = await _guard(store.redis.zscore(keys.app_users(app), user_id))
    now_ms = int(time.time() * 1000)
    ttl = (retention_days + 2) * 86400  # longer than any queued event can be old
    removed = await _guard(DELETE(store.redis, [keys.deleted(app, user_id), *names], [now_ms, ttl]))
    removed = [r.decode() if isinstance(r, bytes) else r for r in removed]
    # The gateway may have written a regeneration record between the scan and the tombstone; from the
    # tombstone on it writes none (service/gateway.py REGEN_SET), so one more look finds any left.
    late = [k async for k in store.redis.scan_iter(match=_pattern(app, user_id) + ":regen:*", count=500)]
    if late:
        await _guard(store.redis.delete(*late))
        removed += [k.decode() if isinstance(k, bytes) else k for k in late]
    pipe = store.redis.pipeline(transaction=False)
    pipe.zrem(keys.app_users(app), user_id)
    pipe.hdel(keys.population_users(app), user_id)
    hist: list[str] = []
    if raw_state:
        state = orjson.loads(raw_state.partition(b"|")[2])
        hist = state.get("hist", [])
        for bucket in hist:
            pipe.hincrby(keys.profile_hist(app), bucket, -1)
    for p in range(store.partitions):
        pipe.zrem(keys.open_users(p), f"{app}\x00{user_id}")
    await _guard(pipe.execute())
    prefix = keys.user_tag(app, user_id) + ":"
    return {"user_id": user_id, "deleted_at_ms": now_ms,
            "removed": {"keys": [r[len(prefix):] for r in removed],
                        "user_index": in_index is not None, "histogram_buckets": hist}}


async def export_user(store: Store, app: str, user_id: str) -> dict[str, Any] | None:
    """Everything stored about the user (profiles, recent replies, learning state); None when nothing is."""
    names = await _user_keys(store, app, user_id)
    pipe = store.redis.pipeline(transaction=False)
    for n in names:
        pipe.type(n)
    types = await _guard(pipe.execute())
    pipe = store.redis.pipeline(transaction=False)
    for n, t in zip(names, types, strict=True):
        t = t.decode() if isinstance(t, bytes) else t
        pipe.lrange(n, 0, -1) if t == "list" else pipe.get(n)
    values = await _guard(pipe.execute())
    out: dict[str, Any] = {"app": app, "user_id": user_id, "profile": None, "character_profiles": {},
                           "recent_replies": [], "state": None}
    found = False
    for n, v in zip(names, values, strict=True):
        if v is None or v == []:
            continue
        found = True
        if n == keys.profile(app, user_id):
            out["profile"] = orjson.loads(v)
        elif n == keys.user_recent(app, user_id):
            out["recent_replies"] = [orjson.loads(x) for x in v]
        elif n == keys.user_state(app, user_id):
            out["state"] = orjson.loads(v.partition(b"|")[2])
        elif ":profile:c:" in n:
            out["character_profiles"][n.rsplit(":profile:c:", 1)[1]] = orjson.loads(v)
        else:
            out.setdefault("other", {})[n] = v.decode(errors="replace") if isinstance(v, bytes) else v
    score = await _guard(store.redis.zscore(keys.app_users(app), user_id))
    if not found:
        return None
    out["last_update_ms"] = int(score) if score is not None else None
    return out
