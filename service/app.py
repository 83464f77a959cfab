"""The FastAPI application: routers, error rendering, and the per-process resources of the lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import store as store_mod
from service.embedded import EmbeddedRedis
from service.errors import INTERNAL_ERROR_BODY, AttuneError
from service.metrics import LatencyMiddleware
from service.routes import admin, dashboard, events, gateway, health, profiles, stats
from service.settings import Settings, get_settings

log = logging.getLogger("attune.api")
# Named in a 404's message, with /docs for the rest.
MAIN_ROUTES = ("POST /v1/events", "POST /v1/chat/completions", "POST /v1/text/chatcompletion_v2",
               "POST /v1/condition", "GET /v1/users/{user_id}/profile")
ROUTE_MODULES = (health, events, admin, profiles, gateway, stats, dashboard)

DESCRIPTION = """Attune turns implicit role-play signals (repeats, reply lengths, reading and typing times,
choices between alternatives) into per-user preference profiles, and conditions M2-her requests with them.

Every `/v1/` call takes `Authorization: Bearer <key>`. Errors read
`{"error": {"code": "snake_case", "message": "what to do"}}`."""


class AttuneApp(FastAPI):
    """FastAPI whose three gateway routes are served by routes/gateway.FastPath before anything else:
    Starlette's middleware stack (error handling, FastAPI's body limit and telemetry, LatencyMiddleware)
    costs ~6% of a chat's CPU, and FastPath does what those layers do for its routes itself."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.fast_path = gateway.FastPath(self, super().__call__)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.fast_path(scope, receive, send)


# The youngest generation's collection threshold in a served API process (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """For a process that serves: what exists once it has started (modules, the app, its clients, ~100k
    objects) lives as long as it does, so no collection need go through it again (gc.freeze), and the
    youngest generation is collected less often. Under load a collection at CPython's 700 fires every
    ~16 chats only because the chats in flight hold that many objects, not because garbage piled up
    (a chat leaves no cycles behind), and each full collection went through all ~100k startup objects:
    together ~8% of a chat's CPU on bench/gateway.py's load. Cyclic garbage (an exception's traceback)
    still goes, only in larger batches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


DOCS_ASSETS = "/docs-assets"


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from files shipped with the package (fastapi-offline's), not from a CDN:
    FastAPI's default pages load their scripts from cdn.jsdelivr.net and stay blank on a machine without
    internet, where operators of such a service often are."""
    swagger: dict[str, str] = {}
    redoc: dict[str, str] = {}
    try:
        import fastapi_offline  # noqa: PLC0415
    except ImportError:  # a checkout updated without `make install`: the API must still start
        log.warning("fastapi-offline is not installed (run `make install`): /docs and /redoc load from a CDN")
    else:
        static = Path(fastapi_offline.__file__).parent / "static"
        app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
        swagger = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                   "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                   "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"}
        redoc = {"redoc_js_url": f"{DOCS_ASSETS}/redoc.standalone.js",
                 "redoc_favicon_url": f"{DOCS_ASSETS}/favicon.png"}

    @app.get("/docs", include_in_schema=False)
    async def swagger_page() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Attune - API docs", **swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Attune - API reference",
                              with_google_fonts=False, **redoc)


def create_app(settings: Settings | None = None, serving: bool = False) -> FastAPI:
    """serving: this process exists to serve the app (attune serve), so tune_gc() once it has started;
    not for an app made inside another program (the tests), whose objects it would keep forever."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(settings.data_dir)
            url = embedded.start()
            log.warning("ATTUNE_REDIS_URL is unset: using the embedded Redis at %s%s", url,
                        "" if embedded.process else " (already running; reusing it)")
        client = store_mod.connect(url)
        try:
            await store_mod.check_server(client)
        except store_mod.UnsupportedRedis as exc:
            log.error("%s", exc)
            await client.aclose()
            raise
        app.state.store = store_mod.Store(client, settings.partitions, settings.dedup_ttl_seconds)
        app.state.stats = store_mod.StatsBuffer()
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(app.state.stats.running(client))
                for module in ROUTE_MODULES:
                    if hasattr(module, "lifespan"):
                        await stack.enter_async_context(module.lifespan(app))
                if serving:
                    tune_gc()
                yield
        finally:
            await client.aclose()
            if embedded is not None:
                embedded.stop()

    app = AttuneApp(title="Attune", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                    docs_url=None, redoc_url=None)
    app.state.settings = settings
    add_docs(app)
    for module in ROUTE_MODULES:
        app.include_router(module.router)
    app.add_middleware(LatencyMiddleware)

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi  # noqa: PLC0415

            from service.schemas import event_components  # noqa: PLC0415

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(event_components())
            spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            spec["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(AttuneError)
    async def attune_error(_: Request, exc: AttuneError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "the request is invalid"
        return JSONResponse({"error": {"code": "invalid_request", "message": message}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        return JSONResponse({"error": {"code": code, "message": routing_message(app, request, exc, headers)}},
                            status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error: %s", type(exc).__name__)
        return JSONResponse(INTERNAL_ERROR_BODY, status_code=500)

    return app


def routing_message(app: FastAPI, request: Request, exc: StarletteHTTPException,
                    headers: dict[str, str] | None) -> str:
    """What to do about a path no route takes, or a method the route does not: the router's own "Not Found"
    and "Method Not Allowed" said nothing. A handler's own detail is kept."""
    method, path = request.method, request.url.path
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        allowed = (headers or {}).get("Allow", "")
        return f"{method} is not allowed on {path}" + (f"; use {allowed}" if allowed else "")
    if exc.status_code != 404 or exc.detail != "Not Found":
        return str(exc.detail)
    if not path.startswith("/v1/"):
        scope = {**request.scope, "path": "/v1" + path}
        if any(route.matches(scope)[0] != Match.NONE for route in app.router.routes):
            hint = " (OpenAI SDK: base_url must end in /v1)" if path == "/chat/completions" else ""
            return f"no route {path}; did you mean /v1{path}?{hint}"
    return f"no route {path}; the API's routes are under /v1: {', '.join(MAIN_ROUTES)}; all of them at /docs"


def app_from_env() -> FastAPI:
    """uvicorn factory (attune serve): settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(serving=True)
