"""`attune run` stops cleanly on one stop request even when SIGTERM arrives more than once (a kill of the
process group plus GNU make forwarding its own SIGTERM, which on a loaded machine can come seconds later),
and a second Ctrl-C later leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import supervisor
from service.embedded import EmbeddedRedis, _answers
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.embedded_only, pytest.mark.timeout(180)]


def start(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST"))}
    env.update({"ATTUNE_PORT": str(free_port()), "ATTUNE_DATA_DIR": str(tmp_path / "var"), **extra})
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ctrl-C stops everything" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return proc, log


def test_a_repeated_sigterm_is_one_clean_stop_that_finishes_the_reply_in_flight(tmp_path: Path) -> None:
    proc, log = start(tmp_path, ATTUNE_STANDIN_CHUNK_MS="250")  # a slow stand-in: a reply takes seconds
    admin = re.search(r"admin key:\s+(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
    base = re.search(r"API:\s+(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
    key = httpx.post(f"{base}/v1/admin/apps/demo/keys", headers={"Authorization": f"Bearer {admin}"},
                     json={"scopes": ["condition"]}).json()["key"]
    # A streamed reply in flight (about 20 chunks, 5 s) keeps the stop busy: the API finishes it first.
    chunks: list[bytes] = []
    first_chunk = threading.Event()

    def chat() -> None:
        # Unconditioned and asked for a long reply: at least 10 chunks (2.5 s), never a short one that ends
        # before the stop begins (the stand-in's natural length is drawn).
        body = {"model": "M2-her", "stream": True, "max_completion_tokens": 48,
                "messages": [{"role": "system", "name": "reader_preferences", "content": "Length: about 3000 characters."},
                             {"role": "user", "name": "u", "content": "Tell me a long story."}]}
        with httpx.stream("POST", f"{base}/v1/text/chatcompletion_v2", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}", "X-Attune-User": "u1",
                                   "X-Attune-Conditioning": "off"}) as r:
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                first_chunk.set()

    reader = threading.Thread(target=chat)
    reader.start()
    assert first_chunk.wait(30), log.read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    first = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # make's forwarded copy, late: on a loaded machine it came over a second after ours.
    time.sleep(max(0.0, first + 1.5 - time.monotonic()))
    assert proc.poll() is None, "the stop ended before the late SIGTERM: the reply was too short to test it"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    reader.join(10)
    text = log.read_text()
    assert "stopping ..." in text and text.rstrip().endswith("[attune] stopped"), text[-3000:]
    assert b'"finish_reason"' in b"".join(chunks)[-2000:], b"".join(chunks)[-500:]  # the reply ended whole


def test_ctrl_c_twice_leaves_nothing_running(tmp_path: Path) -> None:
    proc, log = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    if proc.poll() is None:  # still in its graceful stop: the second Ctrl-C cuts it short (exit 130)
        proc.send_signal(signal.SIGINT)
    assert proc.wait(30) in (0, 130), log.read_text()[-3000:]
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"


def test_the_stand_in_serves_a_socket_it_inherits_listening(tmp_path: Path) -> None:
    """How `attune run` starts the stand-in: on a socket it bound to a free port and hands down already
    listening, so no other process can take the port between choosing it and serving on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST"))}
    log = tmp_path / "standin.log"
    proc = subprocess.Popen([sys.executable, "-m", "service.standin"], cwd=ROOT,
                            env={**env, "ATTUNE_STANDIN_FD": str(sock.fileno())}, pass_fds=(sock.fileno(),),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    sock.close()  # the child's copy is the only one left
    try:
        assert supervisor._wait_http(port, "127.0.0.1", proc, 30), log.read_text()[-3000:]
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/text/chatcompletion_v2", timeout=30,
                           headers={"Authorization": "Bearer sk-test"}, json={
            "model": "M2-her", "messages": [{"role": "user", "name": "User", "content": "Hello"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        assert f"http://127.0.0.1:{port} " in log.read_text()  # it says where it is, not its --port default
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_socket_that_accepts_connects_is_not_up_until_it_answers_http() -> None:
    """A socket handed down listening takes TCP connects before its server runs: waiting for a connect
    would let `attune run` go on while the stand-in is still starting (or failing to)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            started = time.monotonic()
            assert not supervisor._wait_http(sock.getsockname()[1], "127.0.0.1", alive, 1.5)
            assert time.monotonic() - started >= 1.5
        finally:
            alive.kill()
            alive.wait()


def children_running(pid: int, module: str) -> list[int]:
    pgrep = ["pgrep", "-P", str(pid), "-f", f" -m {module}$"]
    out = subprocess.run(pgrep, capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_worker_is_restarted_and_the_api_keeps_serving(tmp_path: Path) -> None:
    """The README: a crashed worker's partitions are taken over, and a worker outage must not take the API
    out of service. The supervisor took everything down with it."""
    proc, log = start(tmp_path)
    base = re.search(r"API:\s+(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
    try:
        [worker] = children_running(proc.pid, "workers")
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (again := children_running(proc.pid, "workers")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert again != [worker]
        text = log.read_text()
        assert "worker exited with code -9" in text and "restarting it in 1 s" in text, text[-3000:]
        assert "stopping everything" not in text
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert log.read_text().rstrip().endswith("[attune] stopped")


def test_a_killed_api_still_stops_everything(tmp_path: Path) -> None:
    proc, log = start(tmp_path)
    [api] = children_running(proc.pid, "service")
    os.kill(api, signal.SIGKILL)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "api exited with code -9; stopping everything" in text and text.rstrip().endswith("stopped"), text


def test_restart_delay_doubles_to_a_ceiling_and_starts_over_after_a_minute_of_running() -> None:
    delays = [supervisor.restart_delay(None, 0.5)]
    for _ in range(7):
        delays.append(supervisor.restart_delay(delays[-1], 0.5))
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert supervisor.restart_delay(30, 61) == 1


def test_an_embedded_redis_already_running_is_reused_and_said_so_and_left_running(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "var")
    server.start()
    try:
        proc, log = start(tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert "was already running; reusing it" in log.read_text(), log.read_text()[-3000:]
        assert _answers(server.sock)  # not ours to stop
    finally:
        server.stop()


def test_a_port_in_use_is_said_with_what_to_set_before_anything_starts(tmp_path: Path) -> None:
    """The banner came first (another server answered on the port), then the API's "[Errno 98] address
    already in use" and "api exited with code 3", with no word of ATTUNE_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST"))}
        done = subprocess.run([sys.executable, "-m", "service.cli", "run"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={**env, "ATTUNE_PORT": str(port), "ATTUNE_DATA_DIR": str(tmp_path / "var")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stdout, done.stdout + done.stderr
    assert f"set ATTUNE_PORT to a free port, e.g. ATTUNE_PORT={port + 1}" in done.stdout
    assert "API:" not in done.stdout and "embedded Redis" not in done.stdout  # nothing started
    assert not (tmp_path / "var" / "redis.sock").exists()
