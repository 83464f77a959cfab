"""What the gateway logged for each reply it served (applied conditioning, propensity), read from the streams.

The offline estimate needs the propensities as logged, not as the simulator remembers them; the
stream entries of type reply_shown that Attune wrote for gateway replies are that log.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from service import keys


def logged_conditioning(client: redis.Redis, partitions: int, app: str) -> dict[str, dict[str, Any]]:
    """reply_id -> the `conditioning` recorded with its reply_shown ({} when none was applied)."""
    out: dict[str, dict[str, Any]] = {}
    for p in range(partitions):
        last = "-"
        while True:
            entries = client.xrange(keys.stream(p), min=last, count=5000)
            if last != "-":
                entries = entries[1:]
            if not entries:
                break
            for entry_id, fields in entries:
                raw = fields.get(b"e") or fields.get("e")
                if not raw:
                    continue
                ev = orjson.loads(raw)
                if ev.get("app") == app and ev.get("type") == "reply_shown" and ev.get("reply_id"):
                    out[ev["reply_id"]] = ev.get("conditioning") or {}
            last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
    return out
