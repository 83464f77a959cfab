"""Pydantic models that document the public shapes in OpenAPI (/docs).

Ingestion validates with models.events (faster, per-event errors); these models are the same rules
written for readers and tools.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from models.events import ID_CHARS, ID_RULE

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=f"^{ID_CHARS}+$", description=ID_RULE)]
Time = Annotated[str | int, Field(description="ISO 8601 text (2026-11-25T09:59:58.000Z) or epoch milliseconds, client clock")]


class _Common(BaseModel):
    event_id: Id = Field(description="client-made unique id; the dedup key (per app, at least 7 days)")
    user_id: Id
    timestamp: Time
    session_id: Id | None = None
    character_id: Id | None = None
    sent_at: Time | None = Field(None, description="for an event sent alone: the client clock at send time")


class Reply(BaseModel):
    chars: int | None = Field(None, ge=0, description="length of the reply in characters (required unless text is sent)")
    text: str | None = Field(None, max_length=65536, description="optional; features are computed, the text is not kept")


class Applied(BaseModel):
    pacing: Literal["slow_burn", "balanced", "fast"] | None = None
    target_chars: int | None = Field(None, ge=0)
    explored: bool | None = None
    propensity: float | None = Field(None, gt=0, le=1)
    profile_version: int | None = None
    dialogue: Literal["mostly_dialogue", "balanced", "mostly_narration"] | None = Field(
        None, description="the balance of speech and narration asked for, if any")


class ReplyShown(_Common):
    type: Literal["reply_shown"]
    reply_id: Id
    reply: Reply
    conditioning: Applied | None = Field(None, description="what /v1/condition returned in applied, if used")


class Repeat(_Common):
    type: Literal["repeat"]
    reply_id: Id


class ReplySelected(_Common):
    type: Literal["reply_selected"]
    reply_id: Id = Field(description="the reply the user kept")
    alternatives: list[Id] = Field(min_length=1, max_length=16, description="the reply ids offered, including reply_id")


class UserMessage(_Common):
    type: Literal["user_message"]
    reply_id: Id | None = Field(None, description="the AI reply this message answers")
    chars: int = Field(ge=0)
    compose_ms: int | None = Field(None, ge=0, description="time the user spent typing")


class Continue(_Common):
    type: Literal["continue"]
    reply_id: Id


class Stop(_Common):
    type: Literal["stop"]
    reply_id: Id
    shown_chars: int | None = Field(None, ge=0)


class Edit(_Common):
    type: Literal["edit"]
    reply_id: Id
    chars_before: int = Field(ge=0)
    chars_after: int = Field(ge=0)


class Rating(_Common):
    type: Literal["rating"]
    reply_id: Id
    value: float = Field(ge=-1, le=1)


class SessionStart(_Common):
    type: Literal["session_start"]
    session_id: Id


class SessionEnd(_Common):
    type: Literal["session_end"]
    session_id: Id


Event = Annotated[
    ReplyShown | Repeat | ReplySelected | UserMessage | Continue | Stop | Edit | Rating | SessionStart | SessionEnd,
    Field(discriminator="type"),
]


class Batch(BaseModel):
    sent_at: Time | None = Field(None, description="client clock at send; corrects skew: event time = received - (sent_at - timestamp)")
    events: list[Event] = Field(min_length=1, max_length=1000)


class Rejection(BaseModel):
    index: int
    event_id: str | None
    code: str
    message: str


class IngestResult(BaseModel):
    accepted: int = Field(description="events newly stored (durable in Redis)")
    duplicates: int = Field(description="events whose event_id this app sent before; not applied again")
    rejected: list[Rejection]


EVENTS_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "A batch (up to 1000 events, 1 MiB; Content-Encoding: gzip accepted) or a single event.",
        "content": {"application/json": {
            "schema": {"anyOf": [{"$ref": "#/components/schemas/Batch"}, {"$ref": "#/components/schemas/Event"}]},
            "example": {"sent_at": "2026-11-25T10:00:00.120Z", "events": [
                {"event_id": "6f1c0a", "type": "reply_shown", "user_id": "u1", "session_id": "s1", "character_id": "c7",
                 "reply_id": "r1", "timestamp": "2026-11-25T09:59:58.000Z", "reply": {"chars": 412}},
                {"event_id": "6f1c0b", "type": "repeat", "user_id": "u1", "reply_id": "r1",
                 "timestamp": "2026-11-25T09:59:59.500Z"}]},
        }},
    }
}


class KeyRequest(BaseModel):
    scopes: list[Literal["ingest", "read", "condition", "manage"]] = Field(min_length=1)


MAX_RATE_LIMIT = 10_000_000


class LimitsRequest(BaseModel):
    rate_limit_per_second: int | None = Field(
        ge=1, le=MAX_RATE_LIMIT, description="events per second for the app (a chat request counts one); "
        "null: back to the default, ATTUNE_RATE_LIMIT_PER_SECOND")


class Limits(BaseModel):
    app: str
    rate_limit_per_second: int = Field(description="the limit in force")
    default_rate_limit_per_second: int
    custom: bool = Field(description="true when the app has its own limit")


class KeyCreated(BaseModel):
    key: str = Field(description="shown once; stored only as a hash")
    key_id: str
    app: str
    scopes: list[str]


def event_components() -> dict[str, object]:
    """The event schemas as OpenAPI components (the ingestion route parses its body itself)."""
    from pydantic import TypeAdapter  # noqa: PLC0415

    template = "#/components/schemas/{model}"
    batch = Batch.model_json_schema(ref_template=template)
    components: dict[str, object] = dict(batch.pop("$defs", {}))
    components["Batch"] = batch
    event = TypeAdapter(Event).json_schema(ref_template=template)
    components.update(event.pop("$defs", {}))
    components["Event"] = {**event, "title": "Event", "description": "One event; its type decides its own fields."}
    return components
