"""Request bodies from careless or hostile clients (service/body.py), against a real server and Redis."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from tests.conftest import ApiServer, raw_request


def request_counts(api: ApiServer, route: str, status: int) -> float:
    """How many requests the latency histogram counted for a route and status."""
    text = httpx.get(f"{api.url}/metrics").text
    pattern = (rf'attune_http_request_duration_seconds_count\{{method="POST",route="{route}",'
               rf'status="{status}"\}} (\S+)')
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(("path", "route"), [("/v1/events", "post_events"), ("/v1/chat/completions", "chat_openai")])
def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(api: ApiServer, caplog: pytest.LogCaptureFixture,
                                                               path: str, route: str) -> None:
    key = api.app_key()
    errors_before = request_counts(api, route, 500)
    gone_before = request_counts(api, route, 499)
    with caplog.at_level(logging.ERROR):
        s = raw_request(api, f"POST {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
                             "X-Attune-User: u1\nContent-Type: application/json\nContent-Length: 1000",
                        b'{"events": [')
        s.close()
        deadline = time.monotonic() + 10
        while request_counts(api, route, 499) == gone_before and time.monotonic() < deadline:
            time.sleep(0.02)
    # Before: a ClientDisconnect escaped as a 500 with an ERROR traceback, for an app's dropped connection.
    assert request_counts(api, route, 499) == gone_before + 1
    assert request_counts(api, route, 500) == errors_before
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
