"""The population: priors every user is shrunk toward, bot norms, and the population repeat model.

Empirical Bayes: priors are refreshed from summaries of trusted users' estimates (bots excluded), the
prior's spread being the spread of those estimates less their own average uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.denoise import BOT_FEATURES, HUMAN_NORMS

PACINGS = ("slow_burn", "balanced", "fast")


@dataclass
class Population:
    """A snapshot workers read at refresh; defaults hold before any user has enough evidence."""

    mu: float = math.log(380.0)  # log preferred length
    mu_sd: float = 0.6
    ds: float = 0.5  # preferred dialogue share: the middle until the population says otherwise
    ds_sd: float = 0.25
    repeat_a: float = 1.2  # Beta prior of a user's base repeat rate (mean about 0.07)
    repeat_b: float = 16.0
    pacing_prior: dict[str, list[float]] = field(default_factory=lambda: {p: [2.0, 1.0] for p in PACINGS})
    norms: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in HUMAN_NORMS.items()})
    repeat_model: dict[str, Any] | None = None  # {"coef": [...], "intercept": x, "mean": p, "n": count}
    users: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Population:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def base_rate(self) -> float:
        return self.repeat_a / (self.repeat_a + self.repeat_b)


def refresh(current: Population, summaries: Iterable[Mapping[str, Any]], min_replies: int = 8) -> Population:
    """New priors from user summaries ({"mu", "mu_var", "ds", "ds_var", "rr", "n", "trust", "f": bot features})."""
    rows = [s for s in summaries if s.get("trust") == "normal"]
    out = Population.from_dict(current.to_dict())
    out.users = len(rows)
    rich = [s for s in rows if s.get("n", 0) >= min_replies]
    if len(rich) >= 20:
        mus = np.array([s["mu"] for s in rich])
        # The summaries hold posterior means, already shrunk toward the prior: the prior's variance is their
        # spread plus their average posterior variance (law of total variance), not minus it. Subtracting
        # drove the spread to its floor within a few refreshes, and every user's length was then pulled hard
        # toward the median (short and long tastes served 25-30% off in the closed loop).
        var = float(np.var(mus) + np.mean([s.get("mu_var", 0.0) for s in rich]))
        out.mu = float(np.median(mus))
        out.mu_sd = float(min(1.0, max(0.3, math.sqrt(max(var, 0.0)))))
        with_ds = [s for s in rich if s.get("ds") is not None]
        if len(with_ds) >= 20:
            # As for the length: shrunk means plus their posterior variance. From the spread of the means
            # alone the prior narrowed refresh after refresh, and every user then carried a confident
            # dialogue share that was only the population's median (closed loop: served shares 0.17 off).
            dss = np.array([s["ds"] for s in with_ds])
            # Summaries written before the variance was kept have none: averaged over those that have it.
            post_vars = [v for s in with_ds if isinstance(v := s.get("ds_var"), int | float)]
            ds_var = float(np.var(dss) + (np.mean(post_vars) if post_vars else 0.0))
            out.ds = float(np.median(dss))
            out.ds_sd = float(min(0.35, max(0.12, math.sqrt(max(ds_var, 0.0)))))
        rr = np.clip(np.array([s["rr"] for s in rich]), 0.005, 0.9)
        m, v = float(rr.mean()), float(rr.var())
        if 0 < v < m * (1 - m):
            k = m * (1 - m) / v - 1  # method of moments for the Beta prior, capped so users still move it
            k = min(max(k, 4.0), 40.0)
            out.repeat_a, out.repeat_b = m * k, (1 - m) * k
    feats = [s["f"] for s in rows if s.get("f")]
    if len(feats) >= 30:
        for name in BOT_FEATURES:
            vals = np.array([f[name] for f in feats if name in f])
            if len(vals) >= 30:
                med = float(np.median(vals))
                mad = float(np.median(np.abs(vals - med))) * 1.4826
                out.norms[name] = [med, max(mad, HUMAN_NORMS[name][1])]
    return out


# --- Population repeat model ------------------------------------------------------------------
# Features of a reply that make anyone regenerate it, whoever the user: a truncated reply, the first reply
# of a session, no dialogue at all. Length is deliberately left out: how long a reply should be is the
# per-user preference being learned. So is whether the gateway explored: an explored pacing is repeated
# more because it is usually the wrong pacing for this user, which is the very evidence the pacing
# posterior learns from; as a "confounder" it discounted the repeats that showed an arm was wrong and
# inflated those of the arm being exploited, and the closed loop applied the user's pacing about half the time.
REPEAT_FEATURES = 4


def reply_features(reply: Mapping[str, Any]) -> list[float]:
    ds = reply.get("ds")
    return [
        1.0 if reply.get("fr") == "length" else 0.0,
        1.0 if reply.get("first") else 0.0,
        float(ds) if ds is not None else 0.45,
        1.0 if reply.get("hk") else 0.0,
    ]


def repeat_probability(model: Mapping[str, Any] | None, reply: Mapping[str, Any]) -> tuple[float, float] | None:
    """(p this reply is repeated by anyone, mean p) from the published coefficients, or None before any
    (or when the published model has another feature set: it is ignored until retrained)."""
    if not model or model.get("n", 0) < 500 or len(model.get("coef") or ()) != REPEAT_FEATURES:
        return None
    z = float(np.dot(model["coef"], reply_features(reply)) + model["intercept"])
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))), float(model["mean"])


# Closed replies per partial_fit: each call costs about a millisecond of scikit-learn's checks whatever its
# size, and a worker under a backlog closes some 30,000 replies in a 5-second batch (at 256 per call the
# fits took a tenth of the batch; at 4096 a hundredth).
FIT_EVERY = 4096


class RepeatModelTrainer:
    """scikit-learn SGD logistic regression, updated with partial_fit on closed replies of trusted users."""

    def __init__(self) -> None:
        from sklearn.linear_model import SGDClassifier  # noqa: PLC0415 - heavy import, workers only

        self.clf = SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="optimal", random_state=0)
        self.n = 0
        self.positives = 0
        self._x: list[list[float]] = []
        self._y: list[int] = []

    def add(self, reply: Mapping[str, Any], repeated: bool) -> None:
        self._x.append(reply_features(reply))
        self._y.append(1 if repeated else 0)
        if len(self._x) >= FIT_EVERY:
            self.fit()

    def fit(self) -> None:
        if not self._x:
            return
        self.clf.partial_fit(np.array(self._x), np.array(self._y), classes=np.array([0, 1]))
        self.n += len(self._y)
        self.positives += sum(self._y)
        self._x, self._y = [], []

    def export(self, previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """This worker's coefficients averaged with the published ones, weighted by examples seen."""
        self.fit()
        if self.n == 0:
            return dict(previous) if previous else None
        mine = {"coef": self.clf.coef_[0].tolist(), "intercept": float(self.clf.intercept_[0]),
                "mean": self.positives / self.n, "n": self.n}
        self.n = self.positives = 0  # what was exported is now part of the published model
        if not previous or not previous.get("n") or len(previous.get("coef") or ()) != REPEAT_FEATURES:
            return mine  # nothing published yet, or a model of another feature set: replaced
        w_prev = previous["n"] / (previous["n"] + self.n)
        return {
            "coef": [w_prev * a + (1 - w_prev) * b for a, b in zip(previous["coef"], mine["coef"], strict=True)],
            "intercept": w_prev * previous["intercept"] + (1 - w_prev) * mine["intercept"],
            "mean": w_prev * previous["mean"] + (1 - w_prev) * mine["mean"],
            "n": min(previous["n"] + self.n, 1_000_000),
        }
