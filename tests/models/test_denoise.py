"""Denoising rules: double taps, reading and typing speeds, curator weights, bot scores."""

from __future__ import annotations

from models import denoise
from models.population import Population
from models.profile import estimate


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


def _history(curator: bool, last: str | None) -> list[dict[str, object]]:
    """20 replies of 300 and 500 characters (a curator regenerates half of them, whatever their length),
    then two of 1200 characters with the given outcome."""
    recs: list[dict[str, object]] = [
        {"id": f"r{j}", "t": 1000 * j, "c": 300 if j % 2 else 500,
         "o": ["repeat" if curator and j % 4 < 2 else "answered"]} for j in range(20)]
    if last:
        recs += [{"id": f"x{k}", "t": 30_000 + k, "c": 1200, "o": [last]} for k in range(2)]
    return recs


def test_a_curators_repeats_move_the_length_estimate_less_and_are_counted() -> None:
    pop = Population()
    shift = {}
    for curator in (False, True):
        before = estimate(_history(curator, None), pop)
        after = estimate(_history(curator, "repeat"), pop)
        shift[curator] = before["target"] - after["target"]
        assert after["curator"] == (12 if curator else 0)  # 10 + 2 repeats, counted only for the curator
    assert shift[True] < 0.5 * shift[False], shift


def test_bot_scores_flag_machines_not_people() -> None:
    human = {"implausible_share": 0.0, "repeat_rate": 0.15, "log_min_gap": 8.5}
    storm = {"implausible_share": 0.0, "repeat_rate": 5.0, "log_min_gap": 4.0}
    timing = {"implausible_share": 0.9, "repeat_rate": 0.3, "log_min_gap": 4.0}
    norms = denoise.HUMAN_NORMS
    assert not denoise.is_bot(human, norms, 100)
    assert denoise.is_bot(storm, norms, 100) and denoise.is_bot(timing, norms, 100)
    assert not denoise.is_bot(storm, norms, 5)  # too few events to judge
