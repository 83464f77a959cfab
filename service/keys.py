"""Every Redis key Attune writes, in one place.

Hash tags ({...}) keep what must change together in one Redis Cluster slot:
- a stream partition is `{p:N}`; an event's dedup key takes its `{p:N}` from the app and the event id,
  not the user, so an id seen once is a duplicate whatever user it names (the contract's dedup is per
  app). The ingest scripts touch several slots: Attune runs on one Redis node (Cluster is refused);
- all keys of one user share `{u:APP:USER}`, so a worker's per-user update is one atomic script;
- an app's key records and its rate-limit counters share `{a:APP}`.
Every key that holds app data carries the app name: one app never reads another's keys.
"""

from __future__ import annotations

import zlib

PREFIX = "attune"


def partition_of(app: str, user_id: str, partitions: int) -> int:
    """Stable across processes and machines (not Python's salted hash())."""
    return zlib.crc32(f"{app}\x00{user_id}".encode()) % partitions


def stream(partition: int) -> str:
    return f"{PREFIX}:{{p:{partition}}}:events"


def dead_letters(partition: int) -> str:
    return f"{PREFIX}:{{p:{partition}}}:dead"


def dedup(app: str, event_id: str, partitions: int) -> str:
    """The mark of an event id this app sent, spread over the partitions' slots by the id itself."""
    spread = zlib.crc32(f"{app}\x00{event_id}".encode()) % partitions
    return f"{PREFIX}:{{p:{spread}}}:seen:{app}:{event_id}"


CONSUMER_GROUP = "attune-workers"


def user_tag(app: str, user_id: str) -> str:
    return f"{PREFIX}:{{u:{app}:{user_id}}}"


def user_key(app: str, user_id: str, suffix: str) -> str:
    return f"{user_tag(app, user_id)}:{suffix}"


def app_users(app: str) -> str:
    """Sorted set of an app's users, scored by last update (ms): the user search and counts."""
    return f"{PREFIX}:app:{app}:users"


def api_key(app: str, key_id: str) -> str:
    return f"{PREFIX}:{{a:{app}}}:key:{key_id}"


def app_keys(app: str) -> str:
    return f"{PREFIX}:{{a:{app}}}:keys"


def app_config(app: str) -> str:
    """Hash of an app's settings an operator changed (its own rate limit)."""
    return f"{PREFIX}:{{a:{app}}}:config"


def rate(app: str, second: int) -> str:
    return f"{PREFIX}:{{a:{app}}}:rate:{second}"


KEY_INDEX = f"{PREFIX}:keyindex"  # hash key_id -> app, so a key can be revoked by its id alone
APPS = f"{PREFIX}:apps"  # set of app names
WORKERS = f"{PREFIX}:workers"  # sorted set worker id -> last heartbeat (ms)


def worker_info(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def stats_minute(app: str, minute: int) -> str:
    """Per-app, per-minute counters (hash). Expire after STATS_TTL_SECONDS."""
    return f"{PREFIX}:stats:{app}:m:{minute}"


STATS_TTL_SECONDS = 8 * 86400


def stats_hour(app: str, hour: int) -> str:
    """The same counters summed per hour (hour = epoch seconds // 3600), written by StatsBuffer.flush
    alongside the minute hash, so windows over 6 h read at most 192 hashes instead of 11,520."""
    return f"{PREFIX}:stats:{app}:h:{hour}"


def dashboard_session(token_hash: str) -> str:
    """An operator's dashboard session (hash, with a TTL); named by the SHA-256 of the cookie's token."""
    return f"{PREFIX}:dash:session:{token_hash}"


def login_failures(client_ip: str) -> str:
    """Wrong admin keys typed at the dashboard login from one IP (sorted set of times, last minute kept)."""
    return f"{PREFIX}:dash:fail:{client_ip}"


# --- Aggregates for /v1/admin/stats and the dashboard -------------------------------------------
# Per-minute counters live in the hash stats_minute(app, minute) (minute = epoch seconds // 60),
# incremented through service.store.StatsBuffer (in memory, flushed about once a second), which also
# adds every count to the hour hash stats_hour(app, hour): writers must go through StatsBuffer (or
# HINCRBY both hashes) for windows over 6 h to see their figures. Fields:
#   accepted:<type>, duplicate, rejected:<code>          API, POST /v1/events
#   denoise:<step>                                       worker: events discounted, by denoising step
#   worker:applied                                       worker: events applied to profiles
#   replies:cond, replies:uncond, repeats:cond, repeats:uncond
#                                                        worker: closed replies and their repeats,
#                                                        conditioned (gateway/condition applied) or not
#   ips:num, ips:den                                     worker: sums for the inverse-propensity estimate
#                                                        (x1e6 integers) of the conditioned policy: over closed
#                                                        conditioned replies that were not explorations,
#                                                        num += 1e6 * r / p, den += 1e6 / p (r = 1 if not repeated,
#                                                        p = logged propensity); self-normalised IPS = num / den.
#                                                        A repeat arriving after the reply closed subtracts its 1/p.
#   upstream:requests, upstream:error:<minimax code>, upstream:lat:<bucket ms>
#                                                        gateway: calls to M2-her, errors, latency histogram
# Profile distributions (current, not per minute) live in the hash profile_hist(app), kept up to
# date incrementally by the worker (old bucket -1, new bucket +1 on every profile change):
#   len:<bucket chars>, pacing:<label>, conf:<decile 0..9>, trust:<label>
def profile_hist(app: str) -> str:
    return f"{PREFIX}:app:{app}:profile_hist"


def profile(app: str, user_id: str, character_id: str | None = None) -> str:
    """The served profile document (JSON), per user and per user and character."""
    return user_key(app, user_id, f"profile:c:{character_id}" if character_id else "profile")


def deleted(app: str, user_id: str) -> str:
    """Tombstone: epoch ms of the user's deletion; events received before it are never applied."""
    return user_key(app, user_id, "deleted_at")


def user_state(app: str, user_id: str) -> str:
    """The worker's learning state of one user (JSON): open and closed replies, counters, applied watermark."""
    return user_key(app, user_id, "state")


def user_recent(app: str, user_id: str) -> str:
    """The user's last 50 replies (list of JSON, newest first): the evidence shown next to a profile."""
    return user_key(app, user_id, "recent")


def regen(app: str, user_id: str, conversation: str) -> str:
    """The replies the gateway served for one state of a user's conversation (JSON list of [pacing asked,
    pacing measured]), kept a few minutes: the same conversation sent again is a regeneration of them."""
    return user_key(app, user_id, f"regen:{conversation}")


def population(app: str) -> str:
    """Population snapshot (JSON): priors, robust bot statistics, repeat-model coefficients; refreshed by workers."""
    return f"{PREFIX}:app:{app}:population"


def population_users(app: str) -> str:
    """Hash user id -> JSON summary of that user's estimates, the sample priors are refreshed from."""
    return f"{PREFIX}:app:{app}:popusers"


def lease(partition: int) -> str:
    """Which worker reads a partition now (value: worker id, with a TTL renewed by the heartbeat)."""
    return f"{PREFIX}:{{p:{partition}}}:lease"


def open_users(partition: int) -> str:
    """Sorted set of app\x00user with open replies, scored by the wall-clock ms they are due to be closed."""
    return f"{PREFIX}:{{p:{partition}}}:open"
