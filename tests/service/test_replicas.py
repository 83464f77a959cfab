"""Two API processes (real `python -m service` replicas) share dedup and key revocation through Redis."""

from __future__ import annotations

import concurrent.futures
import signal
import uuid
from pathlib import Path

import httpx
import redis

from tests.conftest import ADMIN_KEY, free_port, spawn_service, wait_http
from tests.service.test_events import ev, stored


def test_same_batch_sent_to_two_replicas_at_once_is_applied_once(redis_url: str, redis_sync: redis.Redis,
                                                                   tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    procs = [spawn_service(["-m", "service"], {"ATTUNE_REDIS_URL": redis_url, "ATTUNE_ADMIN_KEY": ADMIN_KEY,
                                               "ATTUNE_PORT": str(p), "ATTUNE_PARTITIONS": "4",
                                               "ATTUNE_DATA_DIR": str(tmp_path)}, tmp_path / f"api{p}.log")
             for p in ports]
    try:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/healthz")
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/admin/apps/demo/keys", json={"scopes": ["ingest"]},
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        key = r.json()["key"]
        batches = [[ev(user=f"u{i}", event_id=uuid.uuid4().hex) for i in range(100)] for _ in range(5)]

        def send(port: int, batch: list[dict[str, object]]) -> dict[str, int]:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/events", json={"events": batch},
                           headers={"Authorization": f"Bearer {key}"}, timeout=20)
            assert r.status_code == 202, r.text
            return r.json()

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda job: send(*job), [(p, b) for b in batches for p in ports]))
        assert sum(r["accepted"] for r in results) == 500
        assert sum(r["duplicates"] for r in results) == 500
        assert len(stored(redis_sync)) == 500

        # Revocation through one replica is seen by the other on its next call.
        with httpx.Client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as a:
            key_id = key.split("_")[2]
            assert a.delete(f"http://127.0.0.1:{ports[0]}/v1/admin/keys/{key_id}").status_code == 200
        r = httpx.post(f"http://127.0.0.1:{ports[1]}/v1/events", json=ev(), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            # uvicorn drains, then re-raises the SIGTERM it caught: -15 after a clean shutdown.
            assert proc.wait(20) in (0, -signal.SIGTERM)
        for p in ports:
            assert "Application shutdown complete" in (tmp_path / f"api{p}.log").read_text()
