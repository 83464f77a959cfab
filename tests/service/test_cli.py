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


@pytest.mark.parametrize("module", ["workers", "service.supervisor"])
def test_the_entry_points_run_without_attune_refuse_bad_settings_the_same_way(module: str) -> None:
    """`python -m workers` (the README's other way to start a worker) and the supervisor module printed a
    pydantic traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_"))}
    done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env={**env, "ATTUNE_PARTITIONS": "abc"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("[attune] ATTUNE_PARTITIONS='abc': "), line


def test_a_guessable_admin_key_is_refused_without_showing_it() -> None:
    """ATTUNE_ADMIN_KEY=abc opened every app's data to anyone who guessed it; the refusal names the variable,
    never its value."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_"))}
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT,
                          env={**env, "ATTUNE_ADMIN_KEY": "hunter2-secret"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("[attune] ATTUNE_ADMIN_KEY: shorter than 16 characters") and "openssl rand" in line
    assert "hunter2" not in done.stderr + done.stdout
