"""Posteriors behind a profile: preferred length on a grid, Beta arms for pacing, rates with intervals.

Pure numpy. Every function takes the evidence as arrays and returns plain floats, so the worker can
recompute a user's estimates from the replies it remembers (late events simply amend a reply).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# Grid over the preferred log length (about 40 to 4000 characters) and the tolerance (log-space width).
MU_GRID = np.linspace(math.log(40), math.log(4000), 70)
W_GRID = np.array([0.22, 0.32, 0.45, 0.65])
DS_GRID = np.linspace(0.0, 1.0, 26)
REPEAT_SPAN = 0.5  # at most half of the replies far off the preferred length are repeated for it
# The dialogue share is a weaker cause of repeats than the length: a reply far off the preferred share is
# repeated for it less often, and readers differ in how far off is too far. With the length's span and only
# narrow widths, a few repeats made for other reasons read as a sure dialogue taste (confidence 0.5+ for
# nearly every user while the served share was no closer than the population's median).
DS_W_GRID = np.array([0.15, 0.3, 0.5])
DS_REPEAT_SPAN = 0.3
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


class LengthEvidence(NamedTuple):
    """One user's evidence for a grid posterior (see length_posterior)."""

    x: np.ndarray
    repeat: np.ndarray
    success: np.ndarray
    direction: np.ndarray
    weight: np.ndarray
    base_rate: float
    prior_mu: float
    prior_sd: float
    pairs: list[tuple[float, float, float]] | None = None


# Replies per slab of the batched grid work: [replies, mu, tolerance] float32 and float64 temporaries of a
# few MB each, small enough to stay in cache, large enough that numpy's per-call overhead is spread thin.
SLAB_REPLIES = 2048


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
    ev = LengthEvidence(x, repeat, success, direction, weight, base_rate, prior_mu, prior_sd, pairs)
    return length_posteriors([ev], grid, w_grid)[0]


def length_posteriors(users: Sequence[LengthEvidence], grid: np.ndarray = MU_GRID,
                      w_grid: np.ndarray = W_GRID, span: float = REPEAT_SPAN) -> np.ndarray:
    """length_posterior of many users at once: [user, grid]. The same sums, over every user's replies in
    a few large numpy operations (slabs of SLAB_REPLIES) instead of a dozen small ones per user.
    span: the most a mismatch adds to the repeat probability (REPEAT_SPAN for length), at most 0.5."""
    if not users:
        return flat_posteriors(FlatEvidence(*[np.zeros(0)] * 5, [], [], [], [], []), grid, w_grid, span)
    cat = [np.concatenate([u[k] for u in users]).astype(float, copy=False) for k in range(5)]
    return flat_posteriors(FlatEvidence(*cat, [len(u.x) for u in users], [u.base_rate for u in users],
                                        [u.prior_mu for u in users], [u.prior_sd for u in users],
                                        [u.pairs for u in users]), grid, w_grid, span)


class FlatEvidence(NamedTuple):
    """The evidence of many users, their replies one after the other (see length_posteriors): the arrays
    hold every reply, lengths says how many are each user's; the rest is one item per user."""

    x: np.ndarray
    repeat: np.ndarray
    success: np.ndarray
    direction: np.ndarray
    weight: np.ndarray
    lengths: list[int]
    base_rate: list[float]
    prior_mu: list[float]
    prior_sd: list[float]
    pairs: list[list[tuple[float, float, float]] | None]


def flat_posteriors(ev: FlatEvidence, grid: np.ndarray = MU_GRID, w_grid: np.ndarray = W_GRID,
                    span: float = REPEAT_SPAN) -> np.ndarray:
    """length_posteriors of evidence already laid out flat: [user, grid]."""
    if not 0.0 <= span <= 0.5:
        raise ValueError(f"span must be within [0, 0.5], got {span}")
    n_u, n_w = len(ev.lengths), len(w_grid)
    if not n_u:
        return np.zeros((0, len(grid)))
    mu = np.array(ev.prior_mu, dtype=float)
    sd = np.array(ev.prior_sd, dtype=float)
    logp = -0.5 * ((grid[None, :] - mu[:, None]) / sd[:, None]) ** 2
    total = np.repeat(logp[:, :, None], n_w, axis=2) - math.log(n_w)  # [user, mu, tolerance]
    lengths = np.array(ev.lengths)
    if lengths.any():
        x, weight = ev.x, ev.weight
        w_rep, w_suc, dirw = weight * ev.repeat, weight * ev.success, weight * ev.direction
        who = np.repeat(np.arange(n_u), lengths)
        # Replies that carry no weight change nothing: only the others enter the grid work.
        used = (w_rep != 0) | (w_suc != 0) | (dirw != 0)
        if not used.all():
            x, w_rep, w_suc, dirw, who = x[used], w_rep[used], w_suc[used], dirw[used], who[used]
        base = np.array([min(max(b, 0.01), 0.9) for b in ev.base_rate], dtype=float)
        # p_rep = b + (1 - b) * span * (1 - exp(-d^2 / 2)) lies in [0.01, 0.95] for span <= 0.5: no clipping
        # needed.
        # The per-user constants are rounded to float32 exactly as a scalar np.float32(...) would be.
        scale = (-(1 - base) * span).astype(np.float32)
        offset = (base + (1 - base) * span).astype(np.float32)
        ll = np.zeros((n_u, n_w * len(grid)))  # [user, tolerance * mu]: see _slab
        # Reply lengths repeat (whole characters, a few hundred distinct values in a round): the distance
        # terms and their exp are made once per distinct x of the whole call and gathered by each slab, the
        # same float32 values at a fraction of the exp work.
        xs, inv = np.unique(x.astype(np.float32), return_inverse=True)
        d_u = (xs[:, None, None] - _f32(grid)[None, None, :]) / _f32(w_grid)[None, :, None]
        e_u = np.exp(np.float32(-0.5) * d_u * d_u)
        for lo, hi in _slabs(who):
            part = slice(lo, hi)
            _slab(ll, inv[part], d_u, e_u, w_rep[part], w_suc[part], dirw[part], who[part], scale, offset)
        total = total + TEMPER * ll.reshape(n_u, n_w, len(grid)).transpose(0, 2, 1)
    for j, pairs in enumerate(ev.pairs):
        if pairs:
            kept, other, pw = (np.array(c, dtype=float) for c in zip(*pairs, strict=True))
            dk = (kept[None, None, :] - grid[:, None, None]) / w_grid[None, :, None]
            do = (other[None, None, :] - grid[:, None, None]) / w_grid[None, :, None]
            total[j] = total[j] + TEMPER * (_log_sigmoid(1.5 * (do * do - dk * dk) / 2) @ pw)
    total -= total.max(axis=(1, 2), keepdims=True)
    post = np.exp(total).sum(axis=2)
    return np.asarray(post / post.sum(axis=1, keepdims=True))


def _slabs(who: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) runs of about SLAB_REPLIES replies, cut between users (a user's replies are contiguous)."""
    out, lo, n = [], 0, len(who)
    while lo < n:
        hi = min(lo + SLAB_REPLIES, n)
        while hi < n and who[hi] == who[hi - 1]:
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


def _slab(ll: np.ndarray, inv: np.ndarray, d_u: np.ndarray, e_u: np.ndarray, w_rep: np.ndarray,
          w_suc: np.ndarray, dirw: np.ndarray, who: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> None:
    """Add the log-likelihood of some users' replies to their rows of ll ([user, tolerance * mu]); inv: each
    reply's row of d_u (distances of its x to the grid, [distinct x, tolerance, mu]) and e_u (their exp)."""
    # [reply, tolerance, mu] in float32: exp and log run several times faster, and the per-reply terms
    # are summed in float64 below (the posterior moves by about 1e-6). The grid is the innermost axis:
    # numpy's broadcasting loops run along it, and with the 3 or 4 tolerances there they ran 5x slower.
    # The temporaries are changed in place: they are megabytes, and a fresh one per step cost as much as
    # the step.
    r, s, k = w_rep > 0, w_suc > 0, dirw != 0
    for rows, w in ((r, w_rep), (s, w_suc)):
        if not rows.any():
            continue
        # The repeat probability of these replies only (gathered straight from e_u, not from a copy for all).
        rw = who[rows]
        part = e_u[inv[rows]]
        part *= scale[rw][:, None, None]
        part += offset[rw][:, None, None]
        if w is w_suc:
            np.subtract(1, part, out=part)
        _segment_add(ll, np.log(part, out=part), w[rows], rw)
    if k.any():
        z = (np.sign(dirw[k]).astype(np.float32) * np.float32(DIRECTION_SLOPE))[:, None, None] * d_u[inv[k]]
        _segment_add(ll, _log_sigmoid(z), np.abs(dirw[k]), who[k])


def _segment_add(ll: np.ndarray, terms: np.ndarray, weight: np.ndarray, who: np.ndarray) -> None:
    """ll[user] += the weighted sum (in float64) of that user's rows of terms; who is sorted."""
    # The float64 cast and the weighting in one pass (the same products as astype, then *=).
    flat = np.multiply(terms.reshape(len(terms), -1), weight[:, None], dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
    ll[who[starts]] += np.add.reduceat(flat, starts, axis=0)


def grid_summaries(posts: np.ndarray, tolerance: float = 0.25) -> list[tuple[float, float, float, float]]:
    """(target chars, interval low, interval high, confidence) of each row of posts (posteriors on MU_GRID).

    The target is the posterior median. The interval is every preferred length the target is within
    `tolerance` relative error of, and the confidence is the posterior probability that the true
    preferred length lies in it: "the served target is right" and "the truth is in the interval" are
    the same event, so the one number is calibrated for both readings.

    One cumsum for all rows, the interpolations in Python floats (np.interp of a single point costs more
    than the arithmetic; _interp repeats its formula, so the values agree with np.interp's, which
    tests/models/test_estimators.py uses as the reference)."""
    grid = MU_GRID.tolist()
    out = []
    for cdf in np.cumsum(posts, axis=1).tolist():
        target = math.exp(_interp(0.5, cdf, grid))
        # |target - L| / L <= tol  <=>  L in [target / (1 + tol), target / (1 - tol)]
        lo, hi = target / (1 + tolerance), target / (1 - tolerance)
        conf = _interp(math.log(hi), grid, cdf) - _interp(math.log(lo), grid, cdf)
        out.append((target, lo, hi, min(max(conf, 0.0), 1.0)))
    return out


def _interp(x: float, xp: list[float], fp: list[float]) -> float:
    """np.interp(x, xp, fp) of one point, xp non-decreasing: numpy's cases and formula, in the same order."""
    if math.isnan(x):
        return x
    if x > xp[-1]:
        return fp[-1]
    if x < xp[0]:
        return fp[0]
    j = bisect.bisect_right(xp, x) - 1  # xp[j] <= x < xp[j + 1], as numpy's binary search
    if j == len(xp) - 1 or xp[j] == x:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    res = slope * (x - xp[j]) + fp[j]
    if math.isnan(res):
        res = slope * (x - xp[j + 1]) + fp[j + 1]
        if math.isnan(res) and fp[j] == fp[j + 1]:
            res = fp[j]
    return res


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
