"""An in-process replay of the open loop's learning: the same histories (bench/sim/history.py) applied to the
learning code directly, pacing accuracy and length error per checkpoint. For iterating on the estimators;
the figures to report come from bench/simulate.py.

    .venv/bin/python -m bench.sim.openreplay --users 200 --seeds 1,2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.sim.history import open_loop_history
from bench.sim.users import Noise, make_population
from models import profile as pm
from models.features import reply_features
from models.population import Population, refresh


def run(seed: int, n: int, checkpoints: list[int]) -> dict[int, dict[str, float]]:
    rng = np.random.default_rng(seed)
    users = [u for u in make_population(n, rng, prefix="o") if not u.is_bot]
    noise = Noise()
    hist = {u.user_id: open_loop_history(u, checkpoints, rng, noise) for u in users}
    states = {u.user_id: pm.new_state() for u in users}
    pop = Population()
    out = {}
    for k, cp in enumerate(checkpoints):
        ests = {}
        for u in users:
            st = states[u.user_id]
            ap = pm.Applier(st, pop, 120_000)
            for t, ev in sorted(hist[u.user_id][k].events, key=lambda x: x[0]):
                reply = ev.get("reply")
                if reply and "text" in reply:
                    ev = {**ev, "reply": {"chars": len(reply["text"]), **reply_features(reply["text"])}}
                ap.apply({**ev, "t": t})
            ap.close_due(10**15, 0)
            ests[u.user_id] = pm.estimate(st["closed"], pop, st["msg"])
        acc = np.mean([ests[u.user_id]["pacing_label"] == u.pacing for u in users])
        err = np.median([abs(ests[u.user_id]["target"] / u.preferred_chars - 1) for u in users])
        top = np.mean([ests[u.user_id]["pacing_scores"][ests[u.user_id]["pacing_label"]] for u in users])
        out[cp] = {"pacing_acc": float(acc), "len_err": float(err), "pacing_top": float(top)}
        rows = [pm.summary(states[u.user_id], ests[u.user_id], pm.behaviour_features(states[u.user_id]))
                for u in users]
        pop = refresh(pop, rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--checkpoints", default="10,20,40,80")
    args = ap.parse_args()
    cps = [int(c) for c in args.checkpoints.split(",")]
    t0 = time.monotonic()
    res = [run(int(s), args.users, cps) for s in args.seeds.split(",")]
    for cp in cps:
        vals = {k: np.mean([r[cp][k] for r in res]) for k in res[0][cp]}
        print(f"{cp:>3}: " + ", ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    print(f"{time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
