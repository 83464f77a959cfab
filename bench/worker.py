"""Worker benchmark: events per second one worker process applies, and 202-to-profile latency.

In one run, against one embedded Redis this script starts and stops:
- the yardstick: a bare XREADGROUP + XACK loop (this process, redis-py asyncio, batches of 500) over the
  same stored entries, in a consumer group of its own (the median of three runs);
- `python -m workers` (one process) applying those entries to profiles, timed from its first heartbeat
  until every entry is acknowledged;
- latency: the API (`python -m service`) and the worker running, events posted at 1000 per second in
  batches of 20; every 100 ms one batch also carries the first event of a fresh probe user, and the time
  from that request's 202 to the probe's profile existing is recorded (p50, p95).
Goals (issue 3): the worker reaches >= 30% of the bare loop's rate; p95 latency under 1 s.

Run: .venv/bin/python bench/worker.py [--events 60000] [--users 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

from service import keys  # noqa: E402
from service import store as store_mod  # noqa: E402
from service.embedded import EmbeddedRedis  # noqa: E402

APP = "bench"
PARTITIONS = 16
GOAL_RATIO = 0.30
GOAL_P95_S = 1.0


def turns(users: int, events: int, rng: np.random.Generator, t0: int) -> list[dict[str, Any]]:
    """Interleaved sessions: reply_shown then a repeat or a user_message, per turn, per user."""
    out: list[dict[str, Any]] = []
    clock = [t0] * users
    i = 0
    while len(out) < events:
        u = int(rng.integers(users))
        t = clock[u]
        rid = f"r{i}"
        out.append({"type": "reply_shown", "event_id": f"{rid}s", "user_id": f"u{u}", "session_id": f"s{u}",
                    "reply_id": rid, "t": t, "rt": t, "reply": {"chars": int(np.exp(rng.normal(6, 0.5))),
                                                                "dialogue_share": float(rng.random())},
                    "conditioning": {"pacing": ["slow_burn", "balanced", "fast"][i % 3], "target_chars": 400,
                                     "explored": False, "propensity": 0.8}})
        if rng.random() < 0.15:
            out.append({"type": "repeat", "event_id": f"{rid}x", "user_id": f"u{u}", "reply_id": rid,
                        "t": t + 4000, "rt": t})
        else:
            out.append({"type": "user_message", "event_id": f"{rid}m", "user_id": f"u{u}", "reply_id": rid,
                        "t": t + 40000, "rt": t, "chars": 50, "compose_ms": 9000})
        clock[u] = t + 60000
        i += 1
    return out[:events]


async def store_events(url: str, events: list[dict[str, Any]]) -> None:
    client = store_mod.connect(url)
    store = store_mod.Store(client, PARTITIONS, 86400)
    for i in range(0, len(events), 1000):
        await store.ingest(APP, events[i:i + 1000])
    await client.aclose()


async def bare_loop(url: str, total: int) -> float:
    """Events per second of XREADGROUP + XACK alone, over every partition."""
    client = store_mod.connect(url)
    streams = [keys.stream(p) for p in range(PARTITIONS)]
    for s in streams:
        await client.xgroup_create(s, "bare", id="0")
    done, t0 = 0, time.perf_counter()
    while done < total:
        res = await client.xreadgroup("bare", "b", {s: ">" for s in streams}, count=500)
        pipe = client.pipeline(transaction=False)
        for name, items in res or []:
            pipe.xack(name, "bare", *[i for i, _ in items])
            done += len(items)
        await pipe.execute()
    rate = total / (time.perf_counter() - t0)
    for s in streams:
        await client.xgroup_destroy(s, "bare")
    await client.aclose()
    return rate


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def all_acked(r: redis.Redis) -> bool:
    for p in range(PARTITIONS):
        s = keys.stream(p)
        info = r.xinfo_stream(s)
        groups = {g["name"].decode(): g for g in r.xinfo_groups(s)}
        g = groups.get(keys.CONSUMER_GROUP)
        last = info["last-generated-id"] if "last-generated-id" in info else info["last-entry"][0] if info["last-entry"] else b"0-0"
        if g is None or g["pending"] or (info["length"] and g["last-delivered-id"] != last):
            return False
    return True


def worker_rate(r: redis.Redis, env: dict[str, str], total: int, log: Path) -> float:
    proc = spawn(["-m", "workers"], env, log)
    try:
        while not r.zcard(keys.WORKERS):
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited; see {log}")
            time.sleep(0.005)
        t0 = time.perf_counter()
        while not all_acked(r):
            time.sleep(0.02)
        return total / (time.perf_counter() - t0)
    finally:
        stop(proc)


async def latency(api: str, token: str, r: redis.Redis, seconds: float, rate: int, rng: np.random.Generator
                  ) -> list[float]:
    background = turns(500, int(seconds * rate) + 100, rng, int(time.time() * 1000) - 3_600_000)
    lat: list[float] = []
    waits: list[asyncio.Task[None]] = []
    batch = 20
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:

        async def watch(user: str, sent: float) -> None:
            key = keys.profile(APP, user)
            while time.perf_counter() - sent < 10:
                if r.exists(key):
                    lat.append(time.perf_counter() - sent)
                    return
                await asyncio.sleep(0.005)

        async def post(events: list[dict[str, Any]], probe: str | None) -> None:
            for ev in events:
                ev["timestamp"] = ev.pop("t")
                ev.pop("rt", None)
            res = await c.post("/v1/events", json={"events": events})
            if res.status_code != 202:
                raise SystemExit(f"POST /v1/events answered {res.status_code}: {res.text[:200]}")
            if probe:
                waits.append(asyncio.create_task(watch(probe, time.perf_counter())))

        start = time.perf_counter()
        sent = k = 0
        tasks = []
        while time.perf_counter() - start < seconds:
            target = int((time.perf_counter() - start) * rate)
            while sent < target:
                events = [dict(e) for e in background[sent:sent + batch]]
                probe = None
                if k % 5 == 0:
                    probe = f"probe{k}"
                    now = int(time.time() * 1000)
                    events.append({"type": "reply_shown", "event_id": f"p{k}", "user_id": probe, "reply_id": f"p{k}",
                                   "session_id": "ps", "t": now, "reply": {"chars": 300}})
                tasks.append(asyncio.create_task(post(events, probe)))
                sent += batch
                k += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        await asyncio.gather(*waits)
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    tmp = Path(tempfile.mkdtemp(prefix="attune-bench-worker-"))
    server = EmbeddedRedis(tmp / "redis")
    url = server.start()
    r = redis.Redis.from_url(url)
    log = tmp / "processes.log"
    env = {"ATTUNE_REDIS_URL": url, "ATTUNE_PARTITIONS": str(PARTITIONS), "ATTUNE_DATA_DIR": str(tmp / "var"),
           "ATTUNE_POPULATION_REFRESH_SECONDS": "0"}
    ok = False
    try:
        events = turns(args.users, args.events, rng, int(time.time() * 1000) - 86_400_000)
        asyncio.run(store_events(url, events))
        # The bare loop takes a fraction of a second, so a moment of load elsewhere on the machine moves it a
        # lot: the median of three runs (each a consumer group of its own over the same entries).
        bares = sorted(asyncio.run(bare_loop(url, len(events))) for _ in range(3))
        bare = bares[1]
        applied = worker_rate(r, env, len(events), log)
        ratio = applied / bare
        print(f"entries: {len(events):,} events of {args.users:,} users in {PARTITIONS} partitions")
        print(f"bare XREADGROUP+XACK loop : {bare:>10,.0f} events/s"
              f"  (median of 3: {bares[0]:,.0f} .. {bares[2]:,.0f})")
        print(f"one worker process        : {applied:>10,.0f} events/s  = {ratio:.0%} of bare"
              f"   goal >= {GOAL_RATIO:.0%}  {'met' if ratio >= GOAL_RATIO else 'MISSED'}")

        r.flushall()
        port = free_port()
        admin = secrets.token_hex(16)
        api_env = {**env, "ATTUNE_PORT": str(port), "ATTUNE_ADMIN_KEY": admin, "ATTUNE_RATE_LIMIT_PER_SECOND": "100000"}
        api = spawn(["-m", "service"], api_env, log)
        worker = spawn(["-m", "workers"], env, log)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the API or worker did not become ready; see {log}")
                time.sleep(0.1)
            res = httpx.post(f"{base}/v1/admin/apps/{APP}/keys", json={"scopes": ["ingest", "read"]},
                             headers={"Authorization": f"Bearer {admin}"})
            token = res.json()["key"]
            lat = asyncio.run(latency(base, token, r, args.seconds, args.rate, rng))
        finally:
            stop(worker)
            stop(api)
        if not lat:
            print("latency: no probe reached its profile")
            return 1
        p50, p95 = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        print(f"202 -> profile at {args.rate} events/s: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
              f"({len(lat)} probes)   goal p95 < {GOAL_P95_S:.0f} s  {'met' if p95 < GOAL_P95_S else 'MISSED'}")
        ok = True
        return 0
    finally:
        r.close()
        server.stop()
        if ok:  # kept after a failure: its messages point at the log in it
            shutil.rmtree(tmp, ignore_errors=True)  # the run's Redis data and log (~45 MB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
