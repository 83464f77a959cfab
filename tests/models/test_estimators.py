"""Posteriors: the length grid finds the preferred length, Beta prob-best ranks arms, intervals hold the mean."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models import estimators


def test_length_posterior_centres_on_the_length_that_is_not_repeated() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(math.log(400), 0.7, 200)
    p = 0.05 + 0.5 * (1 - np.exp(-0.5 * ((x - math.log(700)) / 0.35) ** 2))
    rep = (rng.random(200) < p).astype(float)
    post = estimators.length_posterior(x, rep, 1 - rep, np.zeros(200), np.ones(200), 0.05, math.log(380), 0.6)
    target, lo, hi, conf = estimators.grid_summaries(post[None])[0]
    assert abs(target - 700) / 700 < 0.15 and lo < 700 < hi and conf > 0.6


def test_few_replies_leave_the_prior_and_low_confidence() -> None:
    post = estimators.length_posterior(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 0.05,
                                       math.log(380), 0.6)
    target, _, _, conf = estimators.grid_summaries(post[None])[0]
    assert abs(target - 380) < 15 and conf < 0.4


def test_prob_best_ranks_arms_and_sums_to_one() -> None:
    scores = estimators.prob_best(np.array([30.0, 10.0, 10.0]), np.array([2.0, 10.0, 10.0]))
    assert scores.argmax() == 0 and scores[0] > 0.95 and abs(scores.sum() - 1) < 1e-9
    even = estimators.prob_best(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    assert np.allclose(even, 1 / 3, atol=0.01)


def test_beta_interval_contains_the_mean() -> None:
    lo, hi = estimators.beta_interval(3, 27)
    assert lo < 0.1 < hi and 0 < lo and hi < 1


def test_float32_grid_matches_a_float64_reference() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(6.0, 0.6, 80)
    rep = (rng.random(80) < 0.3).astype(float)
    direction = rng.choice([0.0, 0.0, 1.0, -1.0], 80)
    w = 0.97 ** np.arange(80)
    post = estimators.length_posterior(x, rep, 1 - rep, direction, w, 0.07, 5.9, 0.6, [(6.0, 5.2, 0.9)])
    # The same posterior in plain float64, written out.
    mu, tol = estimators.MU_GRID[:, None, None], estimators.W_GRID[None, :, None]
    d = (x[None, None, :] - mu) / tol
    p = 0.07 + 0.93 * estimators.REPEAT_SPAN * (1 - np.exp(-0.5 * d * d))
    ll = (w * rep * np.log(p) + w * (1 - rep) * np.log1p(-p)).sum(axis=2)
    ll += (np.abs(w * direction) * -np.logaddexp(0, -np.sign(direction) * estimators.DIRECTION_SLOPE * d)).sum(axis=2)
    dk, do = (6.0 - mu[:, :, 0]) / tol[:, :, 0], (5.2 - mu[:, :, 0]) / tol[:, :, 0]
    ll += 0.9 * -np.logaddexp(0, -1.5 * (do * do - dk * dk) / 2)
    total = ll - 0.5 * ((estimators.MU_GRID[:, None] - 5.9) / 0.6) ** 2
    ref = np.exp(total - total.max()).sum(axis=1)
    assert np.abs(post - ref / ref.sum()).max() < 1e-5


def test_batched_posteriors_equal_one_user_at_a_time(monkeypatch: Any) -> None:
    monkeypatch.setattr(estimators, "SLAB_REPLIES", 50)  # several slabs, cut between users
    rng = np.random.default_rng(7)
    users = []
    for j in range(60):
        n = int(rng.integers(0, 30))
        rep = (rng.random(n) < 0.3) * rng.choice([1.0, 0.6], n)
        suc = np.where(rep > 0, 0.0, rng.choice([0.0, 0.3, 1.0], n))
        direction = rng.choice([0.0, 0.0, 1.0, -0.5], n)
        weight = 0.97 ** np.arange(n)[::-1] if j % 7 else np.zeros(n)  # some users' replies all weightless
        pairs = [(6.1, 5.4, 0.8)] if j % 5 == 0 else None
        base, prior = float(rng.uniform(0, 1)), float(rng.normal(6, 0.3))
        x = rng.normal(6, 0.6, n)
        users.append(estimators.LengthEvidence(x, rep, suc, direction, weight, base, prior, 0.6, pairs))
    batched = estimators.length_posteriors(users)
    alone = np.array([estimators.length_posterior(*u) for u in users])
    assert batched.shape == (60, len(estimators.MU_GRID))
    assert np.abs(batched - alone).max() < 1e-9
    assert np.abs(batched.sum(axis=1) - 1).max() < 1e-9
    ds = [u._replace(x=rng.random(len(u.x)), prior_mu=0.45, prior_sd=0.2, pairs=None) for u in users]
    batched = estimators.length_posteriors(ds, estimators.DS_GRID, estimators.DS_W_GRID)
    alone = np.array([estimators.length_posterior(*u[:8], None, estimators.DS_GRID, estimators.DS_W_GRID)
                      for u in ds])
    assert np.abs(batched - alone).max() < 1e-9


def test_grid_summaries_of_many_posteriors_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(4)
    n = len(estimators.MU_GRID)
    posts = []
    for k in range(200):
        p = np.exp(-0.5 * ((estimators.MU_GRID - rng.uniform(3.0, 9.0)) / rng.uniform(0.02, 1.5)) ** 2)
        if k % 5 == 0:
            p[rng.random(n) < 0.7] = 0.0  # flat runs in the cdf (repeated interpolation points)
        if k % 9 == 0:
            p = np.zeros(n)
            p[int(rng.integers(n))] = 1.0  # all the mass on one point: the median is a grid point
        p = p + (1e-300 if not p.sum() else 0.0)
        posts.append(p / p.sum())
    got = estimators.grid_summaries(np.array(posts))
    assert len(got) == len(posts)
    for post, g in zip(posts, got, strict=True):
        want = _grid_summary(post)
        assert all(abs(a - b) <= 1e-12 * max(1.0, abs(b)) for a, b in zip(g, want, strict=True)), (g, want)
    assert any(g[3] == 1.0 for g in got) and any(g[3] < 0.5 for g in got)


def test_interp_of_one_point_is_numpys() -> None:
    rng = np.random.default_rng(8)
    xp = np.cumsum(np.where(rng.random(40) < 0.3, 0.0, rng.random(40)))
    fp = rng.normal(size=40)
    for x in [*rng.uniform(xp[0] - 1, xp[-1] + 1, 500), *xp, -math.inf, math.inf]:
        want = float(np.interp(x, xp, fp))
        assert estimators._interp(float(x), xp.tolist(), fp.tolist()) == want


def _grid_summary(post: np.ndarray, tolerance: float = 0.25) -> tuple[float, float, float, float]:
    """estimators.grid_summaries of one posterior, with numpy's interpolation: the reference to equal."""
    cdf = np.cumsum(post)
    target = math.exp(float(np.interp(0.5, cdf, estimators.MU_GRID)))
    lo, hi = target / (1 + tolerance), target / (1 - tolerance)
    grid = estimators.MU_GRID
    conf = float(np.interp(math.log(hi), grid, cdf) - np.interp(math.log(lo), grid, cdf))
    return target, lo, hi, min(max(conf, 0.0), 1.0)
