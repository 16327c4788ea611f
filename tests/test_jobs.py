"""Ray Jobs end to end: a real `ray start --head` on this machine, `ray job submit` of a short run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from core.rundir import RunDir
from orchestrator import jobs, local_head
from orchestrator.local_head import LocalHead

REPO = jobs.REPO_ROOT
TINY = ["dataset.labels=[0,1]", "model.width=8", "model.z_dim=16", "train.batch_size=32", "train.n_critic=2",
        "train.budget_s=4", "train.log_every_s=1", "train.checkpoint_every_s=2", "metrics.enabled=false"]


def test_runtime_env_keeps_local_state_out_of_the_upload():
    from ray._private.thirdparty.pathspec import PathSpec  # what Ray matches runtime_env excludes with

    env = jobs.load_runtime_env()
    assert env["working_dir"] == str(REPO)
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    for path in (".git/config", ".venv/bin/python", "runs/digits-1/labels/0/ckpt-00000010.pt", "data/cifar/x.bin",
                 "workers/__pycache__/data.cpython-311.pyc", "model.pt", "wcgan.egg-info/PKG-INFO"):
        assert spec.match_file(path), path
    for path in ("orchestrator/run.py", "workers/data.py", "experiments/digits.yaml", "runtime_env.yaml",
                 "tests/test_jobs.py"):
        assert not spec.match_file(path), path
    with pytest.raises(Exception, match="not found"):
        jobs.load_runtime_env(REPO / "no-such-env.yaml")


def test_free_ports_are_distinct():
    ports = local_head.free_ports(9)
    assert len(set(ports)) == 9 and all(p > 0 for p in ports)


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2, object_store_memory=200 * 2**20)
    h.start()
    try:
        yield h
    finally:
        pgid = h.proc.pid if h.proc is not None else None
        h.stop()
        # Stopped by its own process group: nothing of this cluster is left running.
        if pgid is not None:
            assert not local_head._group_alive(pgid)


def test_ray_job_submit_runs_a_training_run(head, tmp_path):
    storage = tmp_path / "runs"
    run_id = f"job-{uuid.uuid4().hex[:8]}"
    submission_id = f"wcgan-test-{run_id}"
    sets = " ".join(f"--set {s}" for s in TINY + [f"run.storage={storage}", f"run.id={run_id}"])
    # The README's command line; `ls -a` first shows what the working-dir upload holds.
    cmd = [local_head.ray_executable(), "job", "submit", "--address", head.dashboard_url, "--working-dir", ".",
           "--runtime-env", "runtime_env.yaml", "--submission-id", submission_id, "--no-wait", "--",
           "sh", "-c", f"ls -a && python -m orchestrator train --config experiments/digits.yaml --no-eval {sets}"]
    env = dict(os.environ, RAY_AUTH_MODE="token")  # how the ray CLI is told to send the token
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    sub = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert sub.returncode == 0, f"ray job submit failed:\n{sub.stdout}\n{sub.stderr}"
    assert submission_id in sub.stdout + sub.stderr

    client = head.client()
    info = jobs.wait(client, submission_id, timeout_s=300)
    log = jobs.logs(client, submission_id)
    assert str(info.status.value) == "SUCCEEDED", f"job {info.status}: {info.message}\n{jobs.tail(log, 60)}"

    run_dir = storage / run_id
    assert f"run directory: {run_dir}" in log
    # Off a terminal, progress is one line per interval (the per-label table is for terminals).
    assert re.search(r"training 2 labels: 0 done; step min/median/max \d+/\d+/\d+", log), jobs.tail(log, 60)
    assert "Reporting training result" not in log
    assert "Traceback" not in log, "a successful run's log shows a traceback:\n" + jobs.tail(log, 60)
    listing = set(log.splitlines())
    assert {"core", "orchestrator", "workers", "metrics", "experiments", "runtime_env.yaml"} <= listing
    assert not {".git", ".venv", "runs", "data"} & listing, "runtime_env.yaml excludes were not applied"

    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["label"]) == [0, 1]
    assert (summary["steps"] > 0).all() and (summary["images_per_s"] > 0).all()
    for k in (0, 1):
        ckpts = RunDir(run_dir).checkpoints(k)
        assert ckpts and ckpts[-1][0] == summary.loc[summary.label == k, "steps"].item()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "samples" / "grid.png").is_file()
    assert jobs.job_wall_s(info) > 0


def test_jobs_api_without_the_token_says_how_to_send_it(head):
    # A fresh process: Ray caches the auth mode per process, and an earlier ray.init() turns it on.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    code = f"from orchestrator import jobs; jobs.job_client({head.dashboard_url!r})"
    sub = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert sub.returncode != 0 and "RAY_AUTH_MODE=token" in sub.stderr, sub.stderr[-2000:]


def test_a_driver_without_the_token_is_told_how_to_send_it(head, tmp_path):
    """`wcgan train --address` to a token cluster, the token not sent: exit 2 with the fix, no run directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    storage = tmp_path / "runs"
    sub = subprocess.run([sys.executable, "-m", "orchestrator", "train", "--address", head.gcs_address,
                          "--set", f"run.storage={storage}", "--set", "dataset.labels=[0]",
                          "--set", "metrics.enabled=false"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert sub.returncode == 2, sub.stderr[-3000:]
    assert "cannot connect to a Ray cluster" in sub.stderr and "RAY_AUTH_MODE=token" in sub.stderr, sub.stderr[-3000:]
    assert not storage.exists()
