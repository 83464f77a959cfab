"""Event types and their validation: raw JSON objects in, normalised dicts or an EventError out.

Hand-written rather than one pydantic model per type: ingestion validates tens of thousands of
events per second, and each rejection needs a code and a sentence that names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from models.features import reply_features

PACING_LABELS = ("slow_burn", "balanced", "fast")
DIALOGUE_LABELS = ("mostly_dialogue", "balanced", "mostly_narration")  # the note's balance of speech

# Which reply_id rule each type follows, and its own fields.
EVENT_TYPES: dict[str, str] = {
    "reply_shown": "a reply of the AI was shown to the user",
    "repeat": "the user pressed repeat / regenerate on reply_id",
    "reply_selected": "among alternatives of one turn the user kept reply_id",
    "user_message": "the user sent a message after reply_id",
    "continue": "the user asked the AI to continue reply_id",
    "stop": "the user stopped reply_id while it was being generated",
    "edit": "the user edited the AI's reply_id",
    "rating": "explicit rating of reply_id",
    "session_start": "a role-play session began",
    "session_end": "a role-play session ended",
}
KNOWN_TYPES = ", ".join(EVENT_TYPES)
_NEEDS_REPLY = {"reply_shown", "repeat", "reply_selected", "continue", "stop", "edit", "rating"}
_NEEDS_SESSION = {"session_start", "session_end"}

# Ids (user, session, character, reply, event): what an app's ids look like, identity providers' included
# (auth0's "auth0|5f7c...", e-mail-like "a+b@x.com"), and nothing that means something in a Redis key's hash
# tag ({ }) or a URL path (/ ? # %), or could fool a log reader (spaces, control characters).
ID_RULE = "1 to 128 ASCII letters, digits or . _ : @ | + -"
ID_CHARS = r"[A-Za-z0-9._:@|+\-]"
_ID = re.compile(ID_CHARS + "{1,128}")
_ID_MATCH = _ID.fullmatch
_NUMBER = (int, float)  # a tuple: isinstance(x, int | float) builds the union on every call, 4x slower
# Per type, the id fields in the order they are checked, and whether the type requires each.
_ID_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    t: (("event_id", True), ("user_id", True), ("session_id", t in _NEEDS_SESSION), ("character_id", False),
        ("reply_id", t in _NEEDS_REPLY))
    for t in EVENT_TYPES
}
MAX_CHARS = 1_000_000
MAX_TEXT = 64 * 1024
MAX_ALTERNATIVES = 16
MAX_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class EventError(Exception):
    code: str
    message: str


def _id(ev: dict[str, Any], field: str, required: bool) -> str | None:
    value = ev.get(field)
    if value is None:
        if required:
            raise EventError("missing_field", f"{field} is required for type {ev.get('type')!r}")
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise EventError(
            "invalid_field",
            f"{field} {str(value)[:60]!r} must be a string of {ID_RULE}",
        )
    return value


def _int(container: dict[str, Any], field: str, where: str, required: bool, upper: int = MAX_CHARS) -> int | None:
    value = container.get(field)
    if value is None:
        if required:
            raise EventError("missing_field", f"{where}{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or value != value:
        raise EventError("invalid_field", f"{where}{field} must be a whole number, got {value!r}")
    if value < 0 or value > upper or int(value) != value:
        raise EventError("invalid_field", f"{where}{field} must be a whole number from 0 to {upper}, got {value!r}")
    return int(value)


def parse_time(value: Any, field: str = "timestamp") -> int:
    """ISO 8601 text or epoch milliseconds -> epoch milliseconds (UTC)."""
    if isinstance(value, bool):
        raise EventError("invalid_timestamp", f"{field} must be ISO 8601 text or epoch milliseconds, got {value!r}")
    if isinstance(value, _NUMBER):
        if value != value or not 0 < value < 1e14:
            raise EventError("invalid_timestamp", f"{field} {value!r} is not a plausible epoch in milliseconds")
        if value < 1e11:
            raise EventError(
                "invalid_timestamp",
                f"{field} {value!r} looks like epoch seconds; send epoch milliseconds or ISO 8601 text",
            )
        return int(value)
    if isinstance(value, str) and 0 < len(value) <= 64:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return int(parsed.timestamp() * 1000)
    raise EventError(
        "invalid_timestamp",
        f"{field} {str(value)[:64]!r} is neither ISO 8601 text (2026-11-25T09:59:58.000Z) nor epoch milliseconds",
    )


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate_event(
    raw: Any, *, received_ms: int, sent_at_ms: int | None, max_future_ms: int, max_age_ms: int
) -> dict[str, Any]:
    """Check one event and return its normalised, storable form (reply text replaced by features)."""
    if not isinstance(raw, dict):
        raise EventError("not_an_object", f"each event must be a JSON object, got {type(raw).__name__}")
    etype = raw.get("type")
    if etype is None:
        raise EventError("missing_field", f"type is required; one of: {KNOWN_TYPES}")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:  # a list or object is unhashable: check first
        raise EventError("unknown_type", f"type {str(etype)[:40]!r} is not known; use one of: {KNOWN_TYPES}")
    # The common case (a well-formed id) inline; _id says what is wrong otherwise. This loop runs for
    # every event ingested, so it avoids a call per field.
    out: dict[str, Any] = {"type": etype}
    get = raw.get
    for field, required in _ID_FIELDS[etype]:
        value = get(field)
        if value is None:
            if required:
                _id(raw, field, True)  # raises missing_field
        elif isinstance(value, str) and _ID_MATCH(value):
            out[field] = value
        else:
            _id(raw, field, required)  # raises invalid_field

    if "timestamp" not in raw:
        raise EventError("missing_field", "timestamp is required (ISO 8601 text or epoch milliseconds)")
    ts = parse_time(raw["timestamp"])
    sent = sent_at_ms
    if raw.get("sent_at") is not None:
        sent = parse_time(raw["sent_at"], "sent_at")
    # Clock skew: the client's clock may be off, but its differences are right.
    event_ms = received_ms - (sent - ts) if sent is not None else ts
    if event_ms > received_ms + max_future_ms:
        if sent is not None:  # the device clock is corrected already: the two times disagree
            raise EventError(
                "timestamp_in_future",
                f"timestamp {raw['timestamp']!r} is {(ts - sent) / 3_600_000:.0f} h after sent_at: an event "
                "cannot happen after it was sent; take sent_at from the same clock as the timestamps, "
                "when the batch is sent",
            )
        raise EventError(
            "timestamp_in_future",
            f"timestamp {raw['timestamp']!r} is more than {max_future_ms // 3_600_000} h in the future; "
            "check the device clock or send sent_at so Attune can correct the skew",
        )
    if event_ms < received_ms - max_age_ms:
        before = (f" ({(sent - ts) / 86_400_000:.0f} days before sent_at, which corrects the device clock)"
                  if sent is not None else "")
        raise EventError(
            "timestamp_too_old",
            f"timestamp {raw['timestamp']!r}{before} is older than the retention window of "
            f"{max_age_ms // 86_400_000} days; such events are no longer accepted",
        )
    out["t"] = event_ms
    out["rt"] = received_ms
    if sent is not None:
        out["skew_ms"] = sent - received_ms

    _type_fields(etype, raw, out)
    return out


def _type_fields(etype: str, raw: dict[str, Any], out: dict[str, Any]) -> None:
    if etype == "reply_shown":
        reply = raw.get("reply")
        if not isinstance(reply, dict):
            raise EventError("missing_field", "reply is required for reply_shown: {\"chars\": 412, \"text\": \"...\"}")
        text = reply.get("text")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            raise EventError("invalid_field", f"reply.text must be a string of at most {MAX_TEXT} characters")
        chars = _int(reply, "chars", "reply.", text is None)
        out_reply: dict[str, Any] = {"chars": chars if chars is not None else len(text or "")}
        if text:
            out_reply.update(reply_features(text))
        finish = reply.get("finish_reason")
        if isinstance(finish, str) and len(finish) <= 32:
            out_reply["finish_reason"] = finish
        out["reply"] = out_reply
        cond = raw.get("conditioning")
        if cond is not None:
            out["conditioning"] = _conditioning(cond)
    elif etype == "reply_selected":
        alts = raw.get("alternatives")
        if not isinstance(alts, list) or not alts:
            raise EventError("missing_field", "alternatives must be a non-empty list of the reply ids offered")
        if len(alts) > MAX_ALTERNATIVES:
            raise EventError("invalid_field", f"alternatives holds {len(alts)} ids; at most {MAX_ALTERNATIVES}")
        for a in alts:
            if not isinstance(a, str) or not _ID.fullmatch(a):
                raise EventError("invalid_field", f"alternatives: {str(a)[:60]!r} is not a valid reply id")
        if out["reply_id"] not in alts:
            raise EventError("invalid_field", f"alternatives must contain the kept reply_id {out['reply_id']!r}")
        out["alternatives"] = list(dict.fromkeys(alts))
    elif etype == "user_message":
        out["chars"] = _int(raw, "chars", "", True)
        compose = _int(raw, "compose_ms", "", False, MAX_MS)
        if compose is not None:
            out["compose_ms"] = compose
    elif etype == "stop":
        shown = _int(raw, "shown_chars", "", False)
        if shown is not None:
            out["shown_chars"] = shown
    elif etype == "edit":
        out["chars_before"] = _int(raw, "chars_before", "", True)
        out["chars_after"] = _int(raw, "chars_after", "", True)
    elif etype == "rating":
        value = raw.get("value")
        if value is None:
            raise EventError("missing_field", "value is required for rating: a number from -1 to 1")
        if isinstance(value, bool) or not isinstance(value, _NUMBER) or not -1 <= value <= 1:
            raise EventError("invalid_field", f"value must be a number from -1 to 1, got {value!r}")
        out["value"] = float(value)


def _conditioning(cond: Any) -> dict[str, Any]:
    if not isinstance(cond, dict):
        raise EventError("invalid_field", "conditioning must be the object /v1/condition returned in applied")
    out: dict[str, Any] = {}
    pacing = cond.get("pacing")
    if pacing is not None:
        if pacing not in PACING_LABELS:
            raise EventError("invalid_field", f"conditioning.pacing {pacing!r} must be one of {', '.join(PACING_LABELS)}")
        out["pacing"] = pacing
    target = cond.get("target_chars")
    if target is not None:
        out["target_chars"] = _int(cond, "target_chars", "conditioning.", False)
    explored = cond.get("explored")
    if explored is not None:
        if not isinstance(explored, bool):
            raise EventError("invalid_field", "conditioning.explored must be true or false")
        out["explored"] = explored
    prop = cond.get("propensity")
    if prop is not None:
        if isinstance(prop, bool) or not isinstance(prop, _NUMBER) or not 0 < prop <= 1:
            raise EventError("invalid_field", f"conditioning.propensity must be a number in (0, 1], got {prop!r}")
        out["propensity"] = float(prop)
    version = cond.get("profile_version")
    if isinstance(version, int) and not isinstance(version, bool):
        out["profile_version"] = version
    dialogue = cond.get("dialogue")
    if dialogue is not None:
        if dialogue not in DIALOGUE_LABELS:
            raise EventError("invalid_field",
                             f"conditioning.dialogue {dialogue!r} must be one of {', '.join(DIALOGUE_LABELS)} or null")
        out["dialogue"] = dialogue
    return out
