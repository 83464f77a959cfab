"""The population: the repeat model (what counts as a confounder, models of another feature set), priors."""

from __future__ import annotations

import math

from models.population import (REPEAT_FEATURES, Population, RepeatModelTrainer, refresh, reply_features,
                               repeat_probability)


def reply(explored: bool, first: bool = False) -> dict:
    return {"fr": "stop", "first": first, "ds": 0.4, "hk": False,
            "ap": {"pacing": "fast", "explored": explored, "propensity": 0.1}}


def test_whether_the_gateway_explored_is_not_a_confounder() -> None:
    # Explored replies are repeated more because their pacing is usually wrong for the user: the evidence the
    # pacing posterior learns from must not be discounted as "anyone would repeat this".
    assert reply_features(reply(True)) == reply_features(reply(False))
    assert reply_features(reply(False, first=True)) != reply_features(reply(False))
    trainer = RepeatModelTrainer()
    for i in range(600):
        trainer.add(reply(i % 2 == 0, first=i % 3 == 0), repeated=i % 3 == 0)
    model = trainer.export(None)
    assert model is not None and len(model["coef"]) == REPEAT_FEATURES
    p_first, _ = repeat_probability(model, reply(False, first=True)) or (0.0, 0.0)
    p_later, _ = repeat_probability(model, reply(True)) or (1.0, 1.0)
    assert p_first > p_later  # it still learns what does make everyone regenerate


def test_a_published_model_of_another_feature_set_is_ignored_and_replaced() -> None:
    old = {"coef": [0.1] * (REPEAT_FEATURES + 1), "intercept": -2.0, "mean": 0.1, "n": 5000}
    assert repeat_probability(old, reply(False)) is None
    trainer = RepeatModelTrainer()
    for i in range(300):
        trainer.add(reply(False, first=i % 2 == 0), repeated=i % 2 == 0)
    merged = trainer.export(old)
    assert merged is not None and len(merged["coef"]) == REPEAT_FEATURES and merged["n"] == 300


def test_the_length_prior_spread_adds_the_posterior_variance_back() -> None:
    # Posterior means are shrunk: their spread (sd 0.3) plus the average posterior variance (0.16) is the
    # spread of the preferred lengths, sd 0.5; subtracting it would give the 0.3 floor.
    rows = [{"mu": math.log(380.0) + 0.3 * z, "mu_var": 0.16, "ds": 0.45, "rr": 0.1, "n": 40,
             "trust": "normal"} for z in (-1.0, 1.0) * 20]
    pop = refresh(Population(), rows)
    assert abs(pop.mu_sd - 0.5) < 0.01, pop.mu_sd
    again = refresh(pop, rows)
    assert abs(again.mu_sd - 0.5) < 0.01  # stable across refreshes: no drift to the floor


def test_the_dialogue_prior_spread_adds_the_posterior_variance_back() -> None:
    # The same for the dialogue share: means spread 0.1 (shrunk), posterior variance 0.03 -> sd 0.2. From the
    # means alone the prior fell to its 0.12 floor, and a prior that narrow reads as a confident taste.
    rows = [{"mu": math.log(380.0), "mu_var": 0.1, "ds": 0.45 + 0.1 * z, "ds_var": 0.03, "rr": 0.1, "n": 40,
             "trust": "normal"} for z in (-1.0, 1.0) * 20]
    pop = refresh(Population(), rows)
    assert abs(pop.ds_sd - 0.2) < 0.01, pop.ds_sd
    assert abs(refresh(pop, rows).ds_sd - 0.2) < 0.01
    # Summaries written before the variance was kept (none, or null) do not count as a variance of zero.
    for row in rows[::2]:
        row.pop("ds_var")
    rows[1]["ds_var"] = None
    assert abs(refresh(Population(), rows).ds_sd - 0.2) < 0.01
