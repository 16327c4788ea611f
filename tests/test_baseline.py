"""The data-parallel conditional baseline (issue 4): models, label routing, Ray Train end to end, its plan.

`wcgan compare` itself is tested in test_compare.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import small_config  # noqa: E402
from core.rundir import BASELINE, RunDir, load_checkpoint
from orchestrator.baseline import train_baseline
from workers.baseline import allreduce_mean, load_shard
from workers.data import load_label
from workers.sampler import Sampler, load_sampler


# ------------------------------------------------------------------ data-parallel pieces (no Ray)

def test_shards_partition_the_training_split_and_hold_every_label():
    cfg = small_config("/tmp/unused")
    x0, y0 = load_shard(cfg.dataset, [0, 1, 2], 0, 2)
    x1, y1 = load_shard(cfg.dataset, [0, 1, 2], 1, 2)
    full = torch.cat([load_label(cfg.dataset, k) for k in (0, 1, 2)])
    assert len(x0) + len(x1) == len(full)
    assert set(y0.tolist()) == set(y1.tolist()) == {0, 1, 2}
    # Together the shards hold each training image once.
    key = lambda x: sorted(bytes(img.numpy()) for img in x)  # noqa: E731
    assert key(torch.cat([x0, x1])) == key(full)


def _average_in_group(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)  # same initial weights on both ranks
    x = torch.full((4, 3), float(rank + 1))  # different data per rank
    model(x).pow(2).sum().backward()
    local = [p.grad.clone() for p in model.parameters()]
    allreduce_mean(world)(list(model.parameters()))
    torch.save({"local": local, "synced": [p.grad for p in model.parameters()]}, f"{out}-{rank}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_across_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_average_in_group, args=(2, str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"grads-{r}.pt") for r in (0, 1))
    for a0, a1, s0, s1 in zip(r0["local"], r1["local"], r0["synced"], r1["synced"]):
        assert not torch.allclose(a0, a1)               # the ranks' own gradients differ...
        assert torch.allclose(s0, (a0 + a1) / 2)         # ...and both end with their mean
        assert torch.equal(s0, s1)


# ------------------------------------------------------------------ Ray Train end to end

@pytest.fixture(scope="module")
def baseline_run(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("baseline") / "runs"
    cfg = small_config(storage, "train.budget_s=5", "train.checkpoint_every_s=1.5")
    run_dir = storage / "bl"
    summary = train_baseline(cfg, run_dir, num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    return cfg, run_dir, summary


def test_baseline_trains_end_to_end_with_two_workers(baseline_run):
    cfg, run_dir, summary = baseline_run
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["steps"] > 0 and summary["images_per_s"] > 0
    # The shared stopping rule: within half a step of the budget (the upper bound is only a sanity check).
    assert cfg.train.budget_s - 1.0 / summary["steps_per_s"] <= summary["elapsed_s"] <= cfg.train.budget_s + 10.0
    ckpts = RunDir(run_dir).checkpoints(BASELINE)
    assert len(ckpts) >= 2, "periodic checkpoints and the final one"
    final = load_checkpoint(ckpts[-1][1])
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

    _, run_dir, _ = baseline_run
    s = load_sampler(run_dir)
    assert s.conditional and s.labels == [0, 1, 2]
    generator = s.generators[0]
    assert all(g is generator for g in s.generators.values())  # one conditional network for every label
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
            expected[idx] = generator(z, torch.full((len(idx),), k))
            # The same z with another label gives other images: the label is really used.
            other = generator(z, torch.full((len(idx),), (k + 1) % 3))
            assert not torch.allclose(other, expected[idx])
    assert torch.allclose(images, expected)
    with pytest.raises(KeyError):
        s.sample([5])
    out = save_sample_grid(s, [0, 1, 2], run_dir / "samples" / "test-grid.png", per_label=4)
    assert out.is_file()


def test_baseline_and_ensemble_draw_the_same_noise(baseline_run):
    """Same seed, same (label, position): identical z for both methods, so they are scored on equal noise."""
    baseline = load_sampler(baseline_run[1])
    seen = {"ensemble": [], "baseline": []}

    class Probe(torch.nn.Module):
        def __init__(self, method: str):
            super().__init__()
            self.method = method

        def forward(self, z, y=None):
            seen[self.method].append(z.clone())
            return torch.zeros(len(z), 1, 8, 8)

    probe = Probe("baseline")
    baseline.generators = {k: probe for k in baseline.generators}  # the real sampler, its network replaced
    ensemble = Sampler({0: Probe("ensemble"), 2: Probe("ensemble")}, z_dim=baseline.z_dim)
    ensemble.sample([2, 0, 2], seed=7)
    baseline.sample([2, 0, 2], seed=7)
    assert len(seen["baseline"]) == len(seen["ensemble"]) == 2
    for zb, ze in zip(seen["baseline"], seen["ensemble"]):
        assert torch.equal(zb, ze)
    rng = torch.Generator().manual_seed(7)
    assert torch.equal(seen["ensemble"][0], torch.randn(1, baseline.z_dim, generator=rng))  # label 0 first
    assert torch.equal(seen["ensemble"][1], torch.randn(2, baseline.z_dim, generator=rng))


def test_run_directory_lists_baseline_checkpoints_for_every_label(baseline_run):
    _, run_dir, summary = baseline_run
    run = RunDir(run_dir)
    assert run.is_baseline
    per_label = run.checkpoints_by_label([0, 1, 2, 5])
    assert set(per_label) == {0, 1, 2} and per_label[0] == per_label[2]  # label 5 was not trained
    refs = per_label[0]
    assert [r.elapsed_s for r in refs] == sorted(r.elapsed_s for r in refs)
    assert refs[-1].step == summary["steps"]
    latest = run.latest_by_label()
    assert set(latest) == {0, 1, 2} and len(set(latest.values())) == 1
    first = Sampler.from_checkpoints({k: refs[0].path for k in (0, 1)})
    assert first.conditional and first.labels == [0, 1]


def test_baseline_resumes_from_its_latest_checkpoint(baseline_run, tmp_path):
    """A second train_baseline on the same run dir (what a Ray Train restart does) continues, not restarts."""
    import shutil

    cfg, run_dir, summary = baseline_run
    copy = tmp_path / "bl"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray_train"))
    cfg2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"budget_s": summary["elapsed_s"] + 2.0})})
    again = train_baseline(cfg2, copy, num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    assert again["resumed_from_step"] == summary["steps"] and again["steps"] > summary["steps"]
    assert again["restarts"] == 1


# ------------------------------------------------------------------ the baseline's plan

def test_plan_baseline_holds_the_ensembles_resources():
    from orchestrator.resources import ResourcePlan, plan_baseline

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


def test_cli_sample_on_a_baseline_run(baseline_run, tmp_path, capsys):
    from orchestrator.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(baseline_run[1]), "--label", "2,0", "--n", "3", "--out", str(out)]) == 0
    assert out.is_file() and "6 samples" in capsys.readouterr().out
