"""What the gateway logged for each reply it served (applied conditioning, propensity).

The offline estimate needs the propensities as logged, not as the simulator remembers them: the
reply_shown entries Attune wrote for gateway replies (in the streams until the workers trim them) and
the recent replies of GET /v1/users/{id}/export (the last 50 per user, with what was applied).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
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


async def exported_conditioning(client: httpx.AsyncClient, user_ids: list[str], concurrency: int = 16
                                ) -> dict[str, dict[str, Any]]:
    """reply_id -> `applied`, from GET /v1/users/{id}/export (its recent replies; the streams get trimmed)."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, dict[str, Any]] = {}

    async def one(uid: str) -> None:
        async with sem:
            r = await client.get(f"/v1/users/{uid}/export")
        if r.status_code != 200:
            return
        for item in r.json().get("recent_replies") or []:
            if isinstance(item, dict) and item.get("reply_id") and isinstance(item.get("applied"), dict):
                out[item["reply_id"]] = item["applied"]

    await asyncio.gather(*(one(u) for u in user_ids))
    return out
