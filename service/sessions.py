"""Dashboard sessions: the admin key typed once at the login, then an HttpOnly cookie.

The cookie holds a random 256-bit token; Redis keeps only its SHA-256 (a leaked Redis dump gives no
usable session) with a TTL, plus the session's CSRF token and an scrypt fingerprint of the admin key it
was opened with (a new admin key ends the old one's sessions). Data routes are GET only and the cookie
is SameSite=Strict; the one state-changing action (deleting a user) also needs the CSRF token in a
header and a same-origin Origin.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from service import keys
from service.auth import Principal, admin_only
from service.errors import Forbidden, RateLimited, Unauthorized
from service.store import Store, _guard

COOKIE = "attune_session"
TTL_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 5


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    csrf: str
    created_at: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_ip(request: Request) -> str:
    # uvicorn rewrites the peer from X-Forwarded-For only for proxies in --forwarded-allow-ips
    # (loopback by default); anyone else's header is ignored, so a guesser cannot pick a fresh "IP".
    return request.client.host if request.client else "unknown"


async def check_login_allowed(store: Store, ip: str, now: float | None = None) -> None:
    """A sliding minute: the 6th wrong key within 60 s locks the IP until the oldest of them is a minute old."""
    now = time.time() if now is None else now
    key = keys.login_failures(ip)
    pipe = store.redis.pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now - 60)
    pipe.zrange(key, 0, 0, withscores=True)
    pipe.zcard(key)
    _, oldest, count = await _guard(pipe.execute())
    if count >= LOGIN_FAILURES_PER_MINUTE:
        retry = max(1, math.ceil(oldest[0][1] + 60 - now)) if oldest else 60
        raise RateLimited(f"too many wrong admin keys from {ip}: {LOGIN_FAILURES_PER_MINUTE} per minute at most; "
                          f"try again in {retry} s", retry_after=retry, code="login_rate_limited")


async def record_failure(store: Store, ip: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    key = keys.login_failures(ip)
    pipe = store.redis.pipeline(transaction=False)
    pipe.zadd(key, {secrets.token_hex(8): now})
    pipe.expire(key, 120)
    await _guard(pipe.execute())


def is_admin_key(request: Request, typed: str) -> bool:
    admin = request.app.state.settings.admin_key
    return bool(admin) and hmac.compare_digest(typed.encode(), admin.get_secret_value().encode())


def admin_fingerprint(request: Request) -> str:
    """Which admin key a session was opened with: a session opened with a key that has since been replaced
    (a leaked one, rotated) is no session."""
    admin = request.app.state.settings.admin_key
    return _fingerprint(admin.get_secret_value() if admin else "")


@functools.lru_cache(maxsize=4)
def _fingerprint(secret: str) -> str:
    # scrypt, once per process: a copy of Redis must not become a cheap offline test of guesses at the key.
    return hashlib.scrypt(secret.encode(), salt=b"attune dashboard session", n=2**14, r=8, p=1, dklen=16).hex()


async def create(store: Store, fingerprint: str) -> tuple[str, Session]:
    token = secrets.token_urlsafe(32)
    session = Session(_hash(token), secrets.token_urlsafe(24), int(time.time()))
    key = keys.dashboard_session(session.token_hash)
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(key, mapping={"csrf": session.csrf, "created_at": session.created_at, "admin": fingerprint})
    pipe.expire(key, TTL_SECONDS)
    await _guard(pipe.execute())
    return token, session


async def lookup(store: Store, token: str | None, fingerprint: str) -> Session | None:
    if not token or len(token) > 200:
        return None
    token_hash = _hash(token)
    raw = await _guard(store.redis.hgetall(keys.dashboard_session(token_hash)))
    if not raw:
        return None
    d = {k.decode(): v.decode() for k, v in raw.items()}
    if not hmac.compare_digest(d.get("admin", ""), fingerprint):
        return None  # opened with an admin key that is no longer the admin key
    return Session(token_hash, d.get("csrf", ""), int(d.get("created_at", "0")))


async def destroy(store: Store, token: str | None) -> None:
    if token:
        await _guard(store.redis.delete(keys.dashboard_session(_hash(token))))


async def current(request: Request) -> Session | None:
    return await lookup(request.app.state.store, request.cookies.get(COOKIE), admin_fingerprint(request))


async def operator(request: Request) -> Principal:
    """The admin: by the bearer admin key (API clients) or by a dashboard session cookie (the page)."""
    if request.headers.get("authorization"):
        return await admin_only(request)
    if await current(request) is not None:
        return Principal(app=None, scopes=(), admin=True)
    raise Unauthorized("log in at /dashboard with the admin key, or send 'Authorization: Bearer <admin key>'",
                       code="missing_key")


async def csrf_checked(request: Request) -> Session:
    """A session whose request carries its CSRF token (X-CSRF-Token) and, if any, a same-origin Origin."""
    session = await current(request)
    if session is None:
        raise Unauthorized("your dashboard session expired; log in again at /dashboard", code="session_expired")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden(f"cross-origin request from {origin[:100]!r} refused", code="csrf_failed")
    sent = request.headers.get("x-csrf-token", "")
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Forbidden("missing or wrong X-CSRF-Token header; reload the dashboard and try again", code="csrf_failed")
    return session


Operator = Annotated[Principal, Depends(operator)]
CsrfSession = Annotated[Session, Depends(csrf_checked)]
