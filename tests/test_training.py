"""End to end on a real local Ray: train a few digit labels, checkpoint, resume, sample."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import ray
import torch

from conftest import small_config  # noqa: E402
from orchestrator.cli import main
from orchestrator.run import actor_name, train
from workers import checkpoint
from workers.ensemble import Ensemble


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    cfg = small_config(storage, "run.id=e2e")
    return train(cfg, log=lambda _: None)


def test_run_directory_is_complete(finished_run):
    run_dir = finished_run.run_dir
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "samples" / "grid.png").stat().st_size > 0
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["label"]) == [0, 1, 2]
    assert (summary["steps"] > 0).all() and (summary["images_per_s"] > 0).all()
    for k in (0, 1, 2):
        ckpts = checkpoint.list_checkpoints(run_dir, k)
        assert ckpts and ckpts[-1][0] == summary.loc[summary.label == k, "steps"].item()
        state = checkpoint.load(ckpts[-1][1])
        # The budget is spent, and recorded, in the checkpoint.
        assert 6.0 <= state["elapsed_s"] < 30.0
        history = pd.read_csv(run_dir / "labels" / str(k) / "history.csv")
        assert {"step", "critic_loss", "generator_loss", "wasserstein"} <= set(history.columns)
        assert history["step"].is_monotonic_increasing


def test_each_actor_trained_only_its_label(finished_run):
    # The grid rows come from three different generators: their samples differ.
    ens = Ensemble.from_run(finished_run.run_dir)
    assert ens.labels == [0, 1, 2]
    a, b = (ens.sample([k] * 4, seed=0) for k in (0, 1))
    assert not torch.allclose(a, b)


def test_sample_routes_labels_to_their_generator(finished_run):
    ens = Ensemble.from_run(finished_run.run_dir)
    # Make each generator's output constant and distinct, then check routing.
    for k, g in ens.generators.items():
        final = g.to_image[0]
        torch.nn.init.zeros_(final.weight)
        torch.nn.init.constant_(final.bias, 0.1 * (k + 1))
    labels = [2, 0, 1, 2, 0]
    out = ens.sample(labels, seed=1)
    assert out.shape == (5, 1, 8, 8)
    assert out.amin() >= -1 and out.amax() <= 1
    for img, k in zip(out, labels):
        assert torch.allclose(img, torch.full_like(img, torch.tanh(torch.tensor(0.1 * (k + 1)))), atol=1e-6)
    with pytest.raises(KeyError, match="labels \\[7\\]"):
        ens.sample([7])


def test_cli_sample(finished_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--run", str(finished_run.run_dir), "--label", "1,2", "--n", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "6 samples" in capsys.readouterr().out
    assert main(["sample", "--run", str(finished_run.run_dir), "--label", "9", "--out", str(out)]) == 2
    assert "[9]" in capsys.readouterr().err


def test_resume_after_actor_is_killed(ray_local, tmp_path):
    cfg = small_config(tmp_path / "runs", "run.id=resume", "dataset.labels=[4,5]", "train.budget_s=14",
                       "max_restarts=2")
    run_dir = tmp_path / "runs" / "resume"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", train(cfg, log=lambda _: None)))
    thread.start()
    deadline = time.monotonic() + 120
    while checkpoint.latest_checkpoint(run_dir, 4) is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    killed_at = checkpoint.latest_checkpoint(run_dir, 4)
    ray.kill(ray.get_actor(actor_name("resume", 4)), no_restart=False)
    thread.join(timeout=240)
    assert not thread.is_alive()
    summary = {s["label"]: s for s in result["r"].summaries}
    resumed = summary[4]["resumed_from_step"]
    assert summary[4]["restarts"] == 1 and summary[5]["restarts"] == 0
    # It resumed from a checkpoint at or after the one that existed when it was killed...
    assert resumed is not None and resumed >= int(killed_at.stem.split("-")[1])
    # ...and trained on past it, with only the budget that was left.
    assert summary[4]["steps"] > resumed
    assert 14.0 <= summary[4]["elapsed_s"] < 40.0
    # Steps re-trained after the restart are logged once, not twice.
    history = pd.read_csv(run_dir / "labels" / "4" / "history.csv")
    assert history["step"].is_monotonic_increasing and history["step"].is_unique
