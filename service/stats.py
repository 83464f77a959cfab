"""The operators' figures: read the bounded, expiring aggregates and assemble them into one JSON document.

Reads only per-app aggregates (minute or hour counter hashes, the profile histogram, the workers'
heartbeats, stream and group summaries): the cost depends on the window and the partition count,
never on the number of users. Windows up to 6 h read minute hashes (at most 360), longer windows
read hour hashes (at most 168 for 7 days).
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from service import keys
from service.errors import BadRequest
from service.store import Store, _guard

WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
_WINDOW = re.compile(r"^(\d{1,4})([mhd])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = 7 * 86400
MINUTE_RESOLUTION_UP_TO = 6 * 3600
MAX_POINTS = 120  # points per plotted series; finer buckets are summed into this many


@dataclass(frozen=True, slots=True)
class Window:
    label: str
    seconds: int
    resolution: int  # seconds per stored bucket read: 60 or 3600
    step: int  # seconds per plotted point (a multiple of resolution)


def parse_window(text: str | None) -> Window:
    """'15m', '1h', '6h', '24h', '7d' (any N followed by m, h or d, from 5 minutes to 7 days)."""
    label = (text or "1h").strip().lower()
    m = _WINDOW.fullmatch(label)
    if not m:
        raise BadRequest(f"window {label[:20]!r} is not understood; use a number and a unit, one of "
                         f"{', '.join(WINDOWS)}", code="invalid_window")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if not 300 <= seconds <= MAX_WINDOW:
        raise BadRequest(f"window {label!r} is out of range; it must lie between 5m and 7d (the counters "
                         f"are kept {keys.STATS_TTL_SECONDS // 86400} days)", code="invalid_window")
    resolution = 60 if seconds <= MINUTE_RESOLUTION_UP_TO else 3600
    buckets = math.ceil(seconds / resolution)
    step = resolution * max(1, math.ceil(buckets / MAX_POINTS))
    return Window(label, seconds, resolution, step)


def _num(field: str) -> float:
    try:
        return float(field)
    except ValueError:
        return math.inf


def percentile_from_histogram(buckets: dict[str, int], q: float) -> float | None:
    """The upper bound (ms) of the bucket where the cumulative count reaches q; None without data.

    Bucket fields name their upper bound in ms ('upstream:lat:250' = up to 250 ms); 'inf' or any
    non-number is the overflow bucket, reported as the largest finite bound.
    """
    items = sorted(((_num(k), n) for k, n in buckets.items() if n > 0), key=lambda kv: kv[0])
    total = sum(n for _, n in items)
    if not total:
        return None
    need = q * total
    finite = [b for b, _ in items if b != math.inf]
    running = 0
    for bound, n in items:
        running += n
        if running >= need:
            if bound == math.inf:
                return max(finite) if finite else None
            return bound
    return finite[-1] if finite else None


def _decode_hash(raw: dict[Any, Any] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in (raw or {}).items():
        try:
            out[k.decode() if isinstance(k, bytes) else k] = int(v)
        except (TypeError, ValueError):
            continue
    return out


async def read_counters(store: Store, app: str, window: Window, now: float) -> tuple[list[int], list[dict[str, int]]]:
    """Counter hashes over the window, summed into plotted points: (point start times, counters per point)."""
    res = window.resolution
    last = int(now // res)
    first = int((now - window.seconds) // res) + 1
    names = [keys.stats_minute(app, b) if res == 60 else keys.stats_hour(app, b) for b in range(first, last + 1)]
    pipe = store.redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    raw = await _guard(pipe.execute())
    # Align points to the step so a refresh does not shift every bucket's contents.
    start_point = (first * res // window.step) * window.step
    n_points = (last * res - start_point) // window.step + 1
    times = [start_point + i * window.step for i in range(n_points)]
    points: list[dict[str, int]] = [defaultdict(int) for _ in range(n_points)]
    for i, h in enumerate(raw):
        idx = ((first + i) * res - start_point) // window.step
        for k, v in _decode_hash(h).items():
            points[idx][k] += v
    return times, [dict(p) for p in points]


def _series(points: list[dict[str, int]], field: str) -> list[int]:
    return [p.get(field, 0) for p in points]


def _group(points: list[dict[str, int]], prefix: str) -> dict[str, list[int]]:
    names = sorted({k[len(prefix):] for p in points for k in p if k.startswith(prefix)})
    return {n: _series(points, prefix + n) for n in names}


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _traffic(points: list[dict[str, int]], minutes: float) -> dict[str, Any]:
    accepted = _group(points, "accepted:")
    rejected = _group(points, "rejected:")
    duplicate = _series(points, "duplicate")
    total_acc = sum(sum(s) for s in accepted.values())
    total_rej = sum(sum(s) for s in rejected.values())
    total_dup = sum(duplicate)
    received = total_acc + total_rej + total_dup
    return {
        "accepted": accepted, "duplicate": duplicate, "rejected": rejected,
        "totals": {"accepted": total_acc, "duplicate": total_dup, "rejected": total_rej, "received": received,
                   "accepted_by_type": {k: sum(v) for k, v in accepted.items()},
                   "rejected_by_reason": {k: sum(v) for k, v in rejected.items()}},
        "accepted_per_minute": round(total_acc / minutes, 2) if minutes else 0.0,
        "rejected_share": _ratio(total_rej, received),
    }


def _loop(points: list[dict[str, int]]) -> dict[str, Any]:
    rc, ru = _series(points, "replies:cond"), _series(points, "replies:uncond")
    pc, pu = _series(points, "repeats:cond"), _series(points, "repeats:uncond")
    num, den = sum(_series(points, "ips:num")), sum(_series(points, "ips:den"))
    rate_c, rate_u = _ratio(sum(pc), sum(rc)), _ratio(sum(pu), sum(ru))
    lat = _group(points, "upstream:lat:")
    lat_totals = {k: sum(v) for k, v in lat.items()}
    requests = _series(points, "upstream:requests")
    errors = _group(points, "upstream:error:")
    err_total = sum(sum(v) for v in errors.values())
    return {
        "repeat_rate": {"cond": [_ratio(a, b) for a, b in zip(pc, rc, strict=True)],
                        "uncond": [_ratio(a, b) for a, b in zip(pu, ru, strict=True)]},
        "replies": {"cond": rc, "uncond": ru},
        "totals": {"replies_cond": sum(rc), "repeats_cond": sum(pc), "replies_uncond": sum(ru),
                   "repeats_uncond": sum(pu), "rate_cond": rate_c, "rate_uncond": rate_u,
                   "delta": round(rate_c - rate_u, 4) if rate_c is not None and rate_u is not None else None},
        # ips:num / ips:den are x1e6 sums of reward/propensity and 1/propensity (reward: not repeated)
        # over non-exploring conditioned replies: the self-normalised IPS estimate of the greedy policy.
        "ips": {"estimate": _ratio(num, den), "num": num / 1e6, "den": den / 1e6,
                "series": [_ratio(a, b) for a, b in zip(_series(points, "ips:num"), _series(points, "ips:den"), strict=True)]},
        "upstream": {
            "requests": requests, "errors": errors,
            "totals": {"requests": sum(requests), "errors": err_total,
                       "errors_by_code": {k: sum(v) for k, v in errors.items()}},
            "error_rate": _ratio(err_total, sum(requests)),
            "latency_buckets": dict(sorted(lat_totals.items(), key=lambda kv: _num(kv[0]))),
            "p50_ms": percentile_from_histogram(lat_totals, 0.5),
            "p99_ms": percentile_from_histogram(lat_totals, 0.99),
            "p50_series": [percentile_from_histogram({k: v[i] for k, v in lat.items()}, 0.5) for i in range(len(points))],
            "p99_series": [percentile_from_histogram({k: v[i] for k, v in lat.items()}, 0.99) for i in range(len(points))],
        },
    }


def _id_ms(entry_id: Any) -> int | None:
    if entry_id is None:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    head = text.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def read_workers(store: Store, partitions: int, heartbeat_s: float, now: float) -> dict[str, Any]:
    """Workers (heartbeats and their info hashes) and every partition's lag, pending and dead letters."""
    r = store.redis
    now_ms = int(now * 1000)
    pipe = r.pipeline(transaction=False)
    pipe.zrange(keys.WORKERS, 0, 199, withscores=True)
    for p in range(partitions):
        pipe.xlen(keys.stream(p))
        pipe.xinfo_stream(keys.stream(p))
        pipe.xinfo_groups(keys.stream(p))
        pipe.xpending(keys.stream(p), keys.CONSUMER_GROUP)
        pipe.xlen(keys.dead_letters(p))
    res = await _guard(pipe.execute(raise_on_error=False))
    members = res[0] if not isinstance(res[0], Exception) else []
    parts = []
    for p in range(partitions):
        length, info, groups, pending, dead = res[1 + 5 * p: 6 + 5 * p]
        length = length if isinstance(length, int) else 0
        dead = dead if isinstance(dead, int) else 0
        group = None
        if isinstance(groups, list):
            group = next((g for g in groups if _s(g.get("name", b"")) == keys.CONSUMER_GROUP), None)
        pend = pending if isinstance(pending, dict) else {}
        n_pending = int(pend.get("pending") or 0)
        oldest_pending_ms = _id_ms(pend.get("min")) if n_pending else None
        last_id = info.get("last-generated-id") if isinstance(info, dict) else None
        delivered = group.get("last-delivered-id") if group else None
        lag = group.get("lag") if group else None  # Redis 7; None on 6.2
        parts.append({"partition": p, "length": length, "pending": n_pending, "dead_letters": dead,
                      "has_group": group is not None, "last_id": last_id, "delivered": delivered, "lag": lag,
                      "oldest_pending_age_s": round((now_ms - oldest_pending_ms) / 1000, 1) if oldest_pending_ms else None})
    # Entries not yet delivered to any worker: the oldest one's age is the loop's true lag.
    pipe = r.pipeline(transaction=False)
    probes = []
    for part in parts:
        if part["length"] == 0:
            continue
        if _s(part["last_id"] or b"0-0") == _s(part["delivered"] or b"0-0") and part["has_group"]:
            continue
        start = "(" + _s(part["delivered"]) if part["has_group"] and part["delivered"] else "-"
        cap = 1001 if part["lag"] is None else 1
        pipe.xrange(keys.stream(part["partition"]), min=start, max="+", count=cap)
        probes.append(part)
    undelivered = await _guard(pipe.execute(raise_on_error=False)) if probes else []
    for part, entries in zip(probes, undelivered, strict=True):
        entries = entries if isinstance(entries, list) else []
        if entries:
            first_ms = _id_ms(entries[0][0])
            part["oldest_undelivered_age_s"] = round((now_ms - first_ms) / 1000, 1) if first_ms else None
        if part["lag"] is None:
            part["lag"] = min(len(entries), 1000)
            part["lag_capped"] = len(entries) > 1000
    for part in parts:
        part.setdefault("oldest_undelivered_age_s", None)
        part["lag"] = int(part["lag"] or 0)
        for k in ("last_id", "delivered", "has_group"):
            part.pop(k)

    workers = await _worker_list(store, members, heartbeat_s, now_ms)
    ages = [a for p in parts for a in (p["oldest_pending_age_s"], p["oldest_undelivered_age_s"]) if a is not None]
    alive = [w for w in workers if w["alive"]]
    return {
        "alive": len(alive), "known": len(workers), "workers": workers,
        "throughput_eps": round(sum(w["events_per_second"] or 0 for w in alive), 2),
        "pending": sum(p["pending"] for p in parts), "lag": sum(p["lag"] for p in parts),
        "lag_capped": any(p.get("lag_capped") for p in parts),
        "oldest_unprocessed_age_s": max(ages) if ages else 0.0,
        "dead_letters": sum(p["dead_letters"] for p in parts), "stream_length": sum(p["length"] for p in parts),
        "partitions": parts,
    }


async def _worker_list(store: Store, members: list[Any], heartbeat_s: float, now_ms: int) -> list[dict[str, Any]]:
    pipe = store.redis.pipeline(transaction=False)
    for member, _ in members:
        pipe.hgetall(keys.worker_info(_s(member)))
    infos = await _guard(pipe.execute()) if members else []
    out = []
    for (member, score), info in zip(members, infos, strict=True):
        d = {_s(k): _s(v) for k, v in (info or {}).items()}
        seen_ago = round((now_ms - score) / 1000, 1)

        def num(name: str, d: dict[str, str] = d) -> float | None:
            try:
                return float(d[name])
            except (KeyError, ValueError):
                return None

        out.append({"id": _s(member), "alive": seen_ago <= heartbeat_s, "last_seen_s_ago": seen_ago,
                    "pid": d.get("pid"), "started_at": d.get("started_at"), "partitions": d.get("partitions"),
                    "applied_total": num("applied_total"),
                    "events_per_second": num("events_per_second"), "pending": num("pending")})
    out.sort(key=lambda w: (not w["alive"], w["id"]))
    return out


def _profiles(hist: dict[str, int], users: int, active: int) -> dict[str, Any]:
    def group(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: max(0, v) for k, v in hist.items() if k.startswith(prefix)}

    lengths = group("len:")
    length = [{"bucket": k, "count": v} for k, v in sorted(lengths.items(), key=lambda kv: _num(kv[0]))]
    conf = group("conf:")
    confidence = [conf.get(str(d), 0) for d in range(10)]
    trust = group("trust:")
    bots = sum(v for k, v in trust.items() if "bot" in k)
    profiled = sum(trust.values()) or sum(group("pacing:").values())
    return {"users": users, "active_users": active, "profiled": profiled, "length": length,
            "pacing": group("pacing:"), "confidence": confidence, "trust": trust, "bots": bots,
            "bot_share": _ratio(bots, profiled)}


def health(workers: dict[str, Any], loop: dict[str, Any], traffic: dict[str, Any]) -> dict[str, Any]:
    """The headline: each check ok, warn or bad, with the figure and what it means."""
    checks = []

    def check(name: str, status: str, value: str, detail: str) -> None:
        checks.append({"name": name, "status": status, "value": value, "detail": detail})

    alive = workers["alive"]
    check("Workers", "ok" if alive else "bad", f"{alive} alive",
          "no worker heartbeat: events are not being learned from" if not alive
          else f"{workers['throughput_eps']:,.0f} events/s applied"
          + (f"; {workers['known'] - alive} stopped" if workers["known"] > alive else ""))
    age = workers["oldest_unprocessed_age_s"] or 0.0
    check("Lag", "ok" if age < 30 else "warn" if age < 300 else "bad", _age(age),
          f"age of the oldest unprocessed event; {workers['lag']:,}{'+' if workers['lag_capped'] else ''} waiting, "
          f"{workers['pending']:,} in flight")
    dead = workers["dead_letters"]
    check("Dead letters", "ok" if dead == 0 else "warn", f"{dead:,}",
          "no event given up on" if dead == 0 else "events workers gave up on: inspect the dead-letter streams")
    up = loop["upstream"]
    rate = up["error_rate"]
    calls = up["totals"]["requests"]
    level = "ok" if not rate or rate < 0.01 else "warn" if rate < 0.05 or calls < 20 else "bad"  # 1 of 5 is no outage
    check("M2-her errors", level, "no calls" if rate is None else f"{rate:.1%}",
          f"of {calls:,} calls to M2-her" + (" (few calls)" if rate and calls < 20 else ""))
    t = loop["totals"]
    delta = t["delta"]
    enough = min(t["replies_cond"], t["replies_uncond"]) >= 30
    check("Repeat rate", "ok" if delta is None or not enough or delta <= 0.01 else "warn",
          "n/a" if delta is None else f"{delta * 100:+.1f} pts",
          "needs conditioned and unconditioned replies" if delta is None else
          f"conditioned {t['rate_cond']:.1%} vs unconditioned {t['rate_uncond']:.1%}"
          + ("" if enough else " (too few replies to judge)"))
    rej = traffic["rejected_share"]
    check("Rejected events", "ok" if not rej or rej < 0.05 else "warn",
          "0%" if not rej else f"{rej:.1%}", f"of {traffic['totals']['received']:,} events received")
    order = {"ok": 0, "warn": 1, "bad": 2}
    status = max((c["status"] for c in checks), key=order.__getitem__)
    reasons = [f"{c['name']}: {c['value']}" for c in checks if c["status"] != "ok"]
    return {"status": status, "reasons": reasons, "checks": checks}


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def collect(store: Store, app: str, window: Window, *, partitions: int, heartbeat_s: float,
                  now: float | None = None) -> dict[str, Any]:
    """Every figure of the dashboard for one app over one window."""
    now = time.time() if now is None else now
    times, points = await read_counters(store, app, window, now)
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(keys.profile_hist(app))
    pipe.zcard(keys.app_users(app))
    pipe.zcount(keys.app_users(app), int((now - window.seconds) * 1000), "+inf")
    hist, users, active = await _guard(pipe.execute())
    workers = await read_workers(store, partitions, heartbeat_s, now)
    traffic = _traffic(points, window.seconds / 60)
    loop = _loop(points)
    denoise = _group(points, "denoise:")
    return {
        "app": app, "window": window.label, "window_seconds": window.seconds, "step_seconds": window.step,
        "resolution": "minute" if window.resolution == 60 else "hour", "generated_at": int(now * 1000),
        "t": times,
        "health": health(workers, loop, traffic),
        "traffic": traffic,
        "workers": {**workers, "applied": _series(points, "worker:applied")},
        "denoising": {"steps": denoise, "totals": {k: sum(v) for k, v in denoise.items()}},
        "profiles": _profiles(_decode_hash(hist), int(users), int(active)),
        "loop": loop,
    }


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)
