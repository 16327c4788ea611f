"""Scoring protocols: what `standard` samples and records, and the cached reference features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import small_config
from core.config import dump_config, load_config
from core.rundir import RunDir, write_text
from metrics import evaluate as evaluate_mod
from metrics.evaluate import evaluate_run
from metrics.scoring import proportional_counts
from workers.trainer import LabelTrainer


def test_proportional_counts_follow_the_training_frequencies_exactly():
    counts = proportional_counts({0: 300, 1: 100, 2: 600}, 50_000)
    assert counts == {0: 15_000, 1: 5_000, 2: 30_000}
    odd = proportional_counts({0: 1, 1: 1, 2: 1}, 10)
    assert sum(odd.values()) == 10 and sorted(odd.values()) == [3, 3, 4]


@pytest.fixture
def unbalanced_run(tmp_path):
    """A folder of 2 labels, 30 and 10 grey images, each label trained for 2 steps."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, n in (("a", 30), ("b", 10)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    cfg = small_config(tmp_path / "runs", "dataset.name=folder", f"dataset.root={root}", "dataset.labels=all",
                       "train.max_steps=2", "train.budget_s=600", "metrics.samples_per_label=20",
                       "metrics.kid_subset_size=10", "metrics.kid_subsets=5")
    run = RunDir(tmp_path / "runs" / "r")
    LabelTrainer(str(run.path), cfg.to_dict(), [0, 1], "r").run()
    write_text(run.config, dump_config(cfg))
    return run


def test_standard_protocol_samples_by_class_frequency_and_says_so(unbalanced_run, monkeypatch):
    monkeypatch.setattr(evaluate_mod, "STANDARD_SAMPLES", 400)  # the real protocol's 50,000, scaled down
    run = unbalanced_run
    cfg = load_config(run.config, ["metrics.protocol=standard"])
    results = evaluate_run(run.path, cfg=cfg)
    # 24 and 8 training images (20% held out): 300 and 100 generated images.
    final = results[(results["eval"] == "final") & (results["metric"] == "fid")].set_index("label")
    assert final.loc["0", "n_fake"] == 300 and final.loc["1", "n_fake"] == 100 and final.loc["all", "n_fake"] == 400
    assert (results["protocol"] == "standard").all() and results["extractor"].str.contains("sha256:").all()
    metrics = set(results.loc[results["eval"] == "final", "metric"])
    assert {"fid", "intra_fid", "kid_mean", "is_mean", "precision", "recall"} <= metrics
    on_disk = pd.read_csv(run.results_csv)
    assert (on_disk["protocol"] == "standard").all() and on_disk["n_fake"].notna().all()
    report = run.report.read_text()
    assert "**standard** protocol: 400 generated images" in report and "sha256:" in report


def test_reference_features_are_reused_and_a_changed_key_recomputes(unbalanced_run, caplog):
    run = unbalanced_run
    quick = load_config(run.config, [])
    evaluate_run(run.path, cfg=quick)
    first = {p.name: p.stat().st_mtime_ns for p in (run.path.parent / "_reference").rglob("*.pt")}
    assert len(first) == 4  # 2 labels x (train, test)
    caplog.clear()
    with caplog.at_level("INFO", logger="metrics.evaluate"):
        evaluate_run(run.path, cfg=quick)
    assert "4 label file(s) reused, 0 computed" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (run.path.parent / "_reference").rglob("*.pt")} == first
    caplog.clear()
    with caplog.at_level("INFO", logger="metrics.evaluate"):
        evaluate_run(run.path, cfg=load_config(run.config, ["metrics.real_max_per_label=5"]))
    assert "0 label file(s) reused, 4 computed" in caplog.text
    assert len(list((run.path.parent / "_reference").glob("*/key.json"))) == 2


@pytest.mark.e2e
def test_evaluate_on_a_cluster_runs_the_resourced_scoring_task(unbalanced_run, ray_local, capsys):
    """`wcgan evaluate --address` scores through the same Ray task as a run's end, with --set."""
    from orchestrator.cli import main

    run = unbalanced_run
    assert main(["evaluate", "--run", str(run.path), "--address", "auto",
                 "--set", "metrics.samples_per_label=12"]) == 0
    results = pd.read_csv(run.results_csv)
    final = results[(results["eval"] == "final") & (results["metric"] == "fid") & (results["label"] == "0")]
    assert int(final["n_fake"].iloc[0]) == 12 and (results["protocol"] == "quick").all()
    assert "scoring with 2 CPU" in capsys.readouterr().err
