"""An in-process replay of the closed loop: the same users, stand-in model, reactions and learning code as
bench/sim/closedloop.py, without HTTP, Redis or worker processes. For iterating on the learning and the
conditioning in seconds instead of minutes; the figures to report come from bench/simulate.py.

What it leaves out: delivery noise (duplicates, late events, clock skew) and batch boundaries (a user's
events of one turn are applied in time order after the turn, as the closed loop sends them).

    .venv/bin/python -m bench.sim.replay --users 200 --turns 40 --seed 1 [--breakdown: where it fails]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import defaultdict
from typing import Any

import numpy as np

from bench.sim.behaviour import (
    DIALOGUE_COST, DIALOGUE_REPEAT, PACE_REPEAT, REPEAT_SCALE, Shown, length_mismatch, react,
)
from bench.sim.closedloop import CHARACTER, MAX_REGENERATIONS, TURNING_SHARE
from bench.sim.users import PACINGS, Noise, SimUser, make_population
from models import profile as pm
from models.conditioning import PACING, decide, scores_of
from models.features import reply_features
from models.population import Population, RepeatModelTrainer, refresh
from service.standin import FOLLOW_PACING, compose, perceived_pacing

CLOSE_AFTER_MS = 120_000  # as workers/apply.py: the character profile's estimate mirrors its _compute


class Learner:
    """One user's worker-side state and the profile documents the gateway would read."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.state = pm.new_state()
        self.profile: dict[str, Any] | None = None
        self.char_profile: dict[str, Any] | None = None
        self.version = 0

    def apply(self, events: list[dict[str, Any]], pop: Population, trainer: RepeatModelTrainer) -> None:
        ap = pm.Applier(self.state, pop, CLOSE_AFTER_MS)
        for ev in sorted(events, key=lambda e: e["t"]):
            ap.apply(ev)
        ap.close_due()
        pm.update_trust(self.state, pop)
        est = pm.estimate(self.state["closed"], pop, self.state["msg"])
        self.version += 1
        st = self.state
        self.profile = pm.profile_document("a", self.user_id, None, self.version, "", st, est, st["replies"],
                                           st["n"])
        ready = pm.characters_ready(st)
        if "mira" in ready:
            recs = ready["mira"]
            prior = pm.character_prior(est)
            cest = pm.estimate(recs, pop, prior=prior)
            self.char_profile = pm.profile_document("a", self.user_id, "mira", self.version, "", st, cest,
                                                    len(recs), st["n"])
        if st["trust"] == "normal":
            for rec in ap.closed_now:
                if rec.get("t") is not None:
                    trainer.add(rec, "repeat" in rec["o"])

    def served(self) -> dict[str, Any] | None:
        return self.char_profile or self.profile


def run(users: list[SimUser], turns: int, seed: int, noise: Noise, refresh_every: int = 4,
        oracle: str = "", decision_seed: int = 0, verbose: bool = False) -> dict[str, Any]:
    # One random stream per user (and one for the stand-in per user): the unconditioned arm sees the same
    # replies and draws whatever the conditioned arm does, so two variants differ only where they differ.
    rngs = {u.user_id: np.random.default_rng([seed, i]) for i, u in enumerate(users)}
    prngs = {u.user_id: random.Random(seed * 1_000_003 + i) for i, u in enumerate(users)}
    drngs = {u.user_id: random.Random(seed * 1_000_003 + i + 500_000 + decision_seed)
             for i, u in enumerate(users)}
    rng = np.random.default_rng(seed)
    pop = Population()
    trainer = RepeatModelTrainer()
    learners = {u.user_id: Learner(u.user_id) for u in users}
    arms = {u.user_id: ("cond" if i % 2 == 0 else "off") for i, u in enumerate(users)}
    clock = {u.user_id: 1_700_000_000_000 + int(rng.integers(0, 60_000)) for u in users}
    session = dict.fromkeys(clock, 0)
    is_open = dict.fromkeys(clock, False)
    rows: list[dict[str, Any]] = []
    n_reply = 0
    for turn in range(1, turns + 1):
        for u in users:
            uid, arm = u.user_id, arms[u.user_id]
            rng, prng = rngs[uid], prngs[uid]
            lr = learners[uid]
            sid = f"{uid}-s{session[uid]}"
            events: list[dict[str, Any]] = []
            t = clock[uid]
            if not is_open[uid]:
                is_open[uid] = True
                events.append({"type": "session_start", "user_id": uid, "session_id": sid, "t": t})
            turning = bool(rng.random() < TURNING_SHARE)
            reaction = None
            rejected: list[tuple[str | None, str | None]] = []  # the turn's regeneration record
            for regeneration in range(MAX_REGENERATIONS + 1):
                messages: list[dict[str, Any]] = [{"role": "system", "name": "Mira", "content": CHARACTER}]
                decision = None
                max_tokens = None
                if arm == "cond":
                    decision = decide(lr.served(), drngs[uid], tuple(rejected))
                    if oracle:
                        decision = _oracle(decision, u, oracle)
                    messages.append({"role": "system", "name": "Attune", "content": decision.note})
                    max_tokens = decision.max_completion_tokens
                reply = compose(messages, max_tokens, prng)
                text = reply["text"]
                n_reply += 1
                rid = f"r{n_reply}"
                feats = reply_features(text)
                if decision is not None:
                    rejected.append((decision.pacing, feats.get("pacing")))  # refused if regenerated next
                shown = Shown(rid, len(text), perceived_pacing(text), float(feats["dialogue_share"]), turning)
                reaction = react(u, shown, rng, noise, may_repeat=regeneration < MAX_REGENERATIONS)
                applied = decision.applied() if decision else None
                served = lr.served()
                scores = scores_of(served) if decision and served and served.get("trust") == "normal" else None
                rows.append({"user": uid, "arm": arm, "turn": turn, "chars": len(text),
                             "pacing": shown.pacing,
                             "served": served["reply_length"]["target_chars"] if served else None,
                             "served_conf": served["reply_length"]["confidence"] if served else None,
                             "p_len": REPEAT_SCALE * (1 - math.exp(-length_mismatch(u, len(text)))),
                             "p_pace": PACE_REPEAT[abs(PACINGS.index(shown.pacing)
                                                       - PACINGS.index(u.pacing))],
                             "p_dia": DIALOGUE_REPEAT * (1 - math.exp(-DIALOGUE_COST * (shown.dialogue_share
                                                                                        - u.dialogue) ** 2)),
                             "repeated": reaction.repeated, "applied": applied, "regeneration": regeneration,
                             "asked": reply["pacing"], "scores": scores})
                events.append({"type": "reply_shown", "user_id": uid, "reply_id": rid, "t": t, "rt": t,
                               "session_id": sid, "character_id": "mira",
                               "reply": {"chars": len(text), **feats,
                                         "finish_reason": reply["finish_reason"]},
                               "conditioning": applied})
                for sig in reaction.signals:
                    events.append({"type": sig.type, "user_id": uid, "reply_id": rid, "session_id": sid,
                                   "t": t + sig.at_ms, **sig.fields})
                t += max(reaction.duration_ms, 1)
                if not reaction.repeated:
                    break
            assert reaction is not None
            if reaction.leaves:
                events.append({"type": "session_end", "user_id": uid, "session_id": sid, "t": t})
            if reaction.leaves or reaction.away:
                is_open[uid] = False
                session[uid] += 1
                t += 600_000
            clock[uid] = t + 2_000
            lr.apply(events, pop, trainer)
        if turn % refresh_every == 0:
            summaries = [_summary(lr, pop) for lr in learners.values()]
            new = refresh(pop, summaries)
            new.repeat_model = trainer.export(pop.repeat_model)
            pop = new
            if verbose:
                print(f"turn {turn}: pop mu {math.exp(pop.mu):.0f} sd {pop.mu_sd:.3f} "
                      f"rate {pop.base_rate:.3f}")
    return {"rows": rows, "figures": figures(rows, users, turns)}


def _oracle(decision: Any, u: SimUser, what: str) -> Any:
    from dataclasses import replace  # noqa: PLC0415

    from models.conditioning import max_tokens_for, render_note  # noqa: PLC0415

    pacing = u.pacing if "pacing" in what else decision.pacing
    target = int(round(u.preferred_chars / 10) * 10) if "length" in what else decision.target_chars
    note = render_note(pacing, target, decision.dialogue)
    return replace(decision, pacing=pacing, target_chars=target, note=note,
                   max_completion_tokens=max_tokens_for(target) if target else None)


def _summary(lr: Learner, pop: Population) -> dict[str, Any]:
    est = pm.estimate(lr.state["closed"], pop, lr.state["msg"])
    return pm.summary(lr.state, est, pm.behaviour_features(lr.state))


def figures(rows: list[dict[str, Any]], users: list[SimUser], turns: int) -> dict[str, float]:
    truth = {u.user_id: u for u in users}
    half = turns // 2
    out: dict[str, float] = {}
    for arm in ("cond", "off"):
        late = [r for r in rows if r["arm"] == arm and r["turn"] > half]
        out[f"repeat_late[{arm}]"] = sum(r["repeated"] for r in late) / len(late)
        out[f"len_err_late[{arm}]"] = float(np.median([abs(r["chars"] / truth[r["user"]].preferred_chars - 1)
                                                       for r in late]))
        right = sum(r["pacing"] == truth[r["user"]].pacing for r in late)
        out[f"pacing_match_late[{arm}]"] = right / len(late)
        for k in ("p_len", "p_pace", "p_dia"):
            out[f"{k}[{arm}]"] = float(np.mean([r[k] for r in late]))
        out[f"regen_share[{arm}]"] = sum(r["regeneration"] > 0 for r in late) / len(late)
    out["reduction_late"] = 1 - out["repeat_late[cond]"] / out["repeat_late[off]"]
    late = [r for r in rows if r["arm"] == "cond" and r["turn"] > half and r["applied"]]
    right = sum(r["applied"]["pacing"] == truth[r["user"]].pacing for r in late)
    out["applied_pacing_right"] = right / len(late)
    tg = [r for r in late if r["applied"].get("target_chars")]
    out["applied_target_share"] = len(tg) / len(late)
    errs = [abs(r["applied"]["target_chars"] / truth[r["user"]].preferred_chars - 1) for r in tg]
    out["applied_target_err"] = float(np.median(errs)) if errs else math.nan
    srv = [r for r in late if r["served"]]
    out["served_target_err"] = float(np.median([abs(r["served"] / truth[r["user"]].preferred_chars - 1)
                                                for r in srv]))
    out["served_conf"] = float(np.mean([r["served_conf"] for r in srv]))
    return out


def pacing_headroom(rows: list[dict[str, Any]], users: list[SimUser], turns: int) -> dict[str, float]:
    """Where the conditioned arm's pacing repeats come from, late turns: how often the profile's top label
    (greedy) is the user's pacing, against how often the applied arm is; and the pacing-caused repeat
    probability expected from the arm applied, from the greedy arm and from the true pacing, each through
    the stand-in's compliance (FOLLOW_PACING, else one of the other two). The gap applied -> greedy is all a
    policy over the same beliefs can win without better learning; greedy -> truth is the learner's."""
    truth = {u.user_id: u for u in users}
    late = [r for r in rows if r["arm"] == "cond" and r["turn"] > turns // 2 and r["scores"]]

    def expected(asked: str, preferred: str) -> float:
        a, k = PACINGS.index(asked), PACINGS.index(preferred)
        return sum((FOLLOW_PACING if b == a else (1 - FOLLOW_PACING) / 2) * PACE_REPEAT[abs(b - k)]
                   for b in range(len(PACINGS)))

    if not late:
        return {}
    greedy = [PACING[int(np.argmax(r["scores"]))] for r in late]
    prefs = [truth[r["user"]].pacing for r in late]
    return {
        "greedy_right": float(np.mean([g == p for g, p in zip(greedy, prefs, strict=True)])),
        "applied_right": float(np.mean([r["applied"]["pacing"] == p for r, p in zip(late, prefs, strict=True)])),
        "p_pace_applied": float(np.mean([expected(r["applied"]["pacing"], p)
                                         for r, p in zip(late, prefs, strict=True)])),
        "p_pace_greedy": float(np.mean([expected(g, p) for g, p in zip(greedy, prefs, strict=True)])),
        "p_pace_truth": float(np.mean([expected(p, p) for p in prefs])),
    }


def breakdown(rows: list[dict[str, Any]], users: list[SimUser], turns: int) -> str:
    """Late repeat rates by true pacing and by preferred length, per arm: where the conditioned arm fails."""
    truth = {u.user_id: u for u in users}
    half = turns // 2
    cells: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["turn"] <= half:
            continue
        u = truth[r["user"]]
        if u.is_bot:
            continue
        band = "short" if u.preferred_chars < 280 else "long" if u.preferred_chars > 520 else "mid"
        for key in ((u.pacing, "*"), ("*", band)):
            c = cells[(key[0], key[1], r["arm"])]
            c[0] += r["repeated"]
            c[1] += 1
    lines = [f"{'pacing':<10}{'length':<8}{'cond':>8}{'off':>8}{'red':>8}{'n':>7}"]
    for key in sorted({(a, b) for a, b, _ in cells}):
        c, o = cells[(*key, "cond")], cells[(*key, "off")]
        rc, ro = c[0] / max(c[1], 1), o[0] / max(o[1], 1)
        lines.append(f"{key[0]:<10}{key[1]:<8}{rc:8.3f}{ro:8.3f}{1 - rc / ro if ro else 0:8.3f}{c[1]:7d}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", default=None, help="comma-separated: average over several seeds")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--decision-seed", type=int, default=0, help="another draw of the gateway's choices only")
    ap.add_argument("--verbose", action="store_true", help="print the population priors at each refresh")
    ap.add_argument("--oracle", default="", help="pacing, length or pacing+length: the truth applied instead")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    t0 = time.monotonic()
    allf = []
    for seed in seeds:
        users = make_population(args.users, np.random.default_rng(seed), bot_share=0.0, prefix="cl")
        res = run(users, args.turns, seed, Noise(), oracle=args.oracle, decision_seed=args.decision_seed,
                  verbose=args.verbose)
        f = res["figures"]
        allf.append(f)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()))
        if args.breakdown:
            print(breakdown(res["rows"], users, args.turns))
            print("pacing headroom: " + ", ".join(f"{k} {v:.3f}"
                                                  for k, v in pacing_headroom(res["rows"], users, args.turns).items()))
    if len(allf) > 1:
        keys = allf[0].keys()
        print("mean: " + ", ".join(f"{k} {np.mean([f[k] for f in allf]):.3f}" for k in keys))
    print(f"{time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
