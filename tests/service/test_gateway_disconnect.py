"""A chat whose app hangs up before the reply, through a real Attune server and the real stand-in, with a
first-byte limit far above the stand-in's delay: a slow machine can neither answer before the hang-up nor
time out the upstream itself before the hang-up is noticed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from service.settings import Settings
from service.standin import StandIn
from tests.conftest import ApiServer, make_settings
from tests.service.test_gateway import MESSAGES, headers, recorded, si, standin  # noqa: F401 - fixtures


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, redis_sync: redis.Redis, standin: tuple[StandIn, str]) -> Settings:  # noqa: F811
    return make_settings(redis_url, tmp_path, minimax_base_url=standin[1],
                         upstream_timeout={"first_byte": 30.0, "idle": 5.0},
                         upstream_retry={"attempts": 3, "backoff": 0.01, "max_backoff": 0.05})


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_before_the_reply_stops_the_upstream_request(
    api: ApiServer, si: StandIn, redis_sync: redis.Redis, stream: bool  # noqa: F811
) -> None:
    """A non-streamed chat (or a streamed one before its first byte) whose app hangs up: the upstream
    request is cancelled instead of running to its end, nothing is recorded, and the server goes on."""
    # The app gives up after 1 s of silence, long before the stand-in's first byte at 8 s.
    si.config.update(first_byte_ms=8000)
    body = {"model": "M2-her", "messages": MESSAGES, "stream": stream}
    with api.client(api.app_key()) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chat/completions", headers=headers(), json=body, timeout=httpx.Timeout(5, read=1.0))
    deadline = time.monotonic() + 15
    while not si.log and time.monotonic() < deadline:
        time.sleep(0.02)
    entry = si.log[-1]
    while not (entry.get("disconnected") or entry.get("completed")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert entry["disconnected"] and not entry["completed"]
    si.config.update(first_byte_ms=0)
    with api.client(api.app_key()) as c:
        r = c.post("/v1/chat/completions", headers=headers(), json=body)
    assert r.status_code == 200 and si.log[-1]["completed"]
    assert r.headers["x-attune-reply-id"]
    recorded(redis_sync, r.headers["x-attune-reply-id"])
    assert len(si.log) == 2  # the hung-up chat was not retried either
