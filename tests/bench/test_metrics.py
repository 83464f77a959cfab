"""The metric functions are right on known inputs."""

from __future__ import annotations

import math

import pytest

from bench.sim.metrics import (
    accuracy,
    expected_calibration_error,
    median_relative_error,
    naive_length,
    naive_pacing,
)


def test_median_relative_error_on_known_values() -> None:
    assert median_relative_error([110, 80, 300], [100, 100, 100]) == pytest.approx(0.2)
    assert math.isnan(median_relative_error([], []))


def test_accuracy() -> None:
    assert accuracy(["fast", "fast", "balanced", "slow_burn"], ["fast", "balanced", "balanced", "fast"]) == 0.5


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    conf = [0.8] * 10 + [0.3] * 10
    correct = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)


def test_ece_of_overconfidence() -> None:
    # All at 0.9 but right half the time: ECE 0.4. Half the cases at 1.0 and always right add nothing.
    assert expected_calibration_error([0.9] * 4, [True, False, True, False]) == pytest.approx(0.4)
    assert expected_calibration_error([0.9] * 4 + [1.0] * 4, [True, False] * 2 + [True] * 4) == pytest.approx(0.2)


def test_naive_length_averages_replies_not_repeated() -> None:
    assert naive_length([(100, False), (900, True), (300, False)], default=450) == 200
    assert naive_length([(100, True)], default=450) == 450


def test_naive_pacing_picks_the_pacing_most_often_kept() -> None:
    shown = [("fast", False), ("fast", True), ("slow_burn", False), ("slow_burn", False), ("balanced", True)]
    assert naive_pacing(shown, "balanced") == "slow_burn"
    assert naive_pacing([("fast", True)], "balanced") == "balanced"
