"""Scores comparing served profiles with the truth: relative error, accuracy, calibration, baselines."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def median_relative_error(estimates: Sequence[float], truths: Sequence[float]) -> float:
    """Median of |estimate - truth| / truth; nan when empty."""
    if not estimates:
        return float("nan")
    e = np.asarray(estimates, dtype=float)
    t = np.asarray(truths, dtype=float)
    return float(np.median(np.abs(e - t) / t))


def accuracy(predicted: Sequence[str], truths: Sequence[str]) -> float:
    if not predicted:
        return float("nan")
    return sum(p == t for p, t in zip(predicted, truths, strict=True)) / len(predicted)


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of (share of cases) * |accuracy - mean confidence|."""
    if not confidences:
        return float("nan")
    c = np.clip(np.asarray(confidences, dtype=float), 0.0, 1.0)
    ok = np.asarray(correct, dtype=float)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() / len(c) * abs(ok[mask].mean() - c[mask].mean())
    return float(total)


def share(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def naive_length(shown: Sequence[tuple[int, bool]], default: float) -> float:
    """Mean length of the replies not repeated (the baseline an app would compute itself)."""
    kept = [chars for chars, repeated in shown if not repeated]
    return float(np.mean(kept)) if kept else default


def naive_pacing(shown: Sequence[tuple[str, bool]], default: str) -> str:
    """The pacing most often not repeated; ties go to the pacing repeated least often."""
    kept = Counter(p for p, repeated in shown if not repeated)
    if not kept:
        return default
    repeats = Counter(p for p, repeated in shown if repeated)
    return max(kept, key=lambda p: (kept[p], -repeats[p]))



def oracle_pacing(candidates: Sequence[str], shown: Sequence[tuple[str, bool]],
                  repeat_probability: Callable[[int, str, str], float], follows: float) -> str:
    """Maximum likelihood pacing from repeats alone, for an estimator that knows every other truth.

    `shown` holds (applied pacing, repeated) per reply; `repeat_probability(i, candidate, perceived)` is
    the repeat probability of reply i had the user preferred `candidate` and perceived `perceived`; the
    model follows the applied pacing with probability `follows`. It measures the information ceiling.
    """
    best, best_ll = candidates[0], -math.inf
    for cand in candidates:
        ll = 0.0
        for i, (applied, repeated) in enumerate(shown):
            p = 0.0
            for perceived in candidates:
                w = follows if perceived == applied else (1 - follows) / (len(candidates) - 1)
                p += w * repeat_probability(i, cand, perceived)
            p = min(max(p, 1e-6), 1 - 1e-6)
            ll += math.log(p if repeated else 1 - p)
        if ll > best_ll:
            best, best_ll = cand, ll
    return best
