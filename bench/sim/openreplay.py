"""An in-process replay of the open loop: the same users, histories, validation and learning code as
bench/simulate.py --loop open, without HTTP, Redis or worker processes. For iterating on the learning in
seconds; the figures to report come from bench/simulate.py.

What it leaves out: delivery noise (duplicates, late and reordered events, batch boundaries); each user's
events of a stage are applied in time order, the population priors are refreshed after every stage.

    .venv/bin/python -m bench.sim.openreplay --seeds 1,2,3 [--users 200] [--checkpoints 10,20,40,80]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.sim.history import ShownRecord
from bench.sim.openloop import build_histories
from bench.sim.replay import Learner
from bench.sim.score import score
from bench.sim.users import Noise, make_population
from models import profile as pm
from models.events import validate_event
from models.population import Population, RepeatModelTrainer, refresh

DAY_MS = 86_400_000


def run(users_n: int, seed: int, checkpoints: list[int], noise: Noise) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    users = make_population(users_n, rng, prefix=f"o{seed}")
    now = 1_800_000_000_000
    histories = build_histories(users, checkpoints, rng, noise, now)
    learners = {u.user_id: Learner(u.user_id) for u in users}
    pop, trainer = Population(), RepeatModelTrainer()
    shown: dict[str, list[ShownRecord]] = {u.user_id: [] for u in users}
    out = []
    for k, _ in enumerate(checkpoints):
        for u in users:
            stage = histories[u.user_id][k]
            shown[u.user_id].extend(stage.shown)
            events = [validate_event({**raw, "timestamp": t}, received_ms=now, sent_at_ms=None,
                                     max_future_ms=DAY_MS, max_age_ms=7 * DAY_MS) for t, raw in stage.events]
            lr = learners[u.user_id]
            lr.apply(events, pop, trainer)
            # The worker's idle sweep: the history ended minutes ago, every open reply closes.
            ap = pm.Applier(lr.state, pop, 120_000)
            ap.close_due(now_wall_ms=now, idle_since_ms=0)
            pm.update_trust(lr.state, pop)
            est = pm.estimate(lr.state["closed"], pop, lr.state["msg"])
            lr.profile = pm.profile_document("a", u.user_id, None, lr.version, "", lr.state, est,
                                             lr.state["replies"], lr.state["n"])
            if lr.state["trust"] == "normal":
                for rec in ap.closed_now:
                    if rec.get("t") is not None:
                        trainer.add(rec, "repeat" in rec["o"])
        summaries = []
        for lr in learners.values():
            est = pm.estimate(lr.state["closed"], pop, lr.state["msg"])
            summaries.append(pm.summary(lr.state, est, pm.behaviour_features(lr.state)))
        new = refresh(pop, summaries)
        new.repeat_model = trainer.export(pop.repeat_model)
        pop = new
        out.append(score(users, {uid: lr.profile for uid, lr in learners.items()}, shown, noise))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--checkpoints", default="10,20,40,80")
    ap.add_argument("--noise", type=float, default=0.2)
    args = ap.parse_args()
    checkpoints = [int(x) for x in args.checkpoints.split(",")]
    keys = ["pacing_acc_attune", "pacing_acc_naive", "ece_pacing", "len_err_attune", "len_ratio",
            "ece_length", "honest_flagged", "bots_caught"]
    allf: list[list[dict[str, Any]]] = []
    started = time.monotonic()
    for seed in (int(s) for s in args.seeds.split(",")):
        figs = run(args.users, seed, checkpoints, Noise(args.noise))
        allf.append(figs)
        print(f"seed {seed}: " + "  ".join(f"@{c} pace {f['pacing_acc_attune']:.3f}" for c, f in
                                          zip(checkpoints, figs, strict=True)), flush=True)
    print(f"mean over {len(allf)} seeds ({time.monotonic() - started:.0f} s):")
    print(f"{'replies':>8} " + " ".join(f"{k[:16]:>17}" for k in keys))
    for i, c in enumerate(checkpoints):
        print(f"{c:>8} " + " ".join(f"{np.mean([f[i][k] for f in allf]):>17.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
