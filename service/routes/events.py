"""POST /v1/events: validate, deduplicate and durably append implicit signals."""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from models.events import EventError, parse_time, validate_event
from service.auth import admit, app_key, authenticate, require_app
from service.body import read_json
from service.errors import AttuneError, BadRequest, PayloadTooLarge
from service.metrics import EVENTS
from service.schemas import EVENTS_OPENAPI, IngestResult

router = APIRouter(tags=["events"])


def _split(body: Any, max_events: int) -> tuple[list[Any], int | None]:
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"sent_at": ..., "events": [...]} or one event',
                         code="invalid_body")
    sent_at = None
    if body.get("sent_at") is not None:
        try:
            sent_at = parse_time(body["sent_at"], "sent_at")
        except EventError as exc:
            raise BadRequest(exc.message, code="invalid_sent_at") from exc
    if "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise BadRequest("events must be a list of event objects", code="invalid_body")
        if not events:
            raise BadRequest("events is empty; send at least one event", code="empty_batch")
        if len(events) > max_events:
            raise PayloadTooLarge(f"a batch holds at most {max_events} events, this one {len(events)}; split it",
                                  code="too_many_events")
        return events, sent_at
    if "type" in body:
        return [body], None  # a single event; its own sent_at, if any, is read per event
    raise BadRequest('the body must hold "events" (a batch) or be one event with a "type"', code="invalid_body")


@router.post(
    "/v1/events", status_code=202, response_model=IngestResult, openapi_extra=EVENTS_OPENAPI,
    summary="Send implicit signals (a batch of up to 1000 events, or one event)",
    responses={400: {"description": "not JSON or not this shape"}, 401: {}, 403: {}, 413: {"description": "over 1000 events or 1 MiB"},
               422: {"description": "no event in the batch is valid"}, 429: {}, 503: {"description": "store unreachable; retry"}},
)
async def post_events(request: Request) -> Response:
    settings = request.app.state.settings
    store = request.app.state.store
    received_ms = int(time.time() * 1000)
    problem: AttuneError | None = None
    events: list[Any] = []
    sent_at = None
    try:
        events, sent_at = _split(await read_json(request, settings.max_body_bytes), settings.max_batch_events)
    except AttuneError as exc:
        problem = exc
    cost = len(events) or 1
    key = app_key(request)  # None for the admin key; 401 (before any 400) for a missing or malformed one
    if problem is not None or key is None:
        principal = await authenticate(request, "ingest", cost=cost)
        if problem is not None:
            raise problem
        app = require_app(principal)
    else:
        app = key.app  # trusted once the store has checked the key, below, before anything is counted

    valid: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates_in_batch = 0
    max_future = settings.max_future_seconds * 1000
    max_age = settings.retention_days * 86_400_000
    for index, raw in enumerate(events):
        try:
            ev = validate_event(raw, received_ms=received_ms, sent_at_ms=sent_at,
                                max_future_ms=max_future, max_age_ms=max_age)
        except EventError as exc:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            rejected.append({"index": index, "event_id": event_id if isinstance(event_id, str) else None,
                             "code": exc.code, "message": f"event {index}: {exc.message}"})
            continue
        if ev["event_id"] in seen:
            duplicates_in_batch += 1
            continue
        seen.add(ev["event_id"])
        valid.append(ev)

    if key is not None and valid:
        # The key check, the rate count and the appends in one Redis call: one round trip.
        check, flags = await store.ingest_checked(key.app, key.key_id, key.secret_hash, "ingest",
                                                  settings.rate_limit_per_second, cost, valid)
        admit(key, check, "ingest", settings)
    else:
        if key is not None:  # nothing to append: check the key (401/403/429 come before a 422)
            check = await store.check_key(key.app, key.key_id, key.secret_hash, cost, settings.rate_limit_per_second)
            admit(key, check, "ingest", settings)
        flags = await store.ingest(app, valid) if valid else []
    accepted = sum(flags)
    duplicates = duplicates_in_batch + len(flags) - accepted
    _count(request, app, valid, flags, rejected, duplicates_in_batch)

    body: dict[str, Any] = {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
    if not valid and not duplicates_in_batch:
        body["error"] = {"code": "no_valid_event",
                         "message": f"none of the {len(events)} events is valid; see rejected for each reason",
                         "rejected": rejected}
        return Response(orjson.dumps(body), status_code=422, media_type="application/json")
    return Response(orjson.dumps(body), status_code=202, media_type="application/json")


def _count(request: Request, app: str, valid: list[dict[str, Any]], flags: list[bool],
           rejected: list[dict[str, Any]], duplicates_in_batch: int) -> None:
    by_type: dict[str, int] = {}
    for ev, ok in zip(valid, flags, strict=True):
        if ok:
            by_type[ev["type"]] = by_type.get(ev["type"], 0) + 1
    dup = duplicates_in_batch + len(flags) - sum(flags)
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["code"]] = reasons.get(r["code"], 0) + 1
    fields = [(f"accepted:{t}", n) for t, n in by_type.items()]
    fields += [(f"rejected:{c}", n) for c, n in reasons.items()]
    if dup:
        fields.append(("duplicate", dup))
        _events("duplicate", "", "").inc(dup)
    for t, n in by_type.items():
        _events("accepted", t, "").inc(n)
    for c, n in reasons.items():
        _events("rejected", "", c).inc(n)
    request.app.state.stats.add_many(app, fields)


@functools.lru_cache(maxsize=1024)
def _events(outcome: str, etype: str, reason: str) -> Any:
    """The labelled counter (labels() takes a lock and checks its arguments on every call)."""
    return EVENTS.labels(outcome, etype, reason)
