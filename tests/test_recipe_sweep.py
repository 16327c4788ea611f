"""The recipe sweep end to end, tiny: two recipes, one label, one seed, 2 s trials, no Ray.

Runs the script as `make recipe-sweep` does (spawned trial processes, the classifier trained
once), and reads back both outputs: the markdown table and the CSV of trials.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """recipe -> its cells, from the markdown table the sweep prints."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| recipe")
             and not ln.startswith("| ---")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {c[0]: c[1:] for c in cells}


def test_tiny_sweep_writes_table_and_csv(tmp_path):
    out = tmp_path / "trials.csv"
    proc = subprocess.run(
        [sys.executable, "bench/recipe_sweep.py", "--grid", "train.n_critic=2,5", "--labels", "4", "--seeds", "0",
         "--budget-s", "2", "--jobs", "1", "--samples", "200", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)  # a hang guard: ~25 s on 2 idle cores
    assert proc.returncode == 0, proc.stderr
    assert "torch " in proc.stdout and "CPUs" in proc.stdout and "2 s wall-clock" in proc.stdout

    rows = table_rows(proc.stdout)
    assert set(rows) == {"train.n_critic=2 (default)", "train.n_critic=5"}
    for steps, fid, acc, rel, trials in rows.values():
        assert int(steps) > 0 and math.isfinite(float(fid)) and 0 <= float(acc) <= 1 and trials == "1/1"
    assert float(rows["train.n_critic=2 (default)"][3]) == 1.0

    trials = pd.read_csv(out, keep_default_na=False)
    assert len(trials) == 2 and (trials["error"] == "").all()
    assert (trials["steps"] > 0).all() and trials["fid"].map(math.isfinite).all()
    assert (trials["n_fake"] == 200).all() and trials["default"].tolist().count(True) == 1
