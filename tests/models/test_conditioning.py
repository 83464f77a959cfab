"""Profile -> conditioning: Thompson sampling, propensities, the note and max_completion_tokens."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from typing import Any

import pytest

from models.profile import (
    CHARACTER_DS_SD, DIALOGUE_ABOVE, NARRATION_BELOW, dialogue_balance,
)
from models.features import CHARS_PER_TOKEN, CJK_CHARS_PER_TOKEN, chars_per_token
from models.conditioning import (
    EPSILON,
    HEADROOM,
    MAX_COMPLETION_TOKENS,
    MAX_SIGMA,
    MIN_LENGTH_CONFIDENCE,
    PACING,
    SHARPEN_MAX,
    SHARPEN_REPLIES,
    DIALOGUE_NOTES,
    after_rejections,
    approx_tokens,
    arm_probabilities,
    decide,
    dialogue_of,
    label_probabilities,
    max_tokens_for,
    posterior_of,
    render_note,
)


def profile(
    posterior: dict[str, list[float]] | None = None, length: dict[str, Any] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 4, "pacing": {"label": "slow_burn", "confidence": 0.5}}
    if posterior is not None:
        doc["pacing"]["posterior"] = posterior
    if length is not None:
        doc["reply_length"] = length
    return doc


SURE = {"slow_burn": [60, 6], "balanced": [10, 20], "fast": [4, 30]}
UNSURE = {"slow_burn": [3, 2], "balanced": [2, 2], "fast": [2, 3]}


def test_no_profile_explores_all_arms_with_equal_propensity() -> None:
    rng = random.Random(1)
    decisions = [decide(None, rng) for _ in range(3000)]
    counts = Counter(d.pacing for d in decisions)
    assert all(900 < counts[a] < 1100 for a in PACING)
    assert all(d.propensity == pytest.approx(1 / 3, abs=1e-6) and d.explored for d in decisions)
    assert all(
        d.target_chars is None and d.max_completion_tokens is None and d.profile_version is None
        for d in decisions
    )


def scored(scores: dict[str, float], posterior: dict[str, list[float]] | None = None) -> dict[str, Any]:
    doc = profile(posterior)
    doc["pacing"]["scores"] = scores
    return doc


@pytest.mark.parametrize(
    "scores", [{"slow_burn": 0.9, "balanced": 0.08, "fast": 0.02}, {"slow_burn": 0.3, "balanced": 0.3, "fast": 0.4}]
)
def test_label_scores_are_probability_matched_with_exact_propensities(scores: dict[str, float]) -> None:
    rng = random.Random(8)
    n = 20000
    # The label scores win over the per-arm Betas (which here point the other way).
    decisions = [decide(scored(scores, {"slow_burn": [1, 50], "balanced": [1, 50], "fast": [50, 1]}), rng)
                 for _ in range(n)]
    counts = Counter(d.pacing for d in decisions)
    best = max(scores, key=lambda a: scores[a])
    total = sum(scores.values())  # no evidence behind the profile yet: plain Thompson sampling
    for arm in PACING:
        want = (1 - EPSILON) * scores[arm] / total + EPSILON / 3
        assert counts[arm] / n == pytest.approx(want, abs=0.015)
        assert all(d.propensity == pytest.approx(want, abs=1e-6) for d in decisions if d.pacing == arm)
        assert all(d.explored == (arm != best) for d in decisions if d.pacing == arm)
    assert min(label_probabilities(tuple(scores.values())).values()) >= EPSILON / 3


def test_malformed_scores_fall_back_to_the_per_arm_posterior() -> None:
    for bad in ({"slow_burn": "x", "balanced": 1, "fast": 1}, {"slow_burn": -1, "balanced": 1, "fast": 1},
                {"slow_burn": 0, "balanced": 0, "fast": 0}, {"balanced": 1.0}, [0.3, 0.3, 0.4]):
        d = decide(scored(bad, SURE), random.Random(9))  # type: ignore[arg-type]
        assert d.propensity == pytest.approx(arm_probabilities(posterior_of(profile(SURE)))[d.pacing], abs=1e-6)


@pytest.mark.parametrize("posterior", [SURE, UNSURE])
def test_logged_propensities_match_the_observed_choice_frequencies(posterior: dict[str, list[float]]) -> None:
    rng = random.Random(2)
    n = 20000
    decisions = [decide(profile(posterior), rng) for _ in range(n)]
    counts = Counter(d.pacing for d in decisions)
    probs = arm_probabilities(posterior_of(profile(posterior)))
    assert sum(probs.values()) == pytest.approx(1.0)
    for arm in PACING:
        assert counts[arm] / n == pytest.approx(probs[arm], abs=0.015)
        assert all(d.propensity == pytest.approx(probs[arm], abs=1e-6) for d in decisions if d.pacing == arm)


def test_every_arm_keeps_a_propensity_floor_for_offline_evaluation() -> None:
    extreme = {"slow_burn": [5000, 1], "balanced": [1, 5000], "fast": [1, 5000]}
    probs = arm_probabilities(posterior_of(profile(extreme)))
    assert min(probs.values()) >= EPSILON / 3 - 1e-9
    assert probs["slow_burn"] > 0.95


def test_a_confident_profile_mostly_exploits_and_marks_the_rest_as_explored() -> None:
    rng = random.Random(3)
    decisions = [decide(profile(SURE), rng) for _ in range(2000)]
    best = [d for d in decisions if d.pacing == "slow_burn"]
    assert len(best) > 1800 and not any(d.explored for d in best)
    assert all(d.explored for d in decisions if d.pacing != "slow_burn")


def test_length_is_applied_only_when_confident_and_sampled_around_the_target() -> None:
    rng = random.Random(4)
    unsure = {"target_chars": 380, "interval": [300, 470], "confidence": MIN_LENGTH_CONFIDENCE - 0.01}
    assert decide(profile(SURE, unsure), rng).target_chars is None
    for confidence in (0.95, 0.5):
        sure = {**unsure, "confidence": confidence}
        targets = [decide(profile(SURE, sure), rng).target_chars for _ in range(3000)]
        assert all(t is not None and t % 10 == 0 for t in targets)
        logs = [math.log(t) for t in targets if t is not None]
        spread = statistics.pstdev(logs)
        # Draws spread around the target (exploration), the posterior's sd but at most MAX_SIGMA.
        assert 0.5 * MAX_SIGMA < spread < MAX_SIGMA + 0.02, (confidence, spread)
        assert abs(statistics.median(logs) - math.log(380)) < 0.02
        inside = sum(300 <= t <= 470 for t in targets if t is not None) / len(targets)
        assert inside >= min(confidence, 0.9) - 0.03
    d = decide(profile(SURE, sure), rng)
    assert d.max_completion_tokens == max_tokens_for(d.target_chars or 0)
    assert MAX_SIGMA <= 0.2


@pytest.mark.parametrize("target", [1, 40, 380, 5000, 10**9])
def test_max_completion_tokens_has_headroom_and_stays_in_range(target: int) -> None:
    tokens = max_tokens_for(target)
    assert 1 <= tokens <= 2048
    if 40 <= target <= 2000:
        assert tokens * 4 >= target * 1.2  # room above the target: a cut reply reads badly


def test_the_note_is_short_and_its_token_count_stable() -> None:
    counts = {approx_tokens(render_note(p, t)) for p in PACING for t in (120, 380, 990)}
    bare = {approx_tokens(render_note(p, None)) for p in PACING}
    whole = {approx_tokens(render_note(p, t, d)) for p in PACING for t in (120, 990) for d in DIALOGUE_NOTES}
    assert max(whole) <= 55 and max(whole) - min(whole) <= 5
    assert max(counts) <= 45 and max(counts) - min(counts) <= 3
    assert max(bare) <= 40 and max(bare) - min(bare) <= 3
    assert render_note("fast", 300) == render_note("fast", 300)  # deterministic: same input, same bytes
    assert "Pace: slow burn" in render_note("slow_burn", None) and "about 300 characters" in render_note(
        "fast", 300
    )


def test_malformed_posteriors_fall_back_to_the_prior() -> None:
    bad = profile({"slow_burn": "x", "balanced": [1], "fast": [float("nan"), 2]})  # type: ignore[dict-item]
    assert posterior_of(bad) == ((1.0, 1.0), (1.0, 1.0), (1.0, 1.0))
    assert decide(bad, random.Random(5)).propensity == pytest.approx(1 / 3, abs=1e-6)


def test_applied_has_the_contract_fields() -> None:
    d = decide(
        profile(SURE, {"target_chars": 380, "interval": [300, 470], "confidence": 0.9}), random.Random(6)
    )
    # The contract's fields, and the balance of speech asked for (an extension; None here: no style).
    fields = {"pacing", "target_chars", "explored", "propensity", "profile_version", "dialogue"}
    assert set(d.applied()) == fields
    assert d.applied()["profile_version"] == 4


def test_an_untrusted_profile_conditions_like_the_population_prior() -> None:
    doc = {
        **profile(SURE, {"target_chars": 380, "interval": [300, 470], "confidence": 0.9}),
        "trust": "bot_suspect",
    }
    d = decide(doc, random.Random(7))
    assert d.propensity == pytest.approx(1 / 3, abs=1e-6) and d.explored
    assert d.target_chars is None and d.profile_version == 4


def test_a_regeneration_moves_the_scores_away_from_the_pacing_refused() -> None:
    even = (1 / 3, 1 / 3, 1 / 3)
    assert after_rejections(even, ((None, None),), 0.15) == even  # nothing known of the refused reply
    once = after_rejections(even, (("balanced", "balanced"),), 0.15)
    assert once[1] == min(once) and abs(sum(once) - 1) < 1e-12
    assert once[0] == pytest.approx(once[2], rel=0.05)  # one step off either way (measuring is asymmetric)
    # Read as fast although balanced was asked for: what it read as is what the user refused.
    misread = after_rejections(even, (("balanced", "fast"),), 0.15)
    assert misread[2] == min(misread) and misread[0] == max(misread)
    twice = after_rejections(even, (("balanced", "balanced"), ("fast", "fast")), 0.15)
    assert twice[0] == max(twice) and twice[0] > once[0]
    # A user who regenerates a lot anyway says less by it.
    often = after_rejections(even, (("balanced", "balanced"),), 0.5)
    assert once[1] < often[1] < even[1]


def test_decide_draws_a_regeneration_from_the_weighed_scores_and_logs_that_propensity() -> None:
    doc = {"version": 2, "engagement": {"repeat_rate": 0.3},
           "pacing": {"label": "balanced", "scores": {"slow_burn": 0.2, "balanced": 0.6, "fast": 0.2}}}
    rejected = (("balanced", "balanced"),)
    weighed = after_rejections((0.2, 0.6, 0.2), rejected, 0.3)
    probs = label_probabilities(weighed)
    rng = random.Random(3)
    seen = Counter()
    for _ in range(3000):
        d = decide(doc, rng, rejected)
        assert d.rejected == rejected and d.propensity == round(probs[d.pacing], 6)
        seen[d.pacing] += 1
    assert abs(seen["balanced"] / 3000 - probs["balanced"]) < 0.03
    assert decide(doc, rng).rejected == ()


def test_the_more_replies_a_profile_rests_on_the_more_its_best_pacing_is_exploited() -> None:
    scores = {"slow_burn": 0.6, "balanced": 0.3, "fast": 0.1}
    rng = random.Random(9)
    shares = []
    for replies in (0, SHARPEN_REPLIES // 2, SHARPEN_REPLIES, 10 * SHARPEN_REPLIES):
        doc = {**scored(scores, {}), "evidence": {"replies": replies}}
        decisions = [decide(doc, rng) for _ in range(6000)]
        share = sum(d.pacing == "slow_burn" for d in decisions) / len(decisions)
        power = 1 + (SHARPEN_MAX - 1) * min(replies, SHARPEN_REPLIES) / SHARPEN_REPLIES
        want = (1 - EPSILON) * 0.6**power / sum(v**power for v in scores.values()) + EPSILON / 3
        assert share == pytest.approx(want, abs=0.02)
        assert all(d.propensity == pytest.approx(want, abs=1e-6) for d in decisions if d.pacing == "slow_burn")
        shares.append(share)
    assert shares[0] < shares[1] < shares[2] and shares[3] == pytest.approx(shares[2], abs=0.03)


@pytest.mark.parametrize(("value", "confidence", "asked"), [
    (0.7, 0.8, "mostly_dialogue"), (0.1, 0.8, "mostly_narration"), (0.35, 0.8, "balanced"),
    # sure of the range, not of the value: 0.7 +- 0.24 lies over 0.5 with probability 0.8
    (0.7, 0.32, "mostly_dialogue"), (0.6, 0.32, None), (0.35, 0.32, None), (0.7, 0.2, None),
    (NARRATION_BELOW, 0.99, None), (DIALOGUE_ABOVE, 0.99, None),  # on an edge: either side as likely
    (float("nan"), 0.9, None), ("x", 0.9, None), (0.7, float("nan"), None),
    (0.7, 1.0, "mostly_dialogue"), (0.7, 0.0, None), (0.7, 1e-17, None), (0.7, 1 - 2**-53, "mostly_dialogue"),
    # by hand: confidence 0.32 is sd 0.1 / 0.4125 = 0.2424; P(over 0.5) is 0.745 at 0.66, 0.758 at 0.67
    (0.66, 0.32, None), (0.67, 0.32, "mostly_dialogue"),
])
def test_the_balance_of_speech_is_asked_for_only_when_the_profile_is_sure(value: Any, confidence: float,
                                                                        asked: str | None) -> None:
    style = {"dialogue_share": {"value": value, "confidence": confidence}}
    assert dialogue_of(style) == asked
    d = decide({"version": 3, "style": style}, random.Random(1))
    assert d.dialogue == asked and d.applied()["dialogue"] == asked
    assert ("Dialogue:" in d.note) == (asked is not None)
    if asked is not None:
        assert DIALOGUE_NOTES[asked] in d.note
    assert dialogue_of(None) is None and dialogue_of({"dialogue_share": {"value": 0.5}}) is None


def test_an_untrusted_profile_asks_for_no_balance_of_speech() -> None:
    style = {"dialogue_share": {"value": 0.8, "confidence": 0.9}}
    assert decide({"version": 3, "trust": "suspect_bot", "style": style}, random.Random(1)).dialogue is None


def test_a_character_is_never_surer_of_the_dialogue_share_than_its_user() -> None:
    from models.profile import character_prior  # noqa: PLC0415

    assert character_prior({"mu": 6.0, "ds": 0.4, "ds_var": 0.04})["ds_sd"] == pytest.approx(0.2)
    assert character_prior({"mu": 6.0, "ds": 0.4, "ds_var": 0.0001})["ds_sd"] == CHARACTER_DS_SD
    assert character_prior({"mu": 6.0, "ds": 0.4})["ds_sd"] == CHARACTER_DS_SD  # an estimate without it


def test_the_token_budget_counts_chinese_japanese_and_korean_at_their_own_rate() -> None:
    assert chars_per_token("She nods and waits.") == CHARS_PER_TOKEN
    assert chars_per_token("Évidemment, elle court.") == CHARS_PER_TOKEN
    for text in ("她笑了，抬眼看着你。", "「何を考えているの？」", "안녕하세요반갑습니다"):
        assert chars_per_token(text) == pytest.approx(CJK_CHARS_PER_TOKEN), text
    mixed = chars_per_token("他说：OK, let us go now.")
    assert CJK_CHARS_PER_TOKEN < mixed < CHARS_PER_TOKEN
    assert max_tokens_for(300, CJK_CHARS_PER_TOKEN) == math.ceil(300 * HEADROOM / CJK_CHARS_PER_TOKEN)
    assert max_tokens_for(300) < max_tokens_for(300, mixed) < max_tokens_for(300, CJK_CHARS_PER_TOKEN)
    assert max_tokens_for(5000, CJK_CHARS_PER_TOKEN) == MAX_COMPLETION_TOKENS
