"""The open loop (issue 3): varied replies with random pacing go in through the API; profiles are read back at checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import redis

from bench.sim.cluster import Cluster
from bench.sim.delivery import DeliveryStats, Outbound, plan_batches, send_all
from bench.sim.history import ShownRecord, Stage, history_span, open_loop_history
from bench.sim.profiles import CatchUp, fetch_profiles, wait_caught_up
from bench.sim.score import flagged_honest, score
from bench.sim.users import Noise, SimUser


@dataclass
class CheckpointResult:
    replies: int
    figures: dict[str, float]
    catch_up: CatchUp | None
    events: int


@dataclass
class OpenLoopResult:
    checkpoints: list[CheckpointResult] = field(default_factory=list)
    delivery: DeliveryStats = field(default_factory=DeliveryStats)
    notes: list[str] = field(default_factory=list)
    sample_profile: dict[str, Any] | None = None


def build_histories(users: list[SimUser], checkpoints: list[int], rng: np.random.Generator, noise: Noise,
                    now_ms: int) -> dict[str, list[Stage]]:
    """Every user's stages, anchored so each history ends a minute to ten before now_ms."""
    out: dict[str, list[Stage]] = {}
    for u in users:
        stages = open_loop_history(u, checkpoints, rng, noise)
        offset = now_ms - int(rng.uniform(60_000, 600_000)) - history_span(stages)
        n = 0
        for st in stages:
            for i, (t, ev) in enumerate(st.events):
                n += 1
                ev["event_id"] = f"{u.user_id}-e{n}"
                st.events[i] = (t + offset, ev)
        out[u.user_id] = stages
    return out


async def run_open_loop(cluster: Cluster, users: list[SimUser], checkpoints: list[int], rng: np.random.Generator,
                        noise: Noise, app: str, tick: Callable[[int], None] | None = None,
                        total: Callable[[int], None] | None = None, catch_up_timeout: float = 300.0) -> OpenLoopResult:
    result = OpenLoopResult(notes=list(cluster.notes))
    key = cluster.app_key(app, ["ingest", "read", "manage"])
    histories = build_histories(users, checkpoints, rng, noise, int(time.time() * 1000))
    skews = {u.user_id: u.skew_ms for u in users}
    shown: dict[str, list[ShownRecord]] = {u.user_id: [] for u in users}
    ids = [u.user_id for u in users]
    if total:
        total(sum(len(st.events) for stages in histories.values() for st in stages))
    rclient = redis.Redis.from_url(cluster.redis_url or "")
    total_events = 0
    try:
        async with httpx.AsyncClient(base_url=cluster.api_url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=60) as client:
            for k, replies in enumerate(checkpoints):
                items = [Outbound(t, skews[uid], ev) for uid, stages in histories.items() for t, ev in stages[k].events]
                for uid, stages in histories.items():
                    shown[uid].extend(stages[k].shown)
                total_events += len(items)
                batches, stats = plan_batches(items, rng, noise)
                if total:
                    total(stats.resent)  # the bar counts every event sent, resends included
                await send_all(client, batches, stats, tick)
                result.delivery.add(stats)
                catch = None
                if not any("no worker" in n for n in cluster.notes):
                    catch = await wait_caught_up(client, rclient, cluster.partitions, ids, timeout=catch_up_timeout)
                    if catch.timed_out:
                        result.notes.append(
                            f"at {replies} replies the workers had not caught up after {catch.seconds:.0f} s "
                            f"(undelivered {catch.backlog.entries}, pending {catch.backlog.pending}); scored anyway")
                profiles = await fetch_profiles(client, ids)
                figures = score(users, profiles, shown, noise)
                result.checkpoints.append(CheckpointResult(replies, figures, catch, total_events))
                if result.sample_profile is None or k == len(checkpoints) - 1:
                    result.sample_profile = next((p for p in profiles.values() if p), None)
            for line in flagged_honest(users, profiles):
                result.notes.append(f"honest user marked suspect_bot at {checkpoints[-1]} replies: {line}")
            dead = catch.backlog.dead if catch else 0
            if dead:
                result.notes.append(f"{dead} entries ended in the dead-letter streams")
            result.notes.extend(cluster.alive())
    finally:
        rclient.close()
    return result
