"""GET /v1/admin/stats: the dashboard's figures as JSON (the admin key or a dashboard session)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import stats
from service.auth import existing_app
from service.errors import BadRequest
from service.sessions import Operator

router = APIRouter(prefix="/v1/admin", tags=["admin"])


async def known_app(request: Request, app: str | None) -> str:
    """The app named by ?app=, which must exist (have had a key or an event)."""
    if not app:
        raise BadRequest("name an app with ?app=; GET /v1/admin/apps lists them", code="app_required")
    return await existing_app(request.app.state.store, app)


@router.get("/stats", summary="Dashboard figures for one app over a window (15m, 1h, 6h, 24h, 7d)")
async def get_stats(request: Request, _: Operator, app: str | None = None, window: str | None = None) -> Response:
    """Traffic, workers and lag, denoising, profile distributions and the loop, from aggregates only."""
    win = stats.parse_window(window)
    name = await known_app(request, app)
    settings = request.app.state.settings
    doc = await stats.collect(request.app.state.store, name, win, partitions=settings.partitions,
                              heartbeat_s=settings.worker_heartbeat_seconds)
    return Response(stats.dumps(doc), media_type="application/json", headers={"Cache-Control": "no-store"})
