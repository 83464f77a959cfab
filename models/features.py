"""Features of a reply's text, computed at ingestion so the text itself is never stored."""

from __future__ import annotations

import re

# Dialogue: text inside straight or typographic double quotes, or CJK corner brackets. A quote runs to its
# closing mark but never past another opening one: with `“[^”]*”`, every opening mark without a close scanned
# to the end of the text, quadratic (64 KiB of 「 in one reply_shown held the API's event loop 5 s).
_DIALOGUE = re.compile(r"\"[^\"]*\"|“[^”“]*”|「[^」「]*」|『[^』『]*』")
# A question mark may be full-width (？, as Chinese and Japanese write it).
_HOOK_END = re.compile(r"([?？][\"”」』*)]*|…|\.\.\.|—|-{2})\s*$")
_QUESTION_END = re.compile(r"[?？][\"”」』*)]*\s*$")
_NARRATION_ACTION = re.compile(r"\*[^*]+\*")
# A sentence ends at . ! ? or an ellipsis, with any closing quote, bracket or emphasis mark after it: with
# those marks removed, at a terminator followed by a space or a line break, or at the end. Counted with
# str methods (a regex over every reply cost 9 us of a reply's 25 on the gateway's recording path).
_CLOSERS = '"”」』*)]'
_ENDS = (". ", "? ", "… ", ".\n", "?\n", "…\n")
_EXCLAIMED = ("! ", "!\n")
_NOT_LATIN = re.compile("[^\x00-\u024f\u2000-\u206f]")  # beyond Latin letters and general punctuation
# Pacing as a reader hears it in the prose itself (the model follows a pacing note only most of the time):
# fast prose is short, exclamatory sentences; slow burn is long sentences of long (descriptive) words.
# Thresholds read off the stand-in's voices (tests/models/test_features.py measures the confusion the learner
# assumes, models/profile.py MEASURED_CONFUSION); a real model's replies need a labelled sample to check them.
FAST_WORDS_PER_SENTENCE = 5.0
FAST_EXCLAIMED_SHARE = 0.3
SLOW_SCORE = 12.25  # words per sentence + SLOW_WORD_WEIGHT * (mean word length - PLAIN_WORD_LENGTH)
SLOW_WORD_WEIGHT = 3.0
PLAIN_WORD_LENGTH = 4.2
PACING_MIN_WORDS = 12


def reply_features(text: str) -> dict[str, float | int | bool | str]:
    """Dialogue share (quoted speech / all text), whether the reply ends on a hook or a question, and the
    pacing its prose reads as (absent when the reply is too short to tell)."""
    chars = len(text)
    if chars == 0:
        return {"dialogue_share": 0.0, "hook": False, "question_end": False}
    spoken = sum(len(m) for m in _DIALOGUE.findall(text))
    tail = text[-80:]
    out: dict[str, float | int | bool | str] = {
        "dialogue_share": round(min(1.0, spoken / chars), 4),
        "hook": bool(_HOOK_END.search(tail)),
        "question_end": bool(_QUESTION_END.search(tail)),
    }
    pacing = pacing_of(text)
    if pacing is not None:
        out["pacing"] = pacing
    return out


def _mostly_latin(text: str) -> bool:
    """Whether nearly all its letters are Latin: the sentence and word counts below mean nothing for Chinese
    or Japanese (no spaces between words, other full stops), so such a reply gets no pacing rather than a
    wrong one."""
    if text.isascii():
        return True
    return len(_NOT_LATIN.findall(text)) <= 0.1 * len(text)


def pacing_of(text: str) -> str | None:
    """`slow_burn`, `balanced` or `fast` from the sentences' length, their words' length and how many end in
    '!'; None when the text has fewer than PACING_MIN_WORDS words (a line or two says little about pace) or
    is not mostly in Latin letters."""
    words = text.split()
    if len(words) < PACING_MIN_WORDS or not _mostly_latin(text):
        return None
    bare = text
    for mark in _CLOSERS:
        if mark in bare:
            bare = bare.replace(mark, "")
    bare = bare.rstrip() + " "
    exclaimed = sum(bare.count(e) for e in _EXCLAIMED)
    sentences = max(exclaimed + sum(bare.count(e) for e in _ENDS), 1)  # none: one (long) sentence
    per_sentence = len(words) / sentences
    if exclaimed / sentences >= FAST_EXCLAIMED_SHARE or per_sentence <= FAST_WORDS_PER_SENTENCE:
        return "fast"
    word_length = len("".join(words)) / len(words)
    if per_sentence + SLOW_WORD_WEIGHT * (word_length - PLAIN_WORD_LENGTH) >= SLOW_SCORE:
        return "slow_burn"
    return "balanced"
