"""Features of a reply's text, computed at ingestion so the text itself is never stored."""

from __future__ import annotations

import re

# Dialogue: text inside straight or typographic double quotes, or CJK corner brackets.
_DIALOGUE = re.compile(r"\"[^\"]*\"|“[^”]*”|「[^」]*」|『[^』]*』")
_HOOK_END = re.compile(r"(\?|\?\"|\?”|…|\.\.\.|—|-{2})\s*$")
_QUESTION_END = re.compile(r"\?[\"”」』*)]*\s*$")
_NARRATION_ACTION = re.compile(r"\*[^*]+\*")


def reply_features(text: str) -> dict[str, float | int | bool]:
    """Length, dialogue share (quoted speech / all text) and whether the reply ends on a hook."""
    chars = len(text)
    if chars == 0:
        return {"dialogue_share": 0.0, "hook": False, "question_end": False}
    spoken = sum(len(m) for m in _DIALOGUE.findall(text))
    tail = text[-80:]
    return {
        "dialogue_share": round(min(1.0, spoken / chars), 4),
        "hook": bool(_HOOK_END.search(tail)),
        "question_end": bool(_QUESTION_END.search(tail)),
    }
