"""Fit the confidence calibration (models/calibration.py) on the user simulator's open loop.

Runs the open loop (bench/sim, as `bench/simulate.py --loop open` does) for each seed, keeps every honest
user's served profile at every checkpoint, recovers the raw confidences (inverting the map in force),
fits a Platt map per quantity, sigmoid(a * logit(raw) + b + c * ln(1 + replies)), and prints the constants
and the expected calibration error per checkpoint before and after.

Run: .venv/bin/python bench/calibrate.py --seeds 1,2 [--users 200] [--check 3]
(--check N scores the map in force on seed N without fitting: an out-of-sample look.)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.sim import openloop  # noqa: E402
from bench.sim.cluster import Cluster  # noqa: E402
from bench.sim.metrics import expected_calibration_error  # noqa: E402
from bench.sim.users import Noise, make_population  # noqa: E402
from models import calibration  # noqa: E402

CHECKPOINTS = [10, 20, 40, 80]


def collect(seed: int, users_n: int, workers: int) -> list[dict[str, Any]]:
    """One open-loop run; a row per honest user with a profile per checkpoint."""
    rng = np.random.default_rng(seed)
    users = make_population(users_n, rng, prefix=f"k{secrets.token_hex(3)}")
    rows: list[dict[str, Any]] = []
    real_score = openloop.score

    def capture(us: Any, profiles: dict[str, Any], shown: dict[str, Any], noise: Any = None) -> Any:
        replies = len(next(iter(shown.values()))) if shown else 0
        for u in us:
            doc = profiles.get(u.user_id)
            if u.is_bot or not doc:
                continue
            n = int(doc["evidence"]["replies"])
            lo, hi = doc["reply_length"]["interval"]
            label = doc["pacing"]["label"]
            rows.append({"seed": seed, "checkpoint": _checkpoint(replies, len(shown[u.user_id])), "replies": n,
                         "len_raw": calibration.invert(calibration.LENGTH, doc["reply_length"]["confidence"], n),
                         "len_ok": lo <= u.preferred_chars <= hi,
                         "pace_raw": float(doc["pacing"]["scores"][label]), "pace_ok": label == u.pacing})
        return real_score(us, profiles, shown, noise)

    openloop.score = capture
    workdir = Path(tempfile.mkdtemp(prefix="attune-calibrate-"))
    try:
        with Cluster(workdir, workers=workers) as cluster:
            asyncio.run(openloop.run_open_loop(cluster, users, CHECKPOINTS, rng, Noise(0.2), app=f"cal{seed}"))
    finally:
        openloop.score = real_score
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _checkpoint(_first: int, shown: int) -> int:
    return min(CHECKPOINTS, key=lambda c: abs(c - shown))


def fit(raw: np.ndarray, replies: np.ndarray, ok: np.ndarray) -> tuple[float, float, float]:
    """Logistic regression of correctness on (logit raw, ln(1 + replies)) by Newton's method."""
    x = np.column_stack([_logit(raw), np.ones(len(raw)), np.log1p(replies)])
    y = ok.astype(float)
    beta = np.array([1.0, 0.0, 0.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(x @ beta)))
        grad = x.T @ (y - p) - 1e-3 * (beta - [1.0, 0.0, 0.0])
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[0]), float(beta[1]), float(beta[2])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def report(rows: list[dict[str, Any]], name: str, params: tuple[float, float, float]) -> None:
    for cp in CHECKPOINTS:
        sel = [r for r in rows if r["checkpoint"] == cp]
        if not sel:
            continue
        raw = [r[f"{name}_raw"] for r in sel]
        ok = [r[f"{name}_ok"] for r in sel]
        cal = [calibration.apply(params, r[f"{name}_raw"], r["replies"]) for r in sel]
        print(f"  {name:<6} at {cp:>2} replies: n {len(sel):>4}  accuracy {np.mean(ok):.3f}  "
              f"raw conf {np.mean(raw):.3f} ECE {expected_calibration_error(raw, ok):.3f}  ->  "
              f"calibrated conf {np.mean(cal):.3f} ECE {expected_calibration_error(cal, ok):.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check", type=int, default=None, help="score the map in force on this seed, no fit")
    args = ap.parse_args()
    if args.check is not None:
        rows = collect(args.check, args.users, args.workers)
        print(f"map in force, seed {args.check} (out of sample if it was not fitted on it):")
        report(rows, "len", calibration.LENGTH)
        report(rows, "pace", calibration.PACING)
        return 0
    rows: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += collect(seed, args.users, args.workers)
    replies = np.array([r["replies"] for r in rows], dtype=float)
    params = {}
    for name in ("len", "pace"):
        raw = np.array([r[f"{name}_raw"] for r in rows])
        ok = np.array([r[f"{name}_ok"] for r in rows])
        params[name] = fit(raw, replies, ok)
    print(f"fitted on seeds {args.seeds}, {len(rows)} (user, checkpoint) rows:")
    for name, const in (("len", "LENGTH"), ("pace", "PACING")):
        a, b, c = params[name]
        print(f"{const} = ({a:.4f}, {b:.4f}, {c:.4f})")
    for name, const in (("len", "LENGTH"), ("pace", "PACING")):
        print(f"{const}: identity map vs fitted (in sample)")
        report(rows, name, (1.0, 0.0, 0.0))
        report(rows, name, params[name])
    if any(math.isnan(v) for p in params.values() for v in p):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
