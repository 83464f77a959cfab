"""Keys, scopes, revocation and app isolation, through the real API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import ROOT, ApiServer, free_port
from tests.service.test_events import ev


def test_missing_malformed_and_unknown_keys_are_401(api: ApiServer) -> None:
    with api.client() as c:
        r = c.post("/v1/events", json=ev())
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
        r = c.post("/v1/events", json=ev(), headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
        r = c.post("/v1/events", json=ev(), headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    forged = api.app_key(("ingest",))[:-4] + "0000"
    with api.client(forged) as c:
        assert c.post("/v1/events", json=ev()).status_code == 401


def test_a_scope_the_key_lacks_is_403_naming_it(api: ApiServer) -> None:
    with api.client(api.app_key(("read",))) as c:
        r = c.post("/v1/events", json=ev())
    assert r.status_code == 403
    assert "'ingest' scope" in r.json()["error"]["message"]


def test_key_is_stored_only_as_a_hash_and_shown_once(api: ApiServer, redis_sync: redis.Redis) -> None:
    with api.admin() as c:
        r = c.post("/v1/admin/apps/demo/keys", json={"scopes": ["ingest", "read"]})
        assert r.status_code == 201
        created = r.json()
        assert set(created) == {"key", "key_id", "app", "scopes"} and created["scopes"] == ["ingest", "read"]
        listed = c.get("/v1/admin/apps/demo/keys").json()["keys"]
    secret = created["key"].rsplit("_", 1)[1]
    dump = b"".join(k + b"".join(redis_sync.hvals(k)) for k in redis_sync.keys("*") if redis_sync.type(k) == b"hash")
    assert secret.encode() not in dump
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]


def test_revoked_key_is_refused_at_once(api: ApiServer) -> None:
    with api.admin() as c:
        created = c.post("/v1/admin/apps/demo/keys", json={"scopes": ["ingest"]}).json()
    with api.client(created["key"]) as c:
        assert c.post("/v1/events", json=ev()).status_code == 202
        with api.admin() as a:
            r = a.delete(f"/v1/admin/keys/{created['key_id']}")
            assert r.status_code == 200 and r.json()["revoked"] is True
            assert a.delete(f"/v1/admin/keys/{created['key_id']}").status_code == 404
        assert c.post("/v1/events", json=ev()).status_code == 401


def test_admin_routes_refuse_app_keys_and_bad_input(api: ApiServer) -> None:
    with api.client(api.app_key()) as c:
        r = c.post("/v1/admin/apps/demo/keys", json={"scopes": ["read"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    with api.admin() as c:
        r = c.post("/v1/admin/apps/Bad App/keys", json={"scopes": ["read"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_app"
        r = c.post("/v1/admin/apps/demo/keys", json={"scopes": ["root"]})
        assert r.status_code == 400 and "root" in r.json()["error"]["message"]
        r = c.post("/v1/admin/apps/demo/keys", json={})
        assert r.status_code == 400


def test_a_key_of_one_app_cannot_pose_as_another(api: ApiServer) -> None:
    key = api.app_key(("ingest",), app="alpha")
    _, _app, key_id, secret = key.split("_")
    with api.client(f"atk_beta_{key_id}_{secret}") as c:
        assert c.post("/v1/events", json=ev()).status_code == 401


def test_cli_creates_a_working_key(api: ApiServer) -> None:
    env = {"ATTUNE_REDIS_URL": api.settings.redis_url or "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--app", "cli-app", "--scopes",
                          "ingest,read"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    key = json.loads(out.stdout)["key"]
    with api.client(key) as c:
        assert c.post("/v1/events", json=ev()).status_code == 202
    bad = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--app", "x", "--scopes", "fly"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "scopes must be" in bad.stderr


def test_cli_never_prints_the_redis_password(tmp_path: Path) -> None:
    """The hint after a failed `attune keys create` named ATTUNE_REDIS_URL whole, password included."""
    url = f"redis://attune:hunter2-redis-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {"ATTUNE_REDIS_URL": url, "PATH": "/usr/bin:/bin", "ATTUNE_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "service.cli", "keys", "create", "--app", "x", "--scopes", "read"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "hunter2-redis-pw" not in out.stderr + out.stdout
    assert f"redis://attune:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in out.stderr
