"""Shared test helpers: events of a scripted user, ingestion straight through the store, in-process workers."""

from __future__ import annotations

import asyncio
from typing import Any

from service import store as store_mod
from service.settings import Settings
from workers.consumer import Worker

T0 = 1_764_000_000_000


def session(user: str, n: int, *, start: int = T0, pref: int = 600, seed: int = 1, prefix: str = "",
            character: str | None = None, pacing: bool = True) -> list[dict[str, Any]]:
    """n turns of one user: reply_shown, then a repeat when the length is far from pref, else a message."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    t = start
    for i in range(n):
        chars = int(np.exp(rng.normal(np.log(450), 0.6)))
        rid = f"{prefix}{user}-r{i}"
        shown: dict[str, Any] = {"type": "reply_shown", "event_id": f"{rid}-s", "user_id": user, "session_id": "s1",
                                 "reply_id": rid, "t": t, "rt": t, "reply": {"chars": chars, "dialogue_share": 0.4}}
        if character:
            shown["character_id"] = character
        if pacing:
            shown["conditioning"] = {"pacing": ["slow_burn", "balanced", "fast"][i % 3], "target_chars": 500,
                                     "explored": False, "propensity": 0.8}
        out.append(shown)
        t += 30_000
        far = abs(np.log(chars) - np.log(pref)) > 0.5
        if far and rng.random() < 0.8:
            out.append({"type": "repeat", "event_id": f"{rid}-x", "user_id": user, "reply_id": rid, "t": t, "rt": t})
        else:
            out.append({"type": "user_message", "event_id": f"{rid}-m", "user_id": user, "reply_id": rid, "t": t,
                        "rt": t, "chars": 60, "compose_ms": 4_000})
        t += 30_000
    return out


async def ingest(settings: Settings, app: str, events: list[dict[str, Any]], chunk: int = 200) -> None:
    client = store_mod.connect(settings.redis_url or "")
    store = store_mod.Store(client, settings.partitions, settings.dedup_ttl_seconds)
    try:
        for i in range(0, len(events), chunk):
            await store.ingest(app, events[i:i + chunk])
    finally:
        await client.aclose()


async def drain(settings: Settings, worker_id: str = "test-worker") -> int:
    """Run an in-process worker until every partition is empty; returns entries handled."""
    client = store_mod.connect(settings.redis_url or "")
    try:
        worker = Worker(settings, client, worker_id)
        n = await worker.drain()
        await worker.release_all()
        return n
    finally:
        await client.aclose()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
