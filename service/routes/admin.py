"""Admin routes: apps and their keys (the admin key only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.auth import Admin, check_app_name, create_key
from service.body import read_json
from service.errors import BadRequest, NotFound
from service.schemas import MAX_RATE_LIMIT, KeyCreated, KeyRequest, Limits, LimitsRequest

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
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is not None:  # no fail-open verdict for it here; other processes drop it at their next sweep
        gateway.verdicts.forget(app, key_id)
    return {"key_id": key_id, "app": app, "revoked": True}


@router.get("/apps")
async def list_apps(request: Request, _: Admin) -> dict[str, object]:
    return {"apps": await request.app.state.store.apps()}


@router.get("/apps/{app}/keys")
async def list_app_keys(app: str, request: Request, _: Admin) -> dict[str, object]:
    """The app's keys, without secrets."""
    return {"app": app, "keys": await request.app.state.store.list_keys(check_app_name(app))}


def _limits(request: Request, app: str, own: int | None) -> dict[str, object]:
    default = request.app.state.settings.rate_limit_per_second
    return {"app": app, "rate_limit_per_second": own if own is not None else default,
            "default_rate_limit_per_second": default, "custom": own is not None}


@router.get("/apps/{app}/limits", response_model=Limits)
async def get_app_limits(app: str, request: Request, _: Admin) -> dict[str, object]:
    """The app's rate limit: events per second, each chat request counting one; its own or the default
    (ATTUNE_RATE_LIMIT_PER_SECOND)."""
    app = check_app_name(app)
    return _limits(request, app, await request.app.state.store.rate_limit(app))


@router.put("/apps/{app}/limits", response_model=Limits, openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": LimitsRequest.model_json_schema()}}}})
async def set_app_limits(app: str, request: Request, _: Admin) -> dict[str, object]:
    """Give the app its own rate limit, `{"rate_limit_per_second": 2000}`, effective at once for all its
    keys (and keys made later); `null` returns it to the default."""
    app = check_app_name(app)
    body = await read_json(request, 4096)
    limit = body.get("rate_limit_per_second", ...) if isinstance(body, dict) else ...
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RATE_LIMIT):
        raise BadRequest(f'send {{"rate_limit_per_second": N}} with N a whole number from 1 to {MAX_RATE_LIMIT}, '
                         'or null for the default', code="invalid_limit")
    await request.app.state.store.set_rate_limit(app, limit)
    return _limits(request, app, limit)


@router.delete("/apps/{app}/limits", response_model=Limits)
async def reset_app_limits(app: str, request: Request, _: Admin) -> dict[str, object]:
    """Return the app to the default rate limit."""
    app = check_app_name(app)
    await request.app.state.store.set_rate_limit(app, None)
    return _limits(request, app, None)
