"""How well can anyone tell a user's pacing from the open loop's signals? The information ceiling.

The open loop shows replies of random pacing, and the simulated users react through
bench/sim/behaviour.py. This script generates the same histories (bench/sim/history.py, same users and
noise) and, for each honest user and checkpoint, picks the pacing with the highest posterior under the
simulator's *own* model, knowing every other truth about the user: preferred length, tolerance,
dialogue taste, base repeat rate, curator or not, which replies were turning points, each reply's
dialogue share, and the noise levels. Only the pacing the model actually followed on each reply stays
unknown (it follows the one asked for 80% of the time), as it does for Attune, except on replies whose text
the app sent: their prose reads as the pacing perceived, and Attune measures it (models/features.py).

It reads every signal the simulated user leaves about pacing: repeats, the exact rating value (a
reading of satisfaction), leaving right after a reply, and which of two alternatives was kept. That is
the Bayes decision with more knowledge than any estimator has, so its accuracy bounds every estimator's
from above (up to sampling noise, shown as a 95% interval); the repeats-only oracle of the report is the
same idea with repeats alone and no prior.

`--marginal` computes the tighter ceiling: the Bayes decision knowing only what the population looks
like (bench/sim/users.py's distributions), not the user's own length, tolerance, dialogue taste, base
rate, curator status or message length. Those are integrated out by Monte Carlo (`--samples` draws per
user, the same draws for every pacing), with every signal that informs them: stops with how far the
reply was shown, continues, the user's message lengths, and the pacing signals above. No estimator that
learns from the signals (as Attune must) can expect to beat it, up to the Monte Carlo and sampling error.

Run: .venv/bin/python -m bench.sim.ceiling [--users 2000] [--seeds 1,2] [--checkpoints 10,20,40,80]
     .venv/bin/python -m bench.sim.ceiling --marginal --users 200 --seeds 1,2 [--samples 20000]
     [--rating-sd 1e6: without the simulator's exact ratings]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import numpy as np

from bench.sim import history
from bench.sim.behaviour import (
    DIALOGUE_COST,
    DIALOGUE_REPEAT,
    PACE_COST,
    PACE_REPEAT,
    REPEAT_SCALE,
    TURNING_REPEAT,
    Reaction,
    Shown,
    repeat_probability,
    satisfaction,
)
from bench.sim.users import (
    LENGTH_MEDIAN,
    LENGTH_RANGE,
    LENGTH_SIGMA,
    PACING_WEIGHTS,
    PACINGS,
    Noise,
    SimUser,
    make_population,
)

RATING_SD = 0.006  # ratings are rounded to 0.01: a tolerance for the rounding, not a noise model
CHOICE_TEMPERATURE = 0.25  # bench/sim/behaviour.py choose()
CURATOR_SHARE_OF_HUMANS = 0.10  # make_population's default


@dataclass
class Observed:
    """One reaction as the recorder saw it: the reply (perceived pacing replaced by the applied one later)."""

    shown: Shown
    reaction: Reaction
    may_repeat: bool
    options: list[Shown] | None = None  # a kept alternative: both replies shown, in order
    kept: int = 0


class Recorder:
    """Wraps history.react / history.choose to keep what each user did, in order."""

    def __init__(self) -> None:
        self.by_user: dict[str, list[Observed]] = {}
        self._choice: tuple[list[Shown], int] | None = None
        self._react, self._choose = history.react, history.choose

    def __enter__(self) -> Recorder:
        history.react, history.choose = self.react, self.choose  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        history.react, history.choose = self._react, self._choose  # type: ignore[assignment]

    def choose(self, user: SimUser, replies: list[Shown], rng: np.random.Generator) -> int:
        kept = self._choose(user, replies, rng)
        self._choice = (list(replies), kept)
        return kept

    def react(self, user: SimUser, reply: Shown, rng: np.random.Generator, noise: Noise, *,
              may_repeat: bool = True) -> Reaction:
        reaction = self._react(user, reply, rng, noise, may_repeat=may_repeat)
        obs = Observed(reply, reaction, may_repeat)
        if not may_repeat and self._choice is not None and reply in self._choice[0]:
            obs.options, obs.kept = self._choice
        self._choice = None
        self.by_user.setdefault(user.user_id, []).append(obs)
        return reaction


Dist = list[tuple[str, float]]  # what a reply's pacing may have been, with probabilities


def _follow(applied: str) -> Dist:
    other = (1 - history.FOLLOWS_PACING) / (len(PACINGS) - 1)
    return [(q, history.FOLLOWS_PACING if q == applied else other) for q in PACINGS]


def _reaction_likelihood(user: SimUser, shown: Shown, obs: Observed, noise: Noise) -> float:
    """P(what the user did | the reply as perceived), keeping only the factors that depend on pacing."""
    if obs.reaction.away:
        return 1.0
    s = satisfaction(user, shown)
    ratings = [sig.fields["value"] for sig in obs.reaction.signals if sig.type == "rating"]
    like = 1.0
    if obs.reaction.repeated:
        p = repeat_probability(user, shown)
        like *= p + (1 - p) * noise.random_repeat
    else:
        if obs.may_repeat:
            like *= (1 - repeat_probability(user, shown)) * (1 - noise.random_repeat)
        leave = 0.03 + 0.12 * (1.0 - s)
        like *= leave if obs.reaction.leaves else 1 - leave
    for value in ratings:
        like *= math.exp(-0.5 * ((value - (2 * s - 1)) / RATING_SD) ** 2) + 1e-12
    return like


def log_posterior(user: SimUser, observed: list[tuple[Observed, Dist, list[Dist]]], noise: Noise
                  ) -> np.ndarray:
    """Log posterior over PACINGS; observed holds (reaction, what its pacing may have been, the same of the
    options)."""
    out = np.log(np.array(PACING_WEIGHTS, dtype=float))
    for k, cand in enumerate(PACINGS):
        u = replace(user, pacing=cand)
        for obs, applied, option_applied in observed:
            if obs.options is None:
                like = sum(w * _reaction_likelihood(u, replace(obs.shown, pacing=q), obs, noise)
                           for q, w in applied)
            else:
                like = 0.0
                a0, a1 = option_applied
                for q0, w0 in a0:
                    for q1, w1 in a1:
                        opts = [replace(obs.options[0], pacing=q0), replace(obs.options[1], pacing=q1)]
                        logits = [math.log(max(satisfaction(u, o), 1e-9)) / CHOICE_TEMPERATURE for o in opts]
                        top = max(logits)
                        p = [math.exp(x - top) for x in logits]
                        chosen = p[obs.kept] / sum(p)
                        like += w0 * w1 * chosen * _reaction_likelihood(u, opts[obs.kept], obs, noise)
            out[k] += math.log(max(like, 1e-300))
    return out


class Marginal:
    """The population-knowledge Bayes decision: each user's own parameters drawn from the population."""

    def __init__(self, samples: int, rng: np.random.Generator) -> None:
        lo, hi = LENGTH_RANGE
        k = samples
        self.pref = np.clip(np.exp(rng.normal(math.log(LENGTH_MEDIAN), LENGTH_SIGMA, k)), lo, hi)
        self.tol = rng.uniform(0.25, 0.6, k)
        self.dia = rng.uniform(0.1, 0.8, k)
        self.cur = rng.random(k) < CURATOR_SHARE_OF_HUMANS
        self.base = np.where(self.cur, rng.beta(3, 20, k), rng.beta(2, 38, k))
        self.msg = 45.0 * (self.pref / LENGTH_MEDIAN) ** 0.5 * np.exp(rng.normal(0, 0.35, k))

    def _parts(self, shown: Shown) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per draw: the length mismatch, the repeat causes other than pacing (kept), the dialogue cost."""
        ratio = np.log(max(shown.chars, 1.0) / self.pref) / self.tol
        m_len = 0.5 * ratio**2
        p_len = REPEAT_SCALE * (1 - np.exp(-m_len))
        m_dia = DIALOGUE_COST * (shown.dialogue_share - self.dia) ** 2
        p_dia = DIALOGUE_REPEAT * (1 - np.exp(-m_dia))
        turning = np.where(self.cur, TURNING_REPEAT[True], TURNING_REPEAT[False]) if shown.turning_point else 0.0
        keep = (1 - self.base) * (1 - p_len) * (1 - p_dia) * (1 - turning)
        return ratio, m_len + m_dia, keep, m_dia

    def _pacing_free(self, shown: Shown, obs: Observed) -> np.ndarray:
        """Log-likelihood of the signals that do not depend on pacing (they inform length and tolerance)."""
        if obs.reaction.away:
            return np.zeros(len(self.pref))
        ratio = np.log(max(shown.chars, 1.0) / self.pref) / self.tol
        types = {sig.type: sig for sig in obs.reaction.signals}
        p_stop = np.where(ratio > 1.0, 0.35 * (1 - np.exp(-0.5 * (ratio - 1.0) ** 2 * 4)), 0.0)
        if "stop" in types:
            shown_chars = max(float(types["stop"].fields["shown_chars"]), 1.0)
            z = np.log(shown_chars / self.pref) / self.tol
            if shown_chars >= shown.chars - 1:  # clipped at the reply's end: the draw reached past it
                dens = np.clip((1.2 - z) / 0.7, 0.0, 1.0)
            else:
                dens = np.where((z >= 0.5 - 0.02) & (z <= 1.2 + 0.02), 1.0 / (0.7 * self.tol * shown_chars), 1e-9)
            out = np.log(p_stop * dens + 1e-300)
        else:
            out = np.log1p(-p_stop)
        if not obs.reaction.repeated:
            p_cont = np.where(ratio < -1.0, 0.5 * (1 - np.exp(-0.5 * (ratio + 1.0) ** 2 * 4)), 0.0)
            out = out + (np.log(p_cont + 1e-300) if "continue" in types else np.log1p(-p_cont))
            if "user_message" in types:
                chars = float(types["user_message"].fields["chars"])
                out = out - 0.5 * ((math.log(chars) - np.log(self.msg)) / 0.5) ** 2
        return out

    def _reaction(self, shown: Shown, obs: Observed, steps: int, noise: Noise) -> np.ndarray:
        """Likelihood (not log) of the pacing-dependent signals, the reply `steps` off the preferred pacing."""
        if obs.reaction.away:
            return np.ones(len(self.pref))
        _, m_other, keep, _ = self._parts(shown)
        s = np.exp(-(m_other + PACE_COST[steps]))
        p_rep = 1 - keep * (1 - PACE_REPEAT[steps])
        if obs.reaction.repeated:
            like = p_rep + (1 - p_rep) * noise.random_repeat
        else:
            like = (1 - p_rep) * (1 - noise.random_repeat) if obs.may_repeat else np.ones(len(self.pref))
            leave = 0.03 + 0.12 * (1.0 - s)
            like = like * (leave if obs.reaction.leaves else 1 - leave)
        for sig in obs.reaction.signals:
            if sig.type == "rating":
                like = like * (np.exp(-0.5 * ((sig.fields["value"] - (2 * s - 1)) / RATING_SD) ** 2) + 1e-12)
        return like

    def log_likelihood(self, obs: Observed, applied: Dist, option_applied: list[Dist], noise: Noise
                       ) -> np.ndarray:
        """[draw, preferred pacing] log-likelihood of one observed reaction."""
        out = np.empty((len(self.pref), len(PACINGS)))
        if obs.options is None:
            free = self._pacing_free(obs.shown, obs)
            likes = [self._reaction(obs.shown, obs, d, noise) for d in range(3)]
            for k in range(3):
                total = sum(w * likes[abs(PACINGS.index(q) - k)] for q, w in applied)
                out[:, k] = free + np.log(total + 1e-300)
            return out
        kept = obs.options[obs.kept]
        free = self._pacing_free(kept, obs)
        m_opts = [self._parts(o)[1] for o in obs.options]
        likes = [self._reaction(kept, obs, d, noise) for d in range(3)]
        for k in range(3):
            total = np.zeros(len(self.pref))
            for q0, w0 in option_applied[0]:
                for q1, w1 in option_applied[1]:
                    steps = [abs(PACINGS.index(q) - k) for q in (q0, q1)]
                    logit = [-(m_opts[j] + PACE_COST[steps[j]]) / CHOICE_TEMPERATURE for j in range(2)]
                    chosen = 1 / (1 + np.exp(logit[1 - obs.kept] - logit[obs.kept]))
                    total = total + w0 * w1 * chosen * likes[steps[obs.kept]]
            out[:, k] = free + np.log(total + 1e-300)
        return out


def run(users_n: int, seed: int, checkpoints: list[int], noise: Noise, marginal: int = 0) -> dict[int, list[bool]]:
    rng = np.random.default_rng(seed)
    users = make_population(users_n, rng, prefix=f"x{seed}")
    humans = [u for u in users if not u.is_bot]
    with Recorder() as rec:
        stages = {u.user_id: history.open_loop_history(u, checkpoints, rng, noise) for u in humans}
    hits: dict[int, list[bool]] = {c: [] for c in checkpoints}
    for u in humans:
        texts = {ev["reply_id"] for st in stages[u.user_id] for _, ev in st.events
                 if ev["type"] == "reply_shown" and "text" in ev["reply"]}
        seen = rec.by_user.get(u.user_id, [])
        perceived = {o.shown.reply_id: o.shown.pacing for o in seen}
        perceived.update({x.reply_id: x.pacing for o in seen for x in o.options or []})
        applied = {r.reply_id: [(perceived[r.reply_id], 1.0)] if r.reply_id in texts and r.reply_id in perceived
                   else _follow(r.pacing) for st in stages[u.user_id] for r in st.shown}
        order = [r.reply_id for st in stages[u.user_id] for r in st.shown]
        rank = {rid: i for i, rid in enumerate(order)}
        items = []
        for obs in rec.by_user.get(u.user_id, []):
            last = max(rank[o.reply_id] for o in obs.options) if obs.options else rank[obs.shown.reply_id]
            opts = [applied[o.reply_id] for o in obs.options] if obs.options else []
            items.append((last, (obs, applied[obs.shown.reply_id], opts)))
        if marginal:
            draws = Marginal(marginal, np.random.default_rng([seed, len(hits[checkpoints[0]])]))
            ll = np.zeros((marginal, len(PACINGS)))
            items.sort(key=lambda it: it[0])
            j = 0
            for c in checkpoints:
                while j < len(items) and items[j][0] < c:
                    obs, applied_here, opts = items[j][1]
                    ll += draws.log_likelihood(obs, applied_here, opts, noise)
                    j += 1
                top = ll.max()
                post = np.log(np.exp(ll - top).sum(axis=0)) + np.log(np.array(PACING_WEIGHTS))
                hits[c].append(PACINGS[int(np.argmax(post))] == u.pacing)
            continue
        for c in checkpoints:
            post = log_posterior(u, [it for last, it in items if last < c], noise)
            hits[c].append(PACINGS[int(np.argmax(post))] == u.pacing)
    return hits


def main() -> int:
    global RATING_SD  # noqa: PLW0603 - read by the likelihoods above; --rating-sd sets it
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--checkpoints", default="10,20,40,80")
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--marginal", action="store_true", help="knowing the population only (see above)")
    ap.add_argument("--samples", type=int, default=20000, help="Monte Carlo draws per user for --marginal")
    ap.add_argument("--rating-sd", type=float, default=RATING_SD,
                    help="how exactly a rating reads satisfaction (the simulator's: exact up to rounding; "
                         "1e6 leaves ratings out, as a coarse real rating would nearly be)")
    args = ap.parse_args()
    RATING_SD = args.rating_sd
    checkpoints = [int(x) for x in args.checkpoints.split(",")]
    noise = Noise(args.noise)
    pooled: dict[int, list[bool]] = {c: [] for c in checkpoints}
    for seed in (int(s) for s in args.seeds.split(",")):
        hits = run(args.users, seed, checkpoints, noise, args.samples if args.marginal else 0)
        for c in checkpoints:
            pooled[c] += hits[c]
    what = (f"population-knowledge Bayes decision ({args.samples} draws per user)" if args.marginal
            else "full-information Bayes decision")
    print(f"pacing accuracy of the {what}, {len(pooled[checkpoints[0]])} "
          f"honest users, seeds {args.seeds}, noise {args.noise}, rating sd {RATING_SD:g}")
    print(f"{'replies':>8} {'accuracy':>9} {'95% interval':>16}")
    for c in checkpoints:
        acc = float(np.mean(pooled[c]))
        half = 1.96 * math.sqrt(acc * (1 - acc) / len(pooled[c]))
        print(f"{c:>8} {acc:>9.3f}   {acc - half:.3f} .. {acc + half:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
