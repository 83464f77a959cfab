"""The printed report: figures per checkpoint, next to the naive baseline, with each goal's pass or fail."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.sim.openloop import OpenLoopResult


@dataclass(frozen=True)
class Goal:
    key: str
    text: str
    at: int | None  # a checkpoint (replies per user), or None: at every checkpoint
    op: Callable[[float, float], bool]
    limit: float

    def check(self, by_replies: dict[int, dict[str, float]]) -> str:
        points = [self.at] if self.at is not None else list(by_replies)
        values = [by_replies[p][self.key] for p in points if p in by_replies]
        if not values:
            return "n/a"
        if any(v is None or math.isnan(v) for v in values):
            return "FAIL (no value)"
        return "PASS" if all(self.op(v, self.limit) for v in values) else "FAIL"


OPEN_GOALS = (
    Goal("len_err_attune", "<= 0.25 at 20", 20, operator.le, 0.25),
    Goal("len_ratio", "<= 0.6 at 20", 20, operator.le, 0.6),
    Goal("pacing_acc_attune", ">= 0.75 at 40", 40, operator.ge, 0.75),
    Goal("ece_pacing", "<= 0.1 at each", None, operator.le, 0.1),
    Goal("ece_length", "<= 0.1 at each", None, operator.le, 0.1),
    Goal("honest_flagged", "< 0.01 at each", None, operator.lt, 0.01),
)

ROWS = (
    ("served", "profiles served (honest users)"),
    ("len_err_attune", "length: median rel. error, Attune"),
    ("len_err_naive", "length: median rel. error, naive"),
    ("len_ratio", "length: Attune / naive"),
    ("len_coverage", "length: truth inside interval"),
    ("mean_conf_length", "length: mean confidence"),
    ("ece_length", "length: ECE of confidence"),
    ("pacing_acc_attune", "pacing: accuracy, Attune"),
    ("pacing_acc_naive", "pacing: accuracy, naive"),
    ("pacing_acc_oracle", "pacing: accuracy, repeats-only oracle"),
    ("mean_conf_pacing", "pacing: mean confidence"),
    ("ece_pacing", "pacing: ECE of confidence"),
    ("ds_err_attune", "dialogue: median abs. error, Attune"),
    ("ds_err_naive", "dialogue: median abs. error, naive"),
    ("mean_conf_dialogue", "dialogue: mean confidence"),
    ("ece_dialogue", "dialogue: ECE of confidence"),
    ("bots_caught", "bots caught (trust suspect_bot)"),
    ("honest_flagged", "honest users marked as bots"),
)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}"


def open_loop_table(result: OpenLoopResult, header: str) -> str:
    by = {c.replies: c.figures for c in result.checkpoints}
    cols = list(by)
    goals = {g.key: g for g in OPEN_GOALS}
    width = 36
    lines = [header, "", f"{'replies per user':<{width}}" + "".join(f"{c:>8}" for c in cols) + "   goal            result"]
    lines.append("-" * len(lines[-1]))
    for key, label in ROWS:
        row = f"{label:<{width}}" + "".join(f"{_fmt(by[c].get(key)):>8}" for c in cols)
        g = goals.get(key)
        if g:
            row += f"   {g.text:<15} {g.check(by)}"
        lines.append(row)
    catch = [c.catch_up for c in result.checkpoints]
    lines.append(f"{'seconds until workers caught up':<{width}}"
                 + "".join(f"{(f'{x.seconds:.1f}' if x else '-'):>8}" for x in catch))
    lines.append("")
    last = result.checkpoints[-1].figures if result.checkpoints else {}
    diag = [f"{k}={_fmt(v)}" for k, v in last.items() if "[" in k]
    if diag:
        lines.append(f"where the error sits (at {cols[-1]} replies): " + ", ".join(diag))
    d = result.delivery
    lines.append(f"delivery: {d.sent} events sent ({d.resent} resent on purpose, {d.late} late on purpose), "
                 f"{d.accepted} accepted, {d.duplicates} duplicates, rejected {dict(d.rejected) or 0}, "
                 f"HTTP errors {dict(d.http_errors) or 0}")
    if result.checkpoints and all(c.figures.get("served") == 0 for c in result.checkpoints):
        lines.append("NO PROFILE SERVED: every GET /v1/users/{id}/profile answered 404; Attune's figures are '-'")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def goal_summary(result: OpenLoopResult) -> dict[str, str]:
    by = {c.replies: c.figures for c in result.checkpoints}
    return {f"{g.key} {g.text}": g.check(by) for g in OPEN_GOALS}


def as_json(result: OpenLoopResult) -> dict[str, Any]:
    return {
        "checkpoints": [{"replies": c.replies, "events": c.events, "figures": c.figures,
                         "catch_up_seconds": c.catch_up.seconds if c.catch_up else None} for c in result.checkpoints],
        "goals": goal_summary(result),
        "delivery": {"sent": result.delivery.sent, "accepted": result.delivery.accepted,
                     "duplicates": result.delivery.duplicates, "rejected": dict(result.delivery.rejected),
                     "http_errors": {str(k): v for k, v in result.delivery.http_errors.items()}},
        "notes": result.notes,
    }
