"""`wcgan sweep`: the plan of each point, the efficiency maths, and a real weak-scaling sweep as Ray jobs."""

from __future__ import annotations

import shlex

import pandas as pd
import pytest

from orchestrator import jobs
from orchestrator.cli import main
from core.config import ConfigError, load_config
from orchestrator.sweep import add_efficiency, entrypoint, label_pool, parse_workers, plan_points

REPO = jobs.REPO_ROOT


def test_weak_points_train_one_label_per_worker():
    points = plan_points("weak", [1, 2, 4], list(range(10)), 50, 1.0, 0.0)
    assert [(p["n"], p["labels"], p["cpus"], p["gpus"], p["steps_per_worker"]) for p in points] == [
        (1, [0], 1.0, 0.0, 50), (2, [0, 1], 1.0, 0.0, 50), (4, [0, 1, 2, 3], 1.0, 0.0, 50)]
    with pytest.raises(ConfigError, match="N=11 needs 11 labels, but digits has 10"):
        plan_points("weak", [1, 11], list(range(10)), 50, 1.0, 0.0, dataset="digits")
    assert label_pool(load_config(None, ["dataset.name=cifar100"])) == list(range(100))
    assert label_pool(load_config(None, ["dataset.labels=[3,5]"])) == [3, 5]
    assert parse_workers("4, 1,2,2") == [1, 2, 4]
    for bad in ("0,1", "a", ""):
        with pytest.raises(ConfigError, match="--workers"):
            parse_workers(bad)


def test_strong_points_share_n_workers_between_fixed_labels():
    points = plan_points("strong", [1, 2, 4], list(range(10)), 100, 1.0, 1.0, labels=8)
    # 8 labels on N GPUs: shares of 1/ceil(8/N) pack the labels onto exactly N GPUs.
    assert [(p["n"], len(p["labels"]), p["gpus"], p["cpus"], p["steps_per_worker"]) for p in points] == [
        (1, 8, 0.125, 0.125, 800), (2, 8, 0.25, 0.25, 400), (4, 8, 0.5, 0.5, 200)]
    three = plan_points("strong", [3], list(range(10)), 10, 1.0, 1.0, labels=10)[0]
    assert three["gpus"] == 0.25  # 4 labels per GPU: 10 labels fit on 3 GPUs (0.3333 would not)
    with pytest.raises(ConfigError, match="idle"):
        plan_points("strong", [1, 4], list(range(10)), 10, 1.0, 0.0, labels=2)
    with pytest.raises(ConfigError, match="at most 1"):
        plan_points("strong", [1, 2], list(range(10)), 10, 1.0, 2.0, labels=4)


def test_weak_points_let_each_job_plan_its_gpus():
    """auto (the default): the job's own plan gives each label a GPU where the cluster has them."""
    points = plan_points("weak", [1, 2], list(range(10)), 50, 1.0, "auto")
    assert [p["gpus"] for p in points] == ["auto", "auto"]
    args = shlex.split(entrypoint(None, [], points[1], 50, 600, "s-n2", "/runs"))
    assert "resources.gpus_per_label=auto" in args and "resources.cpus_per_label=1" in args
    assert [p["gpus"] for p in plan_points("strong", [1, 2], list(range(10)), 5, 1.0, "auto", labels=2)] == [0.0, 0.0]


def test_entrypoint_is_a_train_command_with_the_point_overrides_last():
    point = plan_points("weak", [2], list(range(10)), 30, 1.0, 0.0)[0]
    cmd = entrypoint("experiments/digits.yaml", ["model.width=8", "train.max_steps=5"], point, 30, 3600,
                     "s-weak-n2", "/shared/runs")
    args = shlex.split(cmd)
    assert args[:5] == ["python", "-m", "orchestrator", "train", "--no-eval"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets.index("train.max_steps=30") > sets.index("train.max_steps=5")  # the sweep's value wins
    assert {"dataset.labels=[0,1]", "resources.cpus_per_label=1", "resources.gpus_per_label=0",
            "run.id=s-weak-n2", "run.storage=/shared/runs", "train.budget_s=3600"} <= set(sets)


def test_efficiency_against_the_smallest_n():
    rows = [{"n_workers": 1, "status": "SUCCEEDED", "images_per_s_per_worker": 100.0, "images_per_s_total": 100.0,
             "train_wall_s": 10.0},
            {"n_workers": 2, "status": "SUCCEEDED", "images_per_s_per_worker": 80.0, "images_per_s_total": 160.0,
             "train_wall_s": 12.5},
            {"n_workers": 4, "status": "FAILED"}]
    weak = add_efficiency([dict(r) for r in rows], "weak")
    assert [r["efficiency"] for r in weak] == [1.0, 0.8, None]
    assert weak[1]["time_efficiency"] == 0.8 and weak[0]["baseline_n"] == 1
    strong = add_efficiency([dict(r) for r in rows], "strong")
    assert strong[1]["efficiency"] == 0.8 and strong[1]["time_efficiency"] == 0.4


@pytest.mark.e2e  # starts a local Ray head and submits jobs to it
def test_weak_scaling_sweep_runs_one_ray_job_per_point(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", str(REPO / "experiments" / "digits.yaml"), "--workers", "1,2", "--steps", "20",
            "--out", str(out), "--id", "t-sweep", "--no-job-output", "--timeout-s", "300",
            "--set", "model.width=8", "--set", "model.z_dim=16", "--set", "train.batch_size=32",
            "--set", "train.n_critic=2", "--set", "train.log_every_s=2"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    progress = captured.err  # progress is logged to stderr; the result table is printed to stdout
    assert "starting a local Ray head" in progress and "stopping the local Ray head" in progress
    assert "[1/2] N=1" in progress and "[2/2] N=2: job SUCCEEDED" in progress
    assert "n_workers" in captured.out and "scaling.csv" in captured.out

    table = pd.read_csv(out / "scaling.csv")
    assert list(table["n_workers"]) == [1, 2] and list(table["n_labels"]) == [1, 2]
    assert (table["status"] == "SUCCEEDED").all() and table["job_id"].str.startswith("t-sweep-weak-n").all()
    assert table.loc[0, "efficiency"] == 1.0 and table.loc[1, "efficiency"] > 0
    assert (table["steps_per_worker"] == 20).all() and (table["images_per_s_per_worker"] > 0).all()
    assert (table["train_wall_s"] > 0).all() and (table["job_wall_s"] >= table["train_wall_s"]).all()
    assert (out / "scaling.png").stat().st_size > 0
    for n in (1, 2):
        summary = pd.read_csv(out / "runs" / f"t-sweep-weak-n{n}" / "summary.csv")
        assert list(summary["label"]) == list(range(n)) and (summary["steps"] == 20).all()

    # The same sweep id again would silently resume finished runs: refused.
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
