"""The in-process replays run the real learning and conditioning code and report both arms' figures."""

from __future__ import annotations

import numpy as np

from bench.sim import openreplay, replay
from bench.sim.users import Noise, make_population


def test_closed_loop_replay_serves_profiles_and_conditions_one_arm() -> None:
    users = make_population(6, np.random.default_rng(3), bot_share=0.0, prefix="t")
    res = replay.run(users, 14, 3, Noise())
    rows = res["rows"]
    assert {r["arm"] for r in rows} == {"cond", "off"}
    assert all(r["applied"] is None for r in rows if r["arm"] == "off")
    cond_late = [r for r in rows if r["arm"] == "cond" and r["turn"] > 7]
    assert cond_late and all(r["applied"]["pacing"] in ("slow_burn", "balanced", "fast") for r in cond_late)
    assert any(r["served"] for r in cond_late)  # profiles built from the replayed events reach the gateway side
    f = res["figures"]
    assert 0.0 <= f["repeat_late[cond]"] <= 1.0 and 0.0 <= f["repeat_late[off]"] <= 1.0
    # The same users and seeds give the same unconditioned arm whatever the gateway's draws were.
    other = replay.run(users, 14, 3, Noise(), decision_seed=1)["figures"]
    assert other["repeat_late[off]"] == f["repeat_late[off]"]


def test_open_loop_replay_scores_each_checkpoint_as_the_simulator_does() -> None:
    out = openreplay.run(40, 1, [5, 10], Noise())
    assert len(out) == 2
    for figures in out:
        assert 0.0 <= figures["pacing_acc_attune"] <= 1.0 and 0.0 <= figures["pacing_acc_naive"] <= 1.0
        assert figures["len_err_attune"] >= 0.0 and 0.0 <= figures["ece_pacing"] <= 1.0
        assert figures["served"] == 1.0  # every honest user has a profile after their first stage
    # The same seed gives the same figures: runs of two variants differ only where the code does.
    assert openreplay.run(40, 1, [5, 10], Noise()) == out


def test_pacing_headroom_splits_the_policy_gap_from_the_learner_gap() -> None:
    users = make_population(2, np.random.default_rng(5), bot_share=0.0, prefix="h")
    pref = {u.user_id: u.pacing for u in users}
    other = {p: next(q for q in ("slow_burn", "balanced", "fast") if q != p) for p in pref.values()}

    def row(uid: str, turn: int, applied: str, top: str) -> dict:
        scores = tuple(0.8 if p == top else 0.1 for p in ("slow_burn", "balanced", "fast"))
        return {"user": uid, "arm": "cond", "turn": turn, "applied": {"pacing": applied}, "scores": scores}

    a, b = (u.user_id for u in users)
    rows = [row(a, 9, pref[a], pref[a]),  # early: left out
            row(a, 12, other[pref[a]], pref[a]),  # the belief is right, the arm drawn is not (exploration)
            row(b, 12, pref[b], pref[b]),
            row(b, 13, other[pref[b]], other[pref[b]]),  # a wrong belief, applied
            {**row(b, 14, pref[b], pref[b]), "scores": None}]  # no profile: left out
    out = replay.pacing_headroom(rows, users, 20)
    assert out["greedy_right"] == 2 / 3 and out["applied_right"] == 1 / 3
    # Asking for the preferred pacing still costs the stand-in's misses; anything else costs more.
    assert 0.0 < out["p_pace_truth"] < out["p_pace_greedy"] < out["p_pace_applied"]
