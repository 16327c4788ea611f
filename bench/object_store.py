"""The demo with run.storage on a local disk and on an S3-compatible server, side by side.

    .venv/bin/python bench/object_store.py [--reps 1] [-- --set train.budget_s=60 ...]

Starts moto's S3 server on 127.0.0.1 (the test suite's, tests/local_s3.py), then runs
`wcgan train --config experiments/digits.yaml` alternately with a temporary local folder and
with s3://<bucket>/runs as run.storage (a fresh mirror each time, so every file goes through
the server), and prints each run's wall time, scoring time and final scores, and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from local_s3 import BUCKET, local_s3  # noqa: E402
from metrics.results import read_results, value  # noqa: E402


def run_demo(storage: str, run_id: str, env: dict, extra: list[str]) -> dict:
    cmd = [str(Path(sys.executable).parent / "wcgan"), "train", "--config", "experiments/digits.yaml",
           "--set", f"run.storage={storage}", "--set", f"run.id={run_id}", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "log": proc.stderr}


def final_scores(results_csv: Path) -> dict:
    results = read_results(results_csv)
    return {m: float(value(results, "final", m)["value"]) for m in ("fid", "class_accuracy")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--local-storage", default=None,
                        help="run.storage of the local runs (default: a temporary folder); an existing one "
                             "reuses its classifier cache, so scores compare with earlier runs there")
    parser.add_argument("extra", nargs="*", help="more wcgan train arguments, after --")
    args = parser.parse_args()
    rows = []
    with local_s3() as s3_env, tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for kind in ("local", "s3"):
                cache = Path(tmp) / f"cache-{kind}-{rep}"
                env = {**os.environ, **s3_env, "WCGAN_CACHE_DIR": str(cache)}
                run_id = f"bench-{kind}-{rep}"
                local_root = Path(args.local_storage or Path(tmp) / "runs").absolute()
                storage = str(local_root) if kind == "local" else f"s3://{BUCKET}/runs"
                out = run_demo(storage, run_id, env, args.extra)
                local_dir = local_root / run_id if kind == "local" else cache / "store" / "s3" / BUCKET / "runs" / run_id
                row = {"storage": kind, "rep": rep, "wall_s": round(out["wall_s"], 1),
                       **final_scores(local_dir / "results.csv")}
                rows.append(row)
                print(f"{kind:5s} rep {rep}: wall {row['wall_s']:.1f} s, FID {row['fid']:.2f}, "
                      f"class accuracy {row['class_accuracy']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    print()
    print(frame.to_markdown(index=False))
    med = {k: statistics.median(frame[frame.storage == k].wall_s) for k in ("local", "s3")}
    print(f"\nmedian wall time: local {med['local']:.1f} s, s3 {med['s3']:.1f} s, s3/local {med['s3'] / med['local']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
