"""Several labels trained in turn by one actor: each label's training, files and rows are its own."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import small_config
from core.rundir import RunDir, load_checkpoint
from orchestrator.cli import main
from workers.trainer import LabelTrainer


def _final_generator(run: RunDir, label: int) -> dict:
    return load_checkpoint(run.latest_checkpoint(label))["state"]["generator"]


def test_a_packed_label_trains_exactly_as_it_would_alone(tmp_path):
    """Same seed, same steps: label 0 trained beside label 1 ends with the very weights it has
    when trained alone, so packing shares a process and nothing else."""
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.max_steps=6", "train.budget_s=600").to_dict()
    packed, alone = RunDir(tmp_path / "packed"), RunDir(tmp_path / "alone")
    out = LabelTrainer(str(packed.path), cfg, [0, 1], "packed").run()
    LabelTrainer(str(alone.path), cfg, 0, "alone").run()

    assert sorted(out["summaries"]) == [0, 1] and out["failures"] == {}
    assert [out["summaries"][k]["steps"] for k in (0, 1)] == [6, 6]      # a fair share each
    assert all(out["summaries"][k]["labels_in_actor"] == 2 for k in (0, 1))
    g_packed, g_alone, g_other = _final_generator(packed, 0), _final_generator(alone, 0), _final_generator(packed, 1)
    assert all(torch.equal(g_packed[k], g_alone[k]) for k in g_alone)
    assert not all(torch.equal(g_packed[k], g_other[k]) for k in g_other)  # label 1 trained on its own data
    for k in (0, 1):  # each label's own checkpoints and history
        assert load_checkpoint(packed.latest_checkpoint(k))["label"] == k
        history = pd.read_csv(packed.history(k))
        assert len(history) >= 1 and history["step"].iloc[-1] == 6


@pytest.mark.e2e
def test_packed_run_end_to_end_with_one_labels_bad_data(ray_local, tmp_path, capsys):
    """Through the driver: 3 labels in 2 actors; bad pixels in label 1 fail label 1 alone,
    and label 0, packed with it, trains to the end."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    bad = root / "b" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header parses; the pixels do not
    code = main(["train", "--set", f"run.storage={tmp_path / 'runs'}", "--set", "run.id=packed",
                 "--set", "dataset.name=folder", "--set", f"dataset.root={root}", "--set", "model.width=8",
                 "--set", "train.budget_s=3", "--set", "metrics.enabled=false", "--set", "dataset.test_fraction=0",
                 "--set", "resources.labels_per_actor=2"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "1 of 3 labels failed" in err and str(bad) in err
    summary = pd.read_csv(tmp_path / "runs" / "packed" / "summary.csv")
    assert list(summary["label"]) == [0, 2]
    assert list(summary["labels_in_actor"]) == [1, 1]  # label 0's pack lost label 1 at set-up
    assert (summary["steps"] > 0).all()
    assert "3 labels in 2 actors of up to 2 labels" in err


def test_a_label_ahead_waits_and_a_finished_label_is_not_retrained(tmp_path):
    """Labels of a pack resumed from different points: the one that spent more budget waits
    for the pack's clock; one already finished keeps its checkpoint as it is."""
    from workers.data import load_label
    from workers.gan import WGANGP
    from workers.pack import Pack

    cfg = small_config(tmp_path)
    pairs = {k: WGANGP.build(cfg.model, cfg.train, load_label(cfg.dataset, k), torch.device("cpu"), seed=k)
             for k in (0, 1)}
    pack = Pack(pairs, start_s={0: 0.0, 1: 3600.0})
    pack.step()
    assert (pairs[0].generator_steps, pairs[1].generator_steps) == (1, 0) and pack.elapsed0 == 0.0

    run = RunDir(tmp_path / "run")
    as_dict = lambda *o: small_config(tmp_path, "train.budget_s=600", *o).to_dict()  # noqa: E731
    LabelTrainer(str(run.path), as_dict("train.max_steps=6"), 1, "r").run()
    LabelTrainer(str(run.path), as_dict("train.max_steps=3"), 0, "r").run()
    finished = run.latest_checkpoint(1)
    before = load_checkpoint(finished)["elapsed_s"]
    out = LabelTrainer(str(run.path), as_dict("train.max_steps=6"), [0, 1], "r").run()
    assert [out["summaries"][k]["steps"] for k in (0, 1)] == [6, 6]
    assert run.latest_checkpoint(1) == finished and load_checkpoint(finished)["elapsed_s"] == before


def test_few_labels_with_small_explicit_shares_are_not_packed():
    from core.config import ResourcesConfig
    from orchestrator.resources import plan_resources

    # 4 processes of 0.1 GPU each fit under the cap: packing would only slow them down.
    plan = plan_resources(4, [{"CPU": 16, "GPU": 1}], ResourcesConfig(gpus_per_label=0.1, cpus_per_label=1))
    assert plan.labels_per_actor == 1 and plan.n_actors == 4


def test_the_preflight_timing_steps_are_undone(tmp_path):
    """The actor times a few steps before the clock starts; they leave no trace in the model."""
    from workers.data import load_label
    from workers.gan import WGANGP

    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.max_steps=4", "train.budget_s=600")
    run = RunDir(tmp_path / "run")
    out = LabelTrainer(str(run.path), cfg.to_dict(), 2, "t").run()
    assert out["summaries"][2]["steps"] == 4
    pair = WGANGP.build(cfg.model, cfg.train, load_label(cfg.dataset, 2, "train"), torch.device("cpu"),
                        seed=cfg.train.seed * 1000 + 2)
    for _ in range(4):
        pair.step()
    trained = _final_generator(run, 2)
    assert all(torch.equal(trained[k], v) for k, v in pair.generator.state_dict().items())
