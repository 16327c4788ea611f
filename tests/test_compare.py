"""`wcgan compare` (issues 4 and 13): both regimes planned from the cluster, and end to end on real Ray."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import small_config  # noqa: E402
from orchestrator.compare import COMPARISON_COLUMNS, REGIMES, compare, plan_regimes

GPU_NODES = [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}]  # 8 GPUs, 8 CPUs per GPU
CPU_NODE = [{"CPU": 2.0}]


# ------------------------------------------------------------------ planning (no Ray)

def _plans(nodes, labels, *overrides):
    cfg = small_config("/tmp/unused", *overrides)
    return {r.name: r for r in plan_regimes(cfg, labels, nodes, REGIMES)}


def test_matched_regime_puts_one_label_on_each_whole_cpu():
    r = _plans(CPU_NODE, [0, 1, 2])
    shared, matched = r["shared"], r["matched"]
    assert shared.labels == [0, 1, 2] and shared.plan.cpus_per_label < 1  # 3 labels share 2 CPUs
    assert matched.labels == [0, 1] and list(matched.cfg.dataset.labels) == [0, 1]
    assert (matched.plan.n_actors, matched.plan.cpus_per_actor, matched.plan.gpus_per_actor) == (2, 1.0, 0.0)
    bl = matched.baseline
    assert (bl.num_workers, bl.use_gpu, bl.resources_per_worker) == (2, False, {"CPU": 1.0})
    assert matched.cfg.train == shared.cfg.train and matched.cfg.model == shared.cfg.model  # same hyper-parameters


def test_matched_regime_puts_one_label_on_each_gpu():
    labels = list(range(10))
    r = _plans(GPU_NODES, labels)
    assert r["shared"].plan.gpus_per_actor < 1  # 10 labels share 8 GPUs
    matched = r["matched"]
    assert matched.labels == labels[:8]
    assert (matched.plan.n_actors, matched.plan.gpus_per_actor, matched.plan.labels_per_actor) == (8, 1.0, 1)
    assert (matched.baseline.num_workers, matched.baseline.resources_per_worker) == (8, {"GPU": 1.0, "CPU": 8.0})


def test_matched_regime_trains_no_more_labels_than_configured_and_keeps_the_device_kind():
    assert _plans(GPU_NODES, [3, 5])["matched"].labels == [3, 5]
    # A GPU cluster told to train on CPUs: the matched regime is on CPUs too, one whole CPU per label.
    matched = _plans(GPU_NODES, [0, 1, 2], "resources.gpus_per_label=0")["matched"]
    assert (matched.plan.gpus_per_actor, matched.plan.cpus_per_actor, matched.labels) == (0.0, 1.0, [0, 1, 2])


def test_cli_takes_a_regime():
    from orchestrator.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["compare"]).regime == "both"
    assert parse(["compare", "--regime", "matched"]).regime == "matched"
    with pytest.raises(SystemExit):
        parse(["compare", "--regime", "neither"])


# ------------------------------------------------------------------ end to end

def test_compare_writes_both_regimes_and_every_column(ray_local, tmp_path):
    cfg = small_config(tmp_path / "runs", "train.budget_s=4", "train.checkpoint_every_s=1.5",
                       "metrics.enabled=true", "metrics.feature_extractor=classifier",
                       "metrics.samples_per_label=40", "metrics.every_s=2", "metrics.kid_subsets=10",
                       "metrics.is_splits=2", "run.id=cmp")
    result = compare(cfg)
    d = result.compare_dir
    assert d == (tmp_path / "runs" / "cmp").resolve()
    table = pd.read_csv(d / "comparison.csv")
    assert list(zip(table["regime"], table["method"])) == [
        ("shared", "ensemble"), ("shared", "baseline"), ("matched", "ensemble"), ("matched", "baseline")]
    assert set(COMPARISON_COLUMNS) <= set(table.columns)
    for col in COMPARISON_COLUMNS:
        assert table[col].notna().all(), col
    assert (table["feature_space"] == "classifier").all()
    assert (table["budget_s"] == 4).all()
    by = table.set_index(["regime", "method"])
    # shared: 3 labels x 0.6666 CPU against 2 workers x 1 CPU; matched: labels 0 and 1, 1 CPU each, against
    # 2 workers x 1 CPU. Both for about the same time.
    assert (by.loc["shared", "n_fake"] == 3 * 40).all() and (by.loc["matched", "n_fake"] == 2 * 40).all()
    assert list(by["workers"]) == ["3 label actors", "2 DDP workers", "2 label actors", "2 DDP workers"]
    for regime in REGIMES:
        ds = by.loc[regime, "device_seconds"]
        assert ds["baseline"] == pytest.approx(ds["ensemble"], rel=0.35), regime
        for f in ("ensemble/results.csv", "baseline/results.csv", "ensemble/report.md", "baseline/report.md",
                  "baseline/baseline/history.csv"):
            assert (d / regime / f).is_file(), f"{regime}/{f}"
    assert sorted(p.name for p in (d / "matched" / "ensemble" / "labels").iterdir()) == ["0", "1"]
    assert result.plot == d / "fid_vs_time.png" and result.plot.is_file()
    report = (d / "report.md").read_text()
    assert "classifier space" in report and "fid_vs_time.png" in report
    assert "## shared: 3 labels sharing 2 CPUs" in report and "## matched: 2 labels on 2 CPUs, one each" in report
    # a row per method in each regime's table (after the summary table, whose rows start with the regime)
    assert len(re.findall(r"^\| ensemble \|", report, re.M)) == len(re.findall(r"^\| baseline \|", report, re.M)) == 2
    assert len(list((d / "_classifiers").glob("*.pt"))) == 1  # one feature space for every run
