"""Closed-loop figures from records: repeat rates per arm and the inverse-propensity estimate."""

from __future__ import annotations

import math

import numpy as np

from bench.sim.closedloop import ClosedLoopResult, ReplyRecord, ceiling, closed_loop_figures
from bench.sim.users import Noise, make_population


def _rec(uid: str, arm: str, turn: int, rid: str, repeated: bool) -> ReplyRecord:
    return ReplyRecord(uid, arm, turn, rid, 400, "balanced", repeated, "true" if arm == "cond" else "false")


def test_repeat_rates_per_arm_and_the_reduction() -> None:
    users = make_population(2, np.random.default_rng(0), bot_share=0.0)
    a, b = users[0].user_id, users[1].user_id
    recs = [_rec(a, "cond", 3, "c1", True), _rec(a, "cond", 3, "c2", False), _rec(a, "cond", 4, "c3", False),
            _rec(a, "cond", 4, "c4", False), _rec(b, "off", 3, "o1", True), _rec(b, "off", 4, "o2", False)]
    res = ClosedLoopResult(users, turns=4, records=recs)
    res.logged = {"c1": {"explored": False, "propensity": 0.5}, "c2": {"explored": False, "propensity": 0.5},
                  "c3": {"explored": True, "propensity": 0.25}, "c4": {"explored": False, "propensity": 1.0}}
    f = closed_loop_figures(res)
    assert f["repeat_late[cond]"] == 0.25 and f["repeat_late[off]"] == 0.5
    assert math.isclose(f["reduction_late"], 0.5)
    # Greedy policy: c1 (repeated, w=2), c2 (w=2), c4 (w=1); c3 explored. IPS = 2/4, SNIPS = 2/5.
    assert math.isclose(f["ips_greedy"], 0.5) and math.isclose(f["snips_greedy"], 0.4)
    assert math.isclose(f["explored_share"], 0.25) and f["ips_logged_share"] == 1.0


def test_ceiling_with_true_preferences_applied_repeats_less_than_none() -> None:
    rng = np.random.default_rng(1)
    c = ceiling(make_population(30, rng, bot_share=0.0), rng, Noise(), replies=20)
    assert c["repeat_ceiling[oracle]"] < c["repeat_ceiling[off]"]
    assert 0.2 < c["reduction_ceiling"] < 0.8
