"""bench/gateway_ab.py says how to call it instead of an IndexError."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "bench/gateway_ab.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_no_arguments_print_the_usage_not_a_traceback() -> None:
    done = run()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("usage: gateway_ab.py") and "before, after" in done.stderr, done.stderr


def test_a_directory_that_is_not_a_checkout_is_named() -> None:
    done = run("/nonexistent-before", str(ROOT))
    assert done.returncode == 2 and "/nonexistent-before is not an Attune checkout" in done.stderr, done.stderr
