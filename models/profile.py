"""A user's learning state: events in (joined by reply_id, denoised), replies closed, profile documents out.

The state is a plain JSON-able dict the worker loads and stores atomically. Estimates are recomputed
from the replies the state remembers (the last MAX_CLOSED, weighted by exponential forgetting), so a
late or out-of-order event simply amends its reply and the result does not depend on batch boundaries.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from models import calibration, denoise, estimators
from models.population import PACINGS, Population, repeat_probability

MAX_CLOSED = 120
MAX_RECENT = 50
MAX_FINGERPRINTS = 200
MAX_GAPS = 60
FORGET = 0.97  # per reply, newest first: half-life of about 23 replies, so a changed taste wins in a few sessions
CHARACTER_MIN_REPLIES = 12
DECISIVE = {"repeat", "selected", "passed_over", "answered", "continue", "stop", "edit_shorter", "edit_longer",
            "rating"}
CHARS_PER_TOKEN = 3.6
REPEAT_RATE_PSEUDO = 10.0
IMPLAUSIBLE_PSEUDO = 4.0  # pseudo-judgements (all plausible) in the implausible share  # pseudo-replies at a typical repeat rate in the bot score's repeat-rate feature
TOKEN_HEADROOM = 1.5


def new_state() -> dict[str, Any]:
    return {"v": 0, "wm": "0-0", "n": 0, "disc": {}, "replies": 0, "open": {}, "closed": [], "sess": {},
            "max_t": 0, "fp": [], "msg": [0.0, 0.0], "beh": {"last_t": None, "gaps": [], "impl": 0, "judged": 0,
                                                             "presses": 0},
            "trust": "normal", "chars": [], "hist": []}


_EMPTY: Mapping[str, Any] = {}


def stream_id_key(sid: str) -> tuple[int, int]:
    """A stream entry id as the (ms, seq) pair it sorts by."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


class Applier:
    """Applies one user's events to their state; collects counters for the caller (denoise steps, closed replies)."""

    def __init__(self, state: dict[str, Any], population: Population, close_after_ms: int,
                 pacing_from_text: bool = True) -> None:
        self.s = state
        self.pacing_from_text = pacing_from_text
        self.pop = population
        self.close_after_ms = close_after_ms
        self.discounted: dict[str, int] = {}
        self.closed_now: list[dict[str, Any]] = []
        self.amended_repeats: list[dict[str, Any]] = []
        self.changed = False
        self._closed_index = {r["id"]: r for r in state["closed"]}
        self._open = state["open"]
        self._seen: set[str] | None = None  # state["fp"] as a set, made at the first event
        # The state's lists and dicts every event updates (changed in place, never replaced).
        self._fps, self._beh, self._gaps = state["fp"], state["beh"], state["beh"]["gaps"]

    def discount(self, step: str, n: int = 1) -> None:
        self.discounted[step] = self.discounted.get(step, 0) + n
        self.s["disc"][step] = self.s["disc"].get(step, 0) + n

    def _reply(self, rid: str, create: bool = True) -> dict[str, Any] | None:
        rec = self._open.get(rid) or self._closed_index.get(rid)
        if rec is None and create:
            rec = {"id": rid, "t": None, "c": None, "o": []}
            self._open[rid] = rec
        return rec

    def apply(self, ev: Mapping[str, Any]) -> bool:
        """Apply one event; False when it was discounted as a duplicate (nothing else changes)."""
        s = self.s
        kind, t = ev["type"], ev["t"]
        fp = f"{kind}|{ev['reply_id'] if 'reply_id' in ev else ev.get('session_id', '')}|{t}"
        # The fingerprints as a set too: a state keeps MAX_FINGERPRINTS, and a list scan per event cost more
        # than the rest of most events. The list holds no duplicates (a fingerprint seen is never added).
        seen = self._seen
        if seen is None:
            seen = self._seen = set(s["fp"])
        if fp in seen:
            self.discount("duplicate")
            return False
        fps = self._fps
        fps.append(fp)
        seen.add(fp)
        if len(fps) > MAX_FINGERPRINTS:
            seen.difference_update(fps[:-MAX_FINGERPRINTS])
            del fps[:-MAX_FINGERPRINTS]
        s["n"] += 1
        self.changed = True
        beh = self._beh  # behaviour: the gaps between events
        last = beh["last_t"]
        if last is not None:
            gaps = self._gaps
            gaps.append(abs(t - last))
            if len(gaps) > MAX_GAPS:
                del gaps[:-MAX_GAPS]
        beh["last_t"] = t
        if t > s["max_t"]:
            s["max_t"] = t
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, ev)
        return True

    def _on_reply_shown(self, ev: Mapping[str, Any]) -> None:
        rid, t = ev["reply_id"], ev["t"]
        reply = ev.get("reply") or _EMPTY
        get = reply.get
        rec = self._open.get(rid) or self._closed_index.get(rid)
        if rec is None:  # the usual case: one dict, its keys in the order the updates below give a known one
            rec = self._open[rid] = {"id": rid, "t": t, "c": get("chars"), "o": [],
                                     "ds": get("dialogue_share"), "hk": get("hook"), "qe": get("question_end"),
                                     "fr": get("finish_reason"), "ch": ev.get("character_id"),
                                     "s": ev.get("session_id")}
        else:
            rec["t"] = t
            rec["c"] = get("chars")
            rec["ds"] = get("dialogue_share")
            rec["hk"] = get("hook")
            rec["qe"] = get("question_end")
            rec["fr"] = get("finish_reason")
            rec["ch"] = ev.get("character_id")
            rec["s"] = ev.get("session_id")
        if "pacing" in reply and self.pacing_from_text:
            rec["pm"] = reply["pacing"]  # as measured from its text (models/features.py pacing_of)
        cpt = get("chars_per_token")  # only replies with Chinese, Japanese or Korean in them have one
        if cpt is not None or "cpt" in rec:
            rec["cpt"] = cpt
        cond = ev.get("conditioning")
        if cond and (cond.get("pacing") is not None or cond.get("target_chars") is not None):
            rec["ap"] = {"pacing": cond.get("pacing"), "target_chars": cond.get("target_chars"),
                         "explored": cond.get("explored"), "propensity": cond.get("propensity")}
        s = self.s
        s["replies"] += 1
        sid = rec["s"]
        if sid:
            sess = s["sess"]
            prev = sess.get(sid)
            if prev is None:
                rec["first"] = True
            elif prev != rid:
                prev_rec = self._open.get(prev)
                if prev_rec is not None and (prev_rec.get("t") or 0) <= t:
                    self._close(prev_rec)  # superseded by a later reply of the same session
            sess[sid] = rid
            if len(sess) > 20:
                del sess[next(iter(sess))]

    def _outcome(self, ev: Mapping[str, Any], what: str) -> dict[str, Any]:
        rec = self._reply(ev["reply_id"])
        assert rec is not None
        rec["o"].append(what)
        if rec.get("resp_t") is None or ev["t"] < rec["resp_t"]:
            rec["resp_t"] = ev["t"]
        return rec

    def _on_repeat(self, ev: Mapping[str, Any]) -> None:
        self.s["beh"]["presses"] += 1
        rec = self._reply(ev["reply_id"])
        assert rec is not None
        if denoise.is_double_tap(rec.get("rt"), ev["t"]):
            self.discount("double_tap")
            return
        rec["rt"] = ev["t"]
        self._outcome(ev, "repeat")
        self._maybe_close(rec)

    def _on_reply_selected(self, ev: Mapping[str, Any]) -> None:
        rec = self._outcome(ev, "selected")
        rec["alts"] = [a for a in ev.get("alternatives", []) if a != rec["id"]]
        for alt in rec["alts"]:
            other = self._reply(alt)
            assert other is not None
            if "passed_over" not in other["o"]:
                other["o"].append("passed_over")
            self._maybe_close(other)
        self._maybe_close(rec)

    def _on_user_message(self, ev: Mapping[str, Any]) -> None:
        # _outcome(ev, "answered") and _maybe_close inline: the most frequent event after reply_shown.
        chars, compose = ev.get("chars") or 0, ev.get("compose_ms")
        beh = self._beh
        if compose is not None:
            beh["judged"] += 1
            if not denoise.typing_plausible(chars, compose):
                beh["impl"] += 1
                self.discount("implausible_typing")
                compose = None
            elif chars > 0:
                m = self.s["msg"]
                m[0] = m[0] * 0.95 + math.log(chars)
                m[1] = m[1] * 0.95 + 1.0
        rid, t = ev.get("reply_id"), ev["t"]
        if rid is None:  # a message that answers no reply (the conversation's first): its length and typing only
            return
        rec = self._reply(rid)
        assert rec is not None
        o = rec["o"]
        o.append("answered")
        resp_t = rec.get("resp_t")
        if resp_t is None or t < resp_t:
            rec["resp_t"] = t
        shown_t = rec.get("t")
        if shown_t is not None:
            # A reply stopped while it streamed was read only as far as it was shown.
            read_chars = rec.get("shown") if "stop" in o and rec.get("shown") else rec.get("c")
            verdict = denoise.read_verdict(read_chars, shown_t, t, compose)
            if verdict:
                rec["bad"] = verdict
                self.discount(verdict)
                if verdict == "implausible_read":
                    beh["impl"] += 1
            beh["judged"] += 1
            if rid in self._open:  # "answered" is decisive: closed at once (_maybe_close)
                self._close(rec)

    def _on_continue(self, ev: Mapping[str, Any]) -> None:
        self._maybe_close(self._outcome(ev, "continue"))

    def _on_stop(self, ev: Mapping[str, Any]) -> None:
        rec = self._outcome(ev, "stop")
        if ev.get("shown_chars") is not None:
            rec["shown"] = ev["shown_chars"]
        self._maybe_close(rec)

    def _on_edit(self, ev: Mapping[str, Any]) -> None:
        before, after = ev.get("chars_before") or 0, ev.get("chars_after") or 0
        self._maybe_close(self._outcome(ev, "edit_shorter" if after < before else "edit_longer"))

    def _on_rating(self, ev: Mapping[str, Any]) -> None:
        rec = self._outcome(ev, "rating")
        rec["rating"] = float(ev.get("value", 0.0))
        self._maybe_close(rec)

    def _on_session_end(self, ev: Mapping[str, Any]) -> None:
        sid = ev.get("session_id")
        for rec in list(self.s["open"].values()):
            if rec.get("s") == sid and rec.get("t") is not None and rec["t"] <= ev["t"]:
                self._close(rec)
        self.s["sess"].pop(sid, None)

    def _maybe_close(self, rec: dict[str, Any]) -> None:
        # A decisive outcome closes a reply at once: what arrives later (a late repeat, a double tap) amends it.
        if rec["id"] in self._open:
            if rec.get("t") is not None and not DECISIVE.isdisjoint(rec["o"]):
                self._close(rec)
        elif "repeat" in rec["o"] and rec["o"].count("repeat") == 1 and rec["o"][-1] == "repeat":
            self.amended_repeats.append(rec)  # a late repeat of a reply already closed as not repeated

    def _close(self, rec: dict[str, Any]) -> None:
        if self.s["open"].pop(rec["id"], None) is None:
            return
        self.s["closed"].append(rec)
        self._closed_index[rec["id"]] = rec
        self.closed_now.append(rec)
        self.changed = True

    def close_due(self, now_wall_ms: int | None = None, idle_since_ms: int | None = None) -> None:
        """Close replies passed by the user's event time, or (sweep) all when the user has been idle long enough."""
        limit = self.s["max_t"] - self.close_after_ms
        idle = now_wall_ms is not None and idle_since_ms is not None and now_wall_ms - idle_since_ms >= self.close_after_ms
        for rec in sorted(self.s["open"].values(), key=lambda r: r.get("t") or 0):
            if idle or (rec.get("t") is not None and rec["t"] <= limit):
                self._close(rec)
            elif idle_since_ms is None and rec.get("t") is None and len(self.s["open"]) > 200:
                self.s["open"].pop(rec["id"], None)  # outcomes whose reply never showed up: bounded memory
        closed = self.s["closed"]
        if len(closed) > MAX_CLOSED or self.closed_now:
            closed.sort(key=lambda r: (r.get("t") or 0, r["id"]))
            if len(closed) > MAX_CLOSED:
                for gone in closed[:-MAX_CLOSED]:
                    self._closed_index.pop(gone["id"], None)
                del closed[:-MAX_CLOSED]


# The event handlers by event type (a dict lookup per event instead of building the name and getattr).
_HANDLERS = {name[len("_on_"):]: f for name, f in vars(Applier).items() if name.startswith("_on_")}


# --- Estimation -------------------------------------------------------------------------------------
_ANSWERED = frozenset(("answered", "selected", "continue", "edit_shorter", "edit_longer", "rating"))
_DIRECTED = frozenset(("stop", "continue", "edit_shorter", "edit_longer"))
_FORGET: dict[int, tuple[np.ndarray, list[float]]] = {}


def _forget(n: int) -> tuple[np.ndarray, list[float]]:
    """FORGET ** age of n replies, oldest first, as an array and as Python floats (read-only: made once per
    length, shared)."""
    out = _FORGET.get(n)
    if out is None:
        arr = FORGET ** np.arange(n - 1, -1, -1, dtype=float) if n else np.zeros(0)
        arr.setflags(write=False)
        out = (arr, arr.tolist())
        if n <= 4 * MAX_CLOSED:
            _FORGET[n] = out
    return out


class _Round:
    """What the users of one estimate_many call contribute, reply by reply, laid out flat: the length
    and dialogue-share grid evidence, and the pacing rows (see _pace_posteriors)."""

    def __init__(self) -> None:
        # Length: the reply's chars (max 1; logged at once for all), its repeat, success and direction
        # weights, and its forgetting weight.
        self.l_c: list[float] = []
        self.l_rep: list[float] = []
        self.l_suc: list[float] = []
        self.l_dir: list[float] = []
        self.l_w: list[float] = []
        # Dialogue share: its value, repeat and success weights, forgetting weight.
        self.d_x: list[float] = []
        self.d_rep: list[float] = []
        self.d_suc: list[float] = []
        self.d_w: list[float] = []
        # Pacing (see _pace_posteriors): each row's user, _PERCEIVED row, log chars, age, repeat and success
        # weights; the rated rows, their ratings, and those of kept replies with their success weights.
        self.users: list[int] = []
        self.ks: list[int] = []
        self.ms: list[float] = []
        self.expo: list[int] = []
        self.p_rep: list[float] = []
        self.p_suc: list[float] = []
        self.rated: list[int] = []
        self.ratings: list[float] = []
        self.rated_kept: list[int] = []
        self.rated_suc: list[float] = []
        # Choices between alternatives: user, weight, the kept one's chars and row, the other's.
        self.choices: list[tuple[int, float, Any, int, Any, int]] = []


class _Scan:
    """One user's closed replies read once (see _scan)."""

    __slots__ = ("n_rep", "rep", "suc", "dirs", "forget", "confounded", "repeats", "n_len", "n_ds", "alts",
                 "paced", "hooked")

    def __init__(self) -> None:
        self.n_rep = 0
        self.confounded = 0
        self.repeats = 0  # replies weighed as repeats (counted as curator repeats for a curator)
        self.alts = False
        self.paced: list[tuple[int, int, Any]] = []  # (pacing asked, reply index, its chars)
        self.hooked: list[tuple[int, int]] = []  # (0 hooked / 1 not, reply index)


def _scan(recs: list[dict[str, Any]], pop: Population, rnd: _Round, u: int,
          weights: tuple[Any, Any] | None = None) -> _Scan:
    """The per-reply weights shared by the estimators (forgetting, repeat and success weights, directions),
    and each reply's part of the length, dialogue-share and pacing evidence added to rnd (as user u's), in
    one pass. weights: (repeat, success) weights to add to rnd instead of those found here (see
    _pacing_label_posteriors)."""
    n = len(recs)
    sc = _Scan()
    forget_a, forget = _forget(n)
    rep_l = [0.0] * n
    suc_l = [0.0] * n
    dir_l = [0.0] * n
    model_of = pop.repeat_model
    l_c, l_rep, l_suc, l_dir, l_w = rnd.l_c, rnd.l_rep, rnd.l_suc, rnd.l_dir, rnd.l_w
    d_x, d_rep, d_suc, d_w = rnd.d_x, rnd.d_rep, rnd.d_suc, rnd.d_w
    paced, hooked = sc.paced, sc.hooked
    n_len, n_ds = len(l_c), len(d_x)
    users, ks, ms, expo, p_rep, p_suc = rnd.users, rnd.ks, rnd.ms, rnd.expo, rnd.p_rep, rnd.p_suc
    by_id: dict[str, dict[str, Any]] | None = None
    for i, r in enumerate(recs):
        o = r["o"]
        get = r.get
        rating = get("rating")
        repeated = "repeat" in o
        rep = suc = d = 0.0
        if repeated or (rating is not None and rating < 0):
            if repeated:
                sc.n_rep += 1.0  # a float once any, as the sum of 1.0s it was
            w = 1.0 if repeated else abs(rating)
            model = repeat_probability(model_of, r)
            if model is not None:
                sw = denoise.surprise_weight(*model)
                if sw < 0.8:
                    sc.confounded += 1
                w *= sw
            sc.repeats += 1
            rep_l[i] = rep = w
        elif "passed_over" in o:
            rep_l[i] = rep = 0.5
        else:
            bad = get("bad")
            answered = not _ANSWERED.isdisjoint(o)
            suc_l[i] = suc = 0.3 if bad == "implausible_read" else (1.0 if answered else 0.6)
        if not _DIRECTED.isdisjoint(o):
            if "stop" in o:
                d += 1.0
            if "continue" in o:
                d -= 1.0
            if "edit_shorter" in o:
                d += 0.5
            if "edit_longer" in o:
                d -= 0.5
            dir_l[i] = d
        if weights is not None:
            rep, suc = weights[0][i], weights[1][i]
        c = get("c")
        if c:
            l_c.append(max(c, 1))
            l_rep.append(rep)
            l_suc.append(suc)
            l_dir.append(d)
            l_w.append(forget[i])
        ds = get("ds")
        if ds is not None:
            d_x.append(ds)
            d_rep.append(rep)
            d_suc.append(suc)
            d_w.append(forget[i])
        ap = get("ap")
        asked = _PACE_INDEX.get(ap.get("pacing"), -1) if ap else -1
        if asked >= 0:
            paced.append((asked, i, c))
        # The pacing evidence (see _pace_posteriors): the reply's row of _PERCEIVED (_perceived_row, inline)
        row = (asked + 1) * 4 + (_PACE_INDEX.get(get("pm"), -1) if "pm" in r else -1) + 1
        if row and "passed_over" not in o:  # one passed over counts through the choice of the one kept
            if rating is not None:
                rnd.rated.append(len(ks))
                rnd.ratings.append(rating)
                if not repeated:
                    rnd.rated_kept.append(len(ks))  # kept, whatever the rating: the rating itself says how much
                    rnd.rated_suc.append(0.3 if get("bad") == "implausible_read" else 1.0)
            users.append(u)
            ks.append(row)
            ms.append(math.log(max(c, 1)) if c else math.nan)
            expo.append(n - 1 - i)
            p_rep.append(rep)
            p_suc.append(suc)
            if "selected" in o and get("alts"):
                # The choices, in the order the reference subtracts them (np.subtract.at keeps it).
                by_id = by_id if by_id is not None else {x["id"]: x for x in recs}
                for alt in r["alts"]:
                    other = by_id.get(alt)
                    ko = _perceived_row(other)
                    if not ko or ko == row:
                        continue  # nothing known of the other's pacing, or the same as the kept one's
                    rnd.choices.append((u, PACING_FORGET ** (n - 1 - i), c, row, other.get("c"), ko))
        hk = get("hk")
        if hk is not None:
            hooked.append((0 if hk else 1, i))
        if not sc.alts and get("alts"):
            sc.alts = True
    sc.rep, sc.suc, sc.dirs, sc.forget = rep_l, suc_l, dir_l, (forget_a, forget)
    sc.n_len, sc.n_ds = len(l_c) - n_len, len(d_x) - n_ds
    return sc


def _evidence(recs: list[dict[str, Any]], pop: Population, base_rate: float) -> dict[str, Any]:
    """Per-reply weights shared by the estimators: forgetting, repeat and success weights, directions."""
    sc = _scan(recs, pop, _Round(), 0)
    curator = sc.repeats if denoise.curator_weight(base_rate, pop.base_rate) < 1.0 else 0
    return {"forget": sc.forget[0], "rep": np.array(sc.rep, dtype=float), "suc": np.array(sc.suc, dtype=float),
            "dir": np.array(sc.dirs, dtype=float), "confounded": sc.confounded, "curator": curator}


def estimate(recs: list[dict[str, Any]], pop: Population, msg: list[float] | None = None,
             prior: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Every estimate of a profile from closed replies (oldest first); prior overrides the population's."""
    return estimate_many([(recs, pop, msg, prior)])[0]


EstimateJob = tuple[list[dict[str, Any]], Population, "list[float] | None", "Mapping[str, float] | None"]


def estimate_many(jobs: list[EstimateJob]) -> list[dict[str, Any]]:
    """estimate() of many users, (recs, pop, msg, prior) each: the grid posteriors of length and dialogue
    share, most of an estimate's arithmetic, are computed for all of them at once (estimators.py), from
    evidence each user's replies add to flat lists in one pass (_scan)."""
    rnd = _Round()
    scans, preps = [], []
    l_len, l_base, l_mu, l_sd, l_pairs = [], [], [], [], []
    d_len, d_base, d_mu, d_sd = [], [], [], []
    with_ds = []
    for u, (recs, pop, msg, prior) in enumerate(jobs):
        sc = _scan(recs, pop, rnd, u)
        n_rep = sc.n_rep
        ra, rb = pop.repeat_a + n_rep, pop.repeat_b + len(recs) - n_rep
        base_rate = ra / (ra + rb)
        # Length: replies of known length; the user's own message lengths nudge the prior a little.
        prior_mu = prior["mu"] if prior else pop.mu
        prior_sd = prior["mu_sd"] if prior else pop.mu_sd
        if msg and msg[1] >= 3 and not prior:
            # Users who like long replies write a little longer; weak evidence, a fraction of the prior's weight.
            msg_mu = math.log(380.0) + 2.0 * (msg[0] / msg[1] - math.log(45.0))
            k = min(msg[1], 20.0) / 20.0 * 0.25
            prior_mu = (1 - k) * prior_mu + k * msg_mu
        l_len.append(sc.n_len)
        l_base.append(base_rate)
        l_mu.append(prior_mu)
        l_sd.append(prior_sd)
        l_pairs.append(_pairs(recs) if sc.alts else None)
        # Style: dialogue share on a grid like length.
        if sc.n_ds:
            with_ds.append(u)
            d_len.append(sc.n_ds)
            d_base.append(base_rate)
            d_mu.append(prior["ds"] if prior else pop.ds)
            d_sd.append(prior["ds_sd"] if prior else pop.ds_sd)
        scans.append(sc)
        preps.append((ra, rb, base_rate))
    len_posts = estimators.flat_posteriors(estimators.FlatEvidence(
        np.log(np.array(rnd.l_c, dtype=float)), np.array(rnd.l_rep, dtype=float),
        np.array(rnd.l_suc, dtype=float), np.array(rnd.l_dir, dtype=float), np.array(rnd.l_w, dtype=float),
        l_len, l_base, l_mu, l_sd, l_pairs))
    found = estimators.flat_posteriors(estimators.FlatEvidence(
        np.array(rnd.d_x, dtype=float), np.array(rnd.d_rep, dtype=float), np.array(rnd.d_suc, dtype=float),
        np.zeros(len(rnd.d_x)), np.array(rnd.d_w, dtype=float), d_len, d_base, d_mu, d_sd, [None] * len(d_len)),
        estimators.DS_GRID, estimators.DS_W_GRID, estimators.DS_REPEAT_SPAN)
    # Users without dialogue-share evidence keep their population's prior on the grid.
    ds_mu = np.array([job[1].ds for job in jobs], dtype=float)
    ds_sd = np.array([job[1].ds_sd for job in jobs], dtype=float)
    ds_posts = np.exp(-0.5 * ((estimators.DS_GRID[None, :] - ds_mu[:, None]) / ds_sd[:, None]) ** 2)
    ds_posts /= ds_posts.sum(axis=1, keepdims=True)
    if with_ds:
        ds_posts[with_ds] = found
    ds_values = (ds_posts * estimators.DS_GRID).sum(axis=1)
    ds_vars = (ds_posts * (estimators.DS_GRID[None, :] - ds_values[:, None]) ** 2).sum(axis=1)
    near = np.abs(estimators.DS_GRID[None, :] - ds_values[:, None]) <= 0.1
    ds_confs = np.where(near, ds_posts, 0.0).sum(axis=1)
    summaries = estimators.grid_summaries(len_posts)
    mu_means = (len_posts * estimators.MU_GRID).sum(axis=1)
    mu_vars = (len_posts * (estimators.MU_GRID[None, :] - mu_means[:, None]) ** 2).sum(axis=1)
    mu_means_f = mu_means.tolist()
    paces = _pace_posteriors(rnd, mu_means_f)
    return [_finish(job, sc, prep, summary, mu_mean, mu_var, ds_value, ds_conf, pace, ds_var)
            for job, sc, prep, summary, mu_mean, mu_var, ds_value, ds_conf, pace, ds_var
            in zip(jobs, scans, preps, summaries, mu_means_f, mu_vars.tolist(), ds_values.tolist(),
                   ds_confs.tolist(), paces, ds_vars.tolist(), strict=True)]


def _finish(job: EstimateJob, sc: _Scan, prep: tuple[float, float, float], summary: tuple[float, float, float, float],
            mu_mean: float, mu_var: float, ds_value: float, ds_conf: float, scores: np.ndarray,
            ds_var: float) -> dict[str, Any]:
    """One user's estimate from its evidence and what the round computed at once: the length posterior's
    summary and moments, the dialogue share's mean, confidence and variance, the pacing label posterior."""
    _, pop, _, _ = job
    ra, rb, base_rate = prep
    forget, rep, suc = sc.forget[1], sc.rep, sc.suc
    target, lo, hi, conf = summary
    # Pacing: Beta per arm from replies whose pacing is known; repeats explained by length count less.
    alpha = [float(pop.pacing_prior.get(p, [2.0, 1.0])[0]) for p in PACINGS]
    beta = [float(pop.pacing_prior.get(p, [2.0, 1.0])[1]) for p in PACINGS]
    w_tol = 0.4
    for k, i, c in sc.paced:
        if rep[i] > 0:
            explained = 0.0
            if c:
                d = (math.log(max(c, 1)) - mu_mean) / w_tol
                mismatch = (1 - base_rate) * estimators.REPEAT_SPAN * (1 - math.exp(-0.5 * d * d))
                explained = mismatch / (base_rate + mismatch)
            beta[k] += forget[i] * rep[i] * (1 - explained)
        else:
            alpha[k] += forget[i] * min(suc[i], 1.0)
    score_list = scores.tolist()
    label = PACINGS[score_list.index(max(score_list))]  # the first of equals, as np.argmax

    # Style: dialogue share (computed with the length's); hooks as "do hooked replies fare better".
    ha, hb = [1.0, 1.0], [1.0, 1.0]
    for j, i in sc.hooked:
        ha[j] += forget[i] * min(suc[i], 1.0)
        hb[j] += forget[i] * rep[i]
    hook_value = estimators.prob_greater(ha[0], hb[0], ha[1], hb[1])

    r_lo, r_hi = estimators.beta_interval(ra, rb)
    curator = sc.repeats if denoise.curator_weight(base_rate, pop.base_rate) < 1.0 else 0
    return {
        "target": target, "interval": (lo, hi), "len_conf": conf, "mu": mu_mean, "mu_var": mu_var,
        "pacing_label": label, "pacing_scores": dict(zip(PACINGS, score_list, strict=True)),
        "pacing_posterior": {p: [round(alpha[k], 4), round(beta[k], 4)] for k, p in enumerate(PACINGS)},
        "ds": ds_value, "ds_conf": ds_conf, "ds_var": ds_var, "hook": hook_value,
        "repeat_rate": base_rate, "repeat_interval": (r_lo, r_hi),
        "confounded": sc.confounded, "curator": curator,
    }


PACE_COST = np.array([0.0, 0.45, 1.0])  # satisfaction cost of a pacing one and two steps off the preferred one
# Repeat probability a pacing one and two steps off adds, as a cause of its own beside the length mismatch
# and the user's base rate (either is enough to regenerate). Set a little under what the simulator uses
# (0.3, 0.55): the label barely moves across 0.2..0.3 / 0.4..0.55 (bench/simulate.py --pace-effect).
PACE_REPEAT = np.array([0.0, 0.25, 0.5])
PACING_FOLLOWED = 0.8  # how often a reply reads as the pacing it was asked for
PACING_PRIOR = np.array([0.35, 0.4, 0.25])
# Pacing evidence per reply is weak (a repeat has many causes), so it is forgotten more slowly than length:
# half-life about 70 replies instead of 23.
PACING_FORGET = 0.99
# The repeat rate from causes other than pacing and length is a nuisance parameter of the pacing posterior:
# marginalised over this grid instead of taken from the user's overall repeat rate, which holds the very
# repeats a wrong pacing caused (and so made every pacing look alike).
BASE_GRID = np.array([0.04, 0.08, 0.12, 0.18, 0.25, 0.35, 0.5])
BASE_PRIOR = np.full(len(BASE_GRID), 1 / len(BASE_GRID))
# An explicit rating is a noisy reading of satisfaction: RATING_SD wide (a real rating is coarse; the simulator's
# is exact), and RATING_OTHER_COST of satisfaction lost to what else differs from the taste (dialogue, hooks).
RATING_SD = 0.3
RATING_OTHER_COST = 0.2
RATING_FLAT_SHARE = 0.3
_RATING_FLAT = 0.5 * RATING_SD * math.sqrt(2 * math.pi)  # a uniform value on [-1, 1], the Gaussian's scale
CHOICE_TEMPERATURE = 0.35  # how sharply a user keeps the more satisfying of two alternatives (log-satisfaction)


PaceItem = tuple[list[dict[str, Any]], Mapping[str, Any], float]


def _pacing_label_posteriors(items: list[PaceItem]) -> np.ndarray:
    """Posterior over which pacing each user prefers, from replies with a known pacing; (recs, ev, mu) per
    user, one row each, ev: _evidence's weights of recs. See _pace_posteriors."""
    rnd = _Round()
    for u, (recs, ev, _) in enumerate(items):
        _scan(recs, Population(), rnd, u, (ev["rep"].tolist(), ev["suc"].tolist()))
    return _pace_posteriors(rnd, [mu for _, _, mu in items])


def _pace_posteriors(rnd: _Round, mus_l: list[float]) -> np.ndarray:
    """Posterior over which pacing each user prefers, from the pacing rows of the round's users; mus_l: each
    user's preferred log length (posterior mean).

    A reply is repeated for its pacing (more likely the further it is from the preferred one: ordinal),
    for its length (the length mismatch explains repeats away) or for no reason (the base rate, not known:
    marginalised over BASE_GRID): any one is enough. A reply reads as the pacing asked for only most of
    the time; the pacing measured from its text, when the reply_shown carried it, sharpens what it read as
    (and makes a reply nobody asked a pacing of evidence too). Between two alternatives, the one kept says
    which pacing satisfies more; those pairs count as a choice, not as a repeat.
    Confidence is calibrated afterwards (models/calibration.py).

    The replies of all users go into one set of arrays (a user's sums are segment sums), so the numpy calls
    are shared by the round instead of paid by every user (about 20 per user, most of an estimate's cost).
    tests/models/test_profile.py holds the same arithmetic written one user at a time, as the reference."""
    u_n = len(mus_l)
    ks, rated, rated_kept = rnd.ks, rnd.rated, rnd.rated_kept
    logp = np.zeros((u_n, 3))
    if ks:
        mus = np.array(mus_l, dtype=float)
        u_idx = np.array(rnd.users, dtype=int)
        logc = np.array(rnd.ms)
        m_len = np.where(np.isnan(logc), 0.0, 0.5 * ((logc - mus[u_idx]) / 0.4) ** 2)
        keep_len = 1 - 0.5 * (1 - np.exp(-m_len))
        forget = PACING_FORGET ** np.array(rnd.expo, dtype=int).astype(float)
        w_rep = forget * np.array(rnd.p_rep, dtype=float)
        w_suc = np.where(w_rep > 0, 0.0, forget * np.minimum(np.array(rnd.p_suc, dtype=float), 1.0))
        if rated_kept:  # a low rating is not a repeat here: the rating's own term below weighs it
            w_rep[rated_kept] = 0.0
            w_suc[rated_kept] = forget[rated_kept] * np.array(rnd.rated_suc)
        keep = keep_len[:, None] * (1 - _PACE_REPEAT_MIX[np.array(ks, dtype=int)])  # [reply, preferred P]
        p_rep = 1 - (1 - BASE_GRID)[:, None, None] * keep[None, :, :]  # [base, reply, preferred P]
        p_rep = np.clip(p_rep, 1e-4, 1 - 1e-4)
        terms = w_rep[None, :, None] * np.log(p_rep) + w_suc[None, :, None] * np.log1p(-p_rep)
        # Replies are grouped by user in order: a user's replies are one run from where it first appears.
        has, starts = np.unique(u_idx, return_index=True)
        ll = np.add.reduceat(terms, starts, axis=1) + np.log(BASE_PRIOR)[:, None, None]  # [base, user, P]
        top = ll.max(axis=(0, 2))
        logp[has] = np.log(np.exp(ll - top[None, :, None]).sum(axis=0)) + top[:, None]
        if rated:  # a rated reply is one of these replies: its user, weight, pacing row and length mismatch
            at = np.array(rated, dtype=int)
            logp += _rating_log_likelihood(u_idx[at], forget[at], rnd.ratings, np.array(ks, dtype=int)[at],
                                           m_len[at], u_n)
    if rnd.choices:
        ch_user, ch_w, ch_mo, ch_mk, ch_ko, ch_kk = [], [], [], [], [], []
        for u, w, c, k, other_c, ko in rnd.choices:
            mu = mus_l[u]
            ch_user.append(u)
            ch_w.append(w)
            ch_mk.append(0.5 * ((math.log(max(c, 1)) - mu) / 0.4) ** 2 if c else 0.0)
            ch_mo.append(0.5 * ((math.log(max(other_c, 1)) - mu) / 0.4) ** 2 if other_c else 0.0)
            ch_ko.append(ko)
            ch_kk.append(k)
        cost_o = _PACE_COST_MIX[np.array(ch_ko, dtype=int)]
        cost_k = _PACE_COST_MIX[np.array(ch_kk, dtype=int)]
        z = (((np.array(ch_mo)[:, None] + cost_o) - np.array(ch_mk)[:, None]) - cost_k) / CHOICE_TEMPERATURE
        np.subtract.at(logp, np.array(ch_user, dtype=int), np.array(ch_w)[:, None] * np.logaddexp(0.0, -z))
    logp = logp + np.log(PACING_PRIOR)
    logp -= logp.max(axis=1, keepdims=True)
    post = np.exp(logp)
    return np.asarray(post / post.sum(axis=1, keepdims=True))


def _rating_log_likelihood(users: np.ndarray, w: np.ndarray, values: list[float], rows: np.ndarray,
                           m_len: np.ndarray, u_n: int) -> np.ndarray:
    """[user, preferred pacing] log-likelihood of explicit ratings: a rating reads the reader's satisfaction
    (2 s - 1, s = exp(-mismatch) as for choices) through RATING_SD of noise, the pacing perceived as
    uncertain as for repeats. A rating says how much a reply pleased, where a repeat only says it did not.
    RATING_FLAT_SHARE of each rating is taken as saying nothing of pacing (a uniform value): a reader who
    rates the story, not the prose, or rates everything 1 or -1, would otherwise push every user away from
    balanced, which explains an extreme rating worse than either end does."""
    cost = m_len[:, None, None] + RATING_OTHER_COST + PACE_COST[_PACE_STEPS][None, :, :]
    mean = 2.0 * np.exp(-cost) - 1.0  # [rating, perceived q, preferred P]
    dens = np.exp(-0.5 * ((np.asarray(values)[:, None, None] - mean) / RATING_SD) ** 2)
    like = np.einsum("nq,nqp->np", _PERCEIVED[rows], dens)
    like = (1.0 - RATING_FLAT_SHARE) * like + RATING_FLAT_SHARE * _RATING_FLAT
    out = np.zeros((u_n, 3))
    np.add.at(out, users, w[:, None] * np.log(like + 1e-300))
    return out


_PACE_INDEX = {p: k for k, p in enumerate(PACINGS)}
_PACE_STEPS = np.abs(np.arange(3)[:, None] - np.arange(3)[None, :])


def _perceived() -> np.ndarray:
    """What a reader perceives, [row, perceived], for each row of _perceived_row: row 0 knows nothing; then
    (asked, measured) with either unknown. The pacing asked for is followed PACING_FOLLOWED of the time
    (the rest split evenly); the pacing measured from the text is Bayes-combined with it through
    MEASURED_CONFUSION (nothing asked: the measurement alone, from an even prior)."""
    rows = [np.full(3, 1 / 3)]
    for asked in (None, 0, 1, 2):
        for measured in (None, 0, 1, 2):
            if asked is None and measured is None:
                continue
            q = np.full(3, 1 / 3)
            if asked is not None:
                q = np.full(3, (1 - PACING_FOLLOWED) / 2)
                q[asked] = PACING_FOLLOWED
            if measured is not None:
                q = q * MEASURED_CONFUSION[:, measured]
            rows.append(q / q.sum())
    return np.array(rows)


def _perceived_row(r: Mapping[str, Any] | None) -> int:
    """The row of _PERCEIVED for a reply (0: its pacing is not known at all)."""
    if r is None:
        return 0
    ap = r.get("ap")
    asked = _PACE_INDEX.get(ap.get("pacing"), -1) if ap else -1
    measured = _PACE_INDEX.get(r.get("pm"), -1) if "pm" in r else -1
    return (asked + 1) * 4 + measured + 1


# [perceived, measured]: how often pacing_of names each pacing for replies a reader perceives as each
# (6,000 stand-in replies of every length: tests/models/test_features.py checks it stays near this), a
# little more cautious than measured; fast reads unmistakably, slow burn and balanced are confused.
MEASURED_CONFUSION = np.array([[0.88, 0.10, 0.02], [0.18, 0.80, 0.02], [0.01, 0.02, 0.97]])
_PERCEIVED = _perceived()
_PACE_REPEAT_MIX = _PERCEIVED @ PACE_REPEAT[_PACE_STEPS]  # [row, preferred]
_PACE_COST_MIX = _PERCEIVED @ PACE_COST[_PACE_STEPS]


def pacing_repeat(asked: str | None, measured: str | None) -> tuple[float, ...] | None:
    """For each preferred pacing (PACINGS order), the repeat probability a reply adds by its pacing, given the
    pacing it was asked for and the one measured from its text (either may be None); None: both unknown."""
    return _PACING_REPEAT.get((asked, measured))


# Every (asked, measured) pair once: the gateway looks them up on each regeneration.
_PACING_REPEAT = {(a, m): tuple(_PACE_REPEAT_MIX[_perceived_row({"ap": {"pacing": a}, "pm": m})].tolist())
                  for a in (None, *PACINGS) for m in (None, *PACINGS) if a is not None or m is not None}


def _pairs(recs: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    by_id: dict[str, dict[str, Any]] | None = None
    out = []
    n = len(recs)
    for i, r in enumerate(recs):
        if not r.get("alts") or not r.get("c"):
            continue
        by_id = by_id if by_id is not None else {x["id"]: x for x in recs}
        for alt in r["alts"]:
            other = by_id.get(alt)
            if other is not None and other.get("c"):
                out.append((math.log(r["c"]), math.log(other["c"]), FORGET ** (n - 1 - i)))
    return out


def behaviour_features(state: Mapping[str, Any]) -> dict[str, float]:
    beh = state["beh"]
    gaps = beh["gaps"]
    # Shrunk toward a typical human's rate by REPEAT_RATE_PSEUDO replies: over the first few replies a human
    # who regenerates a run of misfits (a short preference, a curator at a turning point) looks like a repeat
    # storm, and a bot mark is never lifted; a storm bot presses several times per reply and stays far out.
    typical = denoise.HUMAN_NORMS["repeat_rate"][0]
    out: dict[str, float] = {"repeat_rate": (beh["presses"] + REPEAT_RATE_PSEUDO * typical)
                             / (state["replies"] + REPEAT_RATE_PSEUDO)}
    if gaps:
        out["log_min_gap"] = math.log(float(statistics.median(gaps)) + 1.0)  # numpy's costs 50x more here
        span_min = max(sum(g for g in gaps if g < 600_000) / 60_000, 0.5)
        out["log_rate"] = math.log(len(gaps) / span_min)
    if beh["judged"] >= 5:
        # Shrunk toward none by a few pseudo-judgements: three quick answers out of six are chance, not a bot.
        out["implausible_share"] = beh["impl"] / (beh["judged"] + IMPLAUSIBLE_PSEUDO)
    return out


# --- Documents ------------------------------------------------------------------------------------
_UNIT = statistics.NormalDist()
# The balance of speech and narration a reader prefers, said to the model (the gateway's note, the profile's
# instructions): under NARRATION_BELOW of the text quoted, mostly narration; over DIALOGUE_ABOVE, mostly
# dialogue (more speech than narration, taken literally); a balance between. Said only when the profile is
# sure of that instruction: the probability that the preferred share lies in the instruction's range, from
# the value and its confidence (the probability of lying within 0.1 of the value; not recalibrated, its ECE
# in the open-loop report is 0.04-0.08) read as a normal, is at least BALANCE_CONFIDENCE. Sure of the range is less than sure of the value: a reader at
# 0.7 +- 0.24 (confidence 0.32) prefers mostly dialogue with probability 0.8.
BALANCE_CONFIDENCE = 0.75
NARRATION_BELOW, DIALOGUE_ABOVE = 0.2, 0.5
_RANGES = {"mostly_narration": (-math.inf, NARRATION_BELOW), "balanced": (NARRATION_BELOW, DIALOGUE_ABOVE),
           "mostly_dialogue": (DIALOGUE_ABOVE, math.inf)}
# A character's dialogue share starts from its user's, at least this unsure (a character may be read otherwise).
CHARACTER_DS_SD = 0.15


def dialogue_balance(value: float, confidence: float) -> str | None:
    """`mostly_dialogue`, `balanced` or `mostly_narration` for a dialogue share and its confidence; None when
    unsure of it (see BALANCE_CONFIDENCE)."""
    if not (math.isfinite(value) and math.isfinite(confidence) and confidence > 0):
        return None
    if value < NARRATION_BELOW:
        best = "mostly_narration"
    else:
        best = "mostly_dialogue" if value > DIALOGUE_ABOVE else "balanced"
    if confidence >= 1:
        return best  # certain (the simulator's truth; a document's confidence rounded up)
    z = _UNIT.inv_cdf(min((1 + confidence) / 2, 1 - 1e-12))
    if z <= 1e-9:
        return None  # a confidence too close to 0 to say anything
    sd = 0.1 / z
    lo, hi = _RANGES[best]
    inside = _UNIT.cdf((hi - value) / sd) - _UNIT.cdf((lo - value) / sd)
    return best if inside >= BALANCE_CONFIDENCE else None


def character_prior(est: Mapping[str, Any]) -> dict[str, float]:
    """The prior of a character's profile: its user's length and dialogue share, no surer than the user's."""
    ds_sd = max(CHARACTER_DS_SD, math.sqrt(max(float(est.get("ds_var") or 0.0), 0.0)))
    return {"mu": est["mu"], "mu_sd": 0.35, "ds": est["ds"], "ds_sd": ds_sd}


def render_conditioning(est: Mapping[str, Any], trust: str, per_token: float = CHARS_PER_TOKEN) -> dict[str, Any]:
    """The short reader-preference note and token budget (per_token: characters per token of the reader's
    replies); only what is confident enough is said."""
    parts = []
    if trust == "normal":
        if est["len_conf"] >= 0.4:
            parts.append(f"replies of about {int(round(est['target'], -1))} characters")
        if est["pacing_scores"][est["pacing_label"]] >= 0.5:
            parts.append({"slow_burn": "slow-burn pacing: linger on moments, let tension build",
                          "balanced": "balanced pacing", "fast": "fast pacing: move the story forward briskly"}
                         [est["pacing_label"]])
        if balance := dialogue_balance(est["ds"], est["ds_conf"]):
            parts.append({"mostly_dialogue": "mostly dialogue", "mostly_narration": "mostly narration",
                          "balanced": "a mix of dialogue and narration"}[balance])
        if est["hook"] >= 0.8:
            parts.append("end on a hook")
    instructions = ("Reader preference: " + "; ".join(parts) + ".") if parts else ""
    tokens = int(math.ceil(est["target"] * TOKEN_HEADROOM / per_token))
    return {"instructions": instructions, "max_completion_tokens": max(1, min(2048, tokens))}


def replies_chars_per_token(closed: list[Mapping[str, Any]], recent: int = 20) -> float:
    """Characters per token of the recent replies: the median of those measured (models/features.py
    chars_per_token, only replies holding CJK text have one) when most of them were, never above
    CHARS_PER_TOKEN (an English reply with a kaomoji measures 3.8); else CHARS_PER_TOKEN."""
    recs = closed[-recent:]
    measured = [r["cpt"] for r in recs if r.get("cpt")]
    if measured and 2 * len(measured) > len(recs):
        return min(CHARS_PER_TOKEN, statistics.median(measured))
    return CHARS_PER_TOKEN


def profile_document(app: str, user_id: str, character_id: str | None, version: int, updated_at: str,
                     state: Mapping[str, Any], est: Mapping[str, Any], replies: int, events_used: int) -> dict[str, Any]:
    def r3(v: float) -> float:
        return round(float(v), 3)

    trust = state["trust"]
    label = est["pacing_label"]
    return {
        "app": app, "user_id": user_id, "character_id": character_id, "version": version, "updated_at": updated_at,
        "evidence": {"replies": replies, "events_used": events_used,
                     "events_discounted": dict(sorted(state["disc"].items()))},
        "reply_length": {"target_chars": int(round(est["target"])),
                         "interval": [int(round(est["interval"][0])), int(round(est["interval"][1]))],
                         "confidence": r3(calibration.apply(calibration.LENGTH, est["len_conf"], replies))},
        "pacing": {"label": label, "scores": {k: r3(v) for k, v in est["pacing_scores"].items()},
                   "confidence": r3(calibration.apply(calibration.PACING, est["pacing_scores"][label], replies)),
                   "posterior": est["pacing_posterior"]},
        "style": {"dialogue_share": {"value": r3(est["ds"]), "confidence": r3(est["ds_conf"])},
                  "hooks": {"value": r3(est["hook"]), "confidence": r3(max(est["hook"], 1 - est["hook"]))}},
        "engagement": {"repeat_rate": r3(est["repeat_rate"]),
                       "repeat_rate_interval": [r3(est["repeat_interval"][0]), r3(est["repeat_interval"][1])]},
        "trust": trust,
        "conditioning": render_conditioning(est, trust, replies_chars_per_token(
            [r for r in state["closed"] if r.get("ch") == character_id] if character_id else state["closed"])),
    }


def hist_buckets(doc: Mapping[str, Any]) -> list[str]:
    """The profile_hist fields this user-level profile counts in (see service/keys.py)."""
    length = min(int(doc["reply_length"]["target_chars"]) // 100 * 100, 2000)
    conf = min(9, int(doc["reply_length"]["confidence"] * 10))
    return [f"len:{length}", f"pacing:{doc['pacing']['label']}", f"conf:{conf}", f"trust:{doc['trust']}"]


def recent_items(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The last MAX_RECENT replies, newest first, as the dashboard and export show them."""
    recs: Iterable[dict[str, Any]] = list(state["closed"]) + list(state["open"].values())
    top = sorted(recs, key=lambda r: (r.get("t") or 0, r["id"]), reverse=True)[:MAX_RECENT]
    out = []
    for r in top:
        item: dict[str, Any] = {"reply_id": r["id"], "t": r.get("t"), "chars": r.get("c"),
                                "applied": r.get("ap"), "outcomes": list(r["o"])}
        if r.get("ds") is not None:
            item["dialogue_share"] = r["ds"]
        if r.get("ch"):
            item["character_id"] = r["ch"]
        out.append(item)
    return out


def summary(state: Mapping[str, Any], est: Mapping[str, Any], features: Mapping[str, float]) -> dict[str, Any]:
    """What the population refresh reads about this user."""
    return {"mu": round(est["mu"], 4), "mu_var": round(est["mu_var"], 5), "ds": round(est["ds"], 4),
            "ds_var": round(est["ds_var"], 5),
            "rr": round(est["repeat_rate"], 4), "n": len(state["closed"]), "trust": state["trust"],
            "f": {k: round(v, 4) for k, v in features.items()}}


def characters_ready(state: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Closed replies per character, for characters with enough of them for a profile of their own."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in state["closed"]:
        if r.get("ch"):
            by.setdefault(r["ch"], []).append(r)
    return {c: rs for c, rs in by.items() if len(rs) >= CHARACTER_MIN_REPLIES}


def update_trust(state: dict[str, Any], pop: Population) -> dict[str, float]:
    feats = behaviour_features(state)
    if state["trust"] == "normal" and denoise.is_bot(feats, pop.norms, state["n"]):
        state["trust"] = "suspect_bot"
    return feats
