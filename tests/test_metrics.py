"""Metrics: feature spaces, FID/KID/IS, class accuracy, the classifier cache, evaluate_run and the report.

No network: the Inception test saves a randomly initialised InceptionV3 state dict and points
metrics.feature_extractor_weights_path at it. The digits classifier is trained once per module.
"""

from __future__ import annotations

import logging
import math
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import save_random_inception
from core.config import DatasetConfig, dump_config, load_config
from core.errors import MissingWeightsError
from core.rundir import CheckpointRef, RunDir, save_checkpoint, write_text
from metrics import classifier as C
from metrics import features as F
from metrics import inception as I  # noqa: E741
from metrics import scores as S
from metrics.results import RESULT_COLUMNS
from workers.data import load_split, to_model_range, to_uint8


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def clf(storage):
    """The digits 8px classifier, trained here once for the module."""
    return C.get_classifier(DatasetConfig(), storage, device="cpu")


@pytest.fixture(scope="module")
def digits_train():
    x, y = load_split(DatasetConfig(), range(10), "train")
    return x, y


# ------------------------------------------------------------------ FID

def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(clf, digits_train):
    x, _ = digits_train
    feat = clf.features_module()
    assert feat.num_features == C.CLASSIFIER_FEATURE_DIM == 64
    base = feat(x)
    assert base.shape == (len(x), 64)
    assert S.fid(base, base) == pytest.approx(0.0, abs=1e-6)

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    values = []
    for sigma in (0.05, 0.15, 0.3, 0.6, 1.0):
        noisy = to_uint8(to_model_range(x) + sigma * noise)
        values.append(S.fid(base, feat(noisy)))
    assert values[0] > 1e-3
    assert all(a < b for a, b in zip(values, values[1:])), values

    # The same module works as torchmetrics' custom feature extractor, and our FID equals torchmetrics'.
    from torchmetrics.image.fid import FrechetInceptionDistance

    tm = FrechetInceptionDistance(feature=clf.features_module())
    tm.update(x, real=True)
    tm.update(to_uint8(to_model_range(x) + 0.3 * noise), real=False)
    assert float(tm.compute()) == pytest.approx(values[2], rel=1e-4)


def test_frechet_distance_matches_torchmetrics_on_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(300, 32, generator=gen)
    b = torch.randn(250, 32, generator=gen) * 1.3 + 0.2
    tm = FrechetInceptionDistance(feature=S.Passthrough(32))
    tm.set_dtype(torch.float64)
    tm.update(a.double(), real=True)
    tm.update(b.double(), real=False)
    stats_b = S.GaussianStats(32)
    for chunk in b.split(64):  # streaming in batches gives the same statistics
        stats_b.update(chunk)
    assert S.frechet_distance(S.GaussianStats.of(a), stats_b) == pytest.approx(float(tm.compute()), rel=1e-6)
    assert math.isnan(S.frechet_distance(S.GaussianStats.of(a[:1]), stats_b))
    # the low-rank form (few samples in many dimensions) is the same number
    wide_a, wide_b = torch.randn(20, 256, generator=gen), torch.randn(15, 256, generator=gen) + 0.1
    exact = S.frechet_distance(S.GaussianStats.of(wide_a), S.GaussianStats.of(wide_b))
    assert S.frechet_distance_lowrank(wide_a, wide_b) == pytest.approx(exact, rel=1e-6)
    assert S.fid(wide_a, wide_b) == pytest.approx(exact, rel=1e-6)
    assert S.frechet_distance_lowrank(a, b) == pytest.approx(float(tm.compute()), rel=1e-6)


# ------------------------------------------------------------------ IS, KID

@pytest.mark.parametrize("n,splits", [(103, 10), (7, 10), (40, 1)])
def test_streaming_inception_score_equals_torchmetrics(n, splits):
    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(n)) * 3
    acc = S.StreamingInceptionScore(n, splits, seed=5)
    for chunk in logits.split(16):
        acc.update(chunk)
    mean, std = acc.compute()
    ref_mean, ref_std = S.inception_score(logits, splits, seed=5)  # torchmetrics, seeded
    assert mean == pytest.approx(ref_mean, rel=1e-5)
    if splits > 1:
        assert std == pytest.approx(ref_std, rel=1e-4)
    # seeded: same seed, same answer; another seed, another split
    again = S.inception_score(logits, splits, seed=5)
    assert again[0] == ref_mean and (again[1] == ref_std or splits == 1)
    if splits > 1 and n > splits:
        assert S.inception_score(logits, splits, seed=6)[1] != ref_std


def test_kid_is_seeded_and_reservoir_is_bounded():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 16, generator=gen), torch.randn(150, 16, generator=gen) + 0.5
    k1, k2 = S.kid(a, b, subsets=20, subset_size=50, seed=3), S.kid(a, b, subsets=20, subset_size=50, seed=3)
    assert k1 == k2 and k1[2] == 50 and k1[0] > 0
    assert S.kid(a, a, subsets=20, subset_size=50, seed=3)[0] < k1[0]
    r = S.Reservoir(64, seed=0)
    for chunk in torch.arange(1000.0)[:, None].split(37):
        r.update(chunk)
    kept = r.tensor().flatten()
    assert len(kept) == 64 and len(set(kept.tolist())) == 64 and kept.max() > 500  # a sample of the whole stream


# ------------------------------------------------------------------ classifier

def test_class_accuracy_high_on_real_and_chance_on_noise(clf):
    assert clf.accuracy > 0.9, clf.accuracy
    x_test, y_test = load_split(DatasetConfig(), range(10), "test")
    assert clf.n_test == len(x_test)
    with torch.no_grad():
        real_acc = float((clf.model(x_test).argmax(1) == y_test).float().mean())
    assert real_acc == pytest.approx(clf.accuracy, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1000, 1, 8, 8), generator=gen, dtype=torch.uint8)
    wanted = torch.arange(1000) % 10  # "generator k" for noise: chance is 1/10
    with torch.no_grad():
        noise_acc = float((clf.model(noise).argmax(1) == wanted).float().mean())
    assert noise_acc < 0.2, noise_acc


def test_classifier_cache_is_reused_not_retrained(clf, storage, monkeypatch):
    path = C.classifier_cache_path(storage, "digits", 8)
    assert clf.path == path and path.is_file() and not clf.loaded_from_cache
    mtime = path.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(C, "train_classifier", no_training)
    again = C.get_classifier(DatasetConfig(), storage, device="cpu")
    assert again.loaded_from_cache and again.accuracy == clf.accuracy
    assert path.stat().st_mtime_ns == mtime
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.allclose(again.features_module()(x), clf.features_module()(x), atol=1e-5)
    # A cache made for another split of the data is not reused.
    def retrain(*a, **k):
        raise RuntimeError("retrain")

    monkeypatch.setattr(C, "train_classifier", retrain)
    with pytest.raises(RuntimeError, match="retrain"):
        C.get_classifier(DatasetConfig(test_fraction=0.3), storage, device="cpu")


# ------------------------------------------------------------------ Inception

@pytest.fixture
def empty_hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_missing_weights_error_names_the_file(empty_hub, tmp_path, monkeypatch):
    cfg = load_config(None, ["dataset.labels=[0]", "metrics.feature_extractor=inception",
                             "metrics.download_weights=false"])
    with pytest.raises(MissingWeightsError) as err:
        F.build_feature_space(cfg, tmp_path / "store", device="cpu", class_accuracy=False)
    msg = str(err.value)
    assert I.WEIGHTS_FILENAME in msg
    assert "https://github.com/toshas/torch-fidelity/releases" in msg
    assert str(empty_hub / "checkpoints") in msg and "feature_extractor_weights_path" in msg
    assert "make fetch-weights" in msg

    # A configured path that is missing is named too; a failed download says why.
    def offline(*a, **k):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(I.urllib.request, "urlopen", offline)
    with pytest.raises(MissingWeightsError) as err:
        I.resolve_inception_weights(tmp_path / "nowhere.pth", download=True)
    assert str(tmp_path / "nowhere.pth") in str(err.value) and "no network here" in str(err.value)
    assert not (tmp_path / "nowhere.pth").exists()

    # auto never needs the weights: it falls back to the classifier
    assert F.choose_feature_extractor(cfg.metrics.model_copy(update={"feature_extractor": "auto"}), 3, 32)[0] == "classifier"
    assert F.choose_feature_extractor(cfg.metrics.model_copy(update={"feature_extractor": "auto"}), 1, 8)[0] == "classifier"


def test_inception_path_loads_a_local_weights_file(tmp_path, empty_hub, monkeypatch):
    weights = tmp_path / "w" / I.WEIGHTS_FILENAME
    weights.parent.mkdir()
    state = save_random_inception(weights, monkeypatch)

    def offline(*a, **k):
        raise AssertionError("tried the network")

    monkeypatch.setattr(I.urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # a directory holding the file works as well as the file itself
    cfg = load_config(None, ["dataset.labels=[0]", "metrics.feature_extractor=inception",
                             f"metrics.feature_extractor_weights_path={weights.parent}"])
    space = F.build_feature_space(cfg, tmp_path / "store", device="cpu", class_accuracy=False)
    assert space.name == "inception" and space.classifier is None and space.num_features == 2048
    loaded = space.extractor.net.state_dict()
    assert torch.equal(loaded["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    assert space.extractor.net.use_antialias is False
    # auto picks Inception for 3-channel 32px data when the weights are on this machine
    assert F.choose_feature_extractor(cfg.metrics.model_copy(update={"feature_extractor": "auto"}), 3, 32)[0] == "inception"

    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    smooth = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(4, 3, 32, 32).clone()
    smooth[1:] //= torch.arange(2, 5, dtype=torch.uint8)[:, None, None, None]
    imgs = torch.cat([noise, smooth])
    out = space.extract(imgs)  # one batch through InceptionV3 on a CPU: keep it small
    assert out["features"].shape == (8, 2048) and out["is_logits"].shape == (8, 1008)
    assert torch.isfinite(out["features"]).all()
    a, b = out["features"][:4], out["features"][4:]
    apart = S.fid(a, b)
    assert apart > 0 and abs(S.fid(a, a)) < 1e-6 * apart
    # and torchmetrics' FID takes the module as its feature extractor (num_features, [N, 2048] output)
    from torchmetrics.image.fid import FrechetInceptionDistance

    tm = FrechetInceptionDistance(feature=space.extractor)
    tm.update(imgs[:2], real=True)
    assert int(tm.real_features_num_samples) == 2 and tm.real_features_sum.shape == (2048,)


def test_fetch_weights_checks_the_download_and_writes_atomically(tmp_path, monkeypatch):
    import io

    good = tmp_path / "good.pth"
    save_random_inception(good, monkeypatch)
    served = {"data": good.read_bytes()}

    class Response(io.BytesIO):
        def __enter__(self):
            return self

    monkeypatch.setattr(I.urllib.request, "urlopen", lambda url, timeout=None: Response(served["data"]))
    dest = tmp_path / "cache"
    path = I.fetch_inception_weights(dest)  # a directory: the file goes inside
    assert path == dest / I.WEIGHTS_FILENAME and path.read_bytes() == served["data"]
    assert I.find_inception_weights(dest) == path
    served["data"] = b"<html>rate limited</html>"  # not the weights: refused, nothing left behind
    with pytest.raises(MissingWeightsError, match="is not weights-inception"):
        I.fetch_inception_weights(tmp_path / "other" / "w.pth")
    assert list((tmp_path / "other").iterdir()) == []


# ------------------------------------------------------------------ evaluate_run and the report

def _make_run(storage: Path, run_id: str, labels=(0, 1, 2), times=(1.0, 2.0), every_s=1.0) -> Path:
    from workers.models import Generator

    sets = [f"run.storage={storage}", f"run.id={run_id}", f"dataset.labels={list(labels)}", "model.width=8",
            "model.z_dim=16", "metrics.samples_per_label=40", "metrics.kid_subsets=10", "train.budget_s=2"]
    if every_s:
        sets.append(f"metrics.every_s={every_s}")
    cfg = load_config(None, sets)
    run = RunDir(storage / run_id)
    write_text(run.config, dump_config(cfg))
    for k in labels:
        for step, t in enumerate(times, 1):
            torch.manual_seed(100 * k + step)
            g = Generator(16, 8, 1, 8)
            save_checkpoint({"label": k, "state": {"generator": g.state_dict()}, "elapsed_s": t,
                             "model": cfg.model.model_dump(), "channels": 1, "image_size": 8,
                             "images_seen": 64 * step, "restarts": 0}, run.checkpoint_path(k, step))
    pd.DataFrame({"label": list(labels), "steps": [10] * len(labels), "images_per_s": [100.0] * len(labels),
                  "restarts": [0] * len(labels)}).to_csv(run.summary_csv, index=False)
    return run.path


def test_evaluate_run_writes_results_plots_and_a_classifier_space_report(clf, storage, caplog):
    from metrics.evaluate import evaluate_run
    from metrics.report import render_report

    run = _make_run(storage, "eval1")
    with caplog.at_level(logging.INFO, logger="metrics"):
        df = evaluate_run(run)
    results = pd.read_csv(run / "results.csv", dtype={"label": str})
    assert list(results.columns) == RESULT_COLUMNS and len(results) == len(df)
    final = results[(results["eval"] == "final") & (results["label"] == "all")].set_index("metric")
    for metric in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "class_accuracy"):
        assert metric in final.index and math.isfinite(final.loc[metric, "value"]), metric
    assert final.loc["fid", "n_fake"] == 3 * 40 and final.loc["fid", "n_real"] > 300
    assert final.loc["fid", "eval_time_s"] == 2.0
    assert set(results["feature_space"]) == {"classifier"}
    assert (results["classifier_accuracy"] == clf.accuracy).all()
    # per-class FID for every label, an intermediate evaluation at every_s, and the real floor
    per_class = results[(results["eval"] == "final") & (results["metric"] == "fid") & (results["label"] != "all")]
    assert sorted(per_class["label"]) == ["0", "1", "2"] and (per_class["n_fake"] == 40).all()
    assert sorted(results[results["eval"] == "checkpoint"]["eval_time_s"].unique()) == [1.0]
    floor = results[(results["eval"] == "real_floor") & (results["label"] == "all")].set_index("metric")
    assert floor.loc["fid", "value"] < final.loc["fid", "value"]
    assert floor.loc["class_accuracy", "value"] > 0.9  # real held-out images through the same code path
    per_label = pd.read_csv(run / "per_label.csv")
    assert list(per_label["label"]) == [0, 1, 2] and {"fid", "n_fake", "n_real", "fid_floor", "class_accuracy"} <= set(per_label)
    # the classifier was loaded from the module's cache, not retrained
    assert any("scored label 2" in m for m in caplog.messages)  # progress is logged...
    assert not any("training the" in m for m in caplog.messages)  # ...and the classifier was not retrained

    for p in ("report.md", "plots/fid_over_time.png", "plots/per_class_fid.png", "samples/grid.png", "metrics.json"):
        assert (run / p).is_file(), p
    report = (run / "report.md").read_text()
    assert "classifier space" in report and "Inception FID" not in report
    assert f"classifier acc {clf.accuracy:.3f}" in report
    assert "120 generated vs" in report  # FID with its sample counts
    (run / "report.md").unlink()
    assert render_report(run).read_text() == report  # `wcgan report` re-renders the same page


def test_evaluation_schedule_picks_the_latest_checkpoint_before_each_mark():
    from metrics.evaluate import evaluation_schedule

    p = lambda k, s: Path(f"l{k}/ckpt-{s}.pt")  # noqa: E731
    ref = lambda t, k, s: CheckpointRef(t, s, p(k, s))  # noqa: E731
    ckpts = {0: [ref(10.0, 0, 1), ref(25.0, 0, 2), ref(40.0, 0, 3)],
             1: [ref(15.0, 1, 1), ref(22.0, 1, 2), ref(41.0, 1, 3)]}
    evals = evaluation_schedule(ckpts, 10.0)
    # t=10: label 1 has nothing yet (skipped); t=20 and t=30; t=40 is before the end (41s)
    assert [(e.name, e.time_s) for e in evals] == [("checkpoint", 20.0), ("checkpoint", 30.0),
                                                  ("checkpoint", 40.0), ("final", 41.0)]
    assert evals[0].checkpoints == {0: p(0, 1), 1: p(1, 1)}
    assert evals[1].checkpoints == {0: p(0, 2), 1: p(1, 2)}
    assert evals[2].checkpoints == {0: p(0, 3), 1: p(1, 2)}
    assert evals[3].checkpoints == {0: p(0, 3), 1: p(1, 3)}
    assert [e.name for e in evaluation_schedule(ckpts, None)] == ["final"]
    # A checkpoint due at t=20 is written a moment later (end of the step crossing 20 s): it counts.
    late = {0: [ref(20.3, 0, 1), ref(31.0, 0, 2)]}
    assert [(e.name, e.time_s) for e in evaluation_schedule(late, 20.0)] == \
        [("checkpoint", 20.0), ("final", 31.0)]
