"""Denoising: which signals to discount and by how much, judged per event and per user.

Every step has a name (the key in `evidence.events_discounted` and the `denoise:<step>` counter):
- `duplicate`: the same action sent twice under two event ids (same type, reply and time);
- `double_tap`: a second repeat on the same reply within DOUBLE_TAP_MS;
- `implausible_read`: a reply answered faster than anyone reads it;
- `implausible_typing`: a message typed faster than anyone types (its length says nothing);
- `away`: a reply answered after the user was gone for an hour (the silence before says nothing);
- `curator`: repeats of users who regenerate more than the population does. They count less through the
  likelihood, not a weight: the estimators explain part of a user's repeats by other causes at the user's
  own rate (marginalised in the pacing posterior), so a frequent regenerator's repeat moves little.
  (An extra weight of population rate / user's rate on top measured worse: pacing accuracy at 40 replies
  fell from 0.72 to 0.47 in bench/simulate.py, seed 1, as it discounted the repeats twice.);
- `confounded_repeat`: a repeat that almost any user would make counts less (population repeat model);
- `bot_suspect`: events of a user whose behaviour is an outlier (robust z-scores); kept out of the population.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DOUBLE_TAP_MS = 2_000
READ_CPS_MAX = 80.0  # skimming tops out near 50 characters per second; beyond 80 nobody read it
TYPE_CPS_MAX = 15.0  # the fastest typists sustain about 12 characters per second
AWAY_MS = 3_600_000
MIN_READ_MS = 300

STEPS = ("duplicate", "double_tap", "implausible_read", "implausible_typing", "away", "curator",
         "confounded_repeat", "bot_suspect", "deleted")

# Per-user behaviour features for the bot score, and the human norms used before the population has any.
BOT_FEATURES = ("implausible_share", "repeat_rate", "log_min_gap")  # log_rate is kept for operators only
HUMAN_NORMS: dict[str, tuple[float, float]] = {  # feature -> (median, robust sd)
    "log_rate": (math.log(3.0), 0.6),  # events per minute of activity
    "implausible_share": (0.0, 0.08),
    "repeat_rate": (0.1, 0.12),  # repeat presses (double taps included) per reply shown
    "log_min_gap": (math.log(5000.0), 1.0),  # median gap between consecutive events, ms
}
BOT_Z = 8.0
BOT_MIN_EVENTS = 20


def is_double_tap(previous_repeat_t: int | None, t: int) -> bool:
    return previous_repeat_t is not None and 0 <= t - previous_repeat_t < DOUBLE_TAP_MS


def read_verdict(reply_chars: int | None, shown_t: int, response_t: int, compose_ms: int | None) -> str | None:
    """None when the time between a reply and the user's answer is humanly plausible, else the step name."""
    reading = response_t - shown_t - (compose_ms or 0)
    if reading > AWAY_MS:
        return "away"
    if reply_chars:
        fastest = max(MIN_READ_MS, 1000.0 * reply_chars / READ_CPS_MAX)
        if reading < fastest:
            return "implausible_read"
    return None


def typing_plausible(chars: int, compose_ms: int | None) -> bool:
    if compose_ms is None or chars < 20:
        return True
    return chars * 1000.0 / max(compose_ms, 1) <= TYPE_CPS_MAX


def curator_weight(base_rate: float, population_rate: float) -> float:
    """How much one repeat of this user counts relative to a typical user's (1 for typical, less for curators)."""
    if base_rate <= population_rate:
        return 1.0
    return max(0.25, population_rate / base_rate)


def surprise_weight(p_user_independent: float, p_mean: float) -> float:
    """Weight of a repeat given the population model's probability that anyone would repeat this reply."""
    if p_user_independent <= 0:
        return 1.0
    return min(1.5, max(0.3, p_mean / p_user_independent))


def bot_score(features: Mapping[str, float], norms: Mapping[str, Sequence[float]]) -> float:
    """Largest robust z-score (|x - median| / (1.4826 MAD)) in the suspicious direction of each feature."""
    worst = 0.0
    for name in BOT_FEATURES:
        if name not in features:
            continue
        med, sd = norms.get(name, HUMAN_NORMS[name])
        sd = max(float(sd), HUMAN_NORMS[name][1])
        z = (features[name] - med) / sd
        if name == "log_min_gap":
            z = -z  # suspicious when gaps are short
        worst = max(worst, z)
    return worst


def is_bot(features: Mapping[str, float], norms: Mapping[str, Sequence[float]], events: int) -> bool:
    if events < BOT_MIN_EVENTS:
        return False
    if features.get("implausible_share", 0.0) >= 0.5:
        return True
    return bot_score(features, norms) >= BOT_Z
