"""Dashboard cost: GET /v1/admin/stats per window, with no user and with 10,000 users' aggregates.

Run: .venv/bin/python -m bench.dashboard   (embedded Redis, an API on loopback; prints medians of 10 calls)
The figure that matters is the ratio between the two user counts: the route reads aggregates only,
so 10,000 users should cost what none does. The browser load time with 10,000 users is measured by
tests/browser/test_dashboard_browser.py::test_loads_in_under_a_second_with_10000_users (run with -s).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import redis

from service.embedded import EmbeddedRedis
from tests.conftest import make_settings, start_api
from tests.dashboard_data import fill_counters, fill_hours, fill_users, fill_workers


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="attune-bench-dash-"))
    server_redis = EmbeddedRedis(root / "redis")
    url = server_redis.start()
    r = redis.Redis.from_url(url)
    server, api = start_api(make_settings(url, root))
    try:
        # Two apps with the same counters, one with 10,000 users; calls alternate so machine noise hits both alike.
        for app, users in (("nousers", 0), ("tenk", 10_000)):
            api.app_key(("ingest",), app=app)
            fill_counters(r, app, minutes=360, scale=20)
            fill_hours(r, app, hours=168, per_minute_scale=20)
            if users:
                fill_users(r, app, users)
        fill_workers(r, api.settings.partitions)
        with api.admin() as c:
            for window in ("15m", "1h", "6h", "24h", "7d"):
                times: dict[str, list[float]] = {"nousers": [], "tenk": []}
                for _ in range(15):
                    for app in times:
                        t = time.perf_counter()
                        resp = c.get("/v1/admin/stats", params={"app": app, "window": window})
                        times[app].append(time.perf_counter() - t)
                        assert resp.status_code == 200, resp.text
                none, tenk = statistics.median(times["nousers"]), statistics.median(times["tenk"])
                print(f"window={window:>3}: median no user {none * 1000:6.1f} ms, 10,000 users {tenk * 1000:6.1f} ms "
                      f"(ratio {tenk / none:.2f}), body {len(resp.content) / 1024:.0f} KiB")
    finally:
        server.__exit__(None, None, None)
        server_redis.stop()


if __name__ == "__main__":
    main()
