"""Score a run from its snapshots (generator-only model files; a run written before snapshots existed
falls back to its full checkpoints): the final ensemble and, every metrics.every_s of training time, the
intermediate ones; write results.csv (tidy), per_label.csv and metrics.json, then render the report.

    evaluate_run(run_dir)          # what the collector and `wcgan evaluate --run DIR` call
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

import pandas as pd
import torch

from core.config import Config, load_config
from core.rundir import CheckpointRef, RunDir, checkpoint_meta, write_csv, write_text
from core.storage import local_path
from metrics.classifier import single_thread_if_tiny
from metrics.features import build_feature_space
from metrics.grid import save_run_grid
from metrics.report import render_report
from metrics.results import RESULT_COLUMNS
from metrics.reference import ReferenceCache, extractor_digests, reference_key
from metrics.scoring import Evaluation, proportional_counts, real_outputs, score_evaluations
from workers.data import describe

logger = logging.getLogger(__name__)


STANDARD_SAMPLES = 50_000  # generated images of the standard protocol (CIFAR FIDs in papers use 50k)
PRECISION_RECALL_K = 3     # Kynkaanniemi et al. 2019


def describe_extractor(space) -> str:
    """What produced the features, with its weights' digest (first 12 hex digits)."""
    digests = extractor_digests(space)
    if space.name == "inception":
        return f"torch-fidelity InceptionV3 pool3, TF-compatible resize, weights sha256:{(digests['inception'] or '?')[:12]}"
    return f"SmallCNN classifier penultimate layer, weights sha256:{(digests['classifier'] or '?')[:12]}"


def evaluation_schedule(ckpts: dict[int, list[CheckpointRef]], every_s: Optional[float]) -> list[Evaluation]:
    """Intermediate evaluations at every_s, 2*every_s, ... (before the end of training), then the final one.

    At a mark t each label contributes the snapshot saved for t (its recorded ``mark_s``: training
    saves one at the end of the step that crosses t, see :mod:`workers.loop`); a label without one (a
    run written before marks were recorded, a mark crossed in the same step as a later one) falls back
    to its latest model with elapsed_s <= t + 5% of every_s. A mark where some label has none yet is
    skipped. The final evaluation uses every label's latest model, at the most training time a label
    reached. ``models_time_s`` is the training time the chosen models reached (max over labels).
    """
    final_refs = {k: c[-1] for k, c in ckpts.items()}
    final = {k: r.path for k, r in final_refs.items()}
    final_time = max(r.elapsed_s for r in final_refs.values())
    evals: list[Evaluation] = []
    if every_s:
        n_marks = int(math.floor(final_time / every_s + 1e-9))
        for j in range(1, n_marks + 1):
            mark = j * every_s
            if mark >= final_time - 1e-9:
                break
            chosen: dict[int, CheckpointRef] = {}
            for k, refs in ckpts.items():
                at_mark = [r for r in refs if r.mark_s is not None and math.isclose(r.mark_s, mark, abs_tol=1e-9)]
                before = at_mark or [r for r in refs if r.elapsed_s <= mark + 0.05 * every_s]
                if before:
                    chosen[k] = before[-1]
            if len(chosen) < len(ckpts):
                logger.info("t=%gs: %d label(s) have no checkpoint yet; skipped", mark, len(ckpts) - len(chosen))
                continue
            paths = {k: r.path for k, r in chosen.items()}
            if paths == final:
                continue
            evals.append(Evaluation("checkpoint", float(mark), paths,
                                    models_time_s=max(r.elapsed_s for r in chosen.values())))
    evals.append(Evaluation("final", float(final_time), final, models_time_s=float(final_time)))
    return evals


def evaluate_run(run_dir: str | os.PathLike, cfg: Optional[Config] = None,
                 device: Optional[str | torch.device] = None,
                 storage: Optional[str | os.PathLike] = None) -> pd.DataFrame:
    """Scores the run in `run_dir` and writes results.csv, per_label.csv, metrics.json, plots and report.md.

    cfg: the run's config (default: run_dir/config.yaml). storage: where the classifier cache lives
    (default: the run directory's parent, i.e. run.storage). Returns the tidy results table.
    """
    run = RunDir(run_dir)
    t0 = time.perf_counter()
    if cfg is None:
        cfg = load_config(run.config)
    storage = local_path(storage) if storage is not None else run.path.absolute().parent
    info = describe(cfg.dataset, check_files=False)
    ckpts = run.snapshots_by_label(info.labels)
    if not ckpts:
        raise FileNotFoundError(f"{run.path}: no models under labels/*/snapshots/, labels/*/ckpt-*.pt, "
                                "baseline/snapshots/ or baseline/ckpt-*.pt")
    missing = [k for k in info.labels if k not in ckpts]
    if missing:
        logger.warning("labels %s have no checkpoint; scoring the ensemble of the other %d", missing, len(ckpts))
    labels = sorted(ckpts)
    image_size = checkpoint_meta(ckpts[labels[0]][-1].path).get("image_size") or info.image_size

    space = build_feature_space(cfg, storage, image_size=image_size, device=device)
    evals = evaluation_schedule(ckpts, cfg.metrics.every_s)
    m = cfg.metrics
    standard = m.protocol == "standard"
    real_cap = None if standard else m.real_max_per_label  # the standard protocol uses the whole training split
    if standard and m.real_max_per_label is not None:
        logger.info("metrics.protocol=standard: ignoring metrics.real_max_per_label=%d (the full training split "
                    "is the reference)", m.real_max_per_label)
    reference = ReferenceCache(storage, reference_key(cfg.dataset, image_size, space, real_cap))
    names = dict(zip(info.labels, info.label_names))
    extractor = describe_extractor(space)
    with single_thread_if_tiny(space.device, image_size if space.name == "classifier" else 299):
        counts = None
        if standard:  # labels drawn in proportion to the training class frequencies
            train_counts = {k: len(real_outputs(space, cfg.dataset, k, "train", image_size, m.batch_size, real_cap,
                                                reference)["features"]) for k in labels}
            counts = proportional_counts(train_counts, STANDARD_SAMPLES)
        logger.info("scoring %d evaluation(s) of %d label(s), %s protocol: %s generated images each, in %s space",
                    len(evals), len(labels), m.protocol,
                    f"{sum(counts.values()):,}" if counts else f"{m.samples_per_label} per label", space.name)
        rows, per_label = score_evaluations(
            space, cfg.dataset, labels, image_size, evals, samples_per_label=m.samples_per_label,
            batch_size=m.batch_size, is_splits=m.is_splits, seed=m.seed, kid_subsets=m.kid_subsets,
            kid_subset_size=m.kid_subset_size, real_max_per_label=real_cap, label_names=names, counts=counts,
            reference=reference, protocol=m.protocol, extractor=extractor,
            precision_recall_k=PRECISION_RECALL_K if standard else None, ema=cfg.model.ema)
    logger.info("reference features: %d label file(s) reused, %d computed (%s)", reference.hits, reference.misses,
                reference.dir)

    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_csv(results, run.results_csv)
    write_csv(pd.DataFrame(per_label), run.per_label_csv)
    clf = space.classifier
    meta = {
        "feature_space": space.name,
        "feature_space_title": space.title,
        "feature_space_reason": space.reason,
        "num_features": space.num_features,
        "inception_weights": getattr(space.extractor, "weights_path", None),
        "classifier": None if clf is None else {
            "path": str(clf.path), "accuracy": clf.accuracy, "n_train": clf.n_train, "n_test": clf.n_test,
            "loaded_from_cache": clf.loaded_from_cache, "feature_dim": clf.model.feature_dim,
            "num_classes": clf.model.num_classes},
        "labels": labels,
        "label_names": {str(k): names.get(k, str(k)) for k in labels},
        "protocol": m.protocol,
        "extractor": extractor,
        "samples_per_label": m.samples_per_label if not standard else None,
        "samples_total": sum(counts.values()) if counts else m.samples_per_label * len(labels),
        "samples_by_label": {str(k): v for k, v in counts.items()} if counts else None,
        "reference_cache": str(reference.dir),
        "is_splits": m.is_splits,
        "kid_subsets": m.kid_subsets,
        "kid_subset_size": m.kid_subset_size,
        "seed": m.seed,
        "every_s": m.every_s,
        "image_size": image_size,
        "evaluations": [{"name": e.name, "time_s": e.time_s} for e in evals],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_text(run.metrics_json, json.dumps(meta, indent=2))
    if not run.has(run.grid):
        save_run_grid(run)
    report = render_report(run.path)
    final = results[(results["eval"] == "final") & (results["label"] == "all")].set_index("metric")["value"]
    logger.info("final FID %.3f (%s space), IS %.3f; wrote %s in %.1fs", final.get("fid", float("nan")),
                space.name, final.get("is_mean", float("nan")), report, meta["seconds"])
    return results


def precompute_reference(cfg: Config, device: Optional[str | torch.device] = None) -> ReferenceCache:
    """`wcgan reference`: the feature space (training the classifier if it is the one) and every
    label's real features of both splits, cached under run.storage for the runs that follow."""
    storage = local_path(cfg.run.storage)
    info = describe(cfg.dataset, check_files=False)
    space = build_feature_space(cfg, storage, image_size=info.image_size, device=device)
    m = cfg.metrics
    real_cap = None if m.protocol == "standard" else m.real_max_per_label
    reference = ReferenceCache(storage, reference_key(cfg.dataset, info.image_size, space, real_cap))
    t0 = time.perf_counter()
    with single_thread_if_tiny(space.device, info.image_size if space.name == "classifier" else 299):
        for i, k in enumerate(info.labels):
            for split in ("train", "test"):
                real_outputs(space, cfg.dataset, k, split, info.image_size, m.batch_size, real_cap, reference)
            if len(info.labels) <= 20 or (i + 1) % max(1, len(info.labels) // 10) == 0:
                logger.info("reference features: label %s (%d/%d), %.0fs", k, i + 1, len(info.labels),
                            time.perf_counter() - t0)
    logger.info("reference features of %d labels in %s (%d reused, %d computed)", len(info.labels), reference.dir,
                reference.hits, reference.misses)
    return reference

