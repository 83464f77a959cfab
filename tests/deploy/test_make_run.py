"""`make run` on a clean checkout, in the background with no terminal, driven by the README's own commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.embedded_only, pytest.mark.timeout(600)]


def quickstart(port: int) -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin -->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", readme, re.S)
    assert block, "README.md lost its quickstart block"
    return block.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def start(checkout: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST", "VIRTUAL_ENV"))}
    env.update({"ATTUNE_PORT": str(port), "ATTUNE_DATA_DIR": str(checkout / "var")})
    return subprocess.Popen(["make", "run"], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        assert proc.poll() is None, f"make run exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not printed within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # what a terminal's Ctrl-C or `kill %1` does to the job
    proc.wait(60)
    # make passes SIGTERM on and exits; the supervisor then stops its children and Redis.
    deadline = time.monotonic() + 60
    while "[attune] stopped" not in log.read_text().split("admin key:")[-1]:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def test_make_run_in_background_accepts_the_readme_batch_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    checkout = tmp_path / "attune"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    port = free_port()
    log = tmp_path / "run.log"
    proc = start(checkout, port, log)
    try:
        admin = wait_for(log, r"admin key:\s+(\S+)", proc, 420).group(1)
        assert "OFFLINE M2-her STAND-IN" in log.read_text()
        script = quickstart(port)
        out = subprocess.run(["bash", "-euc", script + '\necho "KEY=$KEY"'], env={**os.environ, "ADMIN": admin},
                             capture_output=True, text=True, timeout=60)
        assert '{"accepted":2,"duplicates":0,"rejected":[]}' in out.stdout, out.stdout + out.stderr
        key = re.search(r"KEY=(\S+)", out.stdout).group(1)  # type: ignore[union-attr]

        # The README's batch with a fixed clock: accepted once, then a duplicate even after a restart.
        fixed = "NOW=%d\n" % (time.time() * 1000 - 60_000) + script.split("NOW=$(date +%s%3N)")[1]
        send = lambda: subprocess.run(["bash", "-euc", fixed], env={**os.environ, "KEY": key},  # noqa: E731
                                      capture_output=True, text=True, timeout=60).stdout
        assert '"accepted":2' in send()
        stop(proc, log)
        proc = start(checkout, port, log)
        deadline = time.monotonic() + 180
        while log.read_text().count("admin key:") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert f"admin key:  {admin}" in log.read_text().split("stopped")[-1]  # kept in var/admin.key
        assert '"accepted":0,"duplicates":2' in send()
    finally:
        if proc.poll() is None:
            stop(proc, log)
    leftovers = subprocess.run(["pgrep", "-f", str(checkout)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
