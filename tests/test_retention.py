"""Bounded storage: small generator snapshots kept for scoring, few full checkpoints kept for resuming,
a disk estimate that refuses a run its storage cannot hold, and a full disk that loses nothing.

Real files throughout; the small disks are real tmpfs mounts (we run as root here and in CI).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from conftest import small_config
from core.config import load_config
from core.errors import ConfigError
from core.rundir import RunDir, checkpoint_meta, load_checkpoint, save_checkpoint
from metrics.evaluate import evaluation_schedule
from orchestrator.preflight import check_free_space, check_run_disk, estimate_disk, estimate_run_bytes
from workers.checkpoint import Checkpointer, Resume, restore
from workers.data import load_label
from workers.gan import WGANGP
from workers.sampler import Sampler, load_sampler

LABEL = 3


def _pair(cfg, seed: int = 0) -> WGANGP:
    images = load_label(cfg.dataset, LABEL)
    return WGANGP.build(cfg.model, cfg.train, images, torch.device("cpu"), seed=seed)


def _checkpointer(run: RunDir, cfg, pair: WGANGP, resume: Resume = Resume()) -> Checkpointer:
    return Checkpointer(run, LABEL, pair, cfg, resume, 0, [LABEL], pair.images_per_step)


def _train_and_save(run: RunDir, cfg, saves: int, steps_per_save: int = 2) -> tuple[WGANGP, list[dict]]:
    """A real pair on digits label 3, saved `saves` times; returns it and the generator weights at each save."""
    pair = _pair(cfg)
    ck = _checkpointer(run, cfg, pair)
    weights = []
    for i in range(saves):
        for _ in range(steps_per_save):
            pair.step()
        ck.save(float(i + 1), final=i == saves - 1)
        weights.append({k: v.clone() for k, v in pair.generator.state_dict().items()})
    return pair, weights


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ snapshots vs checkpoints

def test_every_save_keeps_a_snapshot_and_only_the_newest_full_checkpoints(tmp_path):
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.keep_checkpoints=2")
    run = RunDir(tmp_path / "run")
    pair, weights = _train_and_save(run, cfg, saves=5)

    assert [s for s, _ in run.snapshots(LABEL)] == [2, 4, 6, 8, 10]
    assert [s for s, _ in run.checkpoints(LABEL)] == [8, 10]
    assert not list(run.owner_dir(LABEL).rglob(".tmp-*"))

    for (step, path), w in zip(run.snapshots(LABEL), weights):
        blob = load_checkpoint(path)
        assert blob["snapshot"] is True and blob["step"] == step
        assert set(blob["state"]) == {"generator", "generator_steps"}  # no critic, optimisers or RNG
        assert _same(blob["state"]["generator"], w)
        for key in ("kind", "model", "channels", "image_size", "label", "labels", "elapsed_s", "images_seen", "final"):
            assert key in blob, key
        assert blob["label"] == LABEL and blob["image_size"] == 8 and blob["channels"] == 1
    full = load_checkpoint(run.checkpoints(LABEL)[-1][1])
    assert {"generator", "critic", "opt_g", "opt_d", "rng"} <= set(full["state"])
    assert run.snapshots(LABEL)[-1][1].stat().st_size < run.checkpoints(LABEL)[-1][1].stat().st_size / 2

    # A resume reads the newest full checkpoint: critic and optimisers included.
    fresh = _pair(cfg, seed=1)
    resume = restore(run, LABEL, fresh)
    assert resume.start_step == fresh.generator_steps == 10 and resume.elapsed_s == 5.0
    assert resume.path == run.checkpoint_path(LABEL, 10)
    assert _same(fresh.critic.state_dict(), pair.critic.state_dict())
    assert [s for s, _ in run.snapshots(LABEL)] == [2, 4, 6, 8, 10]  # nothing past step 10 to drop


def test_sampling_and_scores_over_time_read_the_snapshots(tmp_path):
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.keep_checkpoints=1")
    run = RunDir(tmp_path / "run")
    pair, weights = _train_and_save(run, cfg, saves=4)
    assert len(run.checkpoints(LABEL)) == 1

    over_time = run.snapshots_by_label()
    assert [r.step for r in over_time[LABEL]] == [2, 4, 6, 8]
    assert [r.elapsed_s for r in over_time[LABEL]] == [1.0, 2.0, 3.0, 4.0]
    assert all(r.path.parent == run.snapshot_dir(LABEL) for r in over_time[LABEL])
    assert run.checkpoints_by_label() == over_time  # the older name reads the same
    evals = evaluation_schedule(over_time, every_s=1.0)
    assert [e.name for e in evals] == ["checkpoint"] * 3 + ["final"]
    assert [e.checkpoints[LABEL] for e in evals] == [r.path for r in over_time[LABEL]]
    assert checkpoint_meta(evals[0].checkpoints[LABEL])["step"] == 2

    # An early snapshot is a usable generator: the one of that time, not the latest.
    early = Sampler.from_checkpoint(evals[0].checkpoints[LABEL])
    assert _same(early.generators[LABEL].state_dict(), weights[0])

    # load_sampler needs no full checkpoint at all.
    for _, path in run.checkpoints(LABEL):
        path.unlink()
    model = load_sampler(run.path)
    assert model.labels == [LABEL]
    assert _same(model.generators[LABEL].state_dict(), weights[-1])
    pair.generator.eval()
    z = torch.randn(4, pair.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.sample([LABEL] * 4, seed=0), pair.generator(z))


def test_a_run_written_before_snapshots_is_read_from_its_checkpoints(tmp_path):
    cfg = small_config(tmp_path)
    pair = _pair(cfg)
    run = RunDir(tmp_path / "old")
    for step, elapsed in ((3, 1.0), (6, 2.0)):  # what the old Checkpointer wrote: full files only
        pair.generator_steps = step
        save_checkpoint({"kind": "label", "model": cfg.model.model_dump(), "channels": 1, "image_size": 8,
                         "label": LABEL, "state": pair.state_dict(), "elapsed_s": elapsed}, run.checkpoint_path(LABEL, step))
    assert run.snapshots(LABEL) == []
    assert [r.step for r in run.snapshots_by_label()[LABEL]] == [3, 6]
    assert run.latest_snapshots() == {LABEL: run.checkpoint_path(LABEL, 6)}
    assert load_sampler(run.path).labels == [LABEL]


def test_a_resume_from_an_older_checkpoint_drops_the_snapshots_past_it(tmp_path):
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.keep_checkpoints=2")
    run = RunDir(tmp_path / "run")
    _train_and_save(run, cfg, saves=3)
    newest = run.checkpoint_path(LABEL, 6)
    newest.write_bytes(newest.read_bytes()[:200])  # truncated by a dying disk
    resume = restore(run, LABEL, _pair(cfg))
    assert resume.start_step == 4
    # Steps 5.. are trained again: the old step-6 snapshot belongs to a discarded line of training.
    assert [s for s, _ in run.snapshots(LABEL)] == [2, 4]


# ------------------------------------------------------------------ small disks (real tmpfs mounts)

@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a fresh tmpfs of that size, unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_the_disk_estimate_matches_the_files_a_run_writes(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config("experiments/digits.yaml", [f"run.storage={tmp_path}", "train.keep_checkpoints=2"])
    run = RunDir(tmp_path / "run")
    _train_and_save(run, cfg, saves=2, steps_per_save=1)
    est = estimate_disk(cfg, 1, 8, 10)
    snap = run.snapshots(LABEL)[-1][1].stat().st_size
    full = run.checkpoints(LABEL)[-1][1].stat().st_size
    assert snap <= est.snapshot_bytes <= 1.15 * snap
    assert full <= est.checkpoint_bytes <= 1.15 * full
    assert (est.owners, est.snapshots, est.checkpoints) == (10, 7, 3)  # 120 s / 20 s + 1 saves; 2 kept + 1 written
    assert est.total_bytes >= 10 * (7 * snap + 3 * full)
    assert est.total_bytes == estimate_run_bytes(cfg, 1, 8, 10)
    every = cfg.model_copy(update={"train": cfg.train.model_copy(update={"keep_checkpoints": None})})
    assert estimate_disk(every, 1, 8, 10).checkpoints == 7
    assert estimate_disk(cfg, 1, 8, 10, num_classes=10).owners == 1  # the baseline: one conditional pair


def test_a_run_too_big_for_its_storage_is_refused_before_it_starts(small_disk, caplog):
    disk = small_disk("40M")
    storage = disk / "runs"  # not made yet: the check looks at the file system it will be on
    small = small_config(storage)
    demo = load_config("experiments/digits.yaml", [f"run.storage={storage}"])
    need_small = estimate_run_bytes(small, 1, 8, 3)
    need_demo = estimate_run_bytes(demo, 1, 8, 10)
    free = shutil.disk_usage(disk).free
    assert need_small < free < need_demo

    with caplog.at_level(logging.INFO, logger="orchestrator.preflight"):
        check_run_disk(small, 1, 8, 3)  # fits
    assert "disk: this run writes up to" in caplog.text

    with pytest.raises(ConfigError) as err:
        check_run_disk(demo, 1, 8, 10)
    msg = str(err.value)
    for part in ("run.storage", str(storage), "train.keep_checkpoints", "train.checkpoint_every_s",
                 "dataset.labels", "bigger disk", "free"):
        assert part in msg, part
    assert not storage.exists()  # nothing created
    with pytest.raises(ConfigError, match="needs about"):
        check_free_space(storage, free + 2**20)
    check_free_space(storage, free - 2**20)


def _fill(disk: Path, leave: int) -> None:
    """Write a filler file so that about `leave` bytes stay free on `disk`."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_names_the_file(small_disk):
    torch.set_num_threads(1)
    disk = small_disk("4M")
    cfg = load_config("experiments/digits.yaml", [f"run.storage={disk}", "train.keep_checkpoints=1"])
    run = RunDir(disk / "run")
    pair = _pair(cfg)
    ck = _checkpointer(run, cfg, pair)
    pair.step()
    first = ck.save(1.0)
    before = first.read_bytes()
    full, snap = first.stat().st_size, run.snapshots(LABEL)[-1][1].stat().st_size

    _fill(disk, leave=full // 2)  # the next full checkpoint cannot be written
    pair.step()
    with pytest.raises(OSError) as err:
        ck.save(2.0)
    assert err.value.errno == errno.ENOSPC
    assert str(run.checkpoint_path(LABEL, 2)) in str(err.value)
    assert [s for s, _ in run.checkpoints(LABEL)] == [1] and first.read_bytes() == before
    assert [s for s, _ in run.snapshots(LABEL)] == [1]
    assert not list(run.owner_dir(LABEL).rglob(".tmp-*"))
    assert restore(run, LABEL, _pair(cfg)).start_step == 1

    # Room for the checkpoint but not the snapshot: nothing is pruned before both are written.
    (disk / "filler").unlink()
    _fill(disk, leave=full + snap // 2 + 16384)
    with pytest.raises(OSError) as err:
        ck.save(2.0)
    assert err.value.errno == errno.ENOSPC
    assert str(run.snapshot_path(LABEL, 2)) in str(err.value)
    assert [s for s, _ in run.checkpoints(LABEL)] == [1, 2] and first.read_bytes() == before
    assert not list(run.owner_dir(LABEL).rglob(".tmp-*"))

    (disk / "filler").unlink()  # space again: the next save completes and prunes
    pair.step()
    ck.save(3.0)
    assert [s for s, _ in run.checkpoints(LABEL)] == [3]
    assert [s for s, _ in run.snapshots(LABEL)] == [1, 3]


def test_the_budget_projection_warns_with_the_fix_when_too_few_steps_fit():
    from core.config import load_config
    from orchestrator.preflight import budget_projection, min_generator_steps

    cfg = load_config(None, ["model.width=64", "train.budget_s=240"])
    assert min_generator_steps(8) == 200 and min_generator_steps(28) == 1000 and min_generator_steps(256) == 4000
    loading = {0: {"state": "setting up"}, 1: {"state": "loaded", "projected_steps": 8, "step_s": 30.0}}
    assert budget_projection(loading, cfg, 28) is None  # label 0 has not timed its steps yet
    few = {0: {"state": "loaded", "projected_steps": 8, "step_s": 30.0},
           1: {"state": "training", "projected_steps": 9, "step_s": 29.0}, 2: {"state": "failed"}}
    message, too_few = budget_projection(few, cfg, 28)
    assert too_few and "about 8/9/9 generator steps" in message and "fewer than the 1000" in message
    assert "model.width (now 64" in message and "train.budget_s=30000" in message
    plenty = {0: {"state": "training", "projected_steps": 5000, "step_s": 0.01}}
    assert budget_projection(plenty, cfg, 28) == ("pre-flight: 240s buys about 5000/5000/5000 generator steps per "
                                                  "label (min/median/max over 1 labels)", False)
