"""API keys: creation (shown once, stored as a SHA-256 hash), checking, scopes, and FastAPI dependencies.

A key reads `atk_<app>_<key_id>_<secret>`: the app and id locate the record without a scan, the
secret (256 bits) is only ever stored hashed. The admin key comes from ATTUNE_ADMIN_KEY and is
compared in constant time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service import keys
from service.errors import BadRequest, Forbidden, NotFound, RateLimited, StoreUnavailable, Unauthorized
from service.settings import Settings
from service.store import KeyCheck, Store

log = logging.getLogger("attune.auth")

SCOPES = ("ingest", "read", "condition", "manage")
APP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_KEY = re.compile(r"^atk_([a-z0-9][a-z0-9-]{0,63})_([0-9a-f]{12})_([0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class Principal:
    app: str | None  # None: the admin key, not yet bound to an app
    scopes: tuple[str, ...]
    admin: bool = False
    key_id: str | None = None

    def has(self, scope: str) -> bool:
        return self.admin or scope in self.scopes


def check_app_name(app: str) -> str:
    if not APP_NAME.fullmatch(app):
        raise BadRequest(
            f"app name {app[:80]!r} is invalid: use 1 to 64 lower-case letters, digits or '-', starting with a letter or digit",
            code="invalid_app",
        )
    return app


def check_scopes(scopes: list[str]) -> list[str]:
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise BadRequest(f"scopes must be a non-empty list from {', '.join(SCOPES)}; unknown: {bad}", code="invalid_scopes")
    return sorted(set(scopes), key=SCOPES.index)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(store: Store, app: str, scopes: list[str]) -> dict[str, object]:
    app = check_app_name(app)
    scopes = check_scopes(scopes)
    key_id = secrets.token_hex(6)
    secret = secrets.token_hex(32)
    await store.save_key(app, key_id, {
        "app": app, "scopes": ",".join(scopes), "hash": hash_secret(secret),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return {"key": f"atk_{app}_{key_id}_{secret}", "key_id": key_id, "app": app, "scopes": scopes}


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'", code="missing_key")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must read 'Bearer <key>'", code="malformed_authorization")
    return token.strip()


@dataclass(frozen=True, slots=True)
class AppKey:
    """An app key as sent: where its record is and the hash to compare, not yet checked."""

    app: str
    key_id: str
    secret_hash: str


def app_key(request: Request) -> AppKey | None:
    """The caller's app key, parsed but unchecked; None for the admin key. 401 when it is neither."""
    settings: Settings = request.app.state.settings
    token = bearer(request)
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return None
    m = _KEY.fullmatch(token)
    if not m:
        raise Unauthorized("unknown API key; create one with POST /v1/admin/apps/{app}/keys", code="invalid_key")
    app, key_id, secret = m.groups()
    return AppKey(app, key_id, hash_secret(secret))


class LocalCounts:
    """Each app's use this second, counted in this process: the calls Redis could not count because it is at
    its memory bound (its rate counter is a write it refuses). The limit then holds per API process (with N
    processes an app gets up to N times its limit) instead of not at all: the upstream quota is shared."""

    def __init__(self) -> None:
        self.second = 0
        self.used: dict[str, int] = {}

    def take(self, app: str, cost: int) -> int:
        now = int(time.time())
        if now != self.second:  # one second's counts at a time: bounded by the apps calling this second
            self.second, self.used = now, {}
        n = self.used[app] = self.used.get(app, 0) + cost
        return n


_uncounted = LocalCounts()


class RecentVerdicts:
    """The store's last verdict on each app key that passed, kept in this process for KEY_GRACE_S: what lets a
    chat fail open when Redis does (contract: conditioning fails open, never an error for the chat). The key
    was valid, with these scopes, moments ago. A revocation made during the outage cannot be read anyway; one
    made before it drops the key here at once when this process revoked it (forget), else within SWEEP_S
    (sweep: every cached key is checked against the store while it answers). A key this process has not
    seen verified within the grace still gets the 503: nothing else can vouch for it. At most MAX entries,
    oldest dropped."""

    KEY_GRACE_S = 600.0
    SWEEP_S = 10.0
    MAX = 10_000

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str], tuple[KeyCheck, float]] = {}

    def remember(self, key: AppKey, check: KeyCheck) -> None:
        """Called on every chat: refreshes a key's entry at most once a second unless its verdict changed."""
        name = (key.app, key.key_id, key.secret_hash)
        found = self.seen.get(name)
        if not check.valid:
            if found is not None:
                del self.seen[name]
            return
        now = time.monotonic()
        if found is not None:
            if now - found[1] < 1.0 and found[0].scopes == check.scopes and found[0].limit == check.limit:
                return
            del self.seen[name]  # re-inserted last: the dict's order is the age order
        self.seen[name] = (check, now)
        if len(self.seen) > self.MAX:
            del self.seen[next(iter(self.seen))]

    def forget(self, app: str, key_id: str) -> None:
        """A key revoked: never vouched for again, whatever its secret."""
        for name in [n for n in self.seen if n[0] == app and n[1] == key_id]:
            del self.seen[name]

    async def sweep(self, store: Store) -> None:
        """Drop every cached key whose record is gone or changed (revoked, or revoked by another process)."""
        names = list(self.seen)
        if not names:
            return
        pipe = store.redis.pipeline(transaction=False)
        for app, key_id, _ in names:
            pipe.hget(keys.api_key(app, key_id), "hash")
        stored = await pipe.execute()
        for name, digest in zip(names, stored, strict=True):
            if digest is None or (digest.decode() if isinstance(digest, bytes) else digest) != name[2]:
                self.seen.pop(name, None)

    async def sweeping(self, store: Store) -> None:
        """sweep() every SWEEP_S for the process's life; a failed sweep (Redis down) keeps what it has."""
        while True:
            await asyncio.sleep(self.SWEEP_S)
            try:
                await self.sweep(store)
            except Exception as exc:  # noqa: BLE001 - an outage is what the cache is for
                log.debug("key verdict sweep skipped: %s: %s", type(exc).__name__, exc)

    def recall(self, key: AppKey) -> KeyCheck | None:
        """The verdict if the store gave it within KEY_GRACE_S, with its count left to this process."""
        found = self.seen.get((key.app, key.key_id, key.secret_hash))
        if found is None or time.monotonic() - found[1] > self.KEY_GRACE_S:
            return None
        return dataclasses.replace(found[0], used=-1)  # admit() counts it locally (LocalCounts)


def admit(key: AppKey, check: KeyCheck, scope: str, settings: Settings) -> Principal:
    """Turn the store's verdict on a key into a Principal, or the 401, 403 or 429 it deserves."""
    if not check.valid:
        raise Unauthorized("unknown or revoked API key", code="invalid_key")
    if scope not in check.scopes:
        raise Forbidden(
            f"this key lacks the '{scope}' scope (it has: {', '.join(check.scopes)}); create a key with it",
            code="missing_scope",
        )
    limit = check.limit or settings.rate_limit_per_second
    used = check.used if check.used >= 0 else _uncounted.take(key.app, -check.used)
    if used > limit:
        raise RateLimited(
            f"app {key.app!r} exceeded its rate limit of {limit} events per second (chat requests count one "
            "each); slow down, or ask the operator for a higher limit", retry_after=1,
        )
    return Principal(app=key.app, scopes=check.scopes, key_id=key.key_id)


async def authenticate(request: Request, scope: str, cost: int = 1) -> Principal:
    """Who is calling, with the scope checked and the call counted against the app's rate limit."""
    key = app_key(request)
    if key is None:
        return await _bind_admin(request)
    store: Store = request.app.state.store
    check = await store.check_key(key.app, key.key_id, key.secret_hash, max(1, cost),
                                  request.app.state.settings.rate_limit_per_second)
    return admit(key, check, scope, request.app.state.settings)


ADMIN_APP_CHECK_S = 0.5  # a hung Redis must not hold an admin-key chat for the client's 3 s before it fails open


async def _bind_admin(request: Request) -> Principal:
    """The admin key acts on any app: it names one with X-Attune-App (or ?app=) on app routes, an app that
    exists, so a mistyped name is a 404 instead of a new app no key can read."""
    app = request.headers.get("x-attune-app") or request.query_params.get("app")
    if not app:
        return Principal(app=None, scopes=SCOPES, admin=True)
    try:
        async with asyncio.timeout(ADMIN_APP_CHECK_S):
            app = await existing_app(request.app.state.store, app)
    except (StoreUnavailable, TimeoutError):
        app = check_app_name(app)  # a typo guard only: the route's own Redis calls decide (a chat fails open)
    return Principal(app=app, scopes=SCOPES, admin=True)


async def existing_app(store: Store, app: str) -> str:
    """The app's name, checked, if the app has had a key or an event; else a 404 naming the known apps."""
    app = check_app_name(app)
    if not await store.app_exists(app):
        raise app_not_found(app, await store.apps())
    return app


def app_not_found(app: str, known: list[str]) -> NotFound:
    return NotFound(f"no app named {app!r}; known apps: {', '.join(known) or 'none yet'} (an app starts with its "
                    "first key: POST /v1/admin/apps/{app}/keys)", code="app_not_found")


def require_app(principal: Principal) -> str:
    if principal.app is None:
        raise BadRequest("the admin key acts on every app: name one with the X-Attune-App header", code="app_required")
    return principal.app


def scope(name: str):  # noqa: ANN201 - a FastAPI dependency factory
    async def dependency(request: Request) -> Principal:
        return await authenticate(request, name)

    return dependency


async def admin_only(request: Request) -> Principal:
    settings: Settings = request.app.state.settings
    token = bearer(request)
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(app=None, scopes=SCOPES, admin=True)
    if _KEY.fullmatch(token):
        raise Forbidden("this route needs the admin key (ATTUNE_ADMIN_KEY); app keys cannot use it", code="admin_only")
    raise Unauthorized("unknown key; admin routes take the admin key (ATTUNE_ADMIN_KEY)", code="invalid_key")


Admin = Annotated[Principal, Depends(admin_only)]
Reader = Annotated[Principal, Depends(scope("read"))]
Manager = Annotated[Principal, Depends(scope("manage"))]
Conditioner = Annotated[Principal, Depends(scope("condition"))]
