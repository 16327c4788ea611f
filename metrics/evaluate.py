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
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from core.config import Config, load_config
from core.rundir import CheckpointRef, RunDir, checkpoint_meta, write_csv, write_text
from metrics.classifier import single_thread_if_tiny
from metrics.features import build_feature_space
from metrics.grid import save_run_grid
from metrics.report import render_report
from metrics.results import RESULT_COLUMNS
from metrics.scoring import Evaluation, score_evaluations
from workers.data import describe

logger = logging.getLogger(__name__)


def evaluation_schedule(ckpts: dict[int, list[CheckpointRef]], every_s: Optional[float]) -> list[Evaluation]:
    """Intermediate evaluations at every_s, 2*every_s, ... (before the end of training), then the final one.

    At a mark t each label contributes its latest checkpoint with elapsed_s <= t (plus 5% of every_s:
    a checkpoint due at t is written at the end of the step that crosses t, a moment later); a mark
    where some label has none yet is skipped. The final evaluation uses every label's latest checkpoint,
    at the training time its slowest label reached.
    """
    final = {k: c[-1].path for k, c in ckpts.items()}
    final_time = max(c[-1].elapsed_s for c in ckpts.values())
    evals: list[Evaluation] = []
    if every_s:
        n_marks = int(math.floor(final_time / every_s + 1e-9))
        for j in range(1, n_marks + 1):
            mark = j * every_s
            if mark >= final_time - 1e-9:
                break
            chosen = {}
            for k, refs in ckpts.items():
                before = [r.path for r in refs if r.elapsed_s <= mark + 0.05 * every_s]
                if before:
                    chosen[k] = before[-1]
            if len(chosen) < len(ckpts):
                logger.info("t=%gs: %d label(s) have no checkpoint yet; skipped", mark, len(ckpts) - len(chosen))
                continue
            if chosen == final:
                continue
            evals.append(Evaluation("checkpoint", float(mark), chosen))
    evals.append(Evaluation("final", float(final_time), final))
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
    storage = Path(storage) if storage is not None else run.path.resolve().parent
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
    logger.info("scoring %d evaluation(s) of %d label(s), %d samples per label, in %s space",
                len(evals), len(labels), m.samples_per_label, space.name)
    names = dict(zip(info.labels, info.label_names))
    with single_thread_if_tiny(space.device, image_size if space.name == "classifier" else 299):
        rows, per_label = score_evaluations(
            space, cfg.dataset, labels, image_size, evals, samples_per_label=m.samples_per_label,
            batch_size=m.batch_size, is_splits=m.is_splits, seed=m.seed, kid_subsets=m.kid_subsets,
            kid_subset_size=m.kid_subset_size, real_max_per_label=m.real_max_per_label, label_names=names)

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
        "samples_per_label": m.samples_per_label,
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
    if not run.grid.is_file():
        save_run_grid(run)
    report = render_report(run.path)
    final = results[(results["eval"] == "final") & (results["label"] == "all")].set_index("metric")["value"]
    logger.info("final FID %.3f (%s space), IS %.3f; wrote %s in %.1fs", final.get("fid", float("nan")),
                space.name, final.get("is_mean", float("nan")), report, meta["seconds"])
    return results
