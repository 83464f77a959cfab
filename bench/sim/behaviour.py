"""How a synthetic user reacts to one reply: the signals a real user would leave, with their timing.

The model (all offsets in milliseconds from the moment the reply was shown):
- a repeat has independent causes: the user's base rate; the length, with probability
  0.5 (1 - exp(-m_len)) where m_len = (ln(chars / preferred) / tolerance)^2 / 2; the pacing, with
  probability 0 for the preferred pacing, 0.3 for a neighbouring one, 0.55 for the opposite one; the
  dialogue share, 0.3 (1 - exp(-2 (share - preferred share)^2)); a story turning point (0.55 for
  curators, 0.05 for others); plus noise (random repeats, double taps);
- satisfaction s = exp(-(m_len + m_pace + m_dialogue)) (m_pace 0, 0.45, 1.0) drives choices between
  alternatives, ratings and leaving;
- a reply far too short is often continued, one far too long often stopped while it streams;
- otherwise the user answers (`user_message` with chars and compose time from the typing speed), rates
  rarely, leaves the session now and then (more often after a bad reply) or goes away silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.sim.users import PACINGS, Noise, SimUser

REPEAT_SCALE = 0.5
PACE_REPEAT = (0.0, 0.3, 0.55)
PACE_COST = (0.0, 0.45, 1.0)
DIALOGUE_COST = 2.0
DIALOGUE_REPEAT = 0.3
TURNING_REPEAT = {True: 0.55, False: 0.05}
RATING_SHARE = 0.04


@dataclass(frozen=True)
class Shown:
    """A reply as the user perceives it."""

    reply_id: str
    chars: int
    pacing: str
    dialogue_share: float = 0.4
    turning_point: bool = False


@dataclass(frozen=True)
class Signal:
    at_ms: int
    type: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reaction:
    signals: list[Signal]
    repeated: bool = False
    leaves: bool = False  # ends the session (the app sends session_end)
    away: bool = False  # leaves silently: no outcome at all
    duration_ms: int = 0  # until the user is ready for the next reply


def length_mismatch(user: SimUser, chars: float) -> float:
    return 0.5 * (math.log(max(chars, 1.0) / user.preferred_chars) / user.tolerance) ** 2


def pace_mismatch(user: SimUser, pacing: str) -> float:
    return PACE_COST[abs(PACINGS.index(pacing) - PACINGS.index(user.pacing))]


def satisfaction(user: SimUser, reply: Shown) -> float:
    m = length_mismatch(user, reply.chars) + pace_mismatch(user, reply.pacing)
    m += DIALOGUE_COST * (reply.dialogue_share - user.dialogue) ** 2
    return math.exp(-m)


def repeat_probability(user: SimUser, reply: Shown) -> float:
    """Probability of a deliberate repeat (noise excluded): independent causes, each one enough."""
    p_len = REPEAT_SCALE * (1.0 - math.exp(-length_mismatch(user, reply.chars)))
    p_pace = PACE_REPEAT[abs(PACINGS.index(reply.pacing) - PACINGS.index(user.pacing))]
    p_dia = DIALOGUE_REPEAT * (1.0 - math.exp(-DIALOGUE_COST * (reply.dialogue_share - user.dialogue) ** 2))
    turning = TURNING_REPEAT[user.curator] if reply.turning_point else 0.0
    keep = (1.0 - user.base_repeat) * (1.0 - p_len) * (1.0 - p_pace) * (1.0 - p_dia) * (1.0 - turning)
    return 1.0 - keep


def _read_ms(user: SimUser, chars: float, rng: np.random.Generator) -> int:
    return int(600 + chars / user.read_cps * 1000 * math.exp(rng.normal(0, 0.2)))


def choose(user: SimUser, replies: list[Shown], rng: np.random.Generator) -> int:
    """Which of several alternatives the user keeps: mostly the one that suits best."""
    logits = np.array([math.log(max(satisfaction(user, r), 1e-9)) / 0.25 for r in replies])
    p = np.exp(logits - logits.max())
    return int(rng.choice(len(replies), p=p / p.sum()))


def react(user: SimUser, reply: Shown, rng: np.random.Generator, noise: Noise, *, may_repeat: bool = True) -> Reaction:
    """The signals one reply draws from a human (bots: see bot_react)."""
    if user.is_bot:
        return bot_react(user, reply, rng)
    if rng.random() < noise.away:
        return Reaction([], away=True, duration_ms=_read_ms(user, reply.chars, rng))
    s = satisfaction(user, reply)
    read = _read_ms(user, reply.chars, rng)
    signals: list[Signal] = []
    ratio = math.log(max(reply.chars, 1) / user.preferred_chars) / user.tolerance
    shown_until = reply.chars
    if ratio > 1.0 and rng.random() < 0.35 * (1.0 - math.exp(-0.5 * (ratio - 1.0) ** 2 * 4)):
        shown_until = int(min(reply.chars - 1, user.preferred_chars * math.exp(user.tolerance * rng.uniform(0.5, 1.2))))
        read = _read_ms(user, shown_until, rng)
        signals.append(Signal(read, "stop", {"shown_chars": max(shown_until, 1)}))
    repeated = may_repeat and rng.random() < repeat_probability(user, reply)
    if may_repeat and not repeated and rng.random() < noise.random_repeat:
        repeated = True
        read = int(rng.uniform(300, 3000))
    if repeated:
        at = int(read * rng.uniform(0.5, 1.0)) if not signals else read + int(rng.uniform(200, 900))
        signals.append(Signal(at, "repeat"))
        if rng.random() < noise.double_tap:
            signals.append(Signal(at + int(rng.uniform(80, 400)), "repeat"))
        if rng.random() < RATING_SHARE / 2:
            signals.append(Signal(at - 100, "rating", {"value": round(2 * s - 1, 2)}))
        return Reaction(signals, repeated=True, duration_ms=at + 300)
    at = read
    if ratio < -1.0 and rng.random() < 0.5 * (1.0 - math.exp(-0.5 * (ratio + 1.0) ** 2 * 4)):
        at += int(rng.uniform(300, 1500))
        signals.append(Signal(at, "continue"))
        at += _read_ms(user, user.preferred_chars - reply.chars, rng)
    if rng.random() < RATING_SHARE:
        at += int(rng.uniform(300, 1500))
        signals.append(Signal(at, "rating", {"value": round(2 * s - 1, 2)}))
    if rng.random() < 0.03 + 0.12 * (1.0 - s):
        return Reaction(signals, leaves=True, duration_ms=at + int(rng.uniform(500, 5000)))
    chars = max(2, int(user.message_chars * math.exp(rng.normal(0, 0.5))))
    compose = int(1500 * math.exp(rng.normal(0, 0.5)) + chars / user.type_cps * 1000)
    at += compose
    signals.append(Signal(at, "user_message", {"chars": chars, "compose_ms": compose}))
    return Reaction(signals, duration_ms=at + int(rng.uniform(500, 3000)))


def bot_react(user: SimUser, reply: Shown, rng: np.random.Generator) -> Reaction:
    """Machine-speed reactions: floods, inhuman timing, repeat storms."""
    signals: list[Signal] = []
    if user.bot == "storm":
        at = int(rng.uniform(100, 300))
        if rng.random() < 0.9:
            for _ in range(int(rng.integers(3, 9))):
                signals.append(Signal(at, "repeat"))
                at += int(rng.uniform(20, 120))
            return Reaction(signals, repeated=True, duration_ms=at + 50)
    elif user.bot == "flood":
        at = int(rng.uniform(30, 80))
        if rng.random() < 0.7:
            for _ in range(int(rng.integers(2, 5))):
                signals.append(Signal(at, "repeat"))
                at += 30
            return Reaction(signals, repeated=True, duration_ms=at + 20)
    else:  # timing: plausible choices, impossible speed
        at = int(rng.uniform(20, 60))
        if rng.random() < 0.3:
            return Reaction([Signal(at, "repeat")], repeated=True, duration_ms=at + 30)
    chars = int(rng.uniform(200, 2000))
    compose = int(rng.uniform(5, 30))
    signals.append(Signal(at + compose, "user_message", {"chars": chars, "compose_ms": compose}))
    return Reaction(signals, duration_ms=at + compose + int(rng.uniform(20, 200)))
