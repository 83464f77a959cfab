"""Typed settings from environment variables; built by get_settings(), never at import."""

from __future__ import annotations

import difflib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url


MIN_ADMIN_KEY = 16
SECRETS = ("admin_key", "minimax_api_key")


class UpstreamTimeout(BaseModel):
    """M2-her timeouts in seconds (env ATTUNE_UPSTREAM_TIMEOUT as JSON, e.g. {"first_byte": 20})."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt key is refused, not ignored
    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=60.0, gt=0)  # until the first event of the reply
    idle: float = Field(default=30.0, gt=0)  # silence between two chunks of a streamed reply
    pool: float = Field(default=5.0, gt=0)  # waiting for a free pooled connection


class UpstreamRetry(BaseModel):
    """Retries before the first byte reached the app (env ATTUNE_UPSTREAM_RETRY as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    attempts: int = Field(default=3, ge=1, le=10)  # in all, the first try included
    backoff: float = Field(default=0.25, ge=0)  # seconds, doubled per retry, full jitter
    max_backoff: float = Field(default=4.0, ge=0)


class Settings(BaseSettings):
    """Every variable of the contract, plus the knobs operators may tune."""

    model_config = SettingsConfigDict(env_prefix="ATTUNE_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = Field(default=None, repr=False)  # may hold a password: redact_url() to show it
    data_dir: Path = Path("./var")
    admin_key: SecretStr | None = None

    minimax_api_key: SecretStr | None = Field(default=None, validation_alias="MINIMAX_API_KEY")
    minimax_base_url: str = Field(default="https://api.minimax.io", validation_alias="MINIMAX_BASE_URL")
    # JSON, decoded by _json below so that bad JSON is one more problem reported with the others.
    upstream_timeout: Annotated[UpstreamTimeout, NoDecode] = UpstreamTimeout()
    upstream_retry: Annotated[UpstreamRetry, NoDecode] = UpstreamRetry()
    upstream_connections: int = Field(default=512, ge=1)  # pooled connections to M2-her per API process

    # Streams: a user always lands in the same partition (hash of app and user).
    partitions: int = Field(default=16, ge=1, le=1024)
    # Events older than this are rejected; dedup keys live one day longer, so an event can never be
    # accepted a second time after its dedup key expired (it would be too old by then).
    retention_days: int = Field(default=7, ge=1, le=365)
    max_future_seconds: int = 24 * 3600
    max_batch_events: int = 1000
    max_body_bytes: int = 1024 * 1024
    # Per-app budget, in events per second (a request without events costs one).
    rate_limit_per_second: int = Field(default=50_000, ge=1)
    # Workers: a worker whose heartbeat is older than this counts as dead.
    worker_heartbeat_seconds: float = 15.0
    # Worker loop (workers/): entries per read, how long a read blocks, and the shutdown grace.
    worker_name: str | None = None  # consumer name; default host:pid. Stable names drain their own pending first
    worker_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Under a backlog a read asks for about this many seconds of work (at the measured apply rate) instead,
    # so a user's queued events share one commit; 0 keeps every read at worker_batch_size.
    worker_batch_seconds: float = Field(default=5.0, ge=0)
    worker_block_ms: int = Field(default=100, ge=0)
    worker_grace_seconds: float = 10.0
    # A partition is read by one worker at a time (a lease renewed every heartbeat) so each user's events
    # are applied in stream order; a dead worker's partitions are taken over when its lease expires.
    worker_lease_seconds: float = 10.0
    worker_dead_letter_deliveries: int = Field(default=5, ge=1)  # an entry delivered this often goes to dead letters
    worker_trim_every_seconds: float = 5.0
    # A reply is closed (answered / silent) once the user's event time passed it by this much, or when no event
    # of the user arrived for this long (wall clock); later outcome events still amend it while it is remembered.
    close_after: float = 120.0
    # Population priors and the repeat model are republished this often (0: never; tests use it for determinism).
    population_refresh_seconds: float = 30.0
    # Learn from the pacing measured in a reply's text (models/features.py pacing_of) and condition
    # regenerations by it. Its thresholds come from the stand-in: turn it off until a labelled sample of your
    # model's replies confirms models/profile.py MEASURED_CONFUSION; the pacing asked for is used alone then.
    pacing_from_text: bool = True

    @field_validator("admin_key")
    @classmethod
    def _strong(cls, value: SecretStr | None) -> SecretStr | None:
        # The admin key opens every app's data: one a person can guess is no key. `make run` makes a 43-char one.
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_KEY:
            raise ValueError(f"shorter than {MIN_ADMIN_KEY} characters, guessable; make one with "
                             "`openssl rand -hex 24`, or leave it unset and `make run` makes one")
        return value

    @field_validator("redis_url")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        # Checked here, not at the first connect: redis-py's error there quotes the URL's pieces, and a
        # password holding '/' comes out as the "port" in a traceback, in every log that keeps stderr.
        if value:
            try:
                parse_url(value)
            except ValueError as exc:
                if "scheme" in str(exc):
                    raise ValueError("not a Redis URL: it starts with redis://, rediss:// or unix://, e.g. "
                                     "redis://:PASSWORD@host:6379/0") from None
                raise ValueError("not a Redis URL: its host, port or database cannot be read; a password "
                                 "holding '/', '?', '#' or '@' must be percent-encoded (%2F for '/'), e.g. "
                                 "redis://:PASSWORD@host:6379/0") from None
        return value

    @field_validator("upstream_timeout", "upstream_retry", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("not JSON") from None
        return value

    @property
    def dedup_ttl_seconds(self) -> int:
        return (self.retention_days + 1) * 86400

    def masked(self) -> dict[str, object]:
        """A view safe for logs: secrets shown as set or unset only."""
        out = self.model_dump()
        for name in SECRETS:
            out[name] = "***" if getattr(self, name) else None
        out["redis_url"] = redact_url(self.redis_url) if self.redis_url else None
        return out


_QUERY_PASSWORD = re.compile(r"(?i)([?&;]password=)[^&;]*")


def redact_url(url: str) -> str:
    """The URL with its password (redis://user:PASSWORD@host, or ?password=) shown as ***, for messages.
    Taken apart by hand, not by urlsplit: a generated password often holds an unencoded '/', '?' or '#',
    where urlsplit ends the host part and would show the password (or its start) as host and path."""
    out = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = out.partition("://") if "://" in out else ("", "", out)
    if "@" in rest:  # everything up to the last '@' is the user part, whatever characters it holds
        user, _, host = rest.rpartition("@")
        rest = (user.split(":", 1)[0] + ":***" if ":" in user else "***") + "@" + host
    return f"{scheme}{sep}{rest}"


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"ATTUNE_{field.upper()}"


def _problem(error: dict[str, Any]) -> str:
    """One line for one validation error: the variable, its value, what is wrong and a good value."""
    field, *inner = (str(part) for part in error["loc"])
    if field not in Settings.model_fields:
        return f"settings: {error['msg']}"
    name = env_name(field)
    if field in SECRETS:  # never its value, not even in an error
        return f"{name}: {error['msg'].removeprefix('Value error, ')}"
    value = os.environ.get(name)
    if value is not None and field == "redis_url":
        value = redact_url(value)  # it may hold a password
    shown = f"{name}={value!r}" if value is not None else name
    default = Settings.model_fields[field].default
    msg = "not a JSON object" if error["type"] == "model_type" else error["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if default is None:  # the message says what a good value looks like
        return f"{shown}: {msg}"
    if not isinstance(default, BaseModel):
        return f"{shown}: {msg}; e.g. {name}={json.dumps(default) if isinstance(default, bool) else default}"
    known = list(type(default).model_fields)
    if inner and error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(inner[0], known, n=1)
        key = near[0] if near else known[0]
        hint = f"did you mean {key!r}? " if near else ""
        return (f"{shown}: unknown key {inner[0]!r} ({hint}known: {', '.join(known)}); "
                f"e.g. {name}='{json.dumps({key: getattr(default, key)})}'")
    good = {inner[0]: getattr(default, inner[0])} if inner and inner[0] in known else default.model_dump()
    where = f"{inner[0]}: " if inner else ""
    return f"{shown}: {where}{msg}; e.g. {name}='{json.dumps(good)}'"


class SettingsError(ValueError):
    """The environment does not make valid settings; problems holds one line per bad variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError([_problem(dict(e)) for e in exc.errors()]) from exc
