"""Getting events to the API the way apps do: batched, some late, some twice, stamped by skewed device clocks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bench.sim.users import Noise

BATCH = 400
CONCURRENCY = 4


@dataclass
class Outbound:
    """One event on its way: absolute virtual time (ms since epoch, true clock) and the device's skew."""

    t_ms: int
    skew_ms: int
    event: dict[str, Any]


@dataclass
class DeliveryStats:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    resent: int = 0  # events the simulator sent twice on purpose
    late: int = 0  # events it held back on purpose
    rejected: Counter[str] = field(default_factory=Counter)
    http_errors: Counter[int] = field(default_factory=Counter)

    def add(self, other: DeliveryStats) -> None:
        self.sent += other.sent
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.resent += other.resent
        self.late += other.late
        self.rejected.update(other.rejected)
        self.http_errors.update(other.http_errors)


def plan_batches(items: list[Outbound], rng: np.random.Generator, noise: Noise,
                 batch: int = BATCH) -> tuple[list[list[Outbound]], DeliveryStats]:
    """Batches in time order, with late deliveries moved a few batches back and duplicates sent again later."""
    items = sorted(items, key=lambda o: o.t_ms)
    n_batches = max(1, -(-len(items) // batch))
    batches: list[list[Outbound]] = [[] for _ in range(n_batches)]
    stats = DeliveryStats()
    for i, item in enumerate(items):
        b = i // batch
        if rng.random() < noise.late_delivery:
            b = min(n_batches - 1, b + int(rng.integers(1, 4)))
            stats.late += 1
        batches[b].append(item)
        if rng.random() < noise.duplicate_delivery:
            batches[min(n_batches - 1, b + int(rng.integers(0, 3)))].append(item)
            stats.resent += 1
    return batches, stats


def _stamp(item: Outbound, now_ms: int, as_iso: bool) -> dict[str, Any]:
    device_t = item.t_ms + item.skew_ms
    ev = dict(item.event)
    ev["timestamp"] = _iso(device_t) if as_iso else device_t
    ev["sent_at"] = now_ms + item.skew_ms  # the device's clock at send: same skew, so Attune can correct it
    return ev


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


async def post_batch(client: httpx.AsyncClient, batch: list[Outbound], stats: DeliveryStats) -> None:
    now = int(time.time() * 1000)
    body = {"events": [_stamp(o, now, i % 2 == 0) for i, o in enumerate(batch)]}
    for attempt in range(6):
        r = await client.post("/v1/events", json=body)
        if r.status_code in (429, 503):
            await asyncio.sleep(float(r.headers.get("Retry-After", "0.5")) * (1 + attempt) / 2)
            continue
        break
    stats.sent += len(batch)
    if r.status_code in (202, 422):
        out = r.json()
        stats.accepted += int(out.get("accepted", 0))
        stats.duplicates += int(out.get("duplicates", 0))
        for rej in out.get("rejected", []) or []:
            stats.rejected[str(rej.get("code"))] += 1
        if r.status_code == 422 and not out.get("rejected"):
            stats.http_errors[422] += 1
    else:
        stats.http_errors[r.status_code] += 1


async def send_all(client: httpx.AsyncClient, batches: list[list[Outbound]], stats: DeliveryStats,
                   tick: Callable[[int], None] | None = None, concurrency: int = CONCURRENCY) -> None:
    """Send batches in order with a few in flight, as several app servers would."""
    queue: asyncio.Queue[list[Outbound]] = asyncio.Queue()
    for b in batches:
        if b:
            queue.put_nowait(b)

    async def worker() -> None:
        while not queue.empty():
            b = queue.get_nowait()
            await post_batch(client, b, stats)
            if tick:
                tick(len(b))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
