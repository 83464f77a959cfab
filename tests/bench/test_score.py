"""Scoring: served profiles against the truth, the baseline and the repeats-only oracle."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from bench.sim.history import ShownRecord
from bench.sim.metrics import oracle_pacing
from bench.sim.score import flagged_honest, score
from bench.sim.users import make_user


def _users():
    rng = np.random.default_rng(0)
    a = replace(make_user("a", rng), preferred_chars=400.0, pacing="fast")
    b = replace(make_user("b", rng), preferred_chars=200.0, pacing="slow_burn")
    bot = replace(make_user("bot", rng), bot="flood")
    return [a, b, bot]


def _profile(target: float, interval: list[float], label: str, conf: float, trust: str = "normal") -> dict:
    return {"reply_length": {"target_chars": target, "interval": interval, "confidence": 0.9},
            "pacing": {"label": label, "confidence": conf}, "trust": trust}


def test_score_compares_profiles_with_the_truth_and_the_baseline() -> None:
    users = _users()
    shown = {"a": [ShownRecord("r1", 300, "fast"), ShownRecord("r2", 900, "slow_burn", repeated=True)],
             "b": [ShownRecord("r3", 100, "balanced"), ShownRecord("r4", 500, "fast")], "bot": []}
    profiles = {"a": _profile(440, [350, 500], "fast", 0.8),
                "b": _profile(300, [250, 350], "balanced", 0.6, trust="suspect_bot"),
                "bot": _profile(400, [300, 500], "fast", 0.5, trust="suspect_bot")}
    f = score(users, profiles, shown)
    assert f["served"] == 1.0
    assert math.isclose(f["len_err_attune"], (0.1 + 0.5) / 2)  # |440-400|/400 and |300-200|/200
    assert math.isclose(f["len_err_naive"], (0.25 + 0.5) / 2)  # 300 vs 400; mean(100, 500)=300 vs 200
    assert f["pacing_acc_attune"] == 0.5 and f["pacing_acc_naive"] == 0.5  # naive: fast for a, fast for b
    assert f["len_coverage"] == 0.5  # 400 inside [350, 500]; 200 outside [250, 350]
    assert f["bots_caught"] == 1.0 and f["honest_flagged"] == 0.5
    assert flagged_honest(users, profiles)[0].startswith("b (")


def test_no_profile_served_gives_no_attune_figures() -> None:
    users = _users()
    shown = {u.user_id: [ShownRecord("r", 300, "fast")] for u in users}
    f = score(users, {u.user_id: None for u in users}, shown)
    assert f["served"] == 0
    assert math.isnan(f["len_err_attune"]) and math.isnan(f["honest_flagged"])
    assert not math.isnan(f["len_err_naive"])


def test_oracle_picks_the_pacing_whose_replies_were_kept() -> None:
    shown = [("fast", False)] * 6 + [("slow_burn", True)] * 6 + [("balanced", True), ("balanced", False)]

    def prob(_i: int, cand: str, perceived: str) -> float:
        return 0.1 if cand == perceived else 0.6

    assert oracle_pacing(("slow_burn", "balanced", "fast"), shown, prob, follows=0.8) == "fast"
