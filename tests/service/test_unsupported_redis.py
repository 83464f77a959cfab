"""A Redis Cluster node at ATTUNE_REDIS_URL is refused at start with what to do instead, by the API and the worker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.embedded import redis_executable
from tests.conftest import free_port, spawn_service


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    while port + 10000 > 65535:  # a cluster node also listens on port + 10000 (its bus): keep that valid
        port = free_port()
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen([redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"),
                             "--dir", str(tmp_path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis.from_url(url).info("cluster")["cluster_enabled"] == 1:
                break
        except redis.ConnectionError:
            assert proc.poll() is None, (tmp_path / "node.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("module", ["service", "workers"])
def test_a_cluster_node_is_refused_with_a_clear_message(cluster_node: str, tmp_path: Path, module: str) -> None:
    log = tmp_path / f"{module}.log"
    proc = spawn_service(["-m", module], {"ATTUNE_REDIS_URL": cluster_node, "ATTUNE_PORT": str(free_port()),
                                          "ATTUNE_ADMIN_KEY": "adm_" + "x" * 40}, log)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code != 0, text
    assert "points at a Redis Cluster node" in text and "standalone Redis" in text, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
