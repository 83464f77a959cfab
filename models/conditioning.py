"""A profile becomes conditioning: Thompson sampling over pacing arms and the length target, a short
reader-preference note, a max_completion_tokens with headroom, and the propensity of what was chosen.

Pacing is always sampled (that is how the bandit learns: a flat posterior spreads the choices, a
peaked one exploits), mixed with a small uniform share so every arm keeps a propensity of at least
EPSILON / 3 and inverse-propensity estimates stay bounded. The pacing is sampled from the profile's
`pacing.scores`, the workers' posterior probability that each label is the user's preferred pacing
(models/profile.py: repeats as independent causes, ordinal, choices between alternatives): picking an
arm with the probability that it is the best one is Thompson sampling over that hypothesis, and it
shares evidence between arms (many repeats on slow_burn also say something about fast), which the
per-arm Betas of `pacing.posterior` cannot; as the profile's evidence grows the scores are sharpened
(sharpen()), so an established user is explored less. Profiles without scores fall back to Thompson
sampling on those Betas. With no profile (or an untrusted one) the arms are equally likely, so a new user
is explored from the first turn. A regeneration weighs the scores by the replies it replaces first
(after_rejections).

The length is applied only when the profile's length confidence reaches MIN_LENGTH_CONFIDENCE: a wrong
length target is costly, and the length estimate also learns from the natural spread of unconditioned
lengths.
"""

from __future__ import annotations

import math
import random
import re
from statistics import NormalDist
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import betainc

from models.features import CHARS_PER_TOKEN
from models.profile import dialogue_balance, pacing_repeat

PACING = ("slow_burn", "balanced", "fast")
EPSILON = 0.05  # uniform share mixed into Thompson sampling: propensities >= EPSILON / 3
# Probability matching on the label posterior raised to a power that grows with the evidence: 1 (Thompson
# sampling over "which pacing does the user prefer") for a new user, SHARPEN_MAX once the profile rests on
# SHARPEN_REPLIES replies. Exploiting from the start does not pay: a fixed 2 (with a length draw sd of 0.1)
# applied the user's pacing less often late (0.46 against 0.62) as wrong early beliefs confirmed themselves.
# Ramped, with the pacing measured from the text, it applies the user's pacing in 0.77 of late replies
# instead of 0.71 and lowers the conditioned arm's late repeat rate on every seed (bench/simulate.py --loop
# closed, seeds 1-4: 0.335 -> 0.316 on average, the reduction 0.28 -> 0.32; single runs move by +-0.04).
SHARPEN_MAX = 2.0
SHARPEN_REPLIES = 40
# With no profile (or an untrusted one) every arm is equally likely: nothing is known of the user yet, and a
# profile written after the first reply already carries the population's shares (models/profile.py
# PACING_PRIOR) in its scores.
PRIOR_SCORES = (1 / 3, 1 / 3, 1 / 3)
MIN_LENGTH_CONFIDENCE = 0.3
# The sd (log space) of the length draw: the posterior's, but at most MAX_SIGMA. The model adds its own
# spread around any target (the stand-in about 0.2), so replies explore lengths anyway, and every bit of
# spread the draw adds is a miss the user pays for: at most 0.15 served targets 0.16 off the preferred length
# (median) against 0.13 for the profile's own target, and 0.05 lowered the conditioned arm's late repeat
# rate by about 0.01 (bench/sim/replay.py, seeds 1 and 2). A profile's band is target/1.25..target/0.75.
MIN_SIGMA, MAX_SIGMA = 0.03, 0.05
DEFAULT_BAND = (math.log(1.25), math.log(1 / 0.75))
_NORMAL = NormalDist()
HEADROOM = 1.5  # max_completion_tokens leaves room above the target: cut replies read badly
MIN_TARGET, MAX_TARGET = 40, 6000
MAX_COMPLETION_TOKENS = 2048
_GRID = np.linspace(0.0, 1.0, 1025)

# The note says how to write, never who to be; every variant has the same shape and about the same
# token count, so it costs the same few prompt tokens on every turn.
NOTE_PREFIX = "Reader preferences (how to write, not who to be; stay in character)."
PACING_NOTES = {
    "slow_burn": "Pace: slow burn. Linger on atmosphere, feelings and small gestures; "
    "let events unfold gradually.",
    "balanced": "Pace: balanced. Mix action, dialogue and description; move the story forward steadily.",
    "fast": "Pace: fast. Keep it brisk: short sentences, quick action and dialogue; move events along.",
}
LENGTH_NOTE = "Length: about {n} characters."
# The balance of speech and narration, from the profile's dialogue share (style.dialogue_share; its confidence
# is the probability that the preferred share lies within 0.1 of the value), by the rule the profile's own
# instructions use (models/profile.py dialogue_balance). The pacing voices carry their own mix of speech, so
# without this line a reader who loves dialogue and is served a slow burn regenerates for it (bench/sim
# replay: the conditioned arm repeated for dialogue in 0.055 of late replies, the unconditioned 0.049).
DIALOGUE_NOTES = {
    "mostly_dialogue": "Dialogue: mostly dialogue; let the characters speak.",
    "balanced": "Dialogue: balanced between speech and narration.",
    "mostly_narration": "Dialogue: mostly narration; little direct speech.",
}


@dataclass(frozen=True, slots=True)
class Decision:
    pacing: str
    target_chars: int | None
    explored: bool
    propensity: float
    profile_version: int | None
    note: str
    max_completion_tokens: int | None
    # The balance of speech and narration asked for (a DIALOGUE_NOTES key), None when not asked.
    dialogue: str | None = None
    # The replies already served for this state of the conversation and regenerated since: (pacing asked,
    # pacing measured from the text, None if not known), oldest first.
    rejected: tuple[tuple[str | None, str | None], ...] = ()

    def applied(self) -> dict[str, Any]:
        """What was applied, in the shape of /v1/condition's `applied` and a reply_shown's `conditioning`."""
        return {
            "pacing": self.pacing,
            "target_chars": self.target_chars,
            "explored": self.explored,
            "propensity": self.propensity,
            "profile_version": self.profile_version,
            "dialogue": self.dialogue,
        }


def posterior_of(profile: dict[str, Any] | None) -> tuple[tuple[float, float], ...]:
    """The Beta posterior of "not repeated" per arm, in PACING order; Beta(1, 1) where unknown."""
    raw = ((profile or {}).get("pacing") or {}).get("posterior") or {}
    out = []
    for arm in PACING:
        ab = raw.get(arm)
        try:
            a, b = float(ab[0]), float(ab[1])
        except (TypeError, ValueError, IndexError, KeyError):
            a, b = 1.0, 1.0
        out.append((max(a, 1e-3), max(b, 1e-3)) if math.isfinite(a) and math.isfinite(b) else (1.0, 1.0))
    return tuple(out)


@lru_cache(maxsize=8192)
def _thompson(posterior: tuple[tuple[float, float], ...]) -> tuple[float, ...]:
    # P(arm i draws the largest sample) = sum over grid cells of P(X_i in cell) * prod_j P(X_j < cell mid).
    cdfs = np.array([betainc(a, b, _GRID) for a, b in posterior])
    mids = np.array([betainc(a, b, (_GRID[:-1] + _GRID[1:]) / 2) for a, b in posterior])
    mass = np.diff(cdfs, axis=1)
    probs = []
    for i in range(len(posterior)):
        others = np.prod(np.delete(mids, i, axis=0), axis=0)
        probs.append(float(np.sum(mass[i] * others)))
    total = sum(probs) or 1.0
    return tuple(p / total for p in probs)


def arm_probabilities(posterior: tuple[tuple[float, float], ...]) -> dict[str, float]:
    """The probability that the policy (Thompson sampling mixed with EPSILON uniform) picks each arm."""
    key = tuple((round(a, 3), round(b, 3)) for a, b in posterior)
    ts = _thompson(key)
    return {arm: (1 - EPSILON) * p + EPSILON / len(PACING) for arm, p in zip(PACING, ts, strict=True)}


def sample_pacing(posterior: tuple[tuple[float, float], ...], rng: random.Random) -> tuple[str, bool, float]:
    """(arm, explored, propensity): explored means the arm is not the unique best by posterior mean."""
    if rng.random() < EPSILON:
        arm = PACING[rng.randrange(len(PACING))]
    else:
        draws = [rng.betavariate(a, b) for a, b in posterior]
        arm = PACING[draws.index(max(draws))]
    means = [a / (a + b) for a, b in posterior]
    best = max(means)
    unique_best = [PACING[i] for i, m in enumerate(means) if m == best]
    explored = not (len(unique_best) == 1 and unique_best[0] == arm)
    return arm, explored, round(arm_probabilities(posterior)[arm], 6)


def scores_of(profile: dict[str, Any] | None) -> tuple[float, ...] | None:
    """The profile's `pacing.scores` in PACING order, normalised; None when absent or malformed."""
    raw = ((profile or {}).get("pacing") or {}).get("scores")
    if not isinstance(raw, dict):
        return None
    try:
        vals = [float(raw[arm]) for arm in PACING]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v >= 0 for v in vals) or sum(vals) <= 0:
        return None
    total = sum(vals)
    return tuple(v / total for v in vals)


def sharpen(replies: float) -> float:
    """The power the label posterior is raised to for a profile resting on this many replies."""
    return 1.0 + (SHARPEN_MAX - 1.0) * min(max(replies, 0.0), SHARPEN_REPLIES) / SHARPEN_REPLIES


def label_probabilities(scores: tuple[float, ...], replies: float = 0.0) -> dict[str, float]:
    """The probability that the policy picks each arm: probability matching on the label posterior raised to
    sharpen(replies) (renormalised), mixed with EPSILON uniform."""
    power = sharpen(replies)
    powered = [p**power for p in scores]
    total = sum(powered) or 1.0
    mix = EPSILON / len(PACING)
    return {arm: (1 - EPSILON) * p / total + mix for arm, p in zip(PACING, powered, strict=True)}


def sample_from(probs: dict[str, float], greedy: str | None, rng: random.Random) -> tuple[str, bool, float]:
    """(arm, explored, propensity) drawn from exact arm probabilities; explored: not the greedy arm."""
    u = rng.random()
    acc = 0.0
    arm = PACING[-1]
    for a in PACING:
        acc += probs[a]
        if u < acc:
            arm = a
            break
    return arm, arm != greedy, round(probs[arm], 6)


def _unique_best(values: tuple[float, ...]) -> str | None:
    best = max(values)
    winners = [PACING[i] for i, v in enumerate(values) if v == best]
    return winners[0] if len(winners) == 1 else None


def pacing_choice(profile: dict[str, Any] | None, rng: random.Random,
                  rejected: tuple[tuple[str | None, str | None], ...] = ()) -> tuple[str, bool, float]:
    """(arm, explored, propensity) for one reply: the label scores, else the per-arm Betas, else the prior;
    a regeneration first weighs the scores by the replies it replaces (after_rejections)."""
    scores = scores_of(profile) if profile is not None else PRIOR_SCORES
    if scores is None and ((profile or {}).get("pacing") or {}).get("posterior") and not rejected:
        return sample_pacing(posterior_of(profile), rng)
    scores = scores or PRIOR_SCORES
    probs, greedy = _choice(scores, rejected, _repeat_rate(profile) if rejected else 0.0, replies_of(profile))
    return sample_from(probs, greedy, rng)


@lru_cache(maxsize=4096)
def _choice(scores: tuple[float, ...], rejected: tuple[tuple[str | None, str | None], ...], repeat_rate: float,
            replies: float) -> tuple[dict[str, float], str | None]:
    """pacing_choice's arm probabilities and greedy arm, a pure function of its arguments, remembered: the
    gateway decides on every chat (most of a decision's time on the request path), from few distinct
    inputs (the prior, a user's scores, the same regenerations). The dict is only read."""
    if rejected:
        scores = after_rejections(scores, rejected, repeat_rate)
    return label_probabilities(scores, replies), _unique_best(scores)


def replies_of(profile: dict[str, Any] | None) -> float:
    """The replies a profile rests on (`evidence.replies`); 0 when absent or malformed."""
    try:
        replies = float(((profile or {}).get("evidence") or {}).get("replies") or 0)
    except (TypeError, ValueError):
        return 0.0
    return replies if math.isfinite(replies) else 0.0


def after_rejections(scores: tuple[float, ...], rejected: tuple[tuple[str | None, str | None], ...],
                     base_rate: float) -> tuple[float, ...]:
    """The pacing scores once the user regenerated these replies: each weighs every preferred pacing by
    the probability that a user preferring it regenerates a reply of that pacing (as asked, and as measured
    from its text), with the user's own repeat rate standing for every other cause, the workers' model
    (models/profile.py). Regenerating is immediate evidence, minutes before the repeat event is learnt from:
    the next reply moves away from the pacing just refused instead of drawing it again."""
    out = list(scores)
    for asked, measured in rejected:
        added = pacing_repeat(asked, measured)
        if added is None:
            continue  # nothing known of that reply's pacing
        for k, p in enumerate(added):
            out[k] *= 1 - (1 - base_rate) * (1 - p)
    total = sum(out)
    return tuple(v / total for v in out) if total > 0 else scores


def _repeat_rate(profile: dict[str, Any] | None) -> float:
    """The user's repeat rate from the profile (engagement), within [0.05, 0.5]; 0.15 when unknown."""
    raw = ((profile or {}).get("engagement") or {}).get("repeat_rate")
    if raw is None:  # the usual case without a profile: no exception to raise and catch
        return DEFAULT_REPEAT_RATE
    try:
        rate = float(raw)
    except (TypeError, ValueError):
        return DEFAULT_REPEAT_RATE
    return min(max(rate, 0.05), 0.5) if math.isfinite(rate) else DEFAULT_REPEAT_RATE


DEFAULT_REPEAT_RATE = 0.15


def sample_target(reply_length: dict[str, Any] | None, rng: random.Random) -> int | None:
    """A draw from the length posterior, to 10 chars; None if unsure.

    The profile serves a band (`interval`) and the probability that the preferred length lies in it
    (`confidence`, calibrated): the log-normal posterior with that much mass in the band is the one drawn
    from, so an unsure profile spreads its targets (exploration) and a sure one stays close."""
    if not reply_length:
        return None
    try:
        target = float(reply_length["target_chars"])
        confidence = float(reply_length.get("confidence") or 0.0)
    except (KeyError, TypeError, ValueError):
        return None
    if not math.isfinite(target) or target <= 0 or not confidence >= MIN_LENGTH_CONFIDENCE:
        return None
    below, above = DEFAULT_BAND
    interval = reply_length.get("interval")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        try:
            lo, hi = float(interval[0]), float(interval[1])
            if 0 < lo <= target <= hi:
                below, above = math.log(target / lo), math.log(hi / target)
        except (TypeError, ValueError):
            pass
    sigma = _band_sigma(round(below, 3), round(above, 3), round(min(confidence, 0.999), 3))
    draw = math.exp(rng.gauss(math.log(target), sigma))
    return int(min(MAX_TARGET, max(MIN_TARGET, round(draw / 10) * 10)))


@lru_cache(maxsize=4096)
def _band_sigma(below: float, above: float, confidence: float) -> float:
    """The sd s of N(0, s) that puts `confidence` of its mass in [-below, above] (bisection), clamped."""
    lo, hi = MIN_SIGMA, MAX_SIGMA
    if _mass(below, above, hi) >= confidence:
        return hi
    if _mass(below, above, lo) <= confidence:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _mass(below, above, mid) > confidence else (lo, mid)
    return (lo + hi) / 2


def _mass(below: float, above: float, sigma: float) -> float:
    cdf = _NORMAL.cdf
    return cdf(above / sigma) - cdf(-below / sigma)


def max_tokens_for(target_chars: int, per_token: float = CHARS_PER_TOKEN) -> int:
    """The token budget of a reply of about target_chars characters, of per_token characters per token."""
    return int(min(MAX_COMPLETION_TOKENS, max(16, math.ceil(target_chars * HEADROOM / per_token))))


def render_note(pacing: str, target_chars: int | None, dialogue: str | None = None) -> str:
    parts = [NOTE_PREFIX, PACING_NOTES[pacing]]
    if target_chars is not None:
        parts.append(LENGTH_NOTE.format(n=target_chars))
    if dialogue is not None:
        parts.append(DIALOGUE_NOTES[dialogue])
    return " ".join(parts)


def dialogue_of(style: dict[str, Any] | None) -> str | None:
    """The balance of speech and narration to ask for from a profile's style, None when unsure."""
    if not style:  # no style: None without raising and catching a KeyError
        return None
    try:
        ds = style["dialogue_share"]
        return dialogue_balance(float(ds["value"]), float(ds["confidence"]))
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return None


def decide(profile: dict[str, Any] | None, rng: random.Random,
           rejected: tuple[tuple[str | None, str | None], ...] = ()) -> Decision:
    """Sample the conditioning for one reply from the profile (None: the population prior); `rejected`: the
    replies this one regenerates (see after_rejections).

    A profile the workers do not trust (suspected bot or flood) conditions like no profile at all."""
    version = (profile or {}).get("version")
    if profile is not None and profile.get("trust", "normal") != "normal":
        profile = None
    arm, explored, propensity = pacing_choice(profile, rng, rejected)
    target = sample_target((profile or {}).get("reply_length"), rng)
    dialogue = dialogue_of((profile or {}).get("style"))
    return Decision(
        pacing=arm,
        target_chars=target,
        explored=explored,
        propensity=propensity,
        profile_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        note=render_note(arm, target, dialogue),
        max_completion_tokens=max_tokens_for(target) if target else None,
        dialogue=dialogue,
        rejected=rejected,
    )


def approx_tokens(text: str) -> int:
    """A tokenizer-free token estimate (words and punctuation marks), for budgeting the note."""
    return len(re.findall(r"\w+|[^\w\s]", text))
