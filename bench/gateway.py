"""Gateway overhead: the same load to the M2-her stand-in directly, through Attune, through a minimal
aiohttp pass-through and through LiteLLM's proxy, in one run.

    .venv/bin/python bench/gateway.py [--rate 100] [--seconds 10] [--sat-seconds 12] [--rounds 4] [--procs 2]
                                      [--litellm /tmp/litellm-venv/bin/litellm] [--json out.json]

Figures: latency p50/p99 at a fixed open-loop rate (non-streamed: whole reply; streamed: first byte
and whole reply), added latency against the direct run, CPU microseconds per request (the proxy's
processes, Redis apart) and per streamed chunk, and requests per second at saturation (wrk, 64
connections), streamed and not.

Noise: this machine is shared and its load shifts within seconds, so the targets are not measured one
after the other but in interleaved rounds (--rounds, the order rotating each round): each target's
latency run is split into slices spread over the whole run, and its percentiles are taken over all of
its requests pooled (the p99 of all 1,000, not a median of slices); each saturation run is split the
same way, its req/s is the total over its slices, and the ratios against the pass-through are also
given as the median of the per-round ratios (each from runs seconds apart). After each slice the run
waits until that target's processes are quiet (a backlog must not weigh on the next). The load is as
in one sequential run (same rate, same requests per latency run, same wrk connections); only the order
changes, and saturation runs for 12 s per target and mode in all (3 s slices) instead of 8.

LiteLLM is installed for the benchmark only, in its own venv:
`python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`.
`bench/gateway.py passthrough --port P --upstream URL` is the reference pass-through server itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median, quantiles
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN = "bench-admin-key-0123456789"
LITELLM_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
SYSTEM = "You are Mira, a cartographer in a rain-soaked harbour town. Never break character."


def body(stream: bool, length: int | None = None) -> dict[str, Any]:
    msgs = [{"role": "system", "content": SYSTEM}]
    if length:  # the stand-in reads a note wherever it is: controls the reply length (chunks per reply)
        msgs.append(
            {"role": "system", "name": "reader_preferences", "content": f"Length: about {length} characters."}
        )
    msgs.append({"role": "user", "content": "Where does the map lead?"})
    return {"model": "M2-her", "messages": msgs, "stream": stream}


# --- the minimal pass-through (reference) ------------------------------------------------------------
def passthrough(port: int, upstream: str) -> None:
    """Adds one message and forwards, streaming through: the ceiling for Python on this machine."""
    import aiohttp  # noqa: PLC0415
    import orjson  # noqa: PLC0415
    import uvloop  # noqa: PLC0415
    from aiohttp import web  # noqa: PLC0415

    async def make() -> web.Application:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))

        async def handle(request: web.Request) -> web.StreamResponse:
            data = orjson.loads(await request.read())
            data["messages"].insert(1, {"role": "system", "name": "note", "content": "Pace: balanced."})
            async with session.post(
                upstream + "/v1/chat/completions",
                data=orjson.dumps(data),
                headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
            ) as up:
                if not data.get("stream"):
                    return web.Response(
                        body=await up.read(), status=up.status, content_type="application/json"
                    )
                resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)

        async def close(_: web.Application) -> None:
            await session.close()

        app.on_cleanup.append(close)
        return app

    uvloop.install()
    web.run_app(make(), host="127.0.0.1", port=port, access_log=None, print=None, reuse_port=True)


# --- processes ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and all their descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


class Procs:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        out = (self.logdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# --- load ---------------------------------------------------------------------------------------------
async def open_loop(
    url: str, headers: dict[str, str], payload: dict[str, Any], rate: float, seconds: float, users: int = 1000
) -> dict[str, Any]:
    """Requests at a fixed rate whatever the answers do (no coordinated omission); latencies in ms."""
    import aiohttp  # noqa: PLC0415
    import orjson  # noqa: PLC0415

    data = orjson.dumps(payload)
    total, first, errors = [], [], 0
    chunks = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            nonlocal errors, chunks
            h = {**headers, "X-Attune-User": f"u{i % users}"}
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=h) as r:
                    n = 0
                    t1 = None
                    async for _ in r.content.iter_any():
                        if t1 is None:
                            t1 = time.perf_counter()
                        n += 1
                    if r.status != 200:
                        errors += 1
                        return
                    chunks += n
                    first.append(((t1 or time.perf_counter()) - t0) * 1000)
                    total.append((time.perf_counter() - t0) * 1000)
            except aiohttp.ClientError:
                errors += 1

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return {
        "n": n,
        "errors": errors,
        "p50": pct(total, 50),
        "p99": pct(total, 99),
        "ttfb_p50": pct(first, 50),
        "ttfb_p99": pct(first, 99),
        "_total": total,
        "_first": first,
    }


def pooled(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One latency figure from a target's slices: percentiles over all their requests together."""
    total = [x for s in slices for x in s["_total"]]
    first = [x for s in slices for x in s["_first"]]
    return {
        "n": sum(s["n"] for s in slices),
        "errors": sum(s["errors"] for s in slices),
        "slices": len(slices),
        "p50": pct(total, 50),
        "p99": pct(total, 99),
        "ttfb_p50": pct(first, 50),
        "ttfb_p99": pct(first, 99),
    }


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return round(quantiles(values, n=100, method="inclusive")[q - 1], 3)


WRK_LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
%s
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-Attune-User"] = "u" .. (n %% 1000)
  return wrk.format()
end
"""


def wrk(
    url: str,
    headers: dict[str, str],
    payload: dict[str, Any],
    seconds: float,
    tmp: Path,
    connections: int = 64,
) -> dict[str, Any]:
    script = tmp / "post.lua"
    hdr = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(WRK_LUA % (json.dumps(payload), hdr))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


# --- the run ------------------------------------------------------------------------------------------
def main() -> int:  # noqa: PLR0915 - one straight script
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "passthrough"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sat-seconds", type=float, default=12, help="per target and mode, all rounds")
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds the runs of each target are split into"
    )
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm")
    parser.add_argument(
        "--only", default="", help="comma-separated targets: direct,attune,passthrough,litellm"
    )
    parser.add_argument(
        "--baseline",
        help="another checkout (e.g. `git worktree add /tmp/base HEAD~1`): its Attune runs as target"
        " 'baseline' in the same run, just before this one, for before/after figures under the same load",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.mode == "passthrough":
        passthrough(args.port, args.upstream)
        return 0
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2

    from service.embedded import EmbeddedRedis  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="attune-bench-"))
    procs = Procs(tmp)
    redis = EmbeddedRedis(tmp / "redis")
    results: dict[str, Any] = {"targets": {}}
    try:
        redis_url = redis.start()
        py = sys.executable
        sp = free_port()
        procs.spawn(
            "standin",
            [
                py,
                "-m",
                "service.standin",
                "--port",
                str(sp),
                "--first-byte-ms",
                "0",
                "--chunk-ms",
                "0",
                "--lenient",
            ],
        )
        standin = f"http://127.0.0.1:{sp}"
        ap = free_port()
        attune_env = {
            "ATTUNE_REDIS_URL": redis_url,
            "ATTUNE_ADMIN_KEY": ADMIN,
            "MINIMAX_BASE_URL": standin,
            "ATTUNE_DATA_DIR": str(tmp / "var"),
        }
        attune = procs.spawn(
            "attune",
            [py, "-m", "service.cli", "serve", "--workers", str(args.procs), "--port", str(ap)],
            attune_env,
        )
        bp = free_port()
        base = None
        if args.baseline:
            serve = [py, "-m", "service.cli", "serve", "--workers", str(args.procs), "--port", str(bp)]
            env = {**attune_env, "ATTUNE_DATA_DIR": str(tmp / "var-baseline")}
            base = procs.spawn("baseline", serve, env, cwd=Path(args.baseline).resolve())
        pp = free_port()
        pt = [
            procs.spawn(
                f"passthrough{i}", [py, __file__, "passthrough", "--port", str(pp), "--upstream", standin]
            )
            for i in range(args.procs)
        ]
        targets: dict[str, tuple[str, dict[str, str], list[int]]] = {}
        only = set(filter(None, args.only.split(",")))
        for port in (sp, ap, pp, *((bp,) if base else ())):
            wait_port(port)
        time.sleep(1.0)
        import httpx  # noqa: PLC0415

        key = httpx.post(
            f"http://127.0.0.1:{ap}/v1/admin/apps/bench/keys",
            json={"scopes": ["condition"]},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        ).json()["key"]
        standin_pid = procs.procs[0].pid
        targets["direct"] = (f"{standin}/v1/chat/completions", {"Authorization": "Bearer x"}, [standin_pid])
        if base is not None:  # same Redis, so the key made through this run's Attune works there too
            targets["baseline"] = (
                f"http://127.0.0.1:{bp}/v1/chat/completions",
                {"Authorization": f"Bearer {key}"},
                [base.pid],
            )
        targets["attune"] = (
            f"http://127.0.0.1:{ap}/v1/chat/completions",
            {"Authorization": f"Bearer {key}"},
            [attune.pid],
        )
        targets["passthrough"] = (f"http://127.0.0.1:{pp}/v1/chat/completions", {}, [p.pid for p in pt])
        if only and "litellm" not in only:
            pass
        elif Path(args.litellm).exists():
            lp = free_port()
            cfg = tmp / "litellm.yaml"
            cfg.write_text(
                "model_list:\n  - model_name: M2-her\n    litellm_params:\n      model: openai/M2-her\n"
                f"      api_base: {standin}/v1\n      api_key: x\n"
                "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
            )
            # Its workers import for ~20 s on a busy 2-core machine: uvicorn's 5 s health check kills them.
            lite = procs.spawn(
                "litellm",
                [
                    args.litellm,
                    "--config",
                    str(cfg),
                    "--port",
                    str(lp),
                    "--num_workers",
                    str(args.procs),
                    "--timeout_worker_healthcheck",
                    "300",
                ],
                {
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                    "LITELLM_MASTER_KEY": LITELLM_KEY,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                },
            )
            wait_port(lp, timeout=180)
            time.sleep(3)
            targets["litellm"] = (
                f"http://127.0.0.1:{lp}/v1/chat/completions",
                {"Authorization": f"Bearer {LITELLM_KEY}"},
                [lite.pid],
            )
        else:
            print(f"LiteLLM not found at {args.litellm}: its reference run is skipped", file=sys.stderr)
        if only:
            targets = {k: v for k, v in targets.items() if k in only or k in ("direct", "baseline")}

        measure(targets, args, tmp, results)
        chunks = chunk_counts(standin)
        results["chunks_short"], results["chunks_long"] = chunks
        summarize(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        procs.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def settle(pids: list[int], most: float = 15.0) -> None:
    """Wait until a target's processes are quiet again: one still working off a backlog (LiteLLM past
    saturation answers for seconds after the load stopped) must not weigh on the next target's slice."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        cpu0 = tree_cpu(pids)
        time.sleep(0.25)
        if tree_cpu(pids) - cpu0 < 0.025:  # under a tenth of a core
            return


def measure(
    targets: dict[str, tuple[str, dict[str, str], list[int]]],
    args: argparse.Namespace,
    tmp: Path,
    results: dict[str, Any],
) -> None:
    """Every figure of every target, in interleaved rounds (see the module's doc)."""
    names = list(targets)
    rounds = max(1, args.rounds)
    res: dict[str, dict[str, Any]] = {n: {} for n in names}
    for name, (url, headers, _) in targets.items():
        print(f"== warm-up {name}", flush=True)
        asyncio.run(open_loop(url, headers, body(False), args.rate, 2))

    def interleaved(one_slice: Callable[[str, dict[str, str], list[int]], dict[str, Any]]
                    ) -> dict[str, list[dict[str, Any]]]:
        """Each target's slices, one per round, the targets' order rotating each round; after each slice
        the target is left to go quiet (settle)."""
        slices: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                url, headers, pids = targets[name]
                slices[name].append(one_slice(url, headers, pids))
                settle(pids)
        return slices

    for stream in (False, True):
        mode = "stream" if stream else "json"
        slices = interleaved(lambda url, headers, _pids, stream=stream: asyncio.run(
            open_loop(url, headers, body(stream), args.rate, args.seconds / rounds)))
        for name in names:
            res[name][mode] = pooled(slices[name])
            print(f"   {name:12s} {mode:6s} @ {args.rate:g}/s: {res[name][mode]}", flush=True)
    sat_slice = max(1, round(args.sat_seconds / rounds))
    for stream in (False, True):
        mode = "sat_stream" if stream else "sat_json"

        def saturate(url: str, headers: dict[str, str], pids: list[int],
                     stream: bool = stream) -> dict[str, Any]:
            cpu0 = tree_cpu(pids)
            sat = wrk(url, headers, body(stream), sat_slice, tmp)
            sat["cpu_s"] = tree_cpu(pids) - cpu0
            return sat

        per_round = interleaved(saturate)
        for name in names:
            runs = per_round[name]
            requests = sum(x["requests"] for x in runs)
            res[name][mode] = {
                "rps": round(requests / (sat_slice * len(runs)), 2),
                "rps_per_round": [x["rps"] for x in runs],
                "requests": requests,
                "non_2xx": sum(x["non_2xx"] for x in runs),
                "socket_errors": "; ".join(x["socket_errors"] for x in runs if x["socket_errors"]),
                "cpu_us_per_request": round(sum(x["cpu_s"] for x in runs) / max(1, requests) * 1e6, 1),
            }
            print(f"   {name:12s} saturation {mode[4:]:6s}: {res[name][mode]}", flush=True)
        results.setdefault("rounds", {})[mode] = {n: [x["rps"] for x in per_round[n]] for n in names}
    for name, (url, headers, pids) in targets.items():
        # CPU per streamed chunk: short and long replies at the same fixed rate.
        per = {}
        for length in (100, 1500):
            cpu0 = tree_cpu(pids)
            lat = asyncio.run(
                open_loop(url, headers, body(True, length), min(args.rate, 50), args.seconds / 2)
            )
            per[length] = (tree_cpu(pids) - cpu0) / max(1, lat["n"])
        res[name]["cpu_us_per_request_short_stream"] = round(per[100] * 1e6, 1)
        res[name]["cpu_us_per_request_long_stream"] = round(per[1500] * 1e6, 1)
    results["targets"] = res


def round_ratio(results: dict[str, Any], mode: str, a: str, b: str) -> float:
    """The median over rounds of a's req/s over b's in the same round."""
    rounds = results.get("rounds", {}).get(mode, {})
    pairs = [x / y for x, y in zip(rounds.get(a, []), rounds.get(b, []), strict=False) if y]
    return median(pairs) if pairs else float("nan")


def chunk_counts(standin: str) -> tuple[float, float]:
    """Mean SSE events per streamed reply for the short and the long reply of the per-chunk runs."""
    import httpx  # noqa: PLC0415

    out = []
    for length in (100, 1500):
        n = 0
        for _ in range(30):
            r = httpx.post(
                f"{standin}/v1/chat/completions",
                json=body(True, length),
                headers={"Authorization": "Bearer x"},
            )
            n += r.text.count("data: ")
        out.append(n / 30)
    return out[0], out[1]


def summarize(results: dict[str, Any], args: argparse.Namespace) -> None:
    t = results["targets"]
    d = t["direct"]
    print("\n== summary (ms are added latency against the stand-in directly, same run)")
    per_chunk_div = max(1e-9, results["chunks_long"] - results["chunks_short"])
    for name, r in t.items():
        row = {
            "added_p50_json": round(r["json"]["p50"] - d["json"]["p50"], 2),
            "added_p99_json": round(r["json"]["p99"] - d["json"]["p99"], 2),
            "added_p50_stream_total": round(r["stream"]["p50"] - d["stream"]["p50"], 2),
            "added_p99_stream_total": round(r["stream"]["p99"] - d["stream"]["p99"], 2),
            "added_p50_ttfb": round(r["stream"]["ttfb_p50"] - d["stream"]["ttfb_p50"], 2),
            "rps_json": r["sat_json"]["rps"],
            "rps_stream": r["sat_stream"]["rps"],
            "cpu_us_per_request_json": r["sat_json"]["cpu_us_per_request"],
            "cpu_us_per_request_stream": r["sat_stream"]["cpu_us_per_request"],
            "cpu_us_per_chunk": round(
                (r["cpu_us_per_request_long_stream"] - r["cpu_us_per_request_short_stream"]) / per_chunk_div,
                2,
            ),
            "errors": r["json"]["errors"]
            + r["stream"]["errors"]
            + r["sat_json"]["non_2xx"]
            + r["sat_stream"]["non_2xx"],
        }
        r["summary"] = row
        print(f"{name:12s} {row}")
    a, lt, pt = t.get("attune"), t.get("litellm"), t.get("passthrough")
    if a and lt:
        print(
            f"attune/litellm rps json {a['sat_json']['rps'] / lt['sat_json']['rps']:.1f}x (goal >= 10x), "
            f"stream {a['sat_stream']['rps'] / lt['sat_stream']['rps']:.1f}x; added p99 json "
            f"{a['summary']['added_p99_json']} vs {lt['summary']['added_p99_json']} ms (goal <= 1/5); "
            f"median of rounds: json {round_ratio(results, 'sat_json', 'attune', 'litellm'):.1f}x, "
            f"stream {round_ratio(results, 'sat_stream', 'attune', 'litellm'):.1f}x"
        )
    b = t.get("baseline")
    if a and b:
        print(
            f"attune/baseline rps json {a['sat_json']['rps'] / b['sat_json']['rps']:.2f}, stream "
            f"{a['sat_stream']['rps'] / b['sat_stream']['rps']:.2f}; CPU per request json "
            f"{a['sat_json']['cpu_us_per_request'] / b['sat_json']['cpu_us_per_request']:.2f}, stream "
            f"{a['sat_stream']['cpu_us_per_request'] / b['sat_stream']['cpu_us_per_request']:.2f}"
        )
    if b and pt:
        print(
            f"baseline/passthrough rps json {b['sat_json']['rps'] / pt['sat_json']['rps']:.2f}, "
            f"stream {b['sat_stream']['rps'] / pt['sat_stream']['rps']:.2f}; median of rounds: json "
            f"{round_ratio(results, 'sat_json', 'baseline', 'passthrough'):.2f}, "
            f"stream {round_ratio(results, 'sat_stream', 'baseline', 'passthrough'):.2f}"
        )
    if a and pt:
        print(
            f"attune/passthrough rps json {a['sat_json']['rps'] / pt['sat_json']['rps']:.2f} (goal >= 0.5), "
            f"stream {a['sat_stream']['rps'] / pt['sat_stream']['rps']:.2f}; median of rounds: json "
            f"{round_ratio(results, 'sat_json', 'attune', 'passthrough'):.2f}, "
            f"stream {round_ratio(results, 'sat_stream', 'attune', 'passthrough'):.2f}"
        )
    print(
        f"chunks per streamed reply: short {results['chunks_short']:.1f}, long {results['chunks_long']:.1f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
