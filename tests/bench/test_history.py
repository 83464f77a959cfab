"""Open-loop histories: exact reply counts per checkpoint, valid events, timing that survives clock skew."""

from __future__ import annotations

import time

import numpy as np

from bench.sim.delivery import Outbound, _stamp, plan_batches
from bench.sim.history import MAX_SPAN_MS, history_span, open_loop_history
from bench.sim.openloop import build_histories
from bench.sim.users import Noise, make_population
from models.events import validate_event


def test_each_stage_ends_at_its_checkpoint() -> None:
    rng = np.random.default_rng(7)
    for user in make_population(30, rng, bot_share=0.1):
        stages = open_loop_history(user, [10, 20, 40], rng, Noise())
        counts = [sum(ev["type"] == "reply_shown" for _, ev in st.events) for st in stages]
        assert counts == [10, 10, 20]
        assert [len(st.shown) for st in stages] == counts
        assert history_span(stages) < MAX_SPAN_MS + 86_400_000


def test_every_event_passes_the_api_validation_and_keeps_its_time() -> None:
    rng = np.random.default_rng(8)
    users = make_population(20, rng)
    now = int(time.time() * 1000)
    histories = build_histories(users, [10, 20], rng, Noise(), now)
    skew = {u.user_id: u.skew_ms for u in users}
    ids = set()
    for uid, stages in histories.items():
        for st in stages:
            for t, ev in st.events:
                stamped = _stamp(Outbound(t, skew[uid], ev), now, as_iso=bool(len(ids) % 2))
                out = validate_event(stamped, received_ms=now, sent_at_ms=None, max_future_ms=86_400_000,
                                     max_age_ms=7 * 86_400_000)
                assert abs(out["t"] - t) <= 1  # skew corrected: the event lands at its true time
                assert t < now
                ids.add(ev["event_id"])
    assert len(ids) == sum(len(st.events) for stages in histories.values() for st in stages)


def test_plan_batches_sends_everything_with_some_late_and_some_twice() -> None:
    rng = np.random.default_rng(9)
    items = [Outbound(i, 0, {"event_id": f"e{i}"}) for i in range(5000)]
    batches, stats = plan_batches(items, rng, Noise(0.2), batch=100)
    sent = [o.event["event_id"] for b in batches for o in b]
    assert set(sent) == {f"e{i}" for i in range(5000)}
    assert len(sent) == 5000 + stats.resent
    assert 50 < stats.resent < 150 and 50 < stats.late < 150
