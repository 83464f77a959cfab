"""A user's learning state: the bot marks robust to honest patterns, reading judged on what was shown."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from models.features import reply_features
from models.population import PACINGS, Population
from models import profile as pm
from models.profile import Applier, behaviour_features, estimate, estimate_many, new_state, update_trust


def feed(events: list[dict[str, Any]]) -> tuple[dict[str, Any], Applier]:
    state = new_state()
    applier = Applier(state, Population(), 60_000)
    for i, ev in enumerate(events):
        applier.apply({"event_id": f"e{i}", **ev})
    return state, applier


def human_with_early_misfits(replies: int = 8) -> list[dict[str, Any]]:
    """A short-preference reader who regenerates almost every early reply, often with a double tap."""
    out: list[dict[str, Any]] = []
    t = 1_000_000
    for n in range(replies):
        rid = f"r{n}"
        out.append({"type": "reply_shown", "reply_id": rid, "t": t, "reply": {"chars": 900}})
        if n % 4 != 3:
            out.append({"type": "repeat", "reply_id": rid, "t": t + 9_000})
            if n % 2 == 0:
                out.append({"type": "repeat", "reply_id": rid, "t": t + 9_300})  # a double tap
        else:
            out.append({"type": "user_message", "reply_id": rid, "t": t + 60_000, "chars": 40, "compose_ms": 12_000})
        t += 70_000
    return out


def storm_bot(replies: int = 6) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t = 1_000_000
    for n in range(replies):
        rid = f"b{n}"
        out.append({"type": "reply_shown", "reply_id": rid, "t": t, "reply": {"chars": 400}})
        for k in range(5):
            out.append({"type": "repeat", "reply_id": rid, "t": t + 150 + 60 * k})
        t += 600
    return out


def test_a_run_of_early_regenerations_does_not_mark_a_human_as_a_bot() -> None:
    state, _ = feed(human_with_early_misfits())
    assert state["n"] >= 20  # past the minimum evidence: the bot rule is judging this user
    raw_rate = state["beh"]["presses"] / state["replies"]
    assert raw_rate > 1.0  # unshrunk, this would read as a repeat storm (z > 8 against the human norm)
    update_trust(state, Population())
    assert state["trust"] == "normal"
    assert behaviour_features(state)["repeat_rate"] < raw_rate


def test_a_repeat_storm_is_still_marked() -> None:
    state, _ = feed(storm_bot())
    update_trust(state, Population())
    assert state["trust"] == "suspect_bot"


def test_a_stopped_reply_is_judged_on_the_characters_shown() -> None:
    # 2000 characters need 25 s at the fastest skim; the user stopped after 300 and answered 8 s later.
    shown = {"type": "reply_shown", "reply_id": "r1", "t": 1_000_000, "reply": {"chars": 2000}}
    stop = {"type": "stop", "reply_id": "r1", "t": 1_004_000, "shown_chars": 300}
    answer = {"type": "user_message", "reply_id": "r1", "t": 1_008_000, "chars": 10, "compose_ms": 3_000}
    _, applier = feed([shown, stop, answer])
    assert "implausible_read" not in applier.discounted
    _, unstopped = feed([shown, answer])
    assert unstopped.discounted.get("implausible_read") == 1


def test_pacing_is_learned_from_a_user_who_also_repeats_for_other_reasons() -> None:
    # 45 replies, 15 per pacing, all of the preferred length: slow_burn replies repeated 3 times in 15,
    # balanced 7, fast 10, in a population that repeats a lot (rate 0.4). Those overall rates hold the
    # repeats wrong pacings caused; taken as the rate of repeats for no reason they made every pacing look
    # alike (slow_burn 0.71 here). The rate of other causes is unknown and marginalised: slow_burn, clearly.
    recs = []
    for k, (pacing, repeats) in enumerate((("slow_burn", 3), ("balanced", 7), ("fast", 10))):
        for j in range(15):
            outcome = "repeat" if j < repeats else "answered"
            recs.append({"id": f"r{k}-{j}", "t": 1000 * (3 * j + k), "c": 380, "o": [outcome],
                         "ap": {"pacing": pacing}})
    recs.sort(key=lambda r: r["t"])
    est = estimate(recs, Population(repeat_a=4.0, repeat_b=6.0))
    assert est["pacing_label"] == "slow_burn"
    assert est["pacing_scores"]["slow_burn"] > 0.85, est["pacing_scores"]
    assert est["pacing_scores"]["fast"] < 0.1, est["pacing_scores"]


def _random_replies(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    outcomes = ["repeat", "answered", "selected", "continue", "stop", "edit_shorter", "edit_longer", "rating",
                "passed_over"]
    out: list[dict[str, Any]] = []
    for i in range(n):
        r: dict[str, Any] = {"id": f"r{i}", "t": 1000 * i,
                             "o": list(rng.choice(outcomes, int(rng.integers(0, 3)))),
                             "c": int(np.exp(rng.normal(6, 0.6))) if rng.random() < 0.9 else None,
                             "hk": bool(rng.random() < 0.5) if rng.random() < 0.7 else None}
        if rng.random() < 0.8:
            r["ds"] = float(rng.random())
        if rng.random() < 0.7:
            r["ap"] = {"pacing": PACINGS[int(rng.integers(3))], "propensity": 0.8}
        if rng.random() < 0.4:  # the pacing measured from its text: asked or not, agreeing or not
            r["pm"] = PACINGS[int(rng.integers(3))]
        if "rating" in r["o"]:
            r["rating"] = float(rng.uniform(-1, 1))
        if "selected" in r["o"] and i:
            r["alts"] = [f"r{i - 1}"]
        out.append(r)
    return out


def test_estimates_of_many_users_at_once_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(11)
    jobs: list[Any] = []
    for _ in range(80):
        pop = Population(repeat_a=float(rng.uniform(1, 5)), repeat_b=float(rng.uniform(5, 20)))
        msg = [float(rng.uniform(0, 40)), float(rng.uniform(0, 10))] if rng.random() < 0.7 else None
        prior = {"mu": 6.2, "mu_sd": 0.35, "ds": 0.4, "ds_sd": 0.15} if rng.random() < 0.2 else None
        jobs.append((_random_replies(rng, int(rng.integers(0, 60))), pop, msg, prior))
    batched = estimate_many(jobs)
    for job, got in zip(jobs, batched, strict=True):
        want = estimate(*job)
        assert got.keys() == want.keys()
        assert got["pacing_label"] == want["pacing_label"]
        assert got["pacing_posterior"] == want["pacing_posterior"]
        for k in ("target", "len_conf", "mu", "mu_var", "ds", "ds_conf", "hook", "repeat_rate"):
            assert abs(got[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k])), k
        assert np.allclose(got["interval"], want["interval"], rtol=1e-9)
        scores = [(got["pacing_scores"][p], want["pacing_scores"][p]) for p in PACINGS]
        assert all(abs(a - b) < 1e-12 for a, b in scores)


def test_pacing_posteriors_of_many_users_at_once_equal_the_one_user_function() -> None:
    rng = np.random.default_rng(23)
    items: list[Any] = []
    for u in range(120):
        recs = _random_replies(rng, int(rng.integers(0, 50)))
        if u % 10 == 5:  # no paced replies at all
            for r in recs:
                r.pop("ap", None)
                r.pop("pm", None)
        if u % 7 == 0:  # choices between alternatives of different pacings, some of unknown length
            for i, r in enumerate(recs[1:], 1):
                if rng.random() < 0.4:
                    r["o"], r["alts"] = ["selected"], [f"r{i - 1}"]
                    r["ap"] = {"pacing": PACINGS[int(rng.integers(3))]}
                    recs[i - 1]["ap"] = {"pacing": PACINGS[int(rng.integers(3))]}
                    recs[i - 1]["o"] = ["passed_over"]
                    if rng.random() < 0.3:
                        r["c"] = None
        if u % 3 == 1:  # explicit ratings, on repeated and skimmed replies too
            for r in recs:
                if rng.random() < 0.3:
                    r["rating"] = round(float(rng.uniform(-1, 1)), 2)
                if rng.random() < 0.2:
                    r["bad"] = "implausible_read"
        ev = pm._evidence(recs, Population(), 0.15)
        items.append((recs, ev, float(rng.normal(6.0, 0.5))))
    assert sum(1 for recs, _, _ in items if any("alts" in r for r in recs)) > 20
    assert sum(1 for recs, _, _ in items if any("rating" in r for r in recs)) > 20
    batched = pm._pacing_label_posteriors(items)
    assert batched.shape == (len(items), len(PACINGS))
    for (recs, ev, mu), got in zip(items, batched, strict=True):
        want = _pacing_one_user(recs, ev, mu)
        assert np.allclose(got, want, rtol=0, atol=1e-9), (got, want)
    # Users without any paced reply get the prior.
    assert len(items[5][0]) and np.allclose(batched[5], pm.PACING_PRIOR / pm.PACING_PRIOR.sum(), atol=1e-12)


def _pacing_one_user(recs: list[dict[str, Any]], ev: Any, mu: float) -> np.ndarray:
    """models/profile.py _pacing_label_posteriors for one user, written plainly: the reference it must equal."""
    ks, ms, ws, kept_rated = [], [], [], []
    ratings = []
    rep, suc = ev["rep"], ev["suc"]
    by_id: dict[str, dict[str, Any]] | None = None
    choices = []
    for i, r in enumerate(recs):
        row = pm._perceived_row(r)
        if row == 0:
            continue
        if "passed_over" in r["o"]:
            continue  # counted through the choice of the one kept
        if "selected" in r["o"] and r.get("alts"):
            choices.append(i)
        if r.get("rating") is not None:
            ratings.append((i, row))
            if "repeat" not in r["o"]:
                kept_rated.append(len(ks))
        ks.append(row)
        ms.append(math.log(max(r["c"], 1)) if r.get("c") else math.nan)
        ws.append(i)
    n = len(recs)
    logp = np.zeros(3)
    if ks:
        sel = np.array(ws, dtype=int)
        logc = np.array(ms)
        m_len = np.where(np.isnan(logc), 0.0, 0.5 * ((logc - mu) / 0.4) ** 2)
        keep_len = 1 - 0.5 * (1 - np.exp(-m_len))
        forget = pm.PACING_FORGET ** (n - 1 - sel).astype(float)
        w_rep = forget * rep[sel]
        w_suc = np.where(w_rep > 0, 0.0, forget * np.minimum(suc[sel], 1.0))
        for j in kept_rated:
            w_rep[j], w_suc[j] = 0.0, forget[j] * (0.3 if recs[ws[j]].get("bad") == "implausible_read" else 1.0)
        keep = keep_len[:, None] * (1 - pm._PACE_REPEAT_MIX[np.array(ks, dtype=int)])  # [reply, preferred P]
        p_rep = 1 - (1 - pm.BASE_GRID)[:, None, None] * keep[None, :, :]  # [base, reply, preferred P]
        p_rep = np.clip(p_rep, 1e-4, 1 - 1e-4)
        ll = np.einsum("r,brp->bp", w_rep, np.log(p_rep)) + np.einsum("r,brp->bp", w_suc, np.log1p(-p_rep))
        ll = ll + np.log(pm.BASE_PRIOR)[:, None]
        top = ll.max()
        logp = np.log(np.exp(ll - top).sum(axis=0)) + top
    for i in choices:
        kept = recs[i]
        by_id = by_id if by_id is not None else {r["id"]: r for r in recs}
        for alt in kept["alts"]:
            other = by_id.get(alt)
            k_o, k_k = pm._perceived_row(other), pm._perceived_row(kept)
            if k_o == 0 or k_o == k_k:
                continue
            m_k = 0.5 * ((math.log(max(kept["c"], 1)) - mu) / 0.4) ** 2 if kept.get("c") else 0.0
            m_o = 0.5 * ((math.log(max(other["c"], 1)) - mu) / 0.4) ** 2 if other.get("c") else 0.0
            z = (m_o + pm._PACE_COST_MIX[k_o] - m_k - pm._PACE_COST_MIX[k_k]) / pm.CHOICE_TEMPERATURE
            logp = logp - pm.PACING_FORGET ** (n - 1 - i) * np.logaddexp(0.0, -z)
    for i, row in ratings:
        r = recs[i]
        m = 0.5 * ((math.log(max(r["c"], 1)) - mu) / 0.4) ** 2 if r.get("c") else 0.0
        for p in range(3):
            like = 0.0
            for q in range(3):
                s = math.exp(-(m + pm.RATING_OTHER_COST + pm.PACE_COST[abs(q - p)]))
                like += pm._PERCEIVED[row][q] * math.exp(-0.5 * ((r["rating"] - (2 * s - 1)) / pm.RATING_SD) ** 2)
            flat = 0.5 * pm.RATING_SD * math.sqrt(2 * math.pi)
            like = (1 - pm.RATING_FLAT_SHARE) * like + pm.RATING_FLAT_SHARE * flat
            logp[p] += pm.PACING_FORGET ** (n - 1 - i) * math.log(like + 1e-300)
    logp = logp + np.log(pm.PACING_PRIOR)
    logp -= logp.max()
    post = np.exp(logp)
    return np.asarray(post / post.sum())


def test_the_population_summary_carries_the_dialogue_shares_posterior_variance() -> None:
    # The refresh needs it to keep the dialogue prior as wide as the tastes (models/population.py).
    pop = Population()
    no_evidence = estimate([], pop)
    assert abs(math.sqrt(no_evidence["ds_var"]) - pop.ds_sd) < 0.03  # the prior itself, on the grid
    events = []
    for n in range(30):
        share = [0.1, 0.5, 0.9][n % 3]
        events.append({"type": "reply_shown", "reply_id": f"r{n}", "t": 1_000_000 + n * 70_000,
                       "reply": {"chars": 400, "dialogue_share": share}})
        if share != 0.9:
            events.append({"type": "repeat", "reply_id": f"r{n}", "t": 1_009_000 + n * 70_000})
    state, applier = feed(events)
    applier.close_due(10**12)
    est = estimate(state["closed"], pop)
    assert 0 < est["ds_var"] < no_evidence["ds_var"]  # evidence narrows it
    assert est["ds"] > pop.ds  # toward the share that was never regenerated
    assert pm.summary(state, est, {})["ds_var"] == round(est["ds_var"], 5)


def test_a_duplicate_is_discounted_and_only_the_newest_fingerprints_are_kept() -> None:
    state = new_state()
    ap = Applier(state, Population(), 60_000)
    msgs = [{"type": "session_start", "session_id": f"s{i}", "t": 1000 + i}
            for i in range(pm.MAX_FINGERPRINTS + 5)]
    assert all(ap.apply(ev) for ev in msgs)
    assert not ap.apply(dict(msgs[-1])) and ap.discounted == {"duplicate": 1}
    assert state["fp"] == [f"session_start|s{i}|{1000 + i}" for i in range(5, pm.MAX_FINGERPRINTS + 5)]
    assert ap.apply(dict(msgs[0]))  # forgotten: applied again
    assert ap.apply({"type": "repeat", "reply_id": "r", "session_id": "s9", "t": 5})
    assert state["fp"][-1] == "repeat|r|5"  # the reply id, not the session, names a reply's event
    assert ap.apply({"type": "no_such_type", "t": 6}) and state["fp"][-1] == "no_such_type||6"
    assert state["n"] == pm.MAX_FINGERPRINTS + 8 and state["max_t"] == 1000 + pm.MAX_FINGERPRINTS + 4
    # A later update of the stored state (a new Applier) still knows what the state remembers, and only that.
    again = Applier(state, Population(), 60_000)
    assert not again.apply(dict(msgs[-1])) and again.discounted == {"duplicate": 1}
    assert again.apply(dict(msgs[1]))  # trimmed away above


def _paced_history(measured: bool, asked: str | None = None) -> list[dict[str, Any]]:
    """Thirty replies in turn slow burn, balanced, fast as read from their text; only the slow ones are
    regenerated. With `asked`, every reply was asked for that pacing (the model did not follow it)."""
    events = []
    for n in range(30):
        pacing = PACINGS[n % 3]
        reply: dict[str, Any] = {"chars": 400}
        if measured:
            reply["pacing"] = pacing
        ev: dict[str, Any] = {"type": "reply_shown", "reply_id": f"r{n}", "t": 1_000_000 + n * 70_000,
                              "reply": reply}
        if asked:
            ev["conditioning"] = {"pacing": asked, "explored": True, "propensity": 0.3}
        events.append(ev)
        if pacing == "slow_burn":
            events.append({"type": "repeat", "reply_id": f"r{n}", "t": 1_009_000 + n * 70_000})
        else:
            events.append({"type": "user_message", "reply_id": f"r{n}", "t": 1_030_000 + n * 70_000,
                           "chars": 40, "compose_ms": 12_000})
    return events


def test_the_pacing_measured_from_the_text_is_evidence_even_when_none_was_asked() -> None:
    state, applier = feed(_paced_history(measured=True))
    applier.close_due(10**12)
    assert all(r.get("pm") for r in state["closed"])
    est = estimate(state["closed"], Population())
    blind_state, blind = feed(_paced_history(measured=False))
    blind.close_due(10**12)
    blind_est = estimate(blind_state["closed"], Population())
    # Unmeasured and unasked, the replies say nothing about pacing: the prior stands.
    assert np.allclose([blind_est["pacing_scores"][p] for p in PACINGS], pm.PACING_PRIOR, atol=1e-9)
    # So it is with the measurement turned off (ATTUNE_PACING_FROM_TEXT=false).
    off_state = new_state()
    off = Applier(off_state, Population(), 60_000, pacing_from_text=False)
    for i, ev in enumerate(_paced_history(measured=True)):
        off.apply({"event_id": f"e{i}", **ev})
    off.close_due(10**12)
    assert not any("pm" in r for r in off_state["closed"])
    assert est["pacing_scores"]["slow_burn"] < 0.05  # the regenerated pacing is ruled out
    assert est["pacing_label"] in ("balanced", "fast")


def test_a_measured_pacing_overrides_the_one_asked_for() -> None:
    # Everything asked as fast, but the texts read as three pacings and only slow burn is regenerated: the
    # asked label alone says nothing (all alike); the measured ones say "not slow burn".
    asked_only = feed(_paced_history(measured=False, asked="fast"))
    both = feed(_paced_history(measured=True, asked="fast"))
    scores = []
    for state, applier in (asked_only, both):
        applier.close_due(10**12)
        scores.append(estimate(state["closed"], Population())["pacing_scores"])
    assert scores[1]["slow_burn"] < scores[0]["slow_burn"] / 3


def test_ratings_alone_tell_the_pacing_a_reader_prefers() -> None:
    # No repeats at all: every reply was answered, and a few were rated. The ratings' values say which pacing
    # pleases: high for fast replies, middling for balanced, low for slow burn.
    value = {"fast": 0.8, "balanced": 0.3, "slow_burn": -0.3}
    recs: list[dict[str, Any]] = []
    for i in range(12):
        pacing = PACINGS[i % 3]
        recs.append({"id": f"r{i}", "t": 1000 * i, "o": ["answered", "rating"], "c": 400,
                     "ap": {"pacing": pacing, "propensity": 0.3}, "rating": value[pacing]})
    unrated = [{**r, "o": ["answered"]} for r in recs]
    for r in unrated:
        r.pop("rating")
    mu = math.log(400)
    post = pm._pacing_label_posteriors([(recs, pm._evidence(recs, Population(), 0.15), mu),
                                        (unrated, pm._evidence(unrated, Population(), 0.15), mu)])
    fast = PACINGS.index("fast")
    assert post[0].argmax() == fast and post[0][fast] > 0.9, post[0]
    # Without the ratings the same replies say little: the posterior stays near the prior.
    assert post[1][fast] < 0.5, post[1]


def test_ratings_that_say_nothing_of_pacing_leave_the_pacing_near_what_the_repeats_say() -> None:
    # Readers who rate the story, not the prose: 1 or -1 at random, whatever the pacing. Every pacing was
    # shown alike, all answered, none repeated. An extreme rating is explained worse by balanced than by
    # either end; without a share of each rating taken as saying nothing, users drift away from balanced.
    rng = np.random.default_rng(5)
    items = []
    for _ in range(100):
        recs = [{"id": f"r{i}", "t": 1000 * i, "o": ["answered"], "c": 400,
                 "ap": {"pacing": PACINGS[i % 3], "propensity": 0.3}} for i in range(40)]
        for r in recs:
            if rng.random() < 0.3:
                r["o"].append("rating")
                r["rating"] = float(rng.choice([-1.0, 1.0]))
        items.append((recs, pm._evidence(recs, Population(), 0.15), math.log(400)))
    unrated = [([{k: v for k, v in r.items() if k != "rating"} for r in recs], ev, mu) for recs, ev, mu in items]
    with_ratings = pm._pacing_label_posteriors(items).mean(axis=0)
    without = pm._pacing_label_posteriors(unrated).mean(axis=0)
    balanced = PACINGS.index("balanced")
    assert without[balanced] > 0.6, without
    assert with_ratings[balanced] > 0.8 * without[balanced], (with_ratings, without)


def test_the_served_token_budget_follows_the_script_of_the_readers_replies() -> None:
    # A Chinese reader's replies hold ~1.3 characters per token, not English's ~4: the profile's suggested
    # max_completion_tokens for the same target in characters is about three times larger.
    texts = {"zh": "她放下杯子，抬眼看着你。然后她往后一靠，若有所思，朝门口点了点头。" * 4,
             "en": "She sets the cup down and meets your eyes. Then she leans back and nods toward the door. " * 3}
    budgets = {}
    for lang, text in texts.items():
        events: list[dict[str, Any]] = []
        t = 1_000_000
        for n in range(12):
            events.append({"type": "reply_shown", "reply_id": f"r{n}", "t": t,
                           "reply": {"chars": len(text), **reply_features(text)}})
            events.append({"type": "user_message", "reply_id": f"r{n}", "t": t + 30_000, "chars": 40})
            t += 60_000
        state, applier = feed(events)
        applier.close_due(10**12)
        est = estimate(state["closed"], Population())
        doc = pm.profile_document("a", "u", None, 1, "", state, est, state["replies"], state["n"])
        per_token = pm.replies_chars_per_token(state["closed"])
        assert doc["conditioning"]["max_completion_tokens"] == math.ceil(est["target"] * pm.TOKEN_HEADROOM / per_token)
        budgets[lang] = doc["conditioning"]["max_completion_tokens"] / est["target"]
        assert (per_token < 1.5) if lang == "zh" else (per_token == pm.CHARS_PER_TOKEN)
    assert budgets["zh"] > 2.5 * budgets["en"]


def test_a_characters_token_budget_follows_that_characters_replies() -> None:
    # A user plays a Chinese story with one character, then an English one with another: each character's
    # profile budgets at the rate of its own replies, the user's at the recent replies'.
    zh_text = "她放下杯子，抬眼看着你。然后她往后一靠，若有所思，朝门口点了点头。" * 4
    en_text = "She sets the cup down and meets your eyes. Then she leans back and nods toward the door. " * 3
    events: list[dict[str, Any]] = []
    t = 1_000_000
    for n in range(2 * pm.CHARACTER_MIN_REPLIES):
        cid, text = ("mei", zh_text) if n < pm.CHARACTER_MIN_REPLIES else ("ann", en_text)
        events.append({"type": "reply_shown", "reply_id": f"r{n}", "t": t, "character_id": cid,
                       "reply": {"chars": len(text), **reply_features(text)}})
        events.append({"type": "user_message", "reply_id": f"r{n}", "t": t + 30_000, "chars": 40})
        t += 60_000
    state, applier = feed(events)
    applier.close_due(10**12)
    rates = {}
    for cid, recs in pm.characters_ready(state).items():
        est = estimate(recs, Population())
        doc = pm.profile_document("a", "u", cid, 1, "", state, est, len(recs), state["n"])
        rates[cid] = est["target"] * pm.TOKEN_HEADROOM / doc["conditioning"]["max_completion_tokens"]
    assert rates["mei"] < 1.5 and rates["ann"] == pytest.approx(pm.CHARS_PER_TOKEN, rel=0.02), rates
