"""Score ensembles against a data set: sample each label, extract features, feed the score math.

Everything streams label by label: one label's real images are in memory at a time, and each
label's real features are computed once and shared by every evaluation (the final ensemble and
the intermediate ones). Works for both kinds of run: an evaluation maps each label to the
model file that generates it (its own snapshot, or the baseline's one conditional snapshot; full
checkpoints in runs written before snapshots existed).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch

from metrics.reference import ReferenceCache
from metrics.scores import (GaussianStats, Reservoir, StreamingInceptionScore, fid, frechet_distance, inception_score,
                            kid, precision_recall)
from workers.data import load_label, to_uint8
from workers.sampler import Sampler

logger = logging.getLogger(__name__)


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def extract_all(space, images: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Features of a (one label's) image tensor, in batches."""
    parts: dict[str, list[torch.Tensor]] = {}
    for b in batches(images, batch_size):
        for k, v in space.extract(b).items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


# ------------------------------------------------------------------ scoring ensembles

@dataclass
class Evaluation:
    """One ensemble to score: the label checkpoints it is made of and the training time they reached."""

    name: str                         # "final" | "checkpoint"
    time_s: float                     # the mark it stands for (the final one: the training time reached)
    checkpoints: Mapping[int, Path]   # label -> model file (a snapshot; a full checkpoint in older runs)
    models_time_s: Optional[float] = None  # training time the models reached (max over labels)


@dataclass
class _EvalState:
    ev: Evaluation
    stats: GaussianStats
    is_acc: StreamingInceptionScore
    kid: Reservoir
    correct: int = 0
    total: int = 0
    per_label: dict = field(default_factory=dict)   # label -> dict(fid, n, class_accuracy)


class _Samplers:
    """The sampler of a checkpoint, built on demand. An ensemble member serves one label and is
    dropped; a baseline's conditional generator serves every label, so the few most recent are
    kept (one per evaluation scored for the current label)."""

    def __init__(self, device: torch.device, keep: int = 2, ema: bool = True):
        self.device, self.keep, self.ema = device, keep, ema
        self.kept: dict[Path, Sampler] = {}

    def get(self, path: Path) -> Sampler:
        if path in self.kept:
            return self.kept[path]
        sampler = Sampler.from_checkpoint(path, self.device, self.ema)
        if sampler.conditional:
            self.kept[path] = sampler
            while len(self.kept) > self.keep:
                self.kept.pop(next(iter(self.kept)))
        return sampler


def sample_label(sampler: Sampler, label: int, n: int, seed: int, batch_size: int) -> Iterator[torch.Tensor]:
    """n uint8 samples of one label, in batches; the same noise for a given (seed, label)."""
    for j, start in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - start)
        yield to_uint8(sampler.sample([label] * b, seed=seed * 1_000_003 + label * 10_007 + j, batch_size=b))


def real_outputs(space, dataset_cfg, label: int, split: str, image_size: int, batch_size: int,
                 real_max_per_label: Optional[int] = None,
                 reference: Optional[ReferenceCache] = None) -> dict[str, torch.Tensor]:
    """The extractor's outputs for one label's real images of one split (from the cache when there is one)."""
    def compute() -> dict[str, torch.Tensor]:
        images = load_label(dataset_cfg, label, split, image_size)
        if real_max_per_label is not None:
            images = images[:real_max_per_label]
        if not len(images):
            return {"features": torch.zeros(0, space.num_features)}
        return extract_all(space, images, batch_size)

    return reference.get(split, label, compute) if reference is not None else compute()


def proportional_counts(train_counts: Mapping[int, int], total: int) -> dict[int, int]:
    """`total` samples split across labels in proportion to their training images (largest
    remainders, so the counts add up to `total` exactly): what a conditional generator sampled
    with the training label frequencies produces."""
    n = sum(train_counts.values())
    exact = {k: total * c / n for k, c in train_counts.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:total - sum(counts.values())]:
        counts[k] += 1
    return counts


def score_evaluations(space, dataset_cfg, labels: Sequence[int], image_size: int,
                      evaluations: Sequence[Evaluation], *, samples_per_label: int = 200, batch_size: int = 256,
                      is_splits: int = 10, seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000,
                      real_max_per_label: Optional[int] = None, kid_max_samples: int = 10_000,
                      label_names: Optional[Mapping[int, str]] = None,
                      counts: Optional[Mapping[int, int]] = None, reference: Optional[ReferenceCache] = None,
                      protocol: str = "quick", extractor: str = "",
                      precision_recall_k: Optional[int] = None, ema: bool = True) -> tuple[list[dict], list[dict]]:
    """Scores every evaluation against the real training split, plus the real floor.

    `counts`: generated images per label (default `samples_per_label` each). `precision_recall_k`:
    also precision and recall (Kynkaanniemi et al. 2019) on up to `kid_max_samples` features.
    `ema`: score the generators' moving averages where the model files keep them.
    Returns (tidy result rows with :data:`metrics.results.RESULT_COLUMNS`, per-label rows of the last evaluation).
    For the ``real_floor`` rows the held-out split stands in for the generated images, so ``n_fake`` is
    the held-out count.
    """
    labels = list(labels)
    space_name = space.name
    clf_acc = space.classifier_accuracy
    dim = space.num_features
    counts = {k: int(counts[k]) if counts is not None else samples_per_label for k in labels}
    n_fake_total = sum(counts.values())
    label_names = dict(label_names or {})
    t_start, done = time.monotonic(), 0

    real = GaussianStats(dim)
    held = GaussianStats(dim)
    real_kid = Reservoir(kid_max_samples, seed + 1)
    held_kid = Reservoir(kid_max_samples, seed + 2)
    held_is_logits: list[torch.Tensor] = []
    held_correct = held_total = 0
    floor_per_label: dict[int, dict] = {}
    states = [_EvalState(ev, GaussianStats(dim), StreamingInceptionScore(n_fake_total, is_splits, seed),
                         Reservoir(kid_max_samples, seed + 3)) for ev in evaluations]
    samplers = _Samplers(space.device, keep=max(2, len(evaluations)), ema=ema)

    for i, k in enumerate(labels):
        real_k = real_outputs(space, dataset_cfg, k, "train", image_size, batch_size, real_max_per_label,
                              reference)["features"]  # one label's: kept for per-class FID
        real.update(real_k)
        real_kid.update(real_k)
        f_test = real_outputs(space, dataset_cfg, k, "test", image_size, batch_size, real_max_per_label, reference)
        n_test = len(f_test["features"])
        floor_row = {"fid": float("nan"), "n_test": n_test, "n_train": len(real_k), "heldout_accuracy": float("nan")}
        if n_test:
            held.update(f_test["features"])
            held_kid.update(f_test["features"])
            held_is_logits.append(f_test["is_logits"])
            if "class_logits" in f_test:
                hits = int((f_test["class_logits"].argmax(1) == k).sum())
                held_correct += hits
                held_total += n_test
                floor_row["heldout_accuracy"] = hits / n_test
            floor_row["fid"] = fid(real_k, f_test["features"])
        floor_per_label[k] = floor_row
        del f_test

        cache: dict[Path, dict[str, torch.Tensor]] = {}
        for st in states:
            path = Path(st.ev.checkpoints[k])
            if path not in cache:
                cache.clear()
                parts: dict[str, list[torch.Tensor]] = {}
                for imgs in sample_label(samplers.get(path), k, counts[k], seed, batch_size):
                    for name, v in space.extract(imgs).items():
                        parts.setdefault(name, []).append(v)
                cache[path] = {name: torch.cat(v) for name, v in parts.items()}
            f_fake = cache[path]
            st.stats.update(f_fake["features"])
            st.kid.update(f_fake["features"])
            st.is_acc.update(f_fake["is_logits"])
            acc_k = float("nan")
            if "class_logits" in f_fake:
                hits = int((f_fake["class_logits"].argmax(1) == k).sum())
                st.correct += hits
                st.total += counts[k]
                acc_k = hits / counts[k]
            st.per_label[k] = {"fid": fid(real_k, f_fake["features"]), "n_fake": len(f_fake["features"]),
                               "n_real": len(real_k), "class_accuracy": acc_k}
        done += counts[k] * len(states)
        if len(labels) <= 20 or (i + 1) % max(1, len(labels) // 10) == 0 or i + 1 == len(labels):
            rate = done / max(time.monotonic() - t_start, 1e-9)
            logger.info("scored label %s (%d/%d): %d/%d generated images, %.0f images/s", k, i + 1, len(labels),
                        done, n_fake_total * len(states), rate)

    rows: list[dict] = []

    def add(ev: str, t: float, metric: str, label, value: float, n_fake, n_real, fs: str = space_name,
            models_t: float = float("nan")):
        rows.append({"eval": ev, "eval_time_s": t, "models_time_s": models_t, "metric": metric, "label": str(label),
                     "value": value, "n_fake": n_fake, "n_real": n_real, "feature_space": fs,
                     "classifier_accuracy": clf_acc if fs == "classifier" and clf_acc is not None else float("nan"),
                     "protocol": protocol, "extractor": extractor})

    nan = float("nan")
    kid_real = real_kid.tensor()
    for st in states:
        ev, t = st.ev.name, st.ev.time_s
        mt = st.ev.models_time_s if st.ev.models_time_s is not None else nan
        add(ev, t, "fid", "all", frechet_distance(real, st.stats), st.stats.n, real.n, models_t=mt)
        fake_kid = st.kid.tensor()
        km, ks, _ = kid(kid_real, fake_kid, kid_subsets, kid_subset_size, seed)
        add(ev, t, "kid_mean", "all", km, len(fake_kid), len(kid_real), models_t=mt)
        add(ev, t, "kid_std", "all", ks, len(fake_kid), len(kid_real), models_t=mt)
        per_label_fids = [st.per_label[k]["fid"] for k in labels]
        add(ev, t, "intra_fid", "all", sum(per_label_fids) / len(per_label_fids), n_fake_total, real.n, models_t=mt)
        if precision_recall_k:
            prec, rec = precision_recall(kid_real, fake_kid, k=precision_recall_k)
            add(ev, t, "precision", "all", prec, len(fake_kid), len(kid_real), models_t=mt)
            add(ev, t, "recall", "all", rec, len(fake_kid), len(kid_real), models_t=mt)
        im, istd = st.is_acc.compute()
        add(ev, t, "is_mean", "all", im, n_fake_total, nan, models_t=mt)
        add(ev, t, "is_std", "all", istd, n_fake_total, nan, models_t=mt)
        if st.total:
            add(ev, t, "class_accuracy", "all", st.correct / st.total, st.total, nan, "classifier", models_t=mt)
        for k in labels:
            r = st.per_label[k]
            add(ev, t, "fid", k, r["fid"], r["n_fake"], r["n_real"], models_t=mt)
            if not math.isnan(r["class_accuracy"]):
                add(ev, t, "class_accuracy", k, r["class_accuracy"], r["n_fake"], nan, "classifier", models_t=mt)

    # The floor: training split against the held-out split, same feature space and counts reported.
    if held.n >= 2:
        add("real_floor", nan, "fid", "all", frechet_distance(real, held), held.n, real.n)
        kid_held = held_kid.tensor()
        km, ks, _ = kid(kid_real, kid_held, kid_subsets, kid_subset_size, seed)
        add("real_floor", nan, "kid_mean", "all", km, len(kid_held), len(kid_real))
        add("real_floor", nan, "kid_std", "all", ks, len(kid_held), len(kid_real))
        im, istd = inception_score(torch.cat(held_is_logits), is_splits, seed)
        add("real_floor", nan, "is_mean", "all", im, held.n, nan)
        add("real_floor", nan, "is_std", "all", istd, held.n, nan)
        if held_total:
            add("real_floor", nan, "class_accuracy", "all", held_correct / held_total, held_total, nan, "classifier")
        for k in labels:
            fr = floor_per_label[k]
            add("real_floor", nan, "fid", k, fr["fid"], fr["n_test"], fr["n_train"])
            if not math.isnan(fr["heldout_accuracy"]):
                add("real_floor", nan, "class_accuracy", k, fr["heldout_accuracy"], fr["n_test"], nan, "classifier")
    else:
        logger.warning("no held-out images: the real-against-real floor is not computed (dataset.test_fraction=0?)")

    per_label: list[dict] = []
    if states:
        last = states[-1]
        for k in labels:
            r, fr = last.per_label[k], floor_per_label[k]
            per_label.append({
                "label": k, "label_name": label_names.get(k, str(k)),
                "fid": r["fid"], "n_fake": r["n_fake"], "n_real": r["n_real"],
                "fid_floor": fr["fid"], "n_heldout": fr["n_test"],
                "class_accuracy": r["class_accuracy"], "heldout_class_accuracy": fr["heldout_accuracy"],
                "feature_space": space_name,
                "classifier_accuracy": clf_acc if clf_acc is not None else nan,
                "eval": last.ev.name, "eval_time_s": last.ev.time_s,
            })
    return rows, per_label
