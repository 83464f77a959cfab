"""The Redis store shared by the API and the workers: connection, Lua scripts, ingestion, key records.

Every redis-py exception is translated here, in `_guard`, into StoreUnavailable (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError, DataError, NoPermissionError, NoScriptError, OutOfMemoryError, RedisError,
    ResponseError,
)

try:
    import hiredis
except ImportError:  # redis[hiredis] is a dependency, but the pure-Python parser and packer still work
    hiredis = None

from service import keys
from service.errors import StoreUnavailable

T = TypeVar("T")

# KEYS[1] stream, KEYS[2..] dedup keys; ARGV[1] ttl, ARGV[2..] payloads. One event: check + append, atomic.
INGEST_LUA = """
local out = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# The key check every authenticated call starts with. KEYS[1] key record, KEYS[2] this second's rate
# counter; ARGV[1] secret hash, ARGV[2] cost, ARGV[4] the default rate limit. Sets `rec` (hash, scopes,
# the app's own limit if it has one), `n` (this second's use after this call) and `limit` (the app's
# limit, else the default). The stored and given values are SHA-256 digests of a 256-bit secret:
# comparing digests leaks nothing an attacker could use (a timing difference would reveal digest
# bytes, not the secret). A Redis at its memory bound (maxmemory, noeviction) refuses the count, a write: the
# call then goes on uncounted, so profiles and chats are still served while Redis is full (the writes that
# follow, an ingestion's, still fail whole). `n` is then minus the cost: the API process counts such calls
# itself (auth.admit), so a full Redis does not lift the rate limit.
KEY_CHECK_LUA = """
local rec = redis.call('HMGET', KEYS[1], 'hash', 'scopes', 'rate_limit')
if not rec[1] or rec[1] ~= ARGV[1] then return {0} end
local n = redis.pcall('INCRBY', KEYS[2], ARGV[2])
if type(n) == 'table' then
  if not string.find(n.err or '', 'OOM', 1, true) then return redis.error_reply(n.err) end
  n = -tonumber(ARGV[2])
elseif n == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], 3) end
local limit = tonumber(rec[3]) or tonumber(ARGV[4])
local refused = n > limit or not string.find(',' .. (rec[2] or '') .. ',', ',' .. ARGV[3] .. ',', 1, true)
"""

# The key check alone (ARGV[3] the scope, '' when the caller checks it). Returns {0} for an unknown key,
# else {1, scopes, used, limit}.
AUTH_LUA = KEY_CHECK_LUA + """
return {1, rec[2], n, limit}
"""

# The key check of AUTH and the appends of INGEST in one call: one round trip for a request with an
# app key. KEYS[1] key record, KEYS[2] rate counter, then each event's stream and dedup key;
# ARGV[1] secret hash, ARGV[2] cost, ARGV[3] scope, ARGV[4] rate limit, ARGV[5] dedup ttl, ARGV[6..]
# payloads. Returns {0} for an unknown key, else {1, scopes, used, limit, flag per event}: no flags
# (nothing written) when the scope is missing or the rate limit exceeded, the same verdicts auth.admit gives.
# Its keys span hash tags (as INGEST's do: an event's dedup mark takes its slot from the event id), so it
# needs one Redis node; connect() refuses a Redis Cluster.
AUTH_INGEST_LUA = KEY_CHECK_LUA + """
local out = {1, rec[2], n, limit}
if refused then return out end
local k = 3
for i = 6, #ARGV do
  if redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', ARGV[5]) then
    redis.call('XADD', KEYS[k], '*', 'e', ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  k = k + 2
end
return out
"""


# The key check of AUTH and the user's profile documents in one call: one round trip before a chat goes
# to M2-her. KEYS[1] key record, KEYS[2] rate counter, KEYS[3..] profile keys (most specific first);
# ARGV[1] secret hash, ARGV[2] cost, ARGV[3] scope, ARGV[4] rate limit. Returns {0} for an unknown key,
# else {1, scopes, used, limit, read, doc per profile key (nil where absent)}: read is 0 and no document comes
# back when the scope is missing or the rate limit exceeded (auth.admit refuses the call), when no
# profile key was given, or when reading failed (pcall: the chat then goes out unconditioned, never
# fails). Revocation stays immediate: the key record is read on every call. The profile keys live under
# the user's hash tag, not the app's, so like AUTH_INGEST this needs one Redis node (connect() gives one);
# on Redis Cluster, check the key with AUTH and read the profile with MGET as service/profiles.py does.
AUTH_PROFILE_LUA = KEY_CHECK_LUA + """
if #KEYS < 3 or refused then return {1, rec[2], n, limit, 0} end
local docs = redis.pcall('MGET', unpack(KEYS, 3))
if type(docs) ~= 'table' or docs.err then return {1, rec[2], n, limit, 0} end
local out = {1, rec[2], n, limit, 1}
for i = 1, #KEYS - 2 do out[i + 5] = docs[i] end
return out
"""

# An app's own rate limit, set or cleared (ARGV[1] '' for the default) on the app's config and on every
# key record it has, atomically (all under the app's hash tag). KEYS[1] config, KEYS[2] the app's key
# set; ARGV[2] the key record prefix. Returns the number of keys changed.
SET_LIMIT_LUA = """
local ids = redis.call('SMEMBERS', KEYS[2])
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'rate_limit') else redis.call('HSET', KEYS[1], 'rate_limit', ARGV[1]) end
local changed = 0
for _, id in ipairs(ids) do
  local rec = ARGV[2] .. id
  if redis.call('EXISTS', rec) == 1 then
    if ARGV[1] == '' then redis.call('HDEL', rec, 'rate_limit') else redis.call('HSET', rec, 'rate_limit', ARGV[1]) end
    changed = changed + 1
  end
end
return changed
"""

# A new key record, with the app's own rate limit if it has one. KEYS[1] record, KEYS[2] the app's key
# set, KEYS[3] the app's config; ARGV[1] key id, ARGV[2..] field, value pairs.
SAVE_KEY_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local limit = redis.call('HGET', KEYS[3], 'rate_limit')
if limit then redis.call('HSET', KEYS[1], 'rate_limit', limit) end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


class Script:
    """EVALSHA with a fallback to loading the script (after a Redis restart or on a new node)."""

    def __init__(self, source: str) -> None:
        import hashlib  # noqa: PLC0415

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def queue(self, pipe: Any, keys_: list[str], args: list[Any]) -> None:
        pipe.evalsha(self.sha, len(keys_), *keys_, *args)

    async def __call__(self, client: aioredis.Redis, keys_: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys_), *keys_, *args)


INGEST = Script(INGEST_LUA)
AUTH = Script(AUTH_LUA)
AUTH_INGEST = Script(AUTH_INGEST_LUA)
AUTH_PROFILE = Script(AUTH_PROFILE_LUA)
SET_LIMIT = Script(SET_LIMIT_LUA)
SAVE_KEY = Script(SAVE_KEY_LUA)


async def _guard(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise unavailable(exc) from exc


def out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for its memory bound (maxmemory under noeviction)."""
    # redis-py names the error OutOfMemoryError when the reply starts with OOM (Redis 7 in a script); Redis 6.2
    # wraps it in a script error ("ERR Error running script ... OOM command not allowed"), and so do raw replies.
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc))


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The 503 for a Redis failure: unreachable, or full (maxmemory reached under noeviction, where Redis
    refuses every write and Attune must not say "unreachable" to an operator looking for the cause)."""
    if out_of_memory(exc):
        return StoreUnavailable("the event store (Redis) is out of memory (maxmemory) and refuses writes; "
                                "retry later (operators: raise maxmemory or add memory)", retry_after=10)
    if _refused_login(exc):
        return StoreUnavailable("the event store (Redis) refuses Attune's credentials; retry later "
                                "(operators: check the user and password in ATTUNE_REDIS_URL, "
                                "and the user's ACL)", retry_after=10)
    return StoreUnavailable()


def _refused_login(exc: BaseException | None) -> bool:
    """Whether Redis answered but refused Attune's password or user (redis-py's asyncio client raises a
    ConnectionError caused by the AuthenticationError)."""
    for _ in range(4):
        if exc is None:
            return False
        if isinstance(exc, AuthenticationError | NoPermissionError):
            return True
        exc = exc.__cause__
    return False


@dataclass(frozen=True, slots=True)
class KeyCheck:
    valid: bool
    scopes: tuple[str, ...] = ()
    used: int = 0  # this second's use after this call; minus the call's cost when Redis could not count it
    limit: int = 0  # the app's rate limit per second: its own if an operator set one, else the default


def _key_check(res: list[Any]) -> KeyCheck:
    """The verdict of a key-check script's reply {1, scopes, used, limit, ...}."""
    scopes = res[1].decode() if isinstance(res[1], bytes) else (res[1] or "")
    return KeyCheck(True, tuple(s for s in scopes.split(",") if s), int(res[2]), int(res[3]))


def connect(url: str, **kw: Any) -> aioredis.Redis:
    opts: dict[str, Any] = {"socket_timeout": 3.0, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    opts.update(kw)
    client = aioredis.from_url(url, **opts)
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)  # before any connection exists
    return client


MIN_REDIS = (6, 2)  # XAUTOCLAIM, GETDEL, SET ... EXAT


class UnsupportedRedis(RuntimeError):
    """The server at ATTUNE_REDIS_URL answers but cannot hold Attune's data as designed."""


async def check_server(client: aioredis.Redis) -> None:
    """Refuse, with what to do instead, a server Attune cannot run on: older than 6.2, or a Redis Cluster.

    Cluster: every user's keys share a hash tag, but the one-round-trip scripts (key check + rate +
    append, key check + profile read) and the workers' multi-stream reads span slots, and this client
    speaks to one node. Best effort: an unreachable server is left to /readyz and the 503s, not refused.
    """
    try:
        info = await asyncio.wait_for(client.info(), 3)
    except (RedisError, OSError, TimeoutError):
        return
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(x) if x.isdigit() else 0 for x in version.split(".")[:2])
    if parts < MIN_REDIS:
        raise UnsupportedRedis(f"ATTUNE_REDIS_URL points at Redis {version}; Attune needs Redis 6.2 or newer "
                               "(or Valkey). Upgrade it, or unset ATTUNE_REDIS_URL to use the embedded Redis.")
    if str(info.get("cluster_enabled", "0")) == "1":
        raise UnsupportedRedis("ATTUNE_REDIS_URL points at a Redis Cluster node; this version of Attune needs a "
                               "standalone Redis or Valkey primary (with replicas or Sentinel for failover). "
                               "Point it at one, or unset ATTUNE_REDIS_URL to use the embedded Redis.")


def _pack_command(self: Any, *args: Any) -> list[bytes]:
    """redis-py's sync HiredisRespSerializer.pack, for the asyncio client (which packs in Python, copying
    a growing buffer per argument: 10 us per ingested event, the C packer 2 us); same bytes out."""
    if isinstance(args[0], str):
        args = tuple(args[0].encode().split()) + args[1:]
    elif b" " in args[0]:
        args = tuple(args[0].split()) + args[1:]
    try:
        return [hiredis.pack_command(args)]
    except TypeError:
        pass
    args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
    try:
        return [hiredis.pack_command(args)]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


def reply_error(reply: Any) -> ResponseError | None:
    """The redis-py exception a raw hiredis reply stands for (NoScriptError for NOSCRIPT), or None. For the
    bare RESP connections of the gateway (LeanRedis) and the worker (workers/resp.py)."""
    if hiredis is not None and isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message)
    return None


def hello_commands(username: str | None, password: str | None, db: int | None) -> list[tuple[Any, ...]]:
    """What a bare RESP connection sends first, as redis-py does: AUTH if a password is set, SELECT db."""
    out: list[tuple[Any, ...]] = []
    if password:
        out.append((b"AUTH", *((username,) if username else ()), password))
    if db:
        out.append((b"SELECT", int(db)))
    return out


def check_hello(replies: list[Any]) -> None:
    """Raise AuthenticationError if Redis refused what hello_commands sent."""
    for reply in replies:
        error = reply_error(reply)
        if error is not None:
            raise AuthenticationError(str(error))


@functools.cache
def _hiredis_packing(cls: type) -> type:
    if hiredis is None or not hasattr(hiredis, "pack_command"):
        return cls
    return type(cls.__name__, (cls,), {"pack_command": _pack_command, "__module__": __name__})


class StatsBuffer:
    """Per-process counters flushed to per-minute Redis hashes about once a second.

    Counting in memory keeps the hot path free of an extra Redis round trip; a crash loses at most
    the last second of dashboard figures, never an event.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, app: str, field: str, n: int = 1, now: float | None = None) -> None:
        minute = int((now or time.time()) // 60)
        self._counts[(app, minute)][field] += n

    def add_many(self, app: str, fields: Iterable[tuple[str, int]], now: float | None = None) -> None:
        minute = int((now or time.time()) // 60)
        bucket = self._counts[(app, minute)]
        for field, n in fields:
            bucket[field] += n

    async def flush(self, client: aioredis.Redis) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, defaultdict(lambda: defaultdict(int))
        pipe = client.pipeline(transaction=False)
        for (app, minute), fields in counts.items():
            key = keys.stats_minute(app, minute)
            hour_key = keys.stats_hour(app, minute // 60)
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
                pipe.hincrby(hour_key, field, n)
            pipe.expire(key, keys.STATS_TTL_SECONDS)
            pipe.expire(hour_key, keys.STATS_TTL_SECONDS)
            pipe.sadd(keys.APPS, app) if app != "_all" else None
        try:
            await pipe.execute()
        except (RedisError, OSError):
            # Put them back: figures are retried on the next flush rather than lost.
            for (app, minute), fields in counts.items():
                for field, n in fields.items():
                    self._counts[(app, minute)][field] += n

    @contextlib.asynccontextmanager
    async def running(self, client: aioredis.Redis, every: float = 1.0) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                await self.flush(client)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.flush(client)


class Store:
    def __init__(self, client: aioredis.Redis, partitions: int, dedup_ttl: int) -> None:
        self.redis = client
        self.partitions = partitions
        self.dedup_ttl = dedup_ttl
        self._streams = [keys.stream(p) for p in range(partitions)]

    async def problem(self) -> str | None:
        """None when Redis answers a PING, else what /readyz reports: unreachable, or refusing the login
        (a wrong password is not a down server, and an operator should not look for one)."""
        try:
            await self.redis.ping()
            return None
        except (RedisError, OSError) as exc:
            if _refused_login(exc):
                return "redis refuses Attune's credentials (check the user and password in ATTUNE_REDIS_URL)"
            return "redis unreachable"

    async def ingest(self, app: str, events: list[dict[str, Any]]) -> list[bool]:
        """Append events whose id this app has not sent before; True where appended, False for duplicates.

        One script call per partition, all in one pipeline round trip. Each event's check and append
        are atomic, so a crash or a lost connection never leaves an event half-written: a retry of
        the batch counts what got in as duplicates and appends the rest.
        """
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            groups[keys.partition_of(app, ev["user_id"], self.partitions)].append(i)
        order = list(groups.items())

        def queue(pipe: Any) -> None:
            for part, idx in order:
                ks = [keys.stream(part), *(keys.dedup(app, events[i]["event_id"], self.partitions) for i in idx)]
                args = [self.dedup_ttl] + [orjson.dumps({"app": app, **events[i]}) for i in idx]
                INGEST.queue(pipe, ks, args)

        results = await _guard(self._run_scripts(queue, INGEST))
        out = [False] * len(events)
        for (_, idx), res in zip(order, results, strict=True):
            for i, flag in zip(idx, res, strict=True):
                out[i] = bool(flag)
        return out

    async def ingest_checked(self, app: str, key_id: str, secret_hash: str, scope: str, rate_limit: int,
                             cost: int, events: list[dict[str, Any]]) -> tuple[KeyCheck, list[bool]]:
        """check_key and ingest in one atomic script call: events are appended only when the key is
        valid, has the scope and is within the rate limit (flags empty otherwise)."""
        ks = [keys.api_key(app, key_id), keys.rate(app, int(time.time()))]
        args: list[Any] = [secret_hash, max(1, cost), scope, rate_limit, self.dedup_ttl]
        add_key, add_arg, partition_of, dedup, dumps = ks.append, args.append, keys.partition_of, keys.dedup, orjson.dumps
        streams, partitions = self._streams, self.partitions
        for ev in events:  # runs for every event ingested: names bound locally
            part = partition_of(app, ev["user_id"], partitions)
            add_key(streams[part])
            add_key(dedup(app, ev["event_id"], partitions))
            add_arg(dumps({"app": app, **ev}))
        res = await _guard(AUTH_INGEST(self.redis, ks, args))
        if not res or int(res[0]) != 1:
            return KeyCheck(False), []
        return _key_check(res), [bool(f) for f in res[4:]]

    async def condition_checked(self, app: str, key_id: str, secret_hash: str, scope: str, rate_limit: int,
                                profile_keys: list[str]) -> tuple[KeyCheck, list[bytes | None] | None]:
        """check_key and the profile read in one atomic script call: (verdict, the documents in the order
        of profile_keys, None where absent), or (verdict, None) when they were not read (see the script)."""
        ks = [keys.api_key(app, key_id), keys.rate(app, int(time.time())), *profile_keys]
        res = await _guard(AUTH_PROFILE(self.redis, ks, [secret_hash, 1, scope, rate_limit]))
        if not res or int(res[0]) != 1:
            return KeyCheck(False), None
        check = _key_check(res)
        if int(res[4]) != 1:
            return check, None
        docs = list(res[5:])
        docs += [None] * (len(profile_keys) - len(docs))  # trailing nils may be dropped from a Lua array
        return check, docs

    async def _run_scripts(self, queue: Any, script: Script) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        queue(pipe)
        try:
            return await pipe.execute()
        except NoScriptError:
            await self.redis.script_load(script.source)
            pipe = self.redis.pipeline(transaction=False)
            queue(pipe)
            return await pipe.execute()

    async def check_key(self, app: str, key_id: str, secret_hash: str, cost: int, rate_limit: int) -> KeyCheck:
        now = int(time.time())
        res = await _guard(AUTH(self.redis, [keys.api_key(app, key_id), keys.rate(app, now)],
                                [secret_hash, cost, "", rate_limit]))
        if not res or int(res[0]) != 1:
            return KeyCheck(False)
        return _key_check(res)

    async def charge(self, app: str, cost: int) -> int:
        """Count cost against the app's budget for this second (the admin key's calls on an app)."""
        key = keys.rate(app, int(time.time()))
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(key, cost)
        pipe.expire(key, 3)
        res = await _guard(pipe.execute())
        return int(res[0])

    async def save_key(self, app: str, key_id: str, record: dict[str, str]) -> None:
        await _guard(SAVE_KEY(self.redis, [keys.api_key(app, key_id), keys.app_keys(app), keys.app_config(app)],
                              [key_id, *(x for kv in record.items() for x in kv)]))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.KEY_INDEX, key_id, app)
        pipe.sadd(keys.APPS, app)
        await _guard(pipe.execute())

    async def set_rate_limit(self, app: str, limit: int | None) -> int:
        """Set (None: clear) the app's own rate limit on the app and all its keys; the keys changed."""
        changed = await _guard(SET_LIMIT(self.redis, [keys.app_config(app), keys.app_keys(app)],
                                         ["" if limit is None else limit, keys.api_key(app, "")]))
        return int(changed)

    async def rate_limit(self, app: str) -> int | None:
        """The app's own rate limit, or None when it uses the default."""
        raw = await _guard(self.redis.hget(keys.app_config(app), "rate_limit"))
        return int(raw) if raw is not None else None

    async def delete_key(self, key_id: str) -> str | None:
        app = await _guard(self.redis.hget(keys.KEY_INDEX, key_id))
        if app is None:
            return None
        app = app.decode()
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.api_key(app, key_id))
        pipe.srem(keys.app_keys(app), key_id)
        pipe.hdel(keys.KEY_INDEX, key_id)
        await _guard(pipe.execute())
        return app

    async def list_keys(self, app: str) -> list[dict[str, str]]:
        ids = sorted(k.decode() for k in await _guard(self.redis.smembers(keys.app_keys(app))))
        pipe = self.redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(keys.api_key(app, key_id))
        records = await _guard(pipe.execute())
        out = []
        for key_id, rec in zip(ids, records, strict=True):
            if rec:
                d = {k.decode(): v.decode() for k, v in rec.items()}
                out.append({"key_id": key_id, "app": app, "scopes": d.get("scopes", "").split(","),
                            "created_at": d.get("created_at")})
        return out

    async def app_exists(self, app: str) -> bool:
        """Whether the app has had a key or an event."""
        return bool(await _guard(self.redis.sismember(keys.APPS, app)))

    async def apps(self) -> list[str]:
        return sorted(a.decode() for a in await _guard(self.redis.smembers(keys.APPS)))

    async def workers_alive(self, within_seconds: float) -> int:
        now_ms = int(time.time() * 1000)
        return int(await _guard(self.redis.zcount(keys.WORKERS, now_ms - int(within_seconds * 1000), "+inf")))
