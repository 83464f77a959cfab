"""The real processes the simulator drives: Redis, the API, workers and the M2-her stand-in; and catch-up checks."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from service import keys
from service.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Children get SIGTERM if the simulator itself dies (Linux), so no server outlives a killed run."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def workers_available() -> bool:
    """True once the workers package can run as `python -m workers`."""
    return importlib.util.find_spec("workers.__main__") is not None


def standin_available() -> bool:
    return importlib.util.find_spec("service.standin") is not None


@dataclass
class Cluster:
    """Starts what it is asked to and stops exactly the processes it started."""

    workdir: Path
    redis_url: str | None = None
    workers: int = 2
    standin: bool = False
    partitions: int = 16
    standin_first_byte_ms: float = 5.0
    admin_key: str = field(default_factory=lambda: "adm_sim_" + secrets.token_hex(12))
    api_url: str = ""
    standin_url: str = ""
    notes: list[str] = field(default_factory=list)
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _redis: EmbeddedRedis | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_"))}
        env.update({"ATTUNE_REDIS_URL": self.redis_url or "", "ATTUNE_ADMIN_KEY": self.admin_key,
                    "ATTUNE_DATA_DIR": str(self.workdir / "var"), "ATTUNE_PARTITIONS": str(self.partitions),
                    "ATTUNE_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)})
        if self.standin_url:
            env["MINIMAX_BASE_URL"] = self.standin_url
        return env

    def _spawn(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, *args], env={**self._env(), **(extra or {})}, cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        self._procs.append((name, proc))
        return proc

    def start(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.redis_url:
            self._redis = EmbeddedRedis(self.workdir / "redis")
            self.redis_url = self._redis.start()
        if self.standin:
            if standin_available():
                port = free_port()
                # Time is compressed in the simulator: a fast upstream, so a run takes seconds, not hours.
                proc = self._spawn("standin", ["-m", "service.standin", "--port", str(port), "--first-byte-ms",
                                               str(self.standin_first_byte_ms), "--chunk-ms", "0"],
                                   {"ATTUNE_STANDIN_PORT": str(port)})
                self.standin_url = f"http://127.0.0.1:{port}"
                _wait_port(port, proc, "stand-in", self.workdir / "standin.log")
            else:
                self.notes.append("service.standin does not exist yet: no closed loop")
        port = free_port()
        proc = self._spawn("api", ["-m", "service"], {"ATTUNE_PORT": str(port)})
        self.api_url = f"http://127.0.0.1:{port}"
        _wait_port(port, proc, "API", self.workdir / "api.log")
        if workers_available():
            for i in range(self.workers):
                self._spawn(f"worker{i}", ["-m", "workers"])
        else:
            self.notes.append("the workers package has no __main__ yet: no worker runs, no profile is served")
        return self

    def alive(self) -> list[str]:
        """Names of started processes that have exited (each one is a finding worth reporting)."""
        return [f"{name} exited with code {p.returncode} (log: {self.workdir / (name + '.log')})"
                for name, p in self._procs if p.poll() is not None]

    def stop(self) -> None:
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self._procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def app_key(self, app: str, scopes: list[str]) -> str:
        r = httpx.post(f"{self.api_url}/v1/admin/apps/{app}/keys", json={"scopes": scopes},
                       headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10)
        r.raise_for_status()
        return str(r.json()["key"])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited with code {proc.returncode} at start; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the {what} did not listen on port {port} within {timeout:.0f} s; see {log}")


@dataclass
class Backlog:
    entries: int  # appended but not yet delivered to the consumer group
    pending: int  # delivered but not acknowledged
    dead: int  # entries in the dead-letter streams

    @property
    def drained(self) -> bool:
        return self.entries == 0 and self.pending == 0


def _id_tuple(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def backlog(client: redis.Redis, partitions: int) -> Backlog:
    """What the workers have not applied yet, read from the streams and the consumer group (Redis 6.2 and 7)."""
    undelivered = pending = dead = 0
    for p in range(partitions):
        name = keys.stream(p)
        dead += int(client.xlen(keys.dead_letters(p)))
        if not client.exists(name):
            continue
        info = client.xinfo_stream(name)
        last = _id_tuple(info["last-generated-id"])
        groups = {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g
                  for g in client.xinfo_groups(name)}
        group = groups.get(keys.CONSUMER_GROUP)
        if group is None:
            undelivered += int(info["length"])
            continue
        pending += int(group["pending"])
        if _id_tuple(group["last-delivered-id"]) < last:
            # Exact on Redis 7 (lag); on 6.2 count the entries after the last delivered id.
            lag = group.get("lag")
            undelivered += int(lag) if lag is not None else len(
                client.xrange(name, min=f"({group['last-delivered-id'].decode()}", count=100_000))
    return Backlog(undelivered, pending, dead)
