"""The data-parallel conditional baseline (issue 4): models, label routing, Ray Train end to end, compare."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import small_config  # noqa: E402
from workers.conditional_models import ConditionalGenerator, ProjectionCritic
from workers.models import Critic, Generator, count_parameters


# ------------------------------------------------------------------ models (no Ray)

def test_conditional_models_match_the_per_label_architecture():
    for size in (8, 28, 32):
        g = ConditionalGenerator(16, 8, 3, size, num_classes=10)
        d = ProjectionCritic(8, 3, size, num_classes=10)
        z, y = torch.randn(4, 16), torch.tensor([0, 3, 9, 3])
        x = g(z, y)
        assert x.shape == (4, 3, size, size) and x.abs().max() <= 1
        assert d(x, y).shape == (4,)
        # Same layers as the per-label pair; only the label embeddings are added.
        extra_g = count_parameters(g) - count_parameters(Generator(16, 8, 3, size))
        extra_d = count_parameters(d) - count_parameters(Critic(8, 3, size))
        assert 0 < extra_g <= 2 * 10 * sum(m.num_features for m in g.modules()
                                           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        assert extra_d == 10 * d.embed.embedding_dim


def test_generator_routes_labels_through_its_embeddings():
    torch.manual_seed(0)
    g = ConditionalGenerator(16, 8, 1, 8, num_classes=3).eval()
    with torch.no_grad():
        # Make the output a function of the label only: the last norm's gamma is 0 and its beta is
        # 0 / 1.5 / 3 per class; the output conv averages its 3x3 input, so inner pixels are tanh(beta_y).
        g.norms[-1].gamma.weight.zero_()
        g.norms[-1].beta.weight.copy_(torch.tensor([[0.0], [1.5], [3.0]]).expand_as(g.norms[-1].beta.weight))
        conv = g.to_image[0]
        conv.weight.fill_(1.0 / conv.weight[0].numel())
        conv.bias.zero_()
        z = torch.randn(6, 16)
        y = torch.tensor([2, 0, 1, 2, 0, 1])
        out = g(z, y)[:, 0, 1:-1, 1:-1]  # inner pixels: no zero padding in their window
    expected = torch.tanh(torch.tensor([0.0, 1.5, 3.0]))[y][:, None, None].expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_projection_critic_depends_on_the_label():
    torch.manual_seed(0)
    d = ProjectionCritic(8, 1, 8, num_classes=4)
    x = torch.randn(5, 1, 8, 8)
    a, b = d(x, torch.zeros(5, dtype=torch.long)), d(x, torch.full((5,), 3))
    assert not torch.allclose(a, b)


def test_conditional_wgan_gp_trains_in_process():
    from workers.baseline import ConditionalWGANGP, load_shard
    from workers.data import load_label

    cfg = small_config("/tmp/unused")
    torch.set_num_threads(1)
    x0, y0 = load_shard(cfg.dataset, [0, 1, 2], 0, 2)
    x1, y1 = load_shard(cfg.dataset, [0, 1, 2], 1, 2)
    full = sum(len(load_label(cfg.dataset, k)) for k in (0, 1, 2))
    assert len(x0) + len(x1) == full  # shards partition the training split
    assert set(y0.tolist()) == set(y1.tolist()) == {0, 1, 2}  # every shard holds every label
    gan = ConditionalWGANGP(cfg.model, cfg.train, x0, y0, 1, 8, 10, torch.device("cpu"), seed=1)
    flags = torch.tensor([0.0, 1.0, 0.0])
    for _ in range(3):
        stats, out = gan.step(flags)
    assert gan.generator_steps == 3 and torch.equal(out, flags)
    assert all(math.isfinite(v) for v in stats.floats().values())


# ------------------------------------------------------------------ Ray Train end to end

@pytest.fixture(scope="module")
def baseline_run(ray_local, tmp_path_factory):
    from workers.baseline import train_baseline

    storage = tmp_path_factory.mktemp("baseline") / "runs"
    cfg = small_config(storage, "train.budget_s=5", "train.checkpoint_every_s=1.5")
    run_dir = storage / "bl"
    summary = train_baseline(cfg, run_dir, num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    return cfg, run_dir, summary


def test_baseline_trains_end_to_end_with_two_workers(baseline_run):
    from workers import checkpoint
    from workers.baseline import list_baseline_checkpoints

    cfg, run_dir, summary = baseline_run
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["steps"] > 0 and summary["images_per_s"] > 0
    assert 4.0 <= summary["elapsed_s"] <= cfg.train.budget_s + 3.0
    ckpts = list_baseline_checkpoints(run_dir)
    assert len(ckpts) >= 2, "periodic checkpoints and the final one"
    final = checkpoint.load(ckpts[-1][1])
    for key in ("elapsed_s", "model", "channels", "image_size", "num_classes", "labels", "images_seen", "state"):
        assert key in final
    assert final["labels"] == [0, 1, 2] and final["num_classes"] == 10 and final["image_size"] == 8
    assert final["state"]["generator_steps"] == summary["steps"] == ckpts[-1][0]
    assert final["images_seen"] == summary["steps"] * cfg.train.batch_size * cfg.train.n_critic * 2
    history = pd.read_csv(run_dir / "baseline" / "history.csv")
    assert list(history["step"]) == sorted(history["step"]) and history["step"].iloc[-1] == summary["steps"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "samples" / "grid.png").is_file()
    assert not any(p.name.startswith("ckpt") for p in (run_dir / "ray_train").rglob("*"))


def test_baseline_sampler_routes_labels(baseline_run):
    from metrics.grid import save_sample_grid
    from workers.sampler import BaselineSampler, load_sampler

    _, run_dir, _ = baseline_run
    s = load_sampler(run_dir)
    assert isinstance(s, BaselineSampler) and s.labels == [0, 1, 2]
    assert set(s.generators) == {0, 1, 2}  # Ensemble's interface: `k in sampler.generators`
    wanted = [2, 0, 1, 0, 2, 1]
    images = s.sample(wanted, seed=3)
    assert images.shape == (6, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, s.sample(wanted, seed=3))  # seeded
    # Each position is generated for the label asked there: redo it with the generator directly,
    # drawing z the way sample() does (per label, in sorted label order).
    rng = torch.Generator().manual_seed(3)
    labels = torch.tensor(wanted)
    expected = torch.empty_like(images)
    with torch.no_grad():
        for k in labels.unique().tolist():
            idx = (labels == k).nonzero().flatten()
            z = torch.randn(len(idx), s.z_dim, generator=rng)
            expected[idx] = s.generator(z, torch.full((len(idx),), k))
            # The same z with another label gives other images: the label is really used.
            other = s.generator(z, torch.full((len(idx),), (k + 1) % 3))
            assert not torch.allclose(other, expected[idx])
    assert torch.allclose(images, expected)
    with pytest.raises(KeyError):
        s.sample([5])
    out = save_sample_grid(s, [0, 1, 2], run_dir / "samples" / "test-grid.png", per_label=4)
    assert out.is_file()


def test_baseline_and_ensemble_draw_the_same_noise(baseline_run):
    """Same seed, same (label, position): identical z for both methods, so they are scored on equal noise."""
    from workers.ensemble import Ensemble
    from workers.sampler import load_sampler

    s = load_sampler(baseline_run[1])
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, z):
            seen.append(z.clone())
            return torch.zeros(len(z), 1, 8, 8)

    Ensemble({0: Probe(), 2: Probe()}, z_dim=s.z_dim).sample([2, 0, 2], seed=7)
    rng = torch.Generator().manual_seed(7)
    assert torch.equal(seen[0], torch.randn(1, s.z_dim, generator=rng))  # label 0 first, as in BaselineSampler
    assert torch.equal(seen[1], torch.randn(2, s.z_dim, generator=rng))


def test_scoring_helpers_list_baseline_checkpoints(baseline_run):
    from workers.sampler import (BaselineSampler, baseline_label_checkpoints, checkpoints_over_time,
                                 sampler_for_label, sampler_from_checkpoint)

    _, run_dir, summary = baseline_run
    rows = checkpoints_over_time(run_dir)
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)
    per_label = baseline_label_checkpoints(run_dir, [0, 1, 2])
    assert set(per_label) == {0, 1, 2} and per_label[0] == per_label[2]
    first = sampler_from_checkpoint(rows[0]["path"])
    assert isinstance(first, BaselineSampler) and first.meta["step"] == rows[0]["step"]
    assert isinstance(sampler_from_checkpoint({k: rows[-1]["path"] for k in (0, 1)}), BaselineSampler)
    assert sampler_for_label(rows[-1]["path"], 1).meta["step"] == summary["steps"]


def test_baseline_resumes_from_its_latest_checkpoint(baseline_run, tmp_path):
    """A second train_baseline on the same run dir (what a Ray Train restart does) continues, not restarts."""
    import shutil

    from workers.baseline import train_baseline

    cfg, run_dir, summary = baseline_run
    copy = tmp_path / "bl"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray_train"))
    cfg2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"budget_s": summary["elapsed_s"] + 2.0})})
    again = train_baseline(cfg2, copy, num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    assert again["resumed_from_step"] == summary["steps"] and again["steps"] > summary["steps"]
    assert again["restarts"] == 1


# ------------------------------------------------------------------ wcgan compare

def test_plan_baseline_holds_the_ensembles_resources():
    from orchestrator.compare import plan_baseline
    from orchestrator.resources import ResourcePlan

    p = plan_baseline(ResourcePlan(10, 0.0, 0.2, "PACK"))
    assert (p.num_workers, p.use_gpu, p.resources_per_worker) == (2, False, {"CPU": 1.0})
    p = plan_baseline(ResourcePlan(3, 0.0, 0.6666, "PACK"))
    assert (p.num_workers, p.resources_per_worker) == (2, {"CPU": 1.0})
    p = plan_baseline(ResourcePlan(10, 0.5, 4.0, "PACK"))  # 10 labels on 5 of 8 GPUs
    assert (p.num_workers, p.use_gpu, p.resources_per_worker) == (5, True, {"GPU": 1.0, "CPU": 8.0})
    p = plan_baseline(ResourcePlan(3, 0.5, 4.0, "PACK"))  # 3 labels on 2 GPUs: never 2 ranks on one GPU
    assert p.num_workers == 2 and p.resources_per_worker["GPU"] > 0.5
    p = plan_baseline(ResourcePlan(10, 0.1, 1.6, "PACK"))  # 10 labels sharing 1 GPU
    assert (p.num_workers, p.resources_per_worker) == (1, {"GPU": 1.0, "CPU": 16.0})


def test_compare_writes_both_rows_and_every_column(ray_local, tmp_path):
    from orchestrator.compare import COMPARISON_COLUMNS, compare

    cfg = small_config(tmp_path / "runs", "train.budget_s=4", "train.checkpoint_every_s=1.5",
                       "metrics.enabled=true", "metrics.feature_extractor=classifier",
                       "metrics.samples_per_label=40", "metrics.every_s=2", "metrics.kid_subsets=10",
                       "metrics.is_splits=2", "run.id=cmp")
    result = compare(cfg)
    d = result.compare_dir
    assert d == (tmp_path / "runs" / "cmp").resolve()
    table = pd.read_csv(d / "comparison.csv")
    assert list(table["method"]) == ["ensemble", "baseline"]
    assert set(COMPARISON_COLUMNS) <= set(table.columns)
    for col in COMPARISON_COLUMNS:
        assert table[col].notna().all(), col
    assert (table["feature_space"] == "classifier").all()
    assert (table["n_fake"] == 3 * 40).all()
    assert (table["budget_s"] == 4).all()
    # Same devices: 3 labels x 0.6666 CPU against 2 workers x 1 CPU, for about the same time.
    ds = table.set_index("method")["device_seconds"]
    assert ds["baseline"] == pytest.approx(ds["ensemble"], rel=0.35)
    for f in ("fid_vs_time.png", "report.md", "ensemble/results.csv", "baseline/results.csv",
              "ensemble/report.md", "baseline/report.md", "baseline/baseline/history.csv"):
        assert (d / f).is_file(), f
    report = (d / "report.md").read_text()
    assert "classifier space" in report and "| ensemble |" in report and "| baseline |" in report
    assert len(list((d / "_classifiers").glob("*.pt"))) == 1  # one feature space for both


def test_cli_sample_on_a_baseline_run(baseline_run, tmp_path, capsys):
    from orchestrator.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(baseline_run[1]), "--label", "2,0", "--n", "3", "--out", str(out)]) == 0
    assert out.is_file() and "6 samples" in capsys.readouterr().out
