"""Finding users of one app and the evidence behind a profile, for the dashboard (bounded lookups only)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from models.events import _ID, ID_RULE
from service import keys
from service.errors import BadRequest, NotFound
from service.profiles import read_profile
from service.store import Store, _guard

MAX_EXAMINED = 50_000  # ZSCAN stops after this many members: a search costs the same with 10 M users
RECENT = 50


def check_user_id(user_id: str, what: str = "user id", code: str = "invalid_user_id") -> str:
    if not _ID.fullmatch(user_id):
        raise BadRequest(f"{what} {user_id[:40]!r} is invalid: {ID_RULE}", code=code)
    return user_id


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def search_users(store: Store, app: str, prefix: str, limit: int = 20) -> dict[str, Any]:
    """Users of `app` whose id starts with `prefix` (the most recently active ones without a prefix).

    One sorted set per app, so another app's users are never looked at; ZSCAN with MATCH examines at
    most MAX_EXAMINED members, and the answer says whether the search covered the whole set.
    """
    r = store.redis
    index = keys.app_users(app)
    if not prefix:
        rows = await _guard(r.zrevrange(index, 0, limit - 1, withscores=True))
        return {"users": [{"user_id": m.decode(), "last_update_ms": int(s)} for m, s in rows],
                "complete": True, "examined": len(rows), "mode": "recent"}
    if len(prefix) > 128:
        raise BadRequest("a user id prefix is at most 128 characters", code="invalid_prefix")
    found: dict[str, int] = {}
    exact = await _guard(r.zscore(index, prefix))
    if exact is not None:
        found[prefix] = int(exact)
    cursor, examined = 0, 0
    match = _glob_escape(prefix) + "*"
    while True:
        cursor, rows = await _guard(r.zscan(index, cursor, match=match, count=1000))
        examined += 1000
        for member, score in rows:
            found.setdefault(member.decode(), int(score))
        if cursor == 0 or len(found) >= limit or examined >= MAX_EXAMINED:
            break
    users = [{"user_id": u, "last_update_ms": found[u]} for u in sorted(found)[:limit]]
    return {"users": users, "complete": cursor == 0, "examined": examined, "mode": "prefix"}


async def user_evidence(store: Store, app: str, user_id: str, character_id: str | None = None) -> dict[str, Any]:
    """The served profile, the last replies with what was applied and what followed, and the last update."""
    check_user_id(user_id)
    if character_id:
        check_user_id(character_id, "character id", "invalid_character_id")
    profile = await read_profile(store, app, user_id, character_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.lrange(keys.user_key(app, user_id, "recent"), 0, RECENT - 1)
    pipe.zscore(keys.app_users(app), user_id)
    raw_recent, score = await _guard(pipe.execute())
    recent = []
    for item in raw_recent:
        try:
            recent.append(orjson.loads(item))
        except orjson.JSONDecodeError:
            continue
    if profile is None and not recent and score is None:
        raise NotFound(f"app {app!r} has no user {user_id!r}", code="user_not_found")
    return {"app": app, "user_id": user_id, "last_update_ms": int(score) if score is not None else None,
            "profile": profile, "recent": recent}
