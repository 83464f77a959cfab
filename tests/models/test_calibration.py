"""The confidence calibration map: monotone, invertible, identity when unfitted."""

from __future__ import annotations

from models import calibration


def test_identity_map_leaves_confidence_alone() -> None:
    assert abs(calibration.apply((1.0, 0.0, 0.0), 0.37, 25) - 0.37) < 1e-9


def test_the_fitted_maps_are_monotone_and_invertible() -> None:
    for params in (calibration.LENGTH, calibration.PACING):
        values = [calibration.apply(params, raw / 20, 30) for raw in range(1, 20)]
        assert values == sorted(values) and all(0 < v < 1 for v in values)
        for raw in (0.2, 0.5, 0.8):
            assert abs(calibration.invert(params, calibration.apply(params, raw, 12), 12) - raw) < 1e-9
