"""`make run` / `attune run`: embedded Redis, the M2-her stand-in, the API and one worker, as child processes.

Ctrl-C or SIGTERM stops the children first (the API drains, the worker hands back its batch), then
Redis, which flushes its append-only file. Works without a terminal: everything goes to stdout.
A worker that exits on its own is started again (see restart_delay); the API or the stand-in exiting
stops everything.
"""

from __future__ import annotations

import errno
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from service.children import die_with_parent
from service.embedded import EmbeddedRedis, EmbeddedRedisError
from service.settings import Settings, get_settings

GRACE_SECONDS = 15.0
# A worker that exits on its own is started again after a delay doubled per exit in a row, from
# RESTART_FIRST up to RESTART_MAX; one that ran RESTART_RESET_AFTER seconds starts over at RESTART_FIRST.
# Its partitions wait for their leases to expire meanwhile; the API keeps taking events.
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET_AFTER = 60.0
# Children whose exit is survivable, by name, with their module: restarted, not a reason to stop everything.
RESTARTED = {"worker": "workers"}


def say(line: str) -> None:
    print(f"[attune] {line}", flush=True)


def _admin_key(data_dir: Path) -> str:
    """Generated once and kept under the data dir (mode 600), so the dashboard login survives restarts."""
    path = data_dir / "admin.key"
    if path.exists():
        return path.read_text().strip()
    key = "adm_" + secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _listening_socket() -> socket.socket:
    """A loopback socket on a free port, already listening, for a child to inherit: nothing else can take
    the port between choosing it and serving on it, as with picking a free port and binding it later."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _wait_http(port: int, host: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    """Whether the server answers HTTP (any status) before proc exits or timeout passes. An answer, not a
    TCP connect: a socket handed down already listening accepts connects before its server runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
        finally:
            conn.close()
    return False


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on host:port already (bound as uvicorn binds, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def _port_taken_message(settings: Settings) -> str:
    return (f"port {settings.port} on {settings.host} is already in use (another `make run`?): stop what "
            f"listens there, or set ATTUNE_PORT to a free port, e.g. ATTUNE_PORT={settings.port + 1} "
            "make run")


def restart_delay(previous: float | None, ran_for: float) -> float:
    """Seconds to wait before starting again a worker that exited after running ran_for seconds."""
    if previous is None or ran_for >= RESTART_RESET_AFTER:
        return RESTART_FIRST
    return min(previous * 2, RESTART_MAX)


def main() -> int:
    settings = get_settings()
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    embedded: EmbeddedRedis | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        # A second Ctrl-C stops at once. A repeated SIGTERM never does: GNU make forwards its own SIGTERM
        # to us when its process group is killed, and on a loaded machine that copy can come seconds after
        # the one sent to us directly; it is the same stop.
        if stopping and signum == signal.SIGINT:
            for _, p in children:
                p.kill()
            if embedded:
                embedded.stop(timeout=2)
            os._exit(130)
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    started: dict[str, float] = {}

    def spawn(name: str, module: str, extra_env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", module], env={**env, **(extra_env or {})},
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent(), pass_fds=pass_fds)
        children.append((name, proc))
        started[name] = time.monotonic()
        return proc

    if port_taken(settings.host, settings.port):  # before anything starts, and before the banner
        say(_port_taken_message(settings))
        return 1
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(settings.data_dir)
            env["ATTUNE_REDIS_URL"] = embedded.start()
            if embedded.process is None:
                say(f"embedded Redis: {env['ATTUNE_REDIS_URL']} was already running; reusing it "
                    "(another attune process started it and will stop it; this one leaves it running)")
            else:
                say(f"embedded Redis: {env['ATTUNE_REDIS_URL']} (data in {embedded.data_dir})")
        else:
            say("Redis: ATTUNE_REDIS_URL (external)")
        admin = settings.admin_key.get_secret_value() if settings.admin_key else _admin_key(settings.data_dir)
        env["ATTUNE_ADMIN_KEY"] = admin
        if not settings.minimax_api_key:
            with _listening_socket() as sock:
                port = int(sock.getsockname()[1])
                standin = spawn("standin", "service.standin", {"ATTUNE_STANDIN_FD": str(sock.fileno())},
                                pass_fds=(sock.fileno(),))
            if not _wait_http(port, "127.0.0.1", standin, 30):
                say("the M2-her stand-in did not start; see the lines above")
                return 1
            env["MINIMAX_BASE_URL"] = f"http://127.0.0.1:{port}"
            say("!" * 72)
            say("MINIMAX_API_KEY is unset: conditioned chats go to the OFFLINE M2-her STAND-IN")
            say(f"at {env['MINIMAX_BASE_URL']}, not to MiniMax. Set MINIMAX_API_KEY for real replies.")
            say("!" * 72)
        api = spawn("api", "service")
        spawn("worker", RESTARTED["worker"])
        if not _wait_http(settings.port, settings.host, api):
            # Taken since the check above: the API's own "address already in use" is easy to miss.
            taken = api.poll() is not None and port_taken(settings.host, settings.port)
            say(_port_taken_message(settings) if taken else "the API did not start; see the lines above")
            return 1
        base = f"http://{settings.host}:{settings.port}"
        say(f"API:        {base}   (docs: {base}/docs)")
        say(f"dashboard:  {base}/dashboard")
        say(f"admin key:  {admin}")
        say("Ctrl-C stops everything.")
        delays: dict[str, float] = {}
        restart_at: dict[str, float] = {}  # when a child that exited is started again
        while not stopping:
            for name, proc in list(children):
                if proc.poll() is None:
                    continue
                if name not in RESTARTED:
                    if name == "api" and port_taken(settings.host, settings.port):
                        say(_port_taken_message(settings))
                    say(f"{name} exited with code {proc.returncode}; stopping everything")
                    stopping = True
                    break
                children.remove((name, proc))
                ran_for = time.monotonic() - started[name]
                delays[name] = restart_delay(delays.get(name), ran_for)
                restart_at[name] = time.monotonic() + delays[name]
                say(f"{name} exited with code {proc.returncode} after {ran_for:.0f} s; restarting it in "
                    f"{delays[name]:.0f} s (the API keeps serving; its partitions are taken over once their "
                    "leases expire)")
            for name, at in list(restart_at.items()):
                if not stopping and time.monotonic() >= at:
                    del restart_at[name]
                    say(f"{name} restarted (pid {spawn(name, RESTARTED[name]).pid})")
            time.sleep(0.2)
        return 0
    except EmbeddedRedisError as exc:
        say(str(exc))
        return 1
    finally:
        say("stopping ...")
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in reversed(children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {GRACE_SECONDS:.0f} s; killing it")
                proc.kill()
                proc.wait()
        if embedded is not None:
            embedded.stop()
        say("stopped")


if __name__ == "__main__":
    from service.cli import refuse_bad_settings  # noqa: PLC0415

    if refuse_bad_settings():
        raise SystemExit(2)
    raise SystemExit(main())
