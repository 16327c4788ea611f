"""End to end on a real local Ray: train a few digit labels, checkpoint, resume, sample."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import ray
import torch

from conftest import small_config, two_tone_folder  # noqa: E402
from core.rundir import RunDir, load_checkpoint
from orchestrator.cli import main
from core.actors import NAMESPACE, label_actor
from orchestrator.run import train
from workers.sampler import load_sampler


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    cfg = small_config(storage, "run.id=e2e")
    return train(cfg)


def test_run_directory_is_complete(finished_run):
    run_dir = finished_run.run_dir
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "samples" / "grid.png").stat().st_size > 0
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["label"]) == [0, 1, 2]
    assert (summary["steps"] > 0).all() and (summary["images_per_s"] > 0).all()
    for k in (0, 1, 2):
        ckpts = RunDir(run_dir).checkpoints(k)
        assert ckpts and ckpts[-1][0] == summary.loc[summary.label == k, "steps"].item()
        state = load_checkpoint(ckpts[-1][1])
        # The budget is spent (to within half a step, the stopping rule) and recorded in the checkpoint.
        step_s = 1.0 / summary.loc[summary.label == k, "steps_per_s"].item()
        assert 6.0 - step_s <= state["elapsed_s"] < 30.0
        history = pd.read_csv(run_dir / "labels" / str(k) / "history.csv")
        assert {"step", "critic_loss", "generator_loss", "wasserstein"} <= set(history.columns)
        assert history["step"].is_monotonic_increasing


def test_each_actor_trained_only_its_label(ray_local, tmp_path):
    """Two labels that differ in one visible way (all dark vs all bright images): each actor's
    generator must learn its own label's brightness, so their samples separate."""
    data = two_tone_folder(tmp_path / "two-tone")
    cfg = small_config(tmp_path / "runs", "run.id=tones", "dataset.name=folder", f"dataset.root={data}",
                       "dataset.labels=[0,1]", "train.lr=1e-3", "train.budget_s=8")
    result = train(cfg)
    sampler = load_sampler(result.run_dir)
    assert sampler.labels == [0, 1] and not sampler.conditional
    dark, bright = (sampler.sample([k] * 64, seed=0).mean().item() for k in (0, 1))
    assert bright - dark > 0.8, (dark, bright)


def test_sample_routes_labels_to_their_generator(finished_run):
    ens = load_sampler(finished_run.run_dir)
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
    thread = threading.Thread(target=lambda: result.setdefault("r", train(cfg)))
    thread.start()
    deadline = time.monotonic() + 120
    while RunDir(run_dir).latest_checkpoint(4) is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    killed_at = RunDir(run_dir).latest_checkpoint(4)
    ray.kill(ray.get_actor(label_actor("resume", 4), namespace=NAMESPACE), no_restart=False)
    thread.join(timeout=240)
    assert not thread.is_alive()
    summary = {s["label"]: s for s in result["r"].summaries}
    resumed = summary[4]["resumed_from_step"]
    assert summary[4]["restarts"] == 1 and summary[5]["restarts"] == 0
    # It resumed from a checkpoint at or after the one that existed when it was killed...
    assert resumed is not None and resumed >= int(killed_at.stem.split("-")[1])
    # ...and trained on past it, with only the budget that was left.
    assert summary[4]["steps"] > resumed
    assert 14.0 - 1.0 / summary[4]["steps_per_s"] <= summary[4]["elapsed_s"] < 40.0
    # Steps re-trained after the restart are logged once, not twice.
    history = pd.read_csv(run_dir / "labels" / "4" / "history.csv")
    assert history["step"].is_monotonic_increasing and history["step"].is_unique
