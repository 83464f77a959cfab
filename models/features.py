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
# Chinese and Japanese: sentences end at 。！？ (or ! ?, …), words are not spaced, so the length of a sentence
# is counted in characters; read off the stand-in's Chinese voices like the thresholds above. Korean spaces
# its words and ends sentences with '.': uncalibrated, it gets no pacing rather than a wrong one.
_CJK = re.compile("[\u2e80-\u9fff\uf900-\ufaff]")  # Han, kana and CJK punctuation (not Hangul)
_CJK_ENDS = re.compile(r"[。！？!?]+|…+")
CJK_FAST_CHARS_PER_SENTENCE = 8.0
CJK_EXCLAIMED_CHARS_PER_SENTENCE = 12.0  # exclaimed, and short: a long reply's one shout is not fast prose
CJK_SLOW_CHARS_PER_SENTENCE = 19.0
PACING_MIN_CJK = 24  # characters: about PACING_MIN_WORDS words
# Tokens, for the budget of a reply (max_completion_tokens): role-play English holds about 4 characters per
# token on M2-her; Chinese, Japanese and Korean 1.3-2 on current tokenizers (DeepSeek documents ~1.7 for
# Chinese). The low end, as a budget that cuts a reply reads worse than a loose one: with English's 4, a
# Chinese reader's 300-character target got a budget of about 170 characters and every reply was cut.
CHARS_PER_TOKEN = 4.0
CJK_CHARS_PER_TOKEN = 1.3
# For tokens, Korean counts too (Hangul syllables and jamo), and full-width forms.
_CJK_WIDE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


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
    if not text.isascii() and (cpt := chars_per_token(text)) < CHARS_PER_TOKEN:
        out["chars_per_token"] = round(cpt, 2)  # Chinese, Japanese or Korean in it: the reader's budget differs
    return out


def chars_per_token(text: str) -> float:
    """Characters per token of text like this: CHARS_PER_TOKEN for Latin-script prose, CJK_CHARS_PER_TOKEN
    for Chinese, Japanese or Korean, the harmonic mix for a mixed text."""
    if text.isascii():
        return CHARS_PER_TOKEN
    cjk = len(_CJK_WIDE.findall(text))
    if not cjk:
        return CHARS_PER_TOKEN  # exactly: accented Latin text is English's budget, not a float's rounding of it
    return len(text) / (cjk / CJK_CHARS_PER_TOKEN + (len(text) - cjk) / CHARS_PER_TOKEN)


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
    is in neither Latin letters nor mostly Chinese, Japanese or Korean characters (_cjk_pacing)."""
    if not _mostly_latin(text):
        return _cjk_pacing(text)
    words = text.split()
    if len(words) < PACING_MIN_WORDS:
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


def _cjk_pacing(text: str) -> str | None:
    """pacing_of for Chinese or Japanese prose: characters per sentence and the share of sentences ending in
    ！; None under PACING_MIN_CJK such characters or when they are under half of the text (Korean, too)."""
    chars = len(_CJK.findall(text))
    if chars < PACING_MIN_CJK or chars < 0.5 * len(text.replace(" ", "")):
        return None
    ends = _CJK_ENDS.findall(text)
    sentences = max(len(ends), 1)
    exclaimed = sum(1 for e in ends if "！" in e or "!" in e)
    per_sentence = chars / sentences
    if per_sentence <= CJK_FAST_CHARS_PER_SENTENCE or (
            exclaimed / sentences >= FAST_EXCLAIMED_SHARE and per_sentence <= CJK_EXCLAIMED_CHARS_PER_SENTENCE):
        return "fast"
    return "slow_burn" if per_sentence >= CJK_SLOW_CHARS_PER_SENTENCE else "balanced"
