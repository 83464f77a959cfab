"""Reply texts of a given length, dialogue share and ending, so Attune's text features have something to read."""

from __future__ import annotations

import numpy as np

_NARRATION = (
    "The lantern flickers against the wet stone walls.", "She turns the old key over in her palm.",
    "Rain drums on the tavern roof while the fire settles.", "He leans back, studying you in silence.",
    "Somewhere below, a door closes with a heavy thud.", "The map on the table is older than the town itself.",
)
_SPEECH = (
    "I never thought you would come back here.", "Stay close, the path gets narrow ahead.",
    "Tell me what you saw at the river.", "We have until dawn, no longer.", "You are braver than you look.",
)
_HOOKS = (" What do you do?", " And then the lights go out—", " Did you hear that?", " But someone is already waiting…")


def compose_text(chars: int, dialogue_share: float, hook: bool, rng: np.random.Generator) -> str:
    """About `chars` characters, roughly `dialogue_share` of them inside double quotes, ending on a hook or not."""
    tail = str(rng.choice(_HOOKS)) if hook else ""
    budget = max(chars - len(tail), 1)
    parts: list[str] = []
    spoken = 0
    total = 0
    while total < budget:
        if total == 0 or spoken / total < dialogue_share:
            piece = f'"{rng.choice(_SPEECH)}"'
            spoken += len(piece)
        else:
            piece = str(rng.choice(_NARRATION))
        parts.append(piece)
        total += len(piece) + 1
    text = " ".join(parts)[:budget].rstrip()
    if not hook and text and text[-1] not in '."':
        text = text[:-1] + "."
    return text + tail
