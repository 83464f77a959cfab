"""Denoising rules: double taps, reading and typing speeds, curator weights, bot scores."""

from __future__ import annotations

from models import denoise


def test_double_tap_within_two_seconds_only() -> None:
    assert denoise.is_double_tap(1000, 1400)
    assert not denoise.is_double_tap(1000, 4000)
    assert not denoise.is_double_tap(None, 1000)


def test_reading_faster_than_humans_is_implausible_and_an_hour_is_away() -> None:
    assert denoise.read_verdict(1000, 0, 50, None) == "implausible_read"
    assert denoise.read_verdict(1000, 0, 60_000, 10_000) is None
    assert denoise.read_verdict(300, 0, 2 * 3_600_000, 5_000) == "away"


def test_typing_speed_limit() -> None:
    assert denoise.typing_plausible(60, 10_000)
    assert not denoise.typing_plausible(800, 10)


def test_curators_repeats_count_less() -> None:
    assert denoise.curator_weight(0.05, 0.07) == 1.0
    assert denoise.curator_weight(0.28, 0.07) == 0.25


def test_bot_scores_flag_machines_not_people() -> None:
    human = {"implausible_share": 0.0, "repeat_rate": 0.15, "log_min_gap": 8.5}
    storm = {"implausible_share": 0.0, "repeat_rate": 5.0, "log_min_gap": 4.0}
    timing = {"implausible_share": 0.9, "repeat_rate": 0.3, "log_min_gap": 4.0}
    norms = denoise.HUMAN_NORMS
    assert not denoise.is_bot(human, norms, 100)
    assert denoise.is_bot(storm, norms, 100) and denoise.is_bot(timing, norms, 100)
    assert not denoise.is_bot(storm, norms, 5)  # too few events to judge
