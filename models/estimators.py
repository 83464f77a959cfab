"""Posteriors behind a profile: preferred length on a grid, Beta arms for pacing, rates with intervals.

Pure numpy. Every function takes the evidence as arrays and returns plain floats, so the worker can
recompute a user's estimates from the replies it remembers (late events simply amend a reply).
"""

from __future__ import annotations

import math

import numpy as np

# Grid over the preferred log length (about 40 to 4000 characters) and the tolerance (log-space width).
MU_GRID = np.linspace(math.log(40), math.log(4000), 70)
W_GRID = np.array([0.22, 0.32, 0.45, 0.65])
DS_GRID = np.linspace(0.0, 1.0, 26)
DS_W_GRID = np.array([0.15, 0.3])
REPEAT_SPAN = 0.5  # at most half of the replies far off the preferred length are repeated for it
DIRECTION_SLOPE = 2.5  # how sharply a stop / continue says "too long" / "too short"
# Likelihood tempering: the simulated and real users are not exactly this model; a power below one
# keeps the posterior from being more certain than the evidence warrants (confidence stays calibrated).
TEMPER = 1.0


_F32: dict[int, np.ndarray] = {}


def _f32(a: np.ndarray) -> np.ndarray:
    """A float32 copy of one of the module's grids, made once."""
    out = _F32.get(id(a))
    if out is None:
        out = _F32[id(a)] = a.astype(np.float32)
    return out


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def length_posterior(
    x: np.ndarray, repeat: np.ndarray, success: np.ndarray, direction: np.ndarray, weight: np.ndarray,
    base_rate: float, prior_mu: float, prior_sd: float,
    pairs: list[tuple[float, float, float]] | None = None,
    grid: np.ndarray = MU_GRID, w_grid: np.ndarray = W_GRID,
) -> np.ndarray:
    """Posterior over MU_GRID (marginalised over the tolerance) of the user's preferred log length.

    x: log chars of closed replies; repeat/success: weights of a repeat (or other failure) and of a success;
    direction: +w for "too long" (stop, shortened edit), -w for "too short" (continue, lengthened edit);
    weight: forgetting weight of each reply; pairs: (log chars kept, log chars passed over, weight).
    """
    logp = -0.5 * ((grid - prior_mu) / prior_sd) ** 2
    total = np.repeat(logp[:, None], len(w_grid), axis=1) - math.log(len(w_grid))
    w_rep, w_suc, dirw = weight * repeat, weight * success, weight * direction
    used = (w_rep != 0) | (w_suc != 0) | (dirw != 0)
    if used.any():
        if not used.all():  # replies that carry no weight change nothing: leave them out of the grid work
            x, w_rep, w_suc, dirw = x[used], w_rep[used], w_suc[used], dirw[used]
        # [mu, tolerance, reply] in float32: exp and log run several times faster, and the per-reply terms
        # are summed in float64 by the products below (the posterior moves by about 1e-6).
        d = (x.astype(np.float32)[None, None, :] - _f32(grid)[:, None, None]) / _f32(w_grid)[None, :, None]
        b = min(max(base_rate, 0.01), 0.9)
        # p_rep = b + (1 - b) * REPEAT_SPAN * (1 - exp(-d^2 / 2)) lies in [0.01, 0.95]: no clipping needed.
        p_rep = np.exp(np.float32(-0.5) * d * d)
        p_rep *= np.float32(-(1 - b) * REPEAT_SPAN)
        p_rep += np.float32(b + (1 - b) * REPEAT_SPAN)
        r, s = w_rep > 0, w_suc > 0
        ll = np.log(p_rep[:, :, r]).astype(float) @ w_rep[r] if r.any() else 0.0
        if s.any():
            ll = ll + np.log(1 - p_rep[:, :, s]).astype(float) @ w_suc[s]
        if np.any(dirw):
            k = dirw != 0
            z = np.sign(dirw[k]).astype(np.float32) * np.float32(DIRECTION_SLOPE) * d[:, :, k]
            ll = ll + _log_sigmoid(z).astype(float) @ np.abs(dirw[k])
        total = total + TEMPER * ll
    if pairs:
        kept, other, pw = (np.array(c, dtype=float) for c in zip(*pairs, strict=True))
        dk = (kept[None, None, :] - grid[:, None, None]) / w_grid[None, :, None]
        do = (other[None, None, :] - grid[:, None, None]) / w_grid[None, :, None]
        total = total + TEMPER * (_log_sigmoid(1.5 * (do * do - dk * dk) / 2) @ pw)
    total -= total.max()
    post = np.exp(total).sum(axis=1)
    return np.asarray(post / post.sum())


def grid_summary(post: np.ndarray, tolerance: float = 0.25) -> tuple[float, float, float, float]:
    """(target chars, interval low, interval high, confidence) from a posterior over MU_GRID.

    The target is the posterior median. The interval is every preferred length the target is within
    `tolerance` relative error of, and the confidence is the posterior probability that the true
    preferred length lies in it: "the served target is right" and "the truth is in the interval" are
    the same event, so the one number is calibrated for both readings.
    """
    cdf = np.cumsum(post)
    med = float(np.interp(0.5, cdf, MU_GRID))
    target = math.exp(med)
    # |target - L| / L <= tol  <=>  L in [target / (1 + tol), target / (1 - tol)]
    lo, hi = target / (1 + tolerance), target / (1 - tolerance)
    a, b = math.log(lo), math.log(hi)
    conf = float(np.interp(b, MU_GRID, cdf) - np.interp(a, MU_GRID, cdf))
    return target, lo, hi, min(max(conf, 0.0), 1.0)


_THETA = np.linspace(0.0005, 0.9995, 400)


def prob_best(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(arm k has the highest success rate) under independent Beta posteriors.

    Integrates f_k(theta) * prod_{j != k} F_j(theta) on a fine grid (deterministic, about 30 us).
    """
    from scipy.special import betainc, betaln  # noqa: PLC0415 - scipy loads lazily; only workers need it

    a, b = alpha[:, None], beta[:, None]
    logpdf = (a - 1) * np.log(_THETA) + (b - 1) * np.log1p(-_THETA) - betaln(a, b)
    pdf = np.exp(logpdf)
    cdf = betainc(a, b, _THETA[None, :])
    out = np.empty(len(alpha))
    for k in range(len(alpha)):
        others = np.prod(np.delete(cdf, k, axis=0), axis=0)
        out[k] = float((pdf[k] * others).sum())
    total = out.sum()
    return out / total if total > 0 else np.full(len(alpha), 1 / len(alpha))


def prob_greater(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(theta1 > theta2) for independent Beta posteriors (normal approximation: cheap, fine past a few counts)."""
    m1, m2 = a1 / (a1 + b1), a2 / (a2 + b2)
    v1 = a1 * b1 / ((a1 + b1) ** 2 * (a1 + b1 + 1))
    v2 = a2 * b2 / ((a2 + b2) ** 2 * (a2 + b2 + 1))
    return 0.5 * (1 + math.erf((m1 - m2) / math.sqrt(2 * (v1 + v2))))


def beta_interval(a: float, b: float, level: float = 0.9) -> tuple[float, float]:
    """Central credible interval of Beta(a, b) (normal approximation on the logit scale)."""
    m = a / (a + b)
    sd = math.sqrt(1 / a + 1 / b)  # delta method: sd of logit(theta)
    z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.96}.get(level, 1.6449)
    logit = math.log(m / (1 - m))
    return 1 / (1 + math.exp(-(logit - z * sd))), 1 / (1 + math.exp(-(logit + z * sd)))


def shrunk_mean(values: np.ndarray, weights: np.ndarray, prior_mean: float, prior_strength: float) -> tuple[float, float]:
    """Weighted mean shrunk toward the prior with `prior_strength` pseudo-observations; (mean, evidence)."""
    n = float(weights.sum())
    if n <= 0:
        return prior_mean, 0.0
    mean = (float((values * weights).sum()) + prior_mean * prior_strength) / (n + prior_strength)
    return mean, n
