"""The simulated users behave as their truth says: misfit replies draw repeats, continues and stops."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.sim.behaviour import Shown, choose, react, repeat_probability
from bench.sim.users import Noise, make_population, make_user

QUIET = Noise(0.0)


def _user(**kw: object):
    base = make_user("u", np.random.default_rng(0))
    return replace(base, preferred_chars=400.0, tolerance=0.4, pacing="balanced", dialogue=0.4,
                   base_repeat=0.05, curator=False, **kw)


def _repeat_share(user, chars: int, pacing: str = "balanced", n: int = 3000) -> float:
    rng = np.random.default_rng(1)
    reply = Shown("r", chars, pacing, 0.4)
    return sum(react(user, reply, rng, QUIET).repeated for _ in range(n)) / n


def test_long_and_short_replies_are_repeated_more_than_fitting_ones() -> None:
    user = _user()
    fitting = _repeat_share(user, 400)
    assert fitting < 0.08
    assert _repeat_share(user, 1600) > fitting + 0.25
    assert _repeat_share(user, 100) > fitting + 0.25


def test_pacing_mismatch_raises_repeats_more_for_the_opposite_pacing() -> None:
    user = replace(_user(), pacing="slow_burn")
    same = _repeat_share(user, 400, "slow_burn")
    near = _repeat_share(user, 400, "balanced")
    far = _repeat_share(user, 400, "fast")
    assert same < near < far


def test_too_short_replies_are_continued_and_too_long_ones_stopped() -> None:
    user = _user()
    rng = np.random.default_rng(2)
    short = [react(user, Shown("r", 80, "balanced"), rng, QUIET) for _ in range(1000)]
    long = [react(user, Shown("r", 2000, "balanced"), rng, QUIET) for _ in range(1000)]
    kinds = lambda rs, t: sum(any(s.type == t for s in r.signals) for r in rs)  # noqa: E731
    assert kinds(short, "continue") > 100 and kinds(short, "stop") == 0
    assert kinds(long, "stop") > 100 and kinds(long, "continue") == 0


def test_curators_repeat_at_turning_points() -> None:
    curator = replace(_user(), curator=True)
    plain = Shown("r", 400, "balanced", 0.4, turning_point=False)
    turning = Shown("r", 400, "balanced", 0.4, turning_point=True)
    assert repeat_probability(curator, turning) > 0.5 > repeat_probability(curator, plain)
    assert repeat_probability(_user(), turning) < 0.15


def test_reading_and_typing_times_follow_the_users_speeds() -> None:
    slow = replace(_user(), read_cps=12.0, type_cps=2.0)
    fast = replace(_user(), read_cps=35.0, type_cps=6.0)
    rng = np.random.default_rng(3)

    def answer_ms(u):
        msgs = [s for _ in range(400) for s in react(u, Shown("r", 400, "balanced"), rng, QUIET).signals
                if s.type == "user_message"]
        return np.median([s.at_ms for s in msgs]), np.median([s.fields["compose_ms"] / s.fields["chars"] for s in msgs])

    slow_at, slow_per_char = answer_ms(slow)
    fast_at, fast_per_char = answer_ms(fast)
    assert slow_at > fast_at * 1.5
    assert slow_per_char > fast_per_char * 2


def test_double_taps_follow_the_noise_level() -> None:
    user = replace(_user(), base_repeat=1.0)
    rng = np.random.default_rng(4)
    taps = [sum(s.type == "repeat" for s in react(user, Shown("r", 400, "balanced"), rng, Noise(0.2)).signals)
            for _ in range(2000)]
    doubled = sum(t == 2 for t in taps) / sum(t >= 1 for t in taps)
    assert 0.15 < doubled < 0.25


def test_bots_act_at_machine_speed() -> None:
    rng = np.random.default_rng(5)
    users = make_population(60, rng, bot_share=0.5)
    bots = [u for u in users if u.is_bot]
    assert {u.bot for u in bots} == {"flood", "timing", "storm"}
    for bot in bots:
        r = react(bot, Shown("r", 1500, "balanced"), rng, QUIET)
        assert r.signals and max(s.at_ms for s in r.signals) < 1500  # no human reads 1500 chars that fast


def test_alternatives_choice_prefers_the_fitting_reply() -> None:
    user = _user()
    rng = np.random.default_rng(6)
    picks = [choose(user, [Shown("a", 1800, "fast"), Shown("b", 420, "balanced")], rng) for _ in range(500)]
    assert sum(picks) / len(picks) > 0.9
