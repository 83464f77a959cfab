"""Profiles: GET /v1/users/{user_id}/profile (read), DELETE /v1/users/{user_id} and export (manage)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from models.events import _ID, ID_RULE
from service.auth import Manager, Reader, require_app
from service.errors import BadRequest, NotFound
from service.profiles import delete_user, export_user, read_profile

router = APIRouter(tags=["profiles"])


def _user(user_id: str) -> str:
    if not _ID.fullmatch(user_id):
        raise BadRequest(f"user_id {user_id[:60]!r} must be {ID_RULE}", code="invalid_user_id")
    return user_id


def _missing(user_id: str) -> NotFound:
    return NotFound(f"no events of user {user_id!r} have been learned from in this app yet; "
                    "send events with POST /v1/events (profiles appear within a second)", code="user_not_found")


@router.get("/v1/users/{user_id}/profile", summary="The user's learned profile (optionally for one character)")
async def get_profile(request: Request, principal: Reader, user_id: str,
                      character_id: str | None = Query(default=None)) -> dict[str, Any]:
    app = require_app(principal)
    _user(user_id)
    if character_id is not None and not _ID.fullmatch(character_id):
        raise BadRequest(f"character_id must be {ID_RULE}", code="invalid_character_id")
    doc = await read_profile(request.app.state.store, app, user_id, character_id)
    if doc is None:
        raise _missing(user_id)
    if character_id and doc.get("character_id") is None:
        # Not enough evidence for this character yet: the user's own profile stands in, labelled as such.
        doc = {**doc, "character_id": character_id, "fallback": "user"}
    return doc


@router.delete("/v1/users/{user_id}", summary="Delete everything kept about the user (synchronous)")
async def delete(request: Request, principal: Manager, user_id: str) -> dict[str, Any]:
    app = require_app(principal)
    _user(user_id)
    res = await delete_user(request.app.state.store, app, user_id, request.app.state.settings.retention_days)
    return {"deleted": True, **res}


@router.get("/v1/users/{user_id}/export", summary="Everything stored about the user")
async def export(request: Request, principal: Manager, user_id: str) -> dict[str, Any]:
    app = require_app(principal)
    _user(user_id)
    res = await export_user(request.app.state.store, app, user_id)
    if res is None:
        raise _missing(user_id)
    return res
