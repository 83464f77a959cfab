"""The silence limit between chunks through a real Attune server, configured as production is (idle below
the first-byte limit, so the per-stream watchdog runs): a silent M2-her ends the stream with an error
event, a slow reader is not taken for silence, and a client that leaves during the silence leaves no
error behind."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.settings import Settings
from service.standin import StandIn
from tests.conftest import ApiServer, make_settings
from tests.service.test_gateway import MESSAGES, headers, si, standin  # noqa: F401 - fixtures

BODY = {"model": "M2-her", "messages": MESSAGES, "stream": True}


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, redis_sync: redis.Redis, standin: tuple[StandIn, str]) -> Settings:  # noqa: F811
    return make_settings(redis_url, tmp_path, minimax_base_url=standin[1],
                         upstream_timeout={"first_byte": 2.0, "idle": 1.0},
                         upstream_retry={"attempts": 1, "backoff": 0.01, "max_backoff": 0.05})


def test_silence_limit_between_chunks(api: ApiServer, si: StandIn) -> None:  # noqa: F811
    key = api.app_key()
    with api.client(key) as c:
        si.config.update(chunk_ms=50)
        r = c.post("/v1/chat/completions", headers=headers(), json=BODY)
        assert r.status_code == 200 and "went silent" not in r.text

        si.config.update(chunk_ms=5000)  # every gap far over the 1 s limit
        started = time.monotonic()
        r = c.post("/v1/chat/completions", headers=headers(), json=BODY)
        assert r.status_code == 200  # the stream had begun: the error arrives inside it
        assert "went silent for over 1 s" in r.text and "1001" in r.text
        assert time.monotonic() - started < 4  # the limit, not the 5 s gap

        si.config.update(chunk_ms=30)  # a fast M2-her and a reader slower than the limit
        got = b""
        with c.stream("POST", "/v1/chat/completions", headers=headers(), json=BODY) as s:
            for i, part in enumerate(s.iter_raw(256)):
                got += part
                if i < 4:
                    time.sleep(1.2)  # longer than the limit, while M2-her's chunks keep coming
        assert b"went silent" not in got and got.count(b"data:") > 2


def test_client_leaving_during_silence_leaves_no_error(api: ApiServer, si: StandIn,  # noqa: F811
                                                      caplog: pytest.LogCaptureFixture) -> None:
    key = api.app_key()
    si.config.update(chunk_ms=3000)
    with api.client(key) as c, pytest.raises(httpx.ReadTimeout):
        with c.stream("POST", "/v1/chat/completions", headers=headers(), json=BODY,
                      timeout=httpx.Timeout(5, read=0.1)) as s:
            for _ in s.iter_raw():
                pass
    time.sleep(1.5)  # the gateway notices the silence (1 s) with nobody left to tell
    si.config.update(chunk_ms=0)
    with api.client(key) as c:
        assert c.post("/v1/chat/completions", headers=headers(), json=BODY).status_code == 200
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_disconnect_does_not_swallow_a_shutdown_cancel_on_top_of_it() -> None:
    """The Watch undoes only its own cancel: when the server cancels the same handler in the same turn
    as the client leaves (a graceful-shutdown timeout), that cancel still ends the handler."""
    from service.routes.gateway import Watch  # noqa: PLC0415

    disconnect: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, str]:
        return await disconnect

    outcomes: list[str] = []

    async def handler() -> None:
        watch = Watch(receive)
        try:
            await asyncio.sleep(10)  # the upstream call
        except asyncio.CancelledError:
            if not watch.gone():
                raise
            outcomes.append("answered 499")

    for also_shutdown in (False, True):
        disconnect = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        disconnect.set_result({"type": "http.disconnect"})
        await asyncio.sleep(0)  # the receive completes; the Watch's callback cancels the handler
        if also_shutdown:
            task.cancel("graceful shutdown timeout")
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            await task
    assert outcomes == ["answered 499"]
