"""Liveness, readiness and Prometheus metrics (no auth, no user data)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import metrics
from service.errors import StoreUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, response: Response) -> dict[str, object]:
    store = request.app.state.store
    settings = request.app.state.settings
    problem = await store.problem()
    workers = 0
    if problem is None:
        try:
            workers = await store.workers_alive(settings.worker_heartbeat_seconds)
        except StoreUnavailable:
            problem = "redis unreachable"
    redis_ok = problem is None
    ready = redis_ok and workers > 0
    response.status_code = 200 if ready else 503
    problems = ([] if redis_ok else [problem]) + ([] if workers else ["no worker alive"])
    return {"status": "ready" if ready else "not_ready", "redis": redis_ok, "workers_alive": workers, "problems": problems}


@router.get("/metrics")
async def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
