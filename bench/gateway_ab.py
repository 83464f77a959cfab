"""Interleaved A/B of two Attune checkouts: the same wrk load (16 connections, 4 s slices) alternating
between them, one API process each, one Redis, one stand-in; CPU µs per request from /proc. Then the
added latency at a fixed open-loop rate (non-streamed), in 3 s slices shuffled between the stand-in
directly and the two checkouts: medians over the slices of each one's p50 and p99, minus the direct ones.

    .venv/bin/python bench/gateway_ab.py BEFORE_DIR AFTER_DIR [ROUNDS] [RATE]

Under a shared machine's shifting load, slices that alternate give fairer before/after ratios than
bench/gateway.py's sequential targets (use `git worktree add /tmp/before <commit>` for a checkout).
"""
import argparse, os, re, subprocess, sys, time
from pathlib import Path

import httpx


def checkout(path: str) -> str:
    """An Attune checkout's directory, resolved (argparse type)."""
    tree = Path(path).resolve()
    if not (tree / "service" / "cli.py").is_file():
        raise argparse.ArgumentTypeError(f"{path} is not an Attune checkout (no service/cli.py); "
                                         "make one with `git worktree add /tmp/before <commit>`")
    return str(tree)


ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("before", type=checkout, help="the checkout to compare against (e.g. a worktree of main)")
ap.add_argument("after", type=checkout, help="the checkout with the change")
ap.add_argument("rounds", type=int, nargs="?", default=4,
                help="wrk slices per checkout and stream mode (default 4)")
ap.add_argument("rate", type=float, nargs="?", default=100.0, help="open-loop requests/s of the latency part "
                "(default 100)")
args = ap.parse_args()

PY = sys.executable
trees = {"before": args.before, "after": args.after}
TMP = Path(__import__("tempfile").mkdtemp(prefix="attune-ab-"))
procs = []


def free_port():
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RP, SP, PORTS = free_port(), free_port(), [free_port(), free_port()]
def spawn(args, cwd="/tmp", env=None):
    p = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(p); return p
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]
try:
    spawn(["redis-server", "--port", str(RP), "--save", "", "--appendonly", "no"])
    spawn([PY, "-m", "service.standin", "--port", str(SP), "--first-byte-ms", "0", "--chunk-ms", "0", "--lenient"], cwd=trees["after"])
    servers = {}
    for i, (name, tree) in enumerate(trees.items()):
        port = PORTS[i]
        p = spawn([PY, "-m", "service.cli", "serve", "--workers", "1", "--port", str(port)], cwd=tree,
                  env={"ATTUNE_REDIS_URL": f"redis://127.0.0.1:{RP}/0", "ATTUNE_ADMIN_KEY": "bench-admin-key-0123456789",
                       "MINIMAX_BASE_URL": f"http://127.0.0.1:{SP}", "ATTUNE_DATA_DIR": str(TMP / f"var-{name}")})
        servers[name] = (port, p)
    time.sleep(6)
    key = httpx.post(f"http://127.0.0.1:{PORTS[0]}/v1/admin/apps/bench/keys", json={"scopes": ["condition"]},
                     headers={"Authorization": "Bearer bench-admin-key-0123456789"}).json()["key"]
    res = {}
    for stream in ("false", "true"):
        open(str(TMP / "ab.lua"), "w").write(f'''wrk.method = "POST"
wrk.body = [[{{"model":"M2-her","messages":[{{"role":"system","content":"You are Mira."}},{{"role":"user","content":"Where does the map lead?"}}],"stream":{stream}}}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-Attune-User"] = "u" .. (n % 1000)
  return wrk.format()
end
''')
        for rnd in range(args.rounds):
            for name, (port, p) in (servers.items() if rnd % 2 == 0 else reversed(servers.items())):
                pids = [p.pid] + children(p.pid)
                c0 = sum(cpu(x) for x in pids)
                out = subprocess.run(["wrk", "-t1", "-c16", "-d4s", "-s", str(TMP / "ab.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True).stdout
                c1 = sum(cpu(x) for x in pids)
                n = int(re.search(r"(\d+) requests in", out).group(1)); rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                non2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                r = res.setdefault((stream, name), {"n": 0, "cpu": 0.0, "rps": []})
                r["n"] += n; r["cpu"] += c1 - c0; r["rps"].append(rps)
                if non2: print("NON2XX", name, non2.group(1))
    for (stream, name), r in res.items():
        print(f"stream={stream:5s} {name:6s} rps per slice {r['rps']}  CPU us/request {r['cpu']/r['n']*1e6:.0f}")
    for stream in ("false", "true"):
        b, a = res[(stream, "before")], res[(stream, "after")]
        print(f"stream={stream}: after/before CPU per request {a['cpu']/a['n'] / (b['cpu']/b['n']):.2f}, rps {sum(a['rps'])/sum(b['rps']):.2f}")
    # Latency: a shared machine's load shifts within seconds, so short shuffled slices and medians.
    import asyncio, random, statistics  # noqa: E401
    from gateway import body, open_loop  # bench/gateway.py, beside this file

    rate = args.rate
    targets = {"direct": (f"http://127.0.0.1:{SP}/v1/chat/completions", {"Authorization": "Bearer x"})}
    for name, (port, _) in servers.items():
        targets[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {key}"})
    slices: dict[str, list[tuple[float, float]]] = {n: [] for n in targets}
    for rnd in range(2 * args.rounds + 1):
        for name in random.sample(list(targets), len(targets)):
            url, hdrs = targets[name]
            lat = asyncio.run(open_loop(url, hdrs, body(False), rate, 3))
            slices[name].append((lat["p50"], lat["p99"]))
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for n, v in slices.items()}
    d50, d99 = med["direct"]
    for name, (p50, p99) in med.items():
        added = "" if name == "direct" else f"  added p50/p99 {p50 - d50:.2f}/{p99 - d99:.2f} ms"
        print(f"latency @ {rate:g}/s {name:6s} median of {len(slices[name])} slices p50 {p50:.2f} "
              f"p99 {p99:.2f} ms{added}")
finally:
    for p in procs:
        try: os.killpg(p.pid, 15)
        except ProcessLookupError: pass
    for p in procs:
        p.wait()
    __import__("shutil").rmtree(TMP, ignore_errors=True)
