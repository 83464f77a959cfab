"""Admin routes: apps and their keys (the admin key only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.auth import Admin, check_app_name, create_key
from service.body import read_json
from service.errors import BadRequest, NotFound
from service.schemas import KeyCreated, KeyRequest

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/apps/{app}/keys", status_code=201, response_model=KeyCreated,
             openapi_extra={"requestBody": {"content": {"application/json": {"schema": KeyRequest.model_json_schema()}}}})
async def create_app_key(app: str, request: Request, _: Admin) -> dict[str, object]:
    """Create a key for an app (the app is created with its first key). The key is shown once."""
    body = await read_json(request, 64 * 1024)
    if not isinstance(body, dict) or not isinstance(body.get("scopes"), list):
        raise BadRequest('send {"scopes": ["ingest", "read"]}', code="invalid_body")
    return await create_key(request.app.state.store, app, body["scopes"])


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, _: Admin) -> dict[str, object]:
    """Revoke a key at once: the next call with it gets 401."""
    app = await request.app.state.store.delete_key(key_id)
    if app is None:
        raise NotFound(f"no key with id {key_id[:40]!r}; list keys with GET /v1/admin/apps/{{app}}/keys", code="key_not_found")
    return {"key_id": key_id, "app": app, "revoked": True}


@router.get("/apps")
async def list_apps(request: Request, _: Admin) -> dict[str, object]:
    return {"apps": await request.app.state.store.apps()}


@router.get("/apps/{app}/keys")
async def list_app_keys(app: str, request: Request, _: Admin) -> dict[str, object]:
    """The app's keys, without secrets."""
    return {"app": app, "keys": await request.app.state.store.list_keys(check_app_name(app))}
