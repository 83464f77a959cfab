"""The simulator end to end, --quick, against real processes (Redis, API, workers, stand-in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sim.cluster import standin_available, workers_available

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_simulation_reports_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "simulate.py"), "--quick", "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OPEN LOOP" in proc.stdout and "goal" in proc.stdout
    data = json.loads(out.read_text())
    open_loop = data["open_loop"]
    delivery = open_loop["delivery"]
    assert delivery["rejected"] == {} and delivery["http_errors"] == {}
    assert delivery["accepted"] + delivery["duplicates"] == delivery["sent"]
    by = {c["replies"]: c["figures"] for c in open_loop["checkpoints"]}
    assert sorted(by) == [10, 20, 40]
    assert 0.15 < by[20]["len_err_naive"] < 0.8  # the baseline is a real, imperfect estimate
    if not workers_available():
        assert all(f["served"] == 0 for f in by.values())
        assert "NO PROFILE SERVED" in proc.stdout
        return
    assert by[40]["served"] > 0.95, by[40]
    assert by[20]["len_err_attune"] < by[20]["len_err_naive"], by[20]
    assert by[40]["pacing_acc_attune"] > 0.5, by[40]
    assert by[40]["honest_flagged"] < 0.1, by[40]
    if standin_available():
        closed = data["closed_loop"]["figures"]
        assert closed["replies_late[cond]"] > 0 and closed["replies_late[off]"] > 0
        assert 0 < closed["repeat_late[off]"] < 1
        assert closed["conditioned_header_late[off]"] == 0
