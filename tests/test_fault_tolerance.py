"""What clusters do to a run: dead actors, damaged checkpoints, a second driver, stalls, deadlines."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import pandas as pd
import pytest
import ray
import torch

from conftest import small_config
from core.actors import NAMESPACE, collector_actor
from core.errors import ConfigError
from core.rundir import RunDir, save_checkpoint
from core.runlock import RunLock
from metrics.collector import Collector
from orchestrator.cli import main
from orchestrator.run import train
from orchestrator.supervise import Supervisor
from workers.checkpoint import restore
from workers.gan import WGANGP

# ------------------------------------------------------------------ checkpoints you can trust (no Ray)


def _pair():
    cfg = small_config("/tmp/unused")
    images = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    return cfg, WGANGP.build(cfg.model, cfg.train, images, torch.device("cpu"), seed=0)


def test_a_damaged_latest_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    cfg, pair = _pair()
    run = RunDir(tmp_path / "run")
    for step, elapsed in ((3, 1.0), (6, 2.0)):
        pair.generator_steps = step
        save_checkpoint({"state": pair.state_dict(), "elapsed_s": elapsed, "images_seen": 10 * step},
                        run.checkpoint_path(0, step))
    latest = run.checkpoint_path(0, 6)
    latest.write_bytes(latest.read_bytes()[:200])  # truncated by a dying disk
    _, fresh = _pair()
    resume = restore(run, 0, fresh)
    assert resume.start_step == fresh.generator_steps == 3 and resume.elapsed_s == 1.0
    assert [s for s, _ in run.checkpoints(0)] == [3]  # out of every listing...
    assert (latest.parent / (latest.name + ".corrupt")).is_file()  # ...but kept for inspection


def test_a_storage_error_is_not_mistaken_for_a_damaged_checkpoint(tmp_path):
    cfg, pair = _pair()
    run = RunDir(tmp_path / "run")
    save_checkpoint({"state": pair.state_dict(), "elapsed_s": 1.0}, run.checkpoint_path(0, 3))
    run.checkpoint_path(0, 6).mkdir()  # reading it fails with an OSError, as a flaky mount would
    with pytest.raises(IsADirectoryError):
        restore(run, 0, _pair()[1])
    assert [s for s, _ in run.checkpoints(0)] == [3, 6]  # nothing renamed: the label fails and retries


def test_no_readable_checkpoint_fails_instead_of_starting_over(tmp_path):
    cfg, pair = _pair()
    run = RunDir(tmp_path / "run")
    run.owner_dir(0).mkdir(parents=True)
    run.checkpoint_path(0, 3).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="none of the 1 checkpoint"):
        restore(run, 0, pair)  # starting from step 0 would silently throw away the budget spent


def test_a_killed_writers_temporary_files_are_swept(tmp_path):
    run = RunDir(tmp_path / "run")
    run.owner_dir(2).mkdir(parents=True)
    (run.owner_dir(2) / ".tmp-abc.pt").write_bytes(b"half a checkpoint")
    (run.owner_dir(2) / "history.csv").write_text("step\n")
    assert [p.name for p in run.sweep_temporaries(2)] == [".tmp-abc.pt"]
    assert [p.name for p in run.owner_dir(2).iterdir()] == ["history.csv"]


# ------------------------------------------------------------------ one run, one writer (no Ray)


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    other = {"host": "another-host", "pid": 4242, "ray_address": "10.0.0.1:6379", "started": time.time(),
             "renewed": time.time()}
    run.path.mkdir()
    run.lock.write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="another-host.*10.0.0.1:6379"):
        RunLock(run).acquire()
    run.lock.write_text(json.dumps({**other, "renewed": time.time() - 3600}))  # its driver stopped renewing
    lock = RunLock(run, stale_after_s=120)
    lock.acquire()
    assert "taking over the stale lock" in caplog.text
    assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    with pytest.raises(ConfigError, match="being trained by another driver"):  # ours is live now
        RunLock(run).acquire()
    lock.release()
    assert not run.lock.exists() and not list(run.path.glob(".lock*"))


def test_a_lock_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    run.lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "renewed": time.time()}))
    lock = RunLock(run)
    lock.acquire()  # no error: the holder is gone, however fresh its last renewal
    lock.release()
    # A live process on this host holds it however old its renewal: the process table decides.
    run.lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "renewed": 0}))
    with pytest.raises(ConfigError, match="being trained by another driver"):
        RunLock(run).acquire()


# ------------------------------------------------------------------ the collector can be rebuilt (no Ray)


def test_a_restarted_collector_rebuilds_its_view_from_the_run_directory(tmp_path):
    cfg, pair = _pair()
    run = RunDir(tmp_path / "run")
    pair.generator_steps = 12
    save_checkpoint({"state": pair.state_dict(), "elapsed_s": 7.5, "restarts": 1}, run.checkpoint_path(1, 12))
    collector = Collector(str(run.path), [0, 1])
    assert collector.progress()[1] == {"state": "restored", "step": 12, "elapsed_s": 7.5, "restarts": 1}
    assert collector.progress()[0]["state"] == "starting" and not collector.opened

    async def start_line():
        waiter = asyncio.ensure_future(collector.wait_for_start(0))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # label 1 has not arrived
        await collector.wait_for_start(1)
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(start_line())
    assert run.started.is_file()
    again = Collector(str(run.path), [0, 1])  # restarted after the line opened: it stays open
    asyncio.run(asyncio.wait_for(again.wait_for_start(0), 1.0))


# ------------------------------------------------------------------ the driver (real Ray)


def test_a_second_driver_for_a_live_run_is_refused(ray_local, tmp_path):
    cfg = small_config(tmp_path / "runs", "run.id=live", "dataset.labels=[0]", "train.budget_s=20")
    thread = threading.Thread(target=lambda: train(cfg))
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not RunDir(tmp_path / "runs" / "live").started.exists():
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        with pytest.raises(ConfigError, match="run live is already running on this cluster"):  # exit 2
            train(cfg)
    finally:
        thread.join(timeout=180)
    assert RunDir(tmp_path / "runs" / "live").summary_csv.is_file()  # the first run was not disturbed


def test_a_label_past_the_deadline_is_reported_failed_and_the_run_exits_1(ray_local, tmp_path, capsys):
    code = main(["train", "--set", f"run.storage={tmp_path / 'runs'}", "--set", "run.id=late",
                 "--set", "dataset.labels=[0]", "--set", "model.width=8", "--set", "train.budget_s=1",
                 "--set", "train.deadline_grace_s=0.5", "--set", "train.log_every_s=0.5",
                 "--set", "metrics.enabled=false"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "label 0: not done 1.5s after the start" in err and "--set run.id=late" in err


@ray.remote
class _Stuck:
    """A label actor whose device hung: run() never returns and never reports."""

    def __init__(self, marker: str):
        with open(marker, "a") as f:
            f.write(f"started {os.getpid()}\n")

    def run(self):
        time.sleep(3600)


@ray.remote
class _FrozenProgress:
    """The collector's view of a label stuck at step 5, with the restart count its latest incarnation
    reports (as a restarted label actor does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def progress(self):
        try:
            incarnations = open(self.marker).read().count("started")
        except OSError:
            incarnations = 0
        if not incarnations:
            return {0: {"state": "setting up"}}
        return {0: {"state": "training", "step": 5, "restarts": incarnations - 1}}

    def report_failed(self, label, message):
        pass


def test_a_stalled_label_is_restarted_then_failed_when_no_restarts_remain(ray_local, tmp_path):
    marker = tmp_path / "starts"
    cfg = small_config(tmp_path, "train.log_every_s=0.5", "train.stall_timeout_s=2", "max_restarts=1",
                       "train.deadline_grace_s=30")  # without stall restarts it fails at the deadline
    stuck = _Stuck.options(max_restarts=1, max_task_retries=1).remote(str(marker))
    outcome = Supervisor(cfg, {(0,): stuck}, _FrozenProgress.remote(str(marker))).run()
    assert marker.read_text().count("started") == 2  # killed once and re-created by Ray...
    assert "died after 1 restart" in outcome.failures[0]  # ...then killed again, with no restart left


def test_one_labels_bad_data_fails_that_label_only(ray_local, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    bad = root / "b" / "0.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header parses (the driver's check passes); the pixels do not
    code = main(["train", "--set", f"run.storage={tmp_path / 'runs'}", "--set", "run.id=one-bad",
                 "--set", "dataset.name=folder", "--set", f"dataset.root={root}", "--set", "model.width=8",
                 "--set", "train.budget_s=3", "--set", "metrics.enabled=false", "--set", "dataset.test_fraction=0"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "1 of 2 labels failed" in err and str(bad) in err and "--set run.id=one-bad" in err
    summary = pd.read_csv(tmp_path / "runs" / "one-bad" / "summary.csv")
    assert list(summary["label"]) == [0] and summary["steps"].iloc[0] > 0  # the good label finished
    alive = {(a["namespace"], a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)}
    assert (NAMESPACE, collector_actor("one-bad")) not in alive  # the run cleaned up after itself
