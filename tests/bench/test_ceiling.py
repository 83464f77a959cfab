"""The information ceiling of pacing (bench/sim/ceiling.py): the recorder sees every reaction the open loop
draws, restores the history module, and more replies (and more knowledge) tell the pacing better."""

from __future__ import annotations

import numpy as np

from bench.sim import ceiling, history
from bench.sim.users import Noise, make_population


def test_the_recorder_sees_each_reaction_and_puts_history_back() -> None:
    rng = np.random.default_rng(5)
    users = [u for u in make_population(12, rng, bot_share=0.0) if not u.is_bot]
    react, choose = history.react, history.choose
    with ceiling.Recorder() as rec:
        stages = {u.user_id: history.open_loop_history(u, [30], rng, Noise()) for u in users}
    assert (history.react, history.choose) == (react, choose)
    for u in users:
        shown = [r for st in stages[u.user_id] for r in st.shown]
        observed = rec.by_user[u.user_id]
        alternatives = sum(1 for r in shown if r.alternative)
        # One reaction per reply shown alone, one per pair of alternatives (to the kept one).
        assert len(observed) == len(shown) - alternatives // 2
        assert sum(1 for o in observed if o.options) == alternatives // 2
        assert all(o.options[o.kept] == o.shown for o in observed if o.options)


def test_more_replies_and_more_knowledge_tell_the_pacing_better() -> None:
    full = ceiling.run(100, 3, [5, 80], Noise())
    marginal = ceiling.run(100, 3, [5, 80], Noise(), marginal=2000)
    acc = {name: {c: float(np.mean(h[c])) for c in h} for name, h in (("full", full), ("marginal", marginal))}
    assert acc["full"][80] > acc["full"][5] + 0.2
    assert acc["marginal"][80] > acc["marginal"][5] + 0.15
    assert acc["full"][80] >= acc["marginal"][80] - 0.02  # knowing the user's other traits cannot hurt
