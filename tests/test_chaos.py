"""The short chaos run of `make chaos`: 3 label-actor kills, a collector kill, a driver kill and re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e  # a local Ray head, a real driver process, real kills
def test_a_run_survives_label_collector_and_driver_kills(tmp_path):
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.chaos", "--kills", "3", "--seed", "1",
                           "--budget-s", "40", "--storage", str(tmp_path / "runs"), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    table = proc.stdout + proc.stderr[-4000:]
    assert out.is_file(), table
    result = json.loads(out.read_text())
    assert sorted(f["kind"] for f in result["faults"]) == ["collector", "driver", "label", "label", "label"]
    assert all(f["survived"] for f in result["faults"]), table
    assert result["problems"] == [], table
    assert sum(result["restarts"].values()) >= 3, table  # each label kill was a restart, recorded in the summary
    assert proc.returncode == 0 and "faults injected: 5, survived: 5" in proc.stdout, table
