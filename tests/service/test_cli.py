"""The `attune` command refuses bad settings in a line per variable, before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(("command", "name", "value"), [
    ("serve", "ATTUNE_PARTITIONS", "abc"),
    ("run", "ATTUNE_PORT", "http"),
    ("worker", "ATTUNE_UPSTREAM_TIMEOUT", "sixty"),
    ("serve", "ATTUNE_UPSTREAM_TIMEOUT", '{"first_byte":"x"}'),
    ("run", "ATTUNE_UPSTREAM_TIMEOUT", '{"firstbyte": 60}'),
])
def test_a_bad_setting_is_one_line_and_exit_code_2_not_a_traceback(
        command: str, name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_"))}
    done = subprocess.run([sys.executable, "-m", "service.cli", command], cwd=ROOT, env={**env, name: value},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"[attune] {name}={value!r}: ") and f"e.g. {name}=" in line, line
