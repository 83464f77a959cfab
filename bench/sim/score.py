"""Scoring served profiles against the truth, next to the naive baseline computed from the same replies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from bench.sim.behaviour import Shown, repeat_probability
from bench.sim.history import FOLLOWS_PACING, SHOWN_MEDIAN, ShownRecord
from bench.sim.metrics import (
    accuracy,
    expected_calibration_error,
    median_relative_error,
    naive_length,
    naive_pacing,
    oracle_pacing,
    share,
)
from bench.sim.users import PACINGS, Noise, SimUser


def oracle_label(user: SimUser, records: list[ShownRecord], noise: Noise) -> str:
    """The pacing an estimator knowing every other truth would pick from the repeats (alternatives left out)."""
    recs = [r for r in records if not r.alternative]
    likes = {c: replace(user, pacing=c) for c in PACINGS}

    def prob(i: int, cand: str, perceived: str) -> float:
        r = recs[i]
        p = repeat_probability(likes[cand], Shown("x", r.chars, perceived, r.dialogue_share, r.turning_point))
        return 1 - (1 - p) * (1 - noise.random_repeat)

    return oracle_pacing(PACINGS, [(r.pacing, r.repeated) for r in recs], prob, FOLLOWS_PACING)


def _get(doc: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def score(users: list[SimUser], profiles: dict[str, dict[str, Any] | None],
          shown: dict[str, list[ShownRecord]], noise: Noise | None = None) -> dict[str, float]:
    """One checkpoint's figures. Length and pacing figures cover honest users; bot figures cover everyone."""
    humans = [u for u in users if not u.is_bot]
    bots = [u for u in users if u.is_bot]
    out: dict[str, float] = {}
    served = [u for u in humans if profiles.get(u.user_id)]
    out["served"] = len(served) / len(humans) if humans else float("nan")

    naive_len = [naive_length([(r.chars, r.repeated) for r in shown[u.user_id]], SHOWN_MEDIAN) for u in humans]
    truth_len = [u.preferred_chars for u in humans]
    out["len_err_naive"] = median_relative_error(naive_len, truth_len)
    naive_pace = [naive_pacing([(r.pacing, r.repeated) for r in shown[u.user_id]], "balanced") for u in humans]
    out["pacing_acc_naive"] = accuracy(naive_pace, [u.pacing for u in humans])
    if noise is not None:
        oracle = [oracle_label(u, shown[u.user_id], noise) for u in humans]
        out["pacing_acc_oracle"] = accuracy(oracle, [u.pacing for u in humans])

    # Attune: a user without a profile counts with the population default the app would fall back to.
    est_len, pace, pace_conf, pace_ok, len_conf, len_ok = [], [], [], [], [], []
    for u in humans:
        doc = profiles.get(u.user_id)
        target = _get(doc, "reply_length", "target_chars")
        est_len.append(float(target) if isinstance(target, int | float) and target > 0 else SHOWN_MEDIAN)
        label = _get(doc, "pacing", "label") or "balanced"
        pace.append(label)
        conf = _get(doc, "pacing", "confidence")
        if isinstance(conf, int | float):
            pace_conf.append(float(conf))
            pace_ok.append(label == u.pacing)
        interval = _get(doc, "reply_length", "interval")
        lconf = _get(doc, "reply_length", "confidence")
        if isinstance(interval, list) and len(interval) == 2 and isinstance(lconf, int | float):
            len_conf.append(float(lconf))
            len_ok.append(interval[0] <= u.preferred_chars <= interval[1])
    out["len_err_attune"] = median_relative_error(est_len, truth_len)
    out["len_ratio"] = out["len_err_attune"] / out["len_err_naive"] if out["len_err_naive"] else float("nan")
    out["pacing_acc_attune"] = accuracy(pace, [u.pacing for u in humans])
    out["ece_pacing"] = expected_calibration_error(pace_conf, pace_ok)
    out["mean_conf_pacing"] = sum(pace_conf) / len(pace_conf) if pace_conf else float("nan")
    out["ece_length"] = expected_calibration_error(len_conf, len_ok)
    out["len_coverage"] = share(len_ok)
    out["mean_conf_length"] = sum(len_conf) / len(len_conf) if len_conf else float("nan")
    # Dialogue share: the served value against the preferred share, its confidence (mass within 0.1) against
    # how often it is that close; the naive baseline is the population's middle taste (the users' median).
    ds_err, ds_conf, ds_ok = [], [], []
    for u in humans:
        d = _get(profiles.get(u.user_id), "style", "dialogue_share")
        if isinstance(d, dict) and isinstance(d.get("value"), int | float):
            ds_err.append(abs(float(d["value"]) - u.dialogue))
            if isinstance(d.get("confidence"), int | float):
                ds_conf.append(float(d["confidence"]))
                ds_ok.append(ds_err[-1] <= 0.1)
    middle = float(np.median([u.dialogue for u in humans])) if humans else float("nan")
    out["ds_err_attune"] = float(np.median(ds_err)) if ds_err else float("nan")
    out["ds_err_naive"] = (float(np.median([abs(middle - u.dialogue) for u in humans])) if humans
                           else float("nan"))
    out["ece_dialogue"] = expected_calibration_error(ds_conf, ds_ok)
    out["mean_conf_dialogue"] = sum(ds_conf) / len(ds_conf) if ds_conf else float("nan")
    out["bots_caught"] = share([_get(profiles.get(u.user_id), "trust") == "suspect_bot" for u in bots])
    out["honest_flagged"] = share([_get(profiles.get(u.user_id), "trust") == "suspect_bot" for u in humans])

    # Diagnostics: where the error sits.
    for name, group in (("curators", [u for u in humans if u.curator]),
                        ("skewed_clock", [u for u in humans if abs(u.skew_ms) > 3_600_000]),
                        ("short_pref", [u for u in humans if u.preferred_chars < 250]),
                        ("long_pref", [u for u in humans if u.preferred_chars > 700])):
        idx = [humans.index(u) for u in group]
        out[f"len_err_attune[{name}]"] = median_relative_error([est_len[i] for i in idx], [truth_len[i] for i in idx])
        out[f"len_err_naive[{name}]"] = median_relative_error([naive_len[i] for i in idx], [truth_len[i] for i in idx])
        out[f"honest_flagged[{name}]"] = share(
            [_get(profiles.get(humans[i].user_id), "trust") == "suspect_bot" for i in idx])
    for p in ("slow_burn", "balanced", "fast"):
        idx = [i for i, u in enumerate(humans) if u.pacing == p]
        out[f"pacing_acc_attune[{p}]"] = accuracy([pace[i] for i in idx], [p] * len(idx))
    if not served:  # nothing served: say so rather than score the fallback defaults
        for k in list(out):
            if "attune" in k or k in ("len_ratio", "bots_caught", "honest_flagged") or k.startswith("honest_flagged["):
                out[k] = float("nan")
    return out


def flagged_honest(users: list[SimUser], profiles: dict[str, dict[str, Any] | None]) -> list[str]:
    """Honest users marked suspect_bot, with the truth that may explain it (for routing the failure)."""
    out = []
    for u in users:
        if not u.is_bot and _get(profiles.get(u.user_id), "trust") == "suspect_bot":
            out.append(f"{u.user_id} (curator={u.curator}, base_repeat={u.base_repeat:.2f}, "
                       f"read {u.read_cps:.0f} c/s, type {u.type_cps:.1f} c/s, skew {u.skew_ms / 1000:.0f} s, "
                       f"preferred {u.preferred_chars:.0f} chars, tolerance {u.tolerance:.2f})")
    return out
