"""Synthetic users with known truth: what each one prefers, how each one reads, types and misbehaves.

Population (defaults chosen to look like a role-play app, not to make learning easy):
- preferred reply length: log-normal, median 380 characters, clipped to 120..1200;
- tolerance: how far off (in natural-log units of length) a reply may be before it annoys, 0.25..0.6;
- pacing: slow_burn 35%, balanced 40%, fast 25%; dialogue taste: preferred share of quoted speech;
- base repeat rate about 5%; curators (10% of humans) about 15%, and they regenerate at story turning
  points most of the time;
- reading 12..35 characters per second, typing 2..6 characters per second;
- device clocks: most within seconds, a quarter minutes off, a few hours off (wrong time zone);
- bots (5%): `flood` (bursts of events at machine speed), `timing` (reads 1000 characters in 50 ms,
  types in milliseconds), `storm` (repeat storms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PACINGS = ("slow_burn", "balanced", "fast")
PACING_WEIGHTS = (0.35, 0.40, 0.25)
BOT_STYLES = ("flood", "timing", "storm")
LENGTH_MEDIAN = 380.0
LENGTH_SIGMA = 0.55
LENGTH_RANGE = (120.0, 1200.0)


@dataclass(frozen=True)
class Noise:
    """Noise knobs derived from one level (default 0.2, the issue's "20% noisy repeats and double taps")."""

    level: float = 0.2

    @property
    def double_tap(self) -> float:
        """Share of repeat presses sent twice within half a second."""
        return self.level

    @property
    def random_repeat(self) -> float:
        """Share of replies repeated for no reason tied to the reply (about 20% of all repeats at 0.2)."""
        return self.level / 4

    @property
    def away(self) -> float:
        """Share of replies after which the user leaves silently (no outcome, no session_end)."""
        return self.level / 4

    @property
    def duplicate_delivery(self) -> float:
        """Share of events the app sends again (same event_id) in a later batch."""
        return self.level / 10

    @property
    def late_delivery(self) -> float:
        """Share of events held back and delivered a few batches later."""
        return self.level / 10


@dataclass(frozen=True)
class SimUser:
    """One synthetic user and the truth the served profile is compared with."""

    user_id: str
    preferred_chars: float
    tolerance: float
    pacing: str
    dialogue: float
    base_repeat: float
    curator: bool
    read_cps: float
    type_cps: float
    message_chars: float
    skew_ms: int
    bot: str | None = None

    @property
    def is_bot(self) -> bool:
        return self.bot is not None


def _skew(rng: np.random.Generator) -> int:
    u = rng.random()
    if u < 0.70:
        return int(rng.normal(0, 2_000))
    if u < 0.95:
        return int(rng.normal(0, 240_000))
    return int(rng.choice([-1, 1]) * rng.integers(1, 6) * 3_600_000 + rng.normal(0, 30_000))


def make_user(user_id: str, rng: np.random.Generator, *, curator: bool = False, bot: str | None = None) -> SimUser:
    lo, hi = LENGTH_RANGE
    preferred = float(np.clip(math.exp(rng.normal(math.log(LENGTH_MEDIAN), LENGTH_SIGMA)), lo, hi))
    pacing = str(rng.choice(PACINGS, p=PACING_WEIGHTS))
    base = float(rng.beta(3, 20) if curator else rng.beta(2, 38))  # mean 0.13 for curators, 0.05 otherwise
    # Users who like long replies write a little longer themselves (a weak, realistic link).
    message = 45.0 * (preferred / LENGTH_MEDIAN) ** 0.5 * math.exp(rng.normal(0, 0.35))
    return SimUser(
        user_id=user_id,
        preferred_chars=round(preferred, 1),
        tolerance=float(rng.uniform(0.25, 0.6)),
        pacing=pacing,
        dialogue=float(rng.uniform(0.1, 0.8)),
        base_repeat=base,
        curator=curator,
        read_cps=float(rng.uniform(12, 35)),
        type_cps=float(rng.uniform(2, 6)),
        message_chars=message,
        skew_ms=_skew(rng),
        bot=bot,
    )


def make_population(n: int, rng: np.random.Generator, *, bot_share: float = 0.05, curator_share: float = 0.10,
                    prefix: str = "sim") -> list[SimUser]:
    """n users: round(n * bot_share) bots, and curator_share of the humans are curators, shuffled."""
    bots = int(round(n * bot_share))
    humans = n - bots
    curators = int(round(humans * curator_share))
    kinds: list[tuple[bool, str | None]] = [(False, BOT_STYLES[i % len(BOT_STYLES)]) for i in range(bots)]
    kinds += [(i < curators, None) for i in range(humans)]
    order = rng.permutation(len(kinds))
    return [make_user(f"{prefix}-{i:04d}", rng, curator=kinds[j][0], bot=kinds[j][1]) for i, j in enumerate(order)]
