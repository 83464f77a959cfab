"""Open-loop histories: what the app showed each user (varied length, random pacing) and what the user did.

Virtual time: each user's history is a run of sessions, generated relative to the session start and
then laid out with realistic gaps between sessions (about an hour) and anchored so the whole history
ends just before the simulation started. Events therefore carry realistic timestamps (reading times
follow reply length and reading speed) while the run itself takes seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.sim.behaviour import Reaction, Shown, choose, react
from bench.sim.texts import compose_text
from bench.sim.users import PACINGS, Noise, SimUser

SHOWN_MEDIAN = 450.0  # the app's replies: log-normal around 450 characters
SHOWN_SIGMA = 0.7
SHOWN_RANGE = (40, 2400)
FOLLOWS_PACING = 0.8  # how often the model's reply reads as the pacing it was asked for
TURNING_SHARE = 0.12
TEXT_SHARE = 0.3  # replies whose text the app sends (Attune computes features and drops the text)
ALTERNATIVES_SHARE = 0.1  # turns where the app shows two alternatives side by side
MAX_REGENERATIONS = 3
MAX_SPAN_MS = 5 * 86_400_000  # keep every event inside the 7-day retention window


@dataclass
class ShownRecord:
    """What the app knows about one reply it showed (the naive baseline's input)."""

    reply_id: str
    chars: int
    pacing: str  # the pacing the app asked for (what it logs)
    repeated: bool = False
    dialogue_share: float = 0.4  # truth the app may not know (the oracle uses it)
    turning_point: bool = False
    alternative: bool = False  # shown side by side with another reply


@dataclass
class Stage:
    """The events of one user up to the next checkpoint, with virtual times relative to the history start."""

    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    shown: list[ShownRecord] = field(default_factory=list)


class _Session:
    def __init__(self, user: SimUser, index: int) -> None:
        self.user = user
        self.session_id = f"{user.user_id}-s{index}"
        self.character_id = f"c{index % 2 + 1}"
        self.t = 0
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.shown: list[ShownRecord] = []

    def add(self, at: int, etype: str, **fields: Any) -> None:
        ev = {"type": etype, "user_id": self.user.user_id, "session_id": self.session_id,
              "character_id": self.character_id, **fields}
        self.events.append((at, ev))


def _reply(user: SimUser, n: int, rng: np.random.Generator) -> tuple[Shown, str, dict[str, Any]]:
    lo, hi = SHOWN_RANGE
    chars = int(np.clip(math.exp(rng.normal(math.log(SHOWN_MEDIAN), SHOWN_SIGMA)), lo, hi))
    applied = str(rng.choice(PACINGS))
    perceived = applied if rng.random() < FOLLOWS_PACING else str(rng.choice([p for p in PACINGS if p != applied]))
    dialogue = float(rng.uniform(0.05, 0.85))
    turning = bool(rng.random() < TURNING_SHARE)
    body: dict[str, Any] = {"chars": chars}
    if rng.random() < TEXT_SHARE:
        text = compose_text(chars, dialogue, turning or rng.random() < 0.2, rng, perceived)
        body = {"chars": len(text), "text": text}
        chars = len(text)
    shown = Shown(f"{user.user_id}-r{n}", chars, perceived, dialogue, turning)
    return shown, applied, body


def _show(session: _Session, shown: Shown, applied: str, body: dict[str, Any]) -> None:
    session.add(session.t, "reply_shown", reply_id=shown.reply_id, reply=body,
                conditioning={"pacing": applied, "explored": True, "propensity": round(1 / 3, 6)})
    session.shown.append(ShownRecord(shown.reply_id, shown.chars, applied, dialogue_share=shown.dialogue_share,
                                     turning_point=shown.turning_point))


def _apply(session: _Session, shown: Shown, reaction: Reaction) -> None:
    for sig in reaction.signals:
        session.add(session.t + sig.at_ms, sig.type, reply_id=shown.reply_id, **sig.fields)
    if reaction.repeated:
        session.shown[-1].repeated = True
    session.t += max(reaction.duration_ms, 1)


def _session(user: SimUser, index: int, budget: int, counter: list[int], rng: np.random.Generator,
             noise: Noise) -> _Session:
    """One session of at most `budget` replies; ends when the user leaves, goes away, or the budget is spent."""
    s = _Session(user, index)
    s.add(0, "session_start")
    s.t = int(rng.uniform(500, 4000))
    left = budget
    while left > 0:
        regenerations = 0
        if left >= 2 and not user.is_bot and rng.random() < ALTERNATIVES_SHARE:
            options = []
            for _ in range(2):
                counter[0] += 1
                shown, applied, body = _reply(user, counter[0], rng)
                _show(s, shown, applied, body)
                s.shown[-1].alternative = True
                options.append((shown, len(s.shown) - 1))
            left -= 2
            kept_i = choose(user, [o[0] for o in options], rng)
            kept, kept_at = options[kept_i]
            s.t += int(600 + sum(o[0].chars for o in options) / user.read_cps * 1000)
            s.add(s.t, "reply_selected", reply_id=kept.reply_id, alternatives=[o[0].reply_id for o in options])
            for j, (_, at) in enumerate(options):
                s.shown[at].repeated = j != kept_i  # the app's view: the other one was passed over
            reaction = react(user, kept, rng, noise, may_repeat=False)
            _apply(s, kept, reaction)
            if reaction.leaves or reaction.away:
                break
            continue
        while left > 0:
            counter[0] += 1
            shown, applied, body = _reply(user, counter[0], rng)
            _show(s, shown, applied, body)
            left -= 1
            reaction = react(user, shown, rng, noise, may_repeat=regenerations < MAX_REGENERATIONS)
            _apply(s, shown, reaction)
            if not reaction.repeated:
                break
            regenerations += 1
        if reaction.away:
            return s
        if reaction.leaves:
            break
        if not user.is_bot and rng.random() < 1 / 15:  # sessions of about 15 turns
            break
    s.add(s.t, "session_end")
    return s


def open_loop_history(user: SimUser, checkpoints: list[int], rng: np.random.Generator, noise: Noise) -> list[Stage]:
    """The user's stages: stage k ends with exactly checkpoints[k] replies shown (a session ends there)."""
    sessions: list[tuple[int, _Session]] = []
    counter = [0]
    shown_total = 0
    for stage_index, target in enumerate(checkpoints):
        while shown_total < target:
            s = _session(user, len(sessions), target - shown_total, counter, rng, noise)
            shown_total += len(s.shown)
            sessions.append((stage_index, s))
    # Lay the sessions out in time: gaps of about an hour (bots: minutes), shrunk if the span is too long.
    if user.is_bot:
        gaps = [float(rng.uniform(30_000, 300_000)) for _ in sessions]
    else:
        gaps = [float(np.clip(math.exp(rng.normal(math.log(3_600_000), 0.8)), 300_000, 4 * 3_600_000)) for _ in sessions]
    active = sum(s.t for _, s in sessions)
    if sum(gaps) + active > MAX_SPAN_MS:
        scale = max(MAX_SPAN_MS - active, 0) / sum(gaps)
        gaps = [g * scale for g in gaps]
    stages = [Stage() for _ in checkpoints]
    start = 0
    for (stage_index, s), gap in zip(sessions, gaps, strict=True):
        stage = stages[stage_index]
        stage.events.extend((start + at, ev) for at, ev in s.events)
        stage.shown.extend(s.shown)
        start += s.t + int(gap)
    return stages


def history_span(stages: list[Stage]) -> int:
    return max((t for st in stages for t, _ in st.events), default=0)
