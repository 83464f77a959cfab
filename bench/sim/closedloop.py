"""The closed loop (issue 4): users chat through the real gateway to the stand-in and report what they did.

Users are split in two arms by index: `cond` (Attune conditions their requests) and `off` (header
`X-Attune-Conditioning: off`, forwarded unconditioned). Every turn, all users chat at once; each
reacts to the reply it got (its length and the pacing a reader perceives in it, per the stand-in's
`perceived_pacing`), repeats up to three times, and its signals go to POST /v1/events with the
reply id; then the simulator waits until the workers have applied everything before the next turn.

Time: Attune stamps each gateway reply_shown with the real time. The user's signals are stamped at
that time plus the simulated reading and typing time, so they lie up to a minute or two in the
future (the contract accepts up to a day ahead), and reading times stay realistic per reply.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from bench.sim.behaviour import Shown, react
from bench.sim.cluster import Cluster, backlog
from bench.sim.delivery import DeliveryStats, Outbound, plan_batches, send_all
from bench.sim.logged import exported_conditioning, logged_conditioning
from bench.sim.users import Noise, SimUser
from models.features import reply_features

CHARACTER = ("You are Mira, a cartographer in the rain-soaked port town of Vell. You are wry, loyal and "
             "curious; you speak plainly and never break character.")
TURNING_SHARE = 0.12
MAX_REGENERATIONS = 3
STREAM_SHARE = 0.25  # requests made with stream: true (the gateway measures streamed replies on the way)


@dataclass
class ReplyRecord:
    user_id: str
    arm: str
    turn: int
    reply_id: str
    chars: int
    pacing: str
    repeated: bool
    conditioned: str | None  # the X-Attune-Conditioned header


@dataclass
class ClosedLoopResult:
    users: list[SimUser]
    turns: int
    records: list[ReplyRecord] = field(default_factory=list)
    logged: dict[str, dict[str, Any]] = field(default_factory=dict)
    delivery: DeliveryStats = field(default_factory=DeliveryStats)
    errors: Counter[str] = field(default_factory=Counter)
    catch_up: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ceiling: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        return closed_loop_figures(self)

    def as_json(self) -> dict[str, Any]:
        return {"figures": self.figures(), "errors": dict(self.errors), "notes": self.notes,
                "catch_up_seconds_max": max(self.catch_up, default=None),
                "delivery": {"sent": self.delivery.sent, "accepted": self.delivery.accepted,
                             "rejected": dict(self.delivery.rejected)}}


@dataclass
class _State:
    user: SimUser
    arm: str
    session: int = 0
    open: bool = False
    next_chars: int = 40
    history: list[dict[str, str]] = field(default_factory=list)


def _filler(chars: int) -> str:
    words = "I look at the map and ask about the river crossing and the lights we saw last night".split()
    out = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(words[len(out) % len(words)])
    return " ".join(out)[: max(chars, 1)]


async def _chat(client: httpx.AsyncClient, state: _State, messages: list[dict[str, str]], stream: bool
                ) -> tuple[str, str, str | None]:
    """One call to the gateway: (text, reply id, X-Attune-Conditioned)."""
    u = state.user
    headers = {"X-Attune-User": u.user_id, "X-Attune-Session": f"{u.user_id}-s{state.session}",
               "X-Attune-Character": "mira"}
    if state.arm == "off":
        headers["X-Attune-Conditioning"] = "off"
    body = {"model": "M2-her", "messages": messages, "user": u.user_id, "stream": stream}
    if not stream:
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        if r.status_code != 200:
            raise GatewayError(r.status_code, r.text[:300])
        data = r.json()
        return data["choices"][0]["message"]["content"], r.headers.get("x-attune-reply-id", ""), \
            r.headers.get("x-attune-conditioned")
    parts: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise GatewayError(r.status_code, (await r.aread()).decode(errors="replace")[:300])
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = orjson.loads(line[5:])
            if chunk.get("error"):
                raise GatewayError(200, str(chunk["error"])[:300])
            for choice in chunk.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
        return "".join(parts), r.headers.get("x-attune-reply-id", ""), r.headers.get("x-attune-conditioned")


class GatewayError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text}")
        self.status = status


async def _turn(client: httpx.AsyncClient, state: _State, turn: int, rng: np.random.Generator, noise: Noise,
                out: list[Outbound], records: list[ReplyRecord], sem: asyncio.Semaphore) -> None:
    from service.standin import perceived_pacing  # noqa: PLC0415 - G's module; only the closed loop needs it

    u = state.user
    sid = f"{u.user_id}-s{state.session}"

    def emit(t_ms: int, etype: str, **fields: Any) -> None:
        n = len(out)
        ev = {"type": etype, "user_id": u.user_id, "session_id": sid, "character_id": "mira",
              "event_id": f"{u.user_id}-t{turn}-{etype}-{n}-{int(rng.integers(1 << 30))}", **fields}
        out.append(Outbound(t_ms, u.skew_ms, ev))

    if not state.open:
        state.open = True
        emit(int(time.time() * 1000), "session_start")
    messages = [{"role": "system", "name": "Mira", "content": CHARACTER}, *state.history[-4:],
                {"role": "user", "name": "Reader", "content": _filler(state.next_chars)}]
    turning = bool(rng.random() < TURNING_SHARE)
    for regeneration in range(MAX_REGENERATIONS + 1):
        stream = bool(rng.random() < STREAM_SHARE)
        async with sem:
            try:
                text, reply_id, conditioned = await _chat(client, state, messages, stream)
            except httpx.TransportError:  # e.g. a keep-alive connection the server closed: an app retries once
                text, reply_id, conditioned = await _chat(client, state, messages, stream)
        shown_ms = int(time.time() * 1000)
        feats = reply_features(text)
        shown = Shown(reply_id, len(text), perceived_pacing(text), float(feats["dialogue_share"]), turning)
        reaction = react(u, shown, rng, noise, may_repeat=regeneration < MAX_REGENERATIONS)
        records.append(ReplyRecord(u.user_id, state.arm, turn, reply_id, len(text), shown.pacing, reaction.repeated,
                                   conditioned))
        if reply_id:
            for sig in reaction.signals:
                emit(shown_ms + sig.at_ms, sig.type, reply_id=reply_id, **sig.fields)
        if not reaction.repeated:
            break
    end_ms = shown_ms + reaction.duration_ms
    state.history = [*state.history, messages[-1], {"role": "assistant", "name": "Mira", "content": text[:600]}][-4:]
    msg = next((s for s in reaction.signals if s.type == "user_message"), None)
    state.next_chars = int(msg.fields["chars"]) if msg else max(2, int(u.message_chars))
    if reaction.leaves:
        emit(end_ms, "session_end")
    if reaction.leaves or reaction.away:
        state.open = False
        state.session += 1
        state.history = []


async def run_closed_loop(cluster: Cluster, users: list[SimUser], turns: int, rng: np.random.Generator, noise: Noise,
                          app: str, tick: Callable[[int], None] | None = None, concurrency: int = 32,
                          catch_up_timeout: float = 60.0) -> ClosedLoopResult:
    result = ClosedLoopResult(users, turns, notes=list(cluster.notes))
    if not cluster.standin_url:
        result.notes.append("no stand-in: the closed loop did not run")
        return result
    result.ceiling = ceiling(users, np.random.default_rng(int(rng.integers(1 << 30))), noise, replies=turns)
    key = cluster.app_key(app, ["ingest", "read", "condition", "manage"])
    states = [_State(u, "cond" if i % 2 == 0 else "off") for i, u in enumerate(users)]
    sem = asyncio.Semaphore(concurrency)
    rclient = redis.Redis.from_url(cluster.redis_url or "")
    has_workers = not any("no worker" in n for n in cluster.notes)
    try:
        async with httpx.AsyncClient(base_url=cluster.api_url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
            for turn in range(1, turns + 1):
                out: list[Outbound] = []
                results = await asyncio.gather(
                    *(_turn(client, s, turn, rng, noise, out, result.records, sem) for s in states),
                    return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException):
                        result.errors[f"{type(r).__name__}: {str(r)[:120]}"] += 1
                if result.errors and not result.records:
                    result.notes.append(f"the gateway failed on every call at turn {turn}; stopped")
                    break
                batches, stats = plan_batches(out, rng, noise)
                await send_all(client, batches, stats)
                result.delivery.add(stats)
                if has_workers:
                    t0 = time.monotonic()
                    while not (bl := await asyncio.to_thread(backlog, rclient, cluster.partitions)).drained:
                        if time.monotonic() - t0 > catch_up_timeout:
                            result.notes.append(f"turn {turn}: workers behind after {catch_up_timeout:.0f} s "
                                                f"(undelivered {bl.entries}, pending {bl.pending})")
                            break
                        await asyncio.sleep(0.05)
                    result.catch_up.append(time.monotonic() - t0)
                if tick:
                    tick(len(states))
            result.logged = await asyncio.to_thread(logged_conditioning, rclient, cluster.partitions, app)
            result.logged.update(await exported_conditioning(client, [s.user.user_id for s in states if s.arm == "cond"]))
        result.notes.extend(cluster.alive())
    finally:
        rclient.close()
    return result


def ceiling(users: list[SimUser], rng: np.random.Generator, noise: Noise, replies: int = 40) -> dict[str, float]:
    """Repeat rates with perfect knowledge (the true pacing, length and balance of speech always applied) and
    with none, from the stand-in's own reply model in this process: what the closed loop could reach at best
    in this simulator."""
    import random  # noqa: PLC0415

    from models.conditioning import max_tokens_for, render_note  # noqa: PLC0415
    from models.profile import dialogue_balance  # noqa: PLC0415
    from service.standin import compose, perceived_pacing  # noqa: PLC0415

    local = random.Random(int(rng.integers(1 << 30)))
    out = {}
    for arm in ("oracle", "off"):
        repeated = shown = 0
        for u in users:
            for _ in range(replies):
                messages = [{"role": "system", "name": "Mira", "content": CHARACTER}]
                max_tokens = None
                if arm == "oracle":
                    target = int(round(u.preferred_chars / 10) * 10)
                    balance = dialogue_balance(u.dialogue, 1.0)
                    messages.append({"role": "system", "name": "Attune",
                                     "content": render_note(u.pacing, target, balance)})
                    max_tokens = max_tokens_for(target)
                reply = compose(messages, max_tokens, local)
                text = reply["text"]
                seen = Shown("x", len(text), perceived_pacing(text), float(reply_features(text)["dialogue_share"]),
                             bool(rng.random() < TURNING_SHARE))
                repeated += react(u, seen, rng, noise).repeated
                shown += 1
        out[f"repeat_ceiling[{arm}]"] = repeated / shown
    out["reduction_ceiling"] = 1 - out["repeat_ceiling[oracle]"] / out["repeat_ceiling[off]"]
    return out


def _rate(recs: list[ReplyRecord]) -> float:
    return sum(r.repeated for r in recs) / len(recs) if recs else float("nan")


def closed_loop_figures(res: ClosedLoopResult) -> dict[str, float]:
    half = res.turns // 2
    truth = {u.user_id: u for u in res.users}
    out: dict[str, float] = {}
    for arm in ("cond", "off"):
        recs = [r for r in res.records if r.arm == arm]
        late = [r for r in recs if r.turn > half]
        out[f"repeat_early[{arm}]"] = _rate([r for r in recs if r.turn <= half])
        out[f"repeat_late[{arm}]"] = _rate(late)
        out[f"replies_late[{arm}]"] = float(len(late))
        out[f"len_err_late[{arm}]"] = float(np.median([abs(r.chars / truth[r.user_id].preferred_chars - 1)
                                                       for r in late])) if late else float("nan")
        out[f"pacing_match_late[{arm}]"] = (sum(r.pacing == truth[r.user_id].pacing for r in late) / len(late)
                                            if late else float("nan"))
        out[f"conditioned_header_late[{arm}]"] = (sum(r.conditioned == "true" for r in late) / len(late)
                                                  if late else float("nan"))
    # What the gateway applied, against the truth (routes a shortfall: learning, exploration or the model).
    late_cond = [(res.logged.get(r.reply_id) or {}, truth[r.user_id]) for r in res.records
                 if r.arm == "cond" and r.turn > half]
    paced = [(c, u) for c, u in late_cond if c.get("pacing")]
    out["applied_pacing_right"] = sum(c["pacing"] == u.pacing for c, u in paced) / len(paced) if paced else float("nan")
    targeted = [(c, u) for c, u in late_cond if isinstance(c.get("target_chars"), int | float)]
    out["applied_target_share"] = len(targeted) / len(late_cond) if late_cond else float("nan")
    out["applied_target_err"] = (float(np.median([abs(c["target_chars"] / u.preferred_chars - 1) for c, u in targeted]))
                                 if targeted else float("nan"))
    off = out["repeat_late[off]"]
    out["reduction_late"] = 1 - out["repeat_late[cond]"] / off if off and not math.isnan(off) else float("nan")
    out.update(ips_figures(res, half))
    out.update(res.ceiling)
    return out


def ips_figures(res: ClosedLoopResult, half: int) -> dict[str, float]:
    """Offline estimate of the greedy conditioned policy (apply what the profile says, never explore).

    From the conditioned arm's late replies as the gateway logged them: a reply whose choice was not an
    exploration is one the greedy policy would have made too, with logged probability `propensity`;
    IPS = sum(1[not explored] * repeated / propensity) / n, SNIPS normalises by the weights instead of n.
    """
    rows = [(res.logged.get(r.reply_id), r.repeated) for r in res.records if r.arm == "cond" and r.turn > half]
    logged = [(c, rep) for c, rep in rows if c and isinstance(c.get("propensity"), int | float)]
    out = {"ips_logged_share": len(logged) / len(rows) if rows else float("nan")}
    greedy = [(1.0 / float(c["propensity"]), rep) for c, rep in logged if not c.get("explored")]
    n = len(logged)
    out["explored_share"] = 1 - len(greedy) / n if n else float("nan")
    out["ips_greedy"] = sum(w * rep for w, rep in greedy) / n if n else float("nan")
    wsum = sum(w for w, _ in greedy)
    out["snips_greedy"] = sum(w * rep for w, rep in greedy) / wsum if wsum else float("nan")
    out["onpolicy_greedy"] = sum(rep for _, rep in greedy) / len(greedy) if greedy else float("nan")
    return out


def closed_loop_table(res: ClosedLoopResult, header: str) -> str:
    f = res.figures()
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    half = res.turns // 2
    lines = [header, "", f"{'':<44}{'conditioned':>12}{'unconditioned':>15}"]
    for key, label in ((f"repeat_early", f"repeat rate, turns 1-{half}"),
                       ("repeat_late", f"repeat rate, turns {half + 1}-{res.turns}"),
                       ("len_err_late", "median |chars/preferred - 1|, late turns"),
                       ("pacing_match_late", "replies in the preferred pacing, late"),
                       ("conditioned_header_late", "X-Attune-Conditioned: true, late"),
                       ("replies_late", "replies shown, late turns")):
        lines.append(f"{label:<44}{fmt(f[f'{key}[cond]']):>12}{fmt(f[f'{key}[off]']):>15}")
    red = f["reduction_late"]
    verdict = "n/a" if math.isnan(red) else ("PASS" if red >= 0.35 else "FAIL")
    lines.append(f"{'repeat reduction, late turns':<44}{fmt(red):>12}   goal >= 0.35   {verdict}")
    if "reduction_ceiling" in f:
        lines.append(f"{'ceiling: true pacing+length+dialogue applied':<44}{fmt(f['repeat_ceiling[oracle]']):>12}"
                     f"{fmt(f['repeat_ceiling[off]']):>15}   reduction {fmt(f['reduction_ceiling'])}")
    lines.append("")
    lines.append(f"offline estimate (greedy conditioned policy, from the gateway's logged propensities, late turns): "
                 f"IPS {fmt(f['ips_greedy'])}, SNIPS {fmt(f['snips_greedy'])}; measured: conditioned arm "
                 f"{fmt(f['repeat_late[cond]'])} (with exploration), its non-explored replies "
                 f"{fmt(f['onpolicy_greedy'])}; explored share {fmt(f['explored_share'])}, "
                 f"logged share {fmt(f['ips_logged_share'])}")
    lines.append(f"what the gateway applied in late turns: pacing = the user's true pacing in "
                 f"{fmt(f['applied_pacing_right'])} of replies; a length target in {fmt(f['applied_target_share'])}, "
                 f"median |target/preferred - 1| {fmt(f['applied_target_err'])}")
    if res.catch_up:
        lines.append(f"workers caught up after each turn in at most {max(res.catch_up):.2f} s "
                     f"(median {float(np.median(res.catch_up)):.2f} s)")
    d = res.delivery
    lines.append(f"delivery: {d.sent} events sent, {d.accepted} accepted, {d.duplicates} duplicates, "
                 f"rejected {dict(d.rejected) or 0}, HTTP errors {dict(d.http_errors) or 0}")
    for err, n in res.errors.most_common(5):
        lines.append(f"error x{n}: {err}")
    for note in res.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
