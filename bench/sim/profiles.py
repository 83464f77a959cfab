"""Reading served profiles over HTTP, and waiting until the workers have applied everything sent."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from bench.sim.cluster import Backlog, backlog


async def fetch_profiles(client: httpx.AsyncClient, user_ids: list[str], concurrency: int = 16
                         ) -> dict[str, dict[str, Any] | None]:
    """GET /v1/users/{id}/profile for each user; None for a 404 (no profile served)."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, dict[str, Any] | None] = {}

    async def one(uid: str) -> None:
        async with sem:
            r = await client.get(f"/v1/users/{uid}/profile")
        if r.status_code == 200:
            out[uid] = r.json()
        elif r.status_code == 404:
            out[uid] = None
        else:
            raise RuntimeError(f"GET /v1/users/{uid}/profile answered {r.status_code}: {r.text[:200]}")

    await asyncio.gather(*(one(u) for u in user_ids))
    return out


@dataclass
class CatchUp:
    seconds: float
    backlog: Backlog
    stable: bool  # profile versions stopped changing
    timed_out: bool


async def wait_caught_up(client: httpx.AsyncClient, rclient: redis.Redis, partitions: int, user_ids: list[str],
                         timeout: float = 180.0, settle: float = 1.0) -> CatchUp:
    """Until the streams are drained (all delivered and acknowledged) and the profiles' versions stay put.

    The version check also covers effects a worker applies after a wait (replies closed as answered or
    silent), which a drained stream alone would not show.
    """
    start = time.monotonic()
    last_versions: dict[str, Any] | None = None
    while True:
        bl = await asyncio.to_thread(backlog, rclient, partitions)
        elapsed = time.monotonic() - start
        if bl.drained:
            docs = await fetch_profiles(client, user_ids)
            versions = {u: (d or {}).get("version") for u, d in docs.items()}
            if versions == last_versions:
                return CatchUp(elapsed, bl, True, False)
            last_versions = versions
        if elapsed > timeout:
            return CatchUp(elapsed, bl, False, True)
        await asyncio.sleep(settle if bl.drained else 0.2)
