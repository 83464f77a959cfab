"""Reading served profile documents (written by the workers) from Redis."""

from __future__ import annotations

from typing import Any

import orjson

from service import keys
from service.store import Store, _guard


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
