"""GET /dashboard: the operators' page (login with the admin key, then one page per app) and its data routes."""

from __future__ import annotations

import html
import re
from functools import lru_cache
from importlib import resources
from urllib.parse import parse_qs, quote

import httpx
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service import sessions, user_lookup
from service.auth import app_not_found, check_app_name
from service.body import read_body
from service.errors import NotFound, RateLimited
from service.routes.stats import known_app
from service.sessions import CsrfSession, Operator

router = APIRouter(tags=["dashboard"])

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "charts.js": "text/javascript"}
# Everything the page loads comes from this origin: no CDN, no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@lru_cache
def _asset(name: str) -> bytes:
    return resources.files("service").joinpath("static", name).read_bytes()


def _login_page(message: str = "", status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    page = _asset("login.html").decode().replace("{{message}}", html.escape(message))
    page = page.replace("{{message_class}}", "error" if message else "hidden")
    return HTMLResponse(page, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


@router.get("/dashboard", response_class=HTMLResponse, summary="The operators' dashboard (log in with the admin key)")
async def dashboard(request: Request, app: str | None = None) -> Response:
    session = await sessions.current(request)
    if session is None:
        return _login_page()
    store = request.app.state.store
    apps = await store.apps()
    chosen = check_app_name(app) if app else (apps[0] if apps else "")
    if app and chosen not in apps:
        raise app_not_found(chosen, apps)
    boot = orjson.dumps({"apps": apps, "app": chosen, "csrf": session.csrf}).decode().replace("<", "\\u003c")
    # Raw text inside <script type="application/json">: escaping '<' is what keeps it inert.
    page = _asset("dashboard.html").decode().replace("{{boot}}", boot)
    return HTMLResponse(page, headers=SECURITY_HEADERS)


@router.post("/dashboard/login", include_in_schema=False)
async def login(request: Request) -> Response:
    store = request.app.state.store
    ip = sessions.client_ip(request)
    try:
        await sessions.check_login_allowed(store, ip)
    except RateLimited as exc:  # a person at a browser reads the login page, not JSON
        return _login_page(exc.message, status=429, headers=exc.headers)
    # Read within the bound, not whole and then measured: this route takes anyone's body, before any key.
    body = await read_body(request, 4096, "the login form holds one key")
    typed = (parse_qs(body.decode(errors="replace")).get("key") or [""])[0].strip()
    if not sessions.is_admin_key(request, typed):
        if typed:  # an empty form guesses nothing: it does not bring the lockout closer
            await sessions.record_failure(store, ip)
        message = ("this is an app key: the dashboard needs the admin key (ATTUNE_ADMIN_KEY)" if typed.startswith("atk_")
                   else "wrong admin key: use the value of ATTUNE_ADMIN_KEY (make run prints it)" if typed
                   else "type the admin key")
        return _login_page(message, status=401)
    token, _ = await sessions.create(store, sessions.admin_fingerprint(request))
    response = RedirectResponse("/dashboard", status_code=303, headers={"Cache-Control": "no-store"})
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(sessions.COOKIE, token, max_age=sessions.TTL_SECONDS, httponly=True, samesite="strict",
                        secure=secure, path="/")
    return response


@router.post("/dashboard/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    await sessions.destroy(request.app.state.store, request.cookies.get(sessions.COOKIE))
    response = RedirectResponse("/dashboard", status_code=303, headers={"Cache-Control": "no-store"})
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no dashboard asset {name[:40]!r}")
    return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


@router.get("/dashboard/api/users", summary="Search one app's users by id prefix (bounded)")
async def search(request: Request, _: Operator, app: str, prefix: str = "") -> dict[str, object]:
    name = await known_app(request, app)
    return {"app": name, **await user_lookup.search_users(request.app.state.store, name, prefix.strip())}


@router.get("/dashboard/api/users/{user_id}", summary="One user's profile and the evidence behind it")
async def user(request: Request, user_id: str, _: Operator, app: str, character_id: str | None = None) -> dict[str, object]:
    name = await known_app(request, app)
    return await user_lookup.user_evidence(request.app.state.store, name, user_id, character_id)


async def _through_api(request: Request, method: str, app: str, user_id: str, suffix: str = "") -> httpx.Response:
    """Call the public user route in-process with the admin key, so the dashboard obeys its rules exactly."""
    admin = request.app.state.settings.admin_key.get_secret_value()
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard.internal") as client:
        return await client.request(method, f"/v1/users/{quote(user_id, safe='')}{suffix}",
                                    headers={"Authorization": f"Bearer {admin}", "X-Attune-App": app})


@router.get("/dashboard/api/users/{user_id}/export", summary="Download everything stored about one user")
async def export(request: Request, user_id: str, _: Operator, app: str) -> Response:
    name = await known_app(request, app)
    user_lookup.check_user_id(user_id)
    upstream = await _through_api(request, "GET", name, user_id, "/export")
    headers = {"Cache-Control": "no-store"}
    if upstream.status_code == 200:
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", f"{name}-{user_id}")  # no | or : in a Windows file name
        headers["Content-Disposition"] = f'attachment; filename="{safe}-export.json"'
    return Response(upstream.content, status_code=upstream.status_code, headers=headers,
                    media_type=upstream.headers.get("content-type", "application/json"))


@router.post("/dashboard/api/users/{user_id}/delete", summary="Delete one user (dashboard session + CSRF token)")
async def delete(request: Request, user_id: str, _: CsrfSession, app: str) -> Response:
    name = await known_app(request, app)
    user_lookup.check_user_id(user_id)
    upstream = await _through_api(request, "DELETE", name, user_id)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))
