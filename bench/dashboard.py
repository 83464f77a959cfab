"""Dashboard cost with 10,000 users: GET /v1/admin/stats per window, and the page's load time in a browser.

Run: .venv/bin/python -m bench.dashboard   (embedded Redis, an API on loopback, Debian's chromium)
1. The stats route, medians of 15 calls per window, for an app with no user and one with 10,000 users'
   aggregates, calls alternating: the route reads aggregates only, so the ratio should stay near 1.
2. The page (issue 5: "must load in under a second on this machine with 10,000 users' data"): best of
   5 loads per window in headless chromium, from navigation until every panel is drawn, next to the
   load of one static file from the same server in the same run (the floor of any page here).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis
from playwright.sync_api import expect, sync_playwright

from service.embedded import EmbeddedRedis
from tests.conftest import ADMIN_KEY, make_settings, start_api
from tests.dashboard_data import fill_counters, fill_hours, fill_users, fill_workers


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="attune-bench-dash-"))
    server_redis = EmbeddedRedis(root / "redis")
    url = server_redis.start()
    r = redis.Redis.from_url(url)
    server, api = start_api(make_settings(url, root))
    ok = False
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
        page_load_times(api.url)
        ok = True
    finally:
        server.__exit__(None, None, None)
        server_redis.stop()
        if ok:  # kept after a failure, for a look at what the run left
            shutil.rmtree(root, ignore_errors=True)


CHROMIUM = os.environ.get("ATTUNE_CHROMIUM", "/usr/bin/chromium")
GOAL_S = 1.0


def page_load_times(url: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(f"{url}/dashboard")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        expect(page.locator("body")).to_have_attribute("data-loaded-window", "1h")
        figures: dict[str, float] = {}
        for window in ("static file", "15m", "1h", "6h", "24h", "7d"):
            best = float("inf")
            for _ in range(5):  # best of 5: the machine is shared; the best run is the page's own cost
                start = time.perf_counter()
                if window == "static file":
                    page.goto(f"{url}/dashboard/static/dashboard.css")
                else:
                    page.goto(f"{url}/dashboard?app=tenk&window={window}")
                    expect(page.locator("body")).to_have_attribute("data-loaded-window", window)
                best = min(best, time.perf_counter() - start)
            figures[window] = best
        browser.close()
    floor = figures.pop("static file")
    print(f"page load in chromium, 10,000 users, best of 5 (static file from the same server: {floor * 1000:.0f} ms):")
    for window, t in figures.items():
        print(f"  window={window:>3}: {t * 1000:6.0f} ms ({t / floor:4.1f}x the static file)")
    worst = max(figures.values())
    print(f"slowest window {worst:.2f} s (goal < {GOAL_S:.0f} s: {'met' if worst < GOAL_S else 'MISSED'})")


if __name__ == "__main__":
    main()
