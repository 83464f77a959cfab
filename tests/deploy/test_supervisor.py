"""`attune run` stops cleanly on one stop request even when SIGTERM arrives more than once (a kill of the
process group plus GNU make forwarding its own SIGTERM, which on a loaded machine can come seconds later),
and a second Ctrl-C later leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.embedded_only, pytest.mark.timeout(180)]


def start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST"))}
    env.update({"ATTUNE_PORT": str(free_port()), "ATTUNE_DATA_DIR": str(tmp_path / "var")})
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ctrl-C stops everything" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return proc, log


def test_a_repeated_sigterm_is_one_clean_stop(tmp_path: Path) -> None:
    proc, log = start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while "stopping ..." not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(1.5)  # make's forwarded copy, late (the stop of the API and worker takes a few seconds)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "stopping ..." in text and text.rstrip().endswith("[attune] stopped"), text[-3000:]


def test_ctrl_c_twice_leaves_nothing_running(tmp_path: Path) -> None:
    proc, log = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    if proc.poll() is None:  # still in its graceful stop: the second Ctrl-C cuts it short (exit 130)
        proc.send_signal(signal.SIGINT)
    assert proc.wait(30) in (0, 130), log.read_text()[-3000:]
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
