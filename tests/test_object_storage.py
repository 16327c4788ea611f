"""Runs on an S3-compatible object store: a real server on 127.0.0.1 (tests/local_s3.py), real Ray.

The environment (endpoint, key, cache folder) is set before this module's Ray starts, so the
label actors, the collector and the scoring task get it as a cluster node would.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pandas as pd
import pytest
import ray

from conftest import small_config
from core import storage
from core.actors import NAMESPACE, label_actor
from core.rundir import RunDir, write_text
from local_s3 import BUCKET, local_s3
from orchestrator.cli import main
from orchestrator.run import train

STORE = f"s3://{BUCKET}/runs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, its credentials in the environment, and a fresh local cache (the mirrors)."""
    with local_s3() as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv(storage.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        storage._filesystem.cache_clear()  # no client built for another endpoint
        yield env
        storage._filesystem.cache_clear()


def _keys(prefix: str) -> list[str]:
    """Every object key under a store URI, from the store itself."""
    from pyarrow.fs import FileSelector, FileType

    fs = storage._filesystem("s3", BUCKET)
    infos = fs.get_file_info(FileSelector(prefix.split("://", 1)[1], recursive=True, allow_not_found=True))
    return sorted(i.path.split("/", 1)[1] for i in infos if i.type == FileType.File)


# ------------------------------------------------------------------ the mirror (no Ray)

def test_a_write_reaches_the_store_under_its_final_key_only_and_a_cold_cache_reads_it_back(s3, tmp_path):
    path = storage.local_path(f"{STORE}/unit/a/config.yaml")
    write_text(path, "hello\n")
    assert _keys(f"{STORE}/unit") == ["runs/unit/a/config.yaml"]  # no temporary key left behind

    shutil.rmtree(storage.local_path(f"{STORE}/unit"))  # another node: an empty mirror
    run = RunDir(f"{STORE}/unit/a")
    assert run.config.read_text() == "hello\n" and run.location == f"{STORE}/unit/a"
    assert storage.pull_tree(run.path) == 0  # current copies are reused, not fetched again

    storage.remove(run.config)
    assert _keys(f"{STORE}/unit") == [] and not run.exists()


def test_listings_come_from_the_store_not_the_mirror(s3):
    run = RunDir(f"{STORE}/listing")
    write_text(run.snapshot_path(3, 10), "x")
    write_text(run.snapshot_path(3, 20), "y")
    shutil.rmtree(run.path)  # what this node has is not what the run has
    assert run.label_owners() == [3]
    assert [s for s, _ in run.snapshots(3)] == [10, 20]
    run.prune(3, keep=None)
    run.drop_snapshots_after(3, 10)
    assert [s for s, _ in run.snapshots(3)] == [10]


def test_a_bad_bucket_or_missing_credentials_fails_before_any_actor_with_exit_2(s3, tmp_path, monkeypatch, capsys):
    base = ["train", "--config", "experiments/digits.yaml", "--set", "train.budget_s=5", "--set", "run.id=refused"]
    assert main([*base, "--set", "run.storage=s3://no-such-bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket'" in err and "does not exist" in err
    assert main(["sample", "--run", "s3://no-such-bucket/runs/x", "--out", str(tmp_path / "g.png")]) == 2
    assert "s3://no-such-bucket/runs/x" in capsys.readouterr().err and not (tmp_path / "g.png").exists()

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage._filesystem.cache_clear()
    try:
        assert main([*base, "--set", f"run.storage={STORE}"]) == 2
    finally:
        storage._filesystem.cache_clear()
    err = capsys.readouterr().err
    assert f"cannot reach {STORE}" in err and "AWS_ACCESS_KEY_ID" in err
    assert not ray.is_initialized()  # refused before Ray was contacted
    monkeypatch.undo()
    storage._filesystem.cache_clear()
    assert _keys(f"{STORE}/refused") == []  # no half-written run


# ------------------------------------------------------------------ a whole run (Ray)

def _kill_label_once_it_checkpointed(run: RunDir, run_id: str, label: int, killed: dict) -> None:
    """Kill the label's actor (Ray restarts it) after its first checkpoint is in the store, and wipe
    this node's mirror of the label, so the restarted actor can only resume from the store."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not run.checkpoints(label):
        time.sleep(0.5)
    killed["step"] = run.checkpoints(label)[-1][0] if run.checkpoints(label) else None
    ray.kill(ray.get_actor(label_actor(run_id, (label,)), namespace=NAMESPACE), no_restart=False)
    shutil.rmtree(run.owner_dir(label), ignore_errors=True)


def test_a_digits_run_on_s3_trains_is_killed_resumes_is_scored_and_sampled(s3, ray_local, tmp_path):
    run_id = "on-s3"
    cfg = small_config(STORE, f"run.id={run_id}", "dataset.labels=[0,1]", "train.budget_s=8",
                       "metrics.enabled=true", "metrics.feature_extractor=classifier", "metrics.every_s=4")
    run = RunDir(f"{STORE}/{run_id}")
    killed: dict = {}
    killer = threading.Thread(target=_kill_label_once_it_checkpointed, args=(run, run_id, 0, killed), daemon=True)
    killer.start()
    result = train(cfg)
    killer.join(timeout=5)

    assert killed.get("step"), "label 0 never checkpointed into the store"
    summary = pd.read_csv(storage.local_path(f"{STORE}/{run_id}/summary.csv")).set_index("label")
    assert summary.loc[0, "restarts"] >= 1 and summary.loc[0, "resumed_from_step"] >= 1  # resumed, from the store
    keys = _keys(f"{STORE}/{run_id}")
    for expected in ("config.yaml", "summary.csv", "results.csv", "report.md", "samples/grid.png",
                     "labels/0/history.csv", "labels/1/history.csv"):
        assert f"runs/{run_id}/{expected}" in keys
    assert any(k.startswith(f"runs/{run_id}/labels/0/snapshots/snap-") for k in keys)
    assert not [k for k in keys if storage.TMP_PREFIX in k]  # every object under its final key, whole
    assert any(k.startswith("runs/_classifiers/") for k in _keys(STORE))  # the caches live in the store too
    assert str(result.run_dir) == str(run.path)

    # another machine: nothing cached, everything read from the store
    shutil.rmtree(storage.local_path(STORE))
    grid = tmp_path / "grid.png"
    assert main(["sample", "--run", f"{STORE}/{run_id}", "--out", str(grid), "--n", "4"]) == 0
    assert grid.stat().st_size > 0
    assert main(["report", "--run", f"{STORE}/{run_id}"]) == 0
    assert os.path.getsize(storage.local_path(f"{STORE}/{run_id}/report.md")) > 0
