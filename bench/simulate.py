"""The user simulator: synthetic users with known preferences against the real API, workers and gateway.

    .venv/bin/python bench/simulate.py              # 200 users, open loop at 10/20/40/80 replies, closed loop 40 turns
    .venv/bin/python bench/simulate.py --quick      # a small run that finishes in well under a minute
    .venv/bin/python bench/simulate.py --loop open --users 200 --noise 0.3 --json out.json

It starts its own embedded Redis, one API process and `--workers` worker processes (and, for the
closed loop, the M2-her stand-in), stops them at the end, and prints a report table with each goal's
pass or fail. Use --redis-url to run against an existing Redis instead (it must be empty of other runs'
consumer groups only if you care about catch-up times).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.sim import behaviour, report  # noqa: E402
from bench.sim.cluster import Cluster  # noqa: E402
from bench.sim.openloop import run_open_loop  # noqa: E402
from bench.sim.users import Noise, make_population  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a small run for tests: 30 users at 10,20,40 replies; closed loop 20 users x 16 turns")
    ap.add_argument("--loop", choices=("open", "closed", "both"), default="both")
    ap.add_argument("--users", type=int, default=None, help="open-loop users (default 200; 30 with --quick)")
    ap.add_argument("--closed-users", type=int, default=None, help="closed-loop users (default 200; 20 with --quick)")
    ap.add_argument("--checkpoints", default=None, help="replies per user at which profiles are scored (10,20,40,80)")
    ap.add_argument("--turns", type=int, default=None, help="closed-loop turns per user (default 40)")
    ap.add_argument("--noise", type=float, default=0.2, help="noise level: double taps, random repeats, ... (0.2)")
    ap.add_argument("--bots", type=float, default=0.05, help="share of bots (0.05)")
    ap.add_argument("--curators", type=float, default=0.10, help="share of curators among humans (0.10)")
    ap.add_argument("--pace-effect", type=float, default=1.0,
                    help="scale the repeat probability a pacing mismatch causes (1.0: 0.3 one step off, 0.55 two "
                         "steps); vary it to check that the learning does not depend on the simulator's exact constants")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    ap.add_argument("--redis-url", default=None, help="use this Redis instead of starting an embedded one")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (process logs) after the run")
    args = ap.parse_args(argv)
    args.users = args.users or (30 if args.quick else 200)
    args.closed_users = args.closed_users or (20 if args.quick else 200)
    args.checkpoints = [int(x) for x in (args.checkpoints or ("10,20,40" if args.quick else "10,20,40,80")).split(",")]
    args.turns = args.turns or (16 if args.quick else 40)
    return args


def _open_loop(args: argparse.Namespace, cluster: Cluster, rng: np.random.Generator, noise: Noise,
               run_id: str) -> dict[str, object]:
    users = make_population(args.users, rng, bot_share=args.bots, curator_share=args.curators, prefix=f"o{run_id}")
    with tqdm(total=None, unit="ev", desc="open loop", disable=args.no_progress, file=sys.stderr) as bar:
        result = asyncio.run(run_open_loop(cluster, users, args.checkpoints, rng, noise, app="sim-open",
                                           tick=bar.update, total=lambda n: _grow(bar, n)))
    humans = sum(not u.is_bot for u in users)
    print(report.open_loop_table(result, (
        f"OPEN LOOP: {len(users)} users ({humans} honest, {len(users) - humans} bots, "
        f"{sum(u.curator for u in users)} curators), noise {args.noise}, pace effect {args.pace_effect}, "
        f"seed {args.seed}, {args.workers} worker process(es)")))
    return report.as_json(result)


def _closed_loop(args: argparse.Namespace, cluster: Cluster, rng: np.random.Generator, noise: Noise,
                 run_id: str) -> dict[str, object]:
    from bench.sim.closedloop import closed_loop_table, run_closed_loop  # noqa: PLC0415 - imports the stand-in

    users = make_population(args.closed_users, rng, bot_share=0.0, curator_share=args.curators, prefix=f"c{run_id}")
    with tqdm(total=len(users) * args.turns, unit="turn", desc="closed loop", disable=args.no_progress,
              file=sys.stderr) as bar:
        closed = asyncio.run(run_closed_loop(cluster, users, args.turns, rng, noise, app="sim-closed",
                                             tick=bar.update))
    print()
    print(closed_loop_table(closed, f"CLOSED LOOP: {len(users)} users x {args.turns} turns through the gateway "
                                    f"(stand-in upstream), half conditioned, noise {args.noise}, "
                                    f"pace effect {args.pace_effect}, seed {args.seed}"))
    return closed.as_json()


def _grow(bar: tqdm, n: int) -> None:
    bar.total = (bar.total or 0) + n
    bar.refresh()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so the processes this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = np.random.default_rng(args.seed)
    behaviour.PACE_REPEAT = tuple(min(0.95, p * args.pace_effect) for p in behaviour.PACE_REPEAT)
    noise = Noise(args.noise)
    run_id = secrets.token_hex(3)
    out: dict[str, object] = {"command": " ".join(sys.argv), "seed": args.seed, "noise": args.noise}
    workdir = Path(tempfile.mkdtemp(prefix="attune-sim-"))
    needs_standin = args.loop in ("closed", "both")
    started = time.monotonic()
    crashed: list[str] = []
    failed = True
    try:
        with Cluster(workdir, redis_url=args.redis_url, workers=args.workers, standin=needs_standin) as cluster:
            if args.loop in ("open", "both"):
                out["open_loop"] = _open_loop(args, cluster, rng, noise, run_id)
            if args.loop in ("closed", "both"):
                out["closed_loop"] = _closed_loop(args, cluster, rng, noise, run_id)
            crashed = cluster.alive()
        failed = False
    except (SystemExit, KeyboardInterrupt):
        failed = False  # stopped on purpose: the processes are stopped, the logs are not needed
        raise
    finally:
        keep = args.keep or bool(crashed) or failed
        print(f"\n(run took {time.monotonic() - started:.0f} s; process logs in {workdir})" if keep
              else f"\n(run took {time.monotonic() - started:.0f} s)")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
