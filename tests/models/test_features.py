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


def test_chinese_reads_by_characters_per_sentence_and_other_scripts_get_no_pacing() -> None:
    # Chinese has no spaces between words and other full stops: counted as words, it read as slow burn.
    fast = "她猛地推开门！快跑！没时间了！走廊里传来脚步声。他们来了！快！快！我们必须离开这里！跑！跑！"
    assert pacing_of(fast) == "fast"
    slow = ("窗外的雨依旧不紧不慢地敲打着玻璃，轻柔而耐心，像是在讲述一个很长很长的故事。"
            "她让沉默在你们之间慢慢沉淀下来，仿佛每一次呼吸都值得拥有属于它自己的一段空白。")
    assert pacing_of(slow) == "slow_burn"
    assert pacing_of("她放下杯子，抬眼看着你。然后她往后一靠，若有所思，朝门口点了点头。她的语气很平稳。") == "balanced"
    assert pacing_of("她笑了。你好吗？") is None  # too short to tell
    assert pacing_of("Привет! Как дела? Всё хорошо, спасибо. Пойдём гулять в парк сегодня вечером вместе.") is None
    # Korean ends sentences with '.', and nothing is calibrated on it: unknown, not eight sentences read as one.
    assert pacing_of("문이 열렸다. 그녀가 뛰었다. 총소리가 났다. 우리는 달렸다. 빨리! 지금! 가자! 어서!") is None
    french = "Évidemment, elle court vers la porte! Vite! Ils arrivent! Pas le temps! Cours! Allez!"
    assert pacing_of(french) == "fast"  # accented Latin letters are Latin


def test_the_measured_pacing_of_chinese_replies_confuses_no_more_than_the_learner_assumes() -> None:
    # As for English above, on the stand-in's Chinese voices (it answers a Chinese message in Chinese).
    rng = random.Random(7)
    counts = np.zeros((3, 3))
    user = {"role": "user", "content": "我们今晚就出发吗？外面的雨还没有停。"}
    for i in range(1500):
        target = int(math.exp(rng.uniform(math.log(50), math.log(500))))
        note = {"role": "system", "name": "Attune", "content": render_note(PACINGS[i % 3], target)}
        reply = compose([note, user] if i % 5 else [user], None if i % 2 else max(20, int(target / 1.2)), rng)
        measured = pacing_of(reply["text"])
        if measured is not None:
            counts[PACINGS.index(perceived_pacing(reply["text"])), PACINGS.index(measured)] += 1
    assert counts.sum() > 1350
    rates = counts / counts.sum(axis=1, keepdims=True)
    assert np.all(np.diag(rates) >= np.diag(pm.MEASURED_CONFUSION) - 0.05), rates


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
