"""Reply texts of a given length, dialogue share, pacing and ending, so Attune's text features have something
to read. Each pacing has its own prose, as a model's replies would: fast is short, exclaimed sentences; slow
burn long sentences of descriptive words; balanced in between (what models/features.py pacing_of reads)."""

from __future__ import annotations

import numpy as np

_NARRATION = {
    "balanced": (
        "The lantern flickers against the wet stone walls.", "She turns the old key over in her palm.",
        "Rain drums on the tavern roof while the fire settles.", "He leans back, studying you in silence.",
        "Somewhere below, a door closes with a heavy thud.",
        "The map on the table is older than the town itself.",
    ),
    "fast": (
        "The rope snaps!", "He draws his blade.", "Sparks fly everywhere!", "The floor gives way!",
        "She dives left.", "Footsteps. Closer!", "The horses bolt!", "Smoke fills the hall.",
    ),
    "slow_burn": (
        "Evening settles gradually over the harbour, painting the"
        " weathered rooftops in deepening shades of amber.",
        "She considers your question carefully, turning it over in"
        " her thoughts like a smooth, familiar stone.",
        "Somewhere beyond the orchard, a solitary nightingale"
        " rehearses its melancholy, unhurried evening song.",
        "The fragrance of jasmine drifts through the shutters,"
        " mingling with the lingering warmth of the afternoon.",
        "He traces the faded embroidery on the cushion, remembering"
        " the patient hands that stitched it long ago.",
    ),
}
_SPEECH = {
    "balanced": (
        "I never thought you would come back here.", "Stay close, the path gets narrow ahead.",
        "Tell me what you saw at the river.", "We have until dawn, no longer.",
        "You are braver than you look.",
    ),
    "fast": ("Run!", "Duck!", "Behind you!", "Hold on!", "Not now!", "Move, move!"),
    "slow_burn": (
        "I have been remembering the summers we spent here, before everything became so complicated.",
        "Sometimes I wonder whether the lighthouse keeper ever"
        " imagined how many travellers he guided home.",
        "Tell me everything, slowly, from the very beginning, as"
        " though we had the whole night together.",
    ),
}
_HOOKS = (" What do you do?", " And then the lights go out—", " Did you hear that?",
          " But someone is already waiting…")


def compose_text(chars: int, dialogue_share: float, hook: bool, rng: np.random.Generator,
                 pacing: str = "balanced") -> str:
    """About `chars` characters in the prose of `pacing`, roughly `dialogue_share` of them inside double
    quotes, ending on a hook or not."""
    tail = str(rng.choice(_HOOKS)) if hook else ""
    budget = max(chars - len(tail), 1)
    parts: list[str] = []
    spoken = 0
    total = 0
    while total < budget:
        if total == 0 or spoken / total < dialogue_share:
            piece = f'"{rng.choice(_SPEECH[pacing])}"'
            spoken += len(piece)
        else:
            piece = str(rng.choice(_NARRATION[pacing]))
        parts.append(piece)
        total += len(piece) + 1
    text = " ".join(parts)[:budget].rstrip()
    if not hook and text and text[-1] not in '."':
        text = text[:-1] + "."
    return text + tail
