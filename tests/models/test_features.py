"""Reply text features: the pacing a reply reads as, measured against the stand-in's voices."""

from __future__ import annotations

import math
import random

import numpy as np

from models import profile as pm
from models.conditioning import render_note
from models.features import pacing_of, reply_features
from service.standin import compose, perceived_pacing

PACINGS = ("slow_burn", "balanced", "fast")


def test_short_texts_have_no_pacing_and_plain_prose_reads_by_its_sentences() -> None:
    assert pacing_of("Hi. How are you?") is None
    assert "pacing" not in reply_features("She nods.")
    slow = ("The lamplight lingers on the rim of her cup, and for a long moment she says nothing at all, "
            "watching the slow procession of raindrops trailing across the darkened windowpane beside her.")
    assert pacing_of(slow) == "slow_burn"
    assert pacing_of("She sets the cup down. Then she meets your eyes and nods toward the door. We go.") \
        == "balanced"
    assert pacing_of('"Go! Now!" The door bursts open! She runs. Glass shatters everywhere! Move!') == "fast"
    assert reply_features('"Go! Now!" The door bursts open! She runs. Glass shatters everywhere! Move!')[
        "pacing"] == "fast"


def test_the_measured_pacing_confuses_no_more_than_the_learner_assumes() -> None:
    # The stand-in's replies of every length, asked for each pacing (or none), some cut by max tokens: the
    # measurement against what a reader perceives. models/profile.py MEASURED_CONFUSION is what the pacing
    # posterior assumes; measuring much worse than that would make it overconfident.
    rng = random.Random(5)
    counts = np.zeros((3, 3))
    for i in range(1500):
        target = int(math.exp(rng.uniform(math.log(120), math.log(1200))))
        messages = [{"role": "system", "name": "Attune", "content": render_note(PACINGS[i % 3], target)}]
        reply = compose(messages if i % 5 else [], None if i % 2 else max(30, int(target / 2.4)), rng)
        measured = pacing_of(reply["text"])
        if measured is not None:
            counts[PACINGS.index(perceived_pacing(reply["text"])), PACINGS.index(measured)] += 1
    assert counts.sum() > 1400  # nearly every reply is long enough to tell
    rates = counts / counts.sum(axis=1, keepdims=True)
    assert np.all(np.diag(rates) >= np.diag(pm.MEASURED_CONFUSION) - 0.05), rates
    assert np.all(np.diag(rates) > 0.75), rates


def test_replies_not_in_latin_letters_get_no_pacing_rather_than_a_wrong_one() -> None:
    # Chinese has no spaces between words and other full stops: the counts would read it as slow burn.
    chinese = "她猛地推开门！ 快跑！ 没时间了！ 走廊里传来脚步声。 他们来了！ 快！ 快！ 我们必须离开这里！ 跑！ 跑！"
    assert pacing_of(chinese) is None
    french = "Évidemment, elle court vers la porte! Vite! Ils arrivent! Pas le temps! Cours! Allez!"
    assert pacing_of(french) == "fast"  # accented Latin letters are Latin


def test_a_quote_never_runs_past_another_opening_mark() -> None:
    """What keeps the dialogue count linear: a quote that ran to its closing mark across other opening marks
    made every unclosed one scan to the end of the text, so 64 KiB of 「 in one reply_shown held the API's
    event loop for 5 s (and a batch of them for over a minute)."""
    assert reply_features("“a “bc”")["dialogue_share"] == round(len("“bc”") / len("“a “bc”"), 4)
    assert reply_features("「a 「bc」")["dialogue_share"] == reply_features("『a 『bc』")["dialogue_share"]
    assert reply_features("「" * 65536)["dialogue_share"] == 0  # no quote closes: none counted


def test_a_full_width_question_mark_ends_on_a_question_and_a_hook() -> None:
    # Chinese and Japanese write ？; a reply ending on one asks the reader something like "?" does.
    for text in ("她问：“你在想什么？”", "「何を考えているの？」", 'She leans in. "What now?"', "Are you with me?*"):
        features = reply_features(text)
        assert features["question_end"] and features["hook"], text
    for text in ("她笑了。", "「はい。」", "She nods."):
        features = reply_features(text)
        assert not features["question_end"] and not features["hook"], text
