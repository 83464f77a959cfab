"""Prometheus metrics. Under several API processes set PROMETHEUS_MULTIPROC_DIR (attune serve does)."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import disable_created_metrics, multiprocess

disable_created_metrics()

EVENTS = Counter("attune_events_total", "Events received, by outcome (accepted, duplicate, rejected), type and reason",
                 ["outcome", "type", "reason"])
REQUESTS = Histogram(
    "attune_http_request_duration_seconds", "HTTP request latency by route",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM = Histogram(
    "attune_upstream_seconds", "Time to the first byte from M2-her, by route and outcome",
    ["route", "outcome"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter("attune_upstream_errors_total", "M2-her errors by MiniMax code", ["code"])
FAIL_OPEN = Counter("attune_gateway_fail_open_total",
                    "Chats forwarded unconditioned because Redis or the profile could not be read, by reason",
                    ["reason"])
ATTRIBUTION_LOST = Counter("attune_attribution_lost_total",
                           "Gateway reply_shown events that could not be recorded after retries")


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY  # noqa: PLC0415

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class LatencyMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware): one histogram observation per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            _requests(route, scope["method"], status[0]).observe(time.perf_counter() - start)


@functools.lru_cache(maxsize=1024)
def _requests(route: str, method: str, status: int) -> Any:
    """The labelled histogram (labels() takes a lock and checks its arguments on every call)."""
    return REQUESTS.labels(route, method, str(status))
