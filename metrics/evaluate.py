"""Score a run from its checkpoints: the final ensemble and, every metrics.every_s of training time, the
intermediate ones; write results.csv (tidy), per_label.csv and metrics.json, then render the report.

    evaluate_run(run_dir)          # what the collector and `wcgan evaluate --run DIR` call
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch

from orchestrator.config import Config, load_config
from metrics.scores import RESULT_COLUMNS, Evaluation, score_evaluations

Log = Callable[[str], None]
def _checkpoint_meta(path: Path) -> dict:
    """elapsed_s and image_size of a checkpoint without reading its tensors (mmap)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: no mmap
        blob = torch.load(path, map_location="cpu", weights_only=True)
    return {"elapsed_s": float(blob.get("elapsed_s", float("nan"))), "image_size": blob.get("image_size"),
            "channels": blob.get("channels")}


def label_checkpoints(run_dir: Path, labels) -> dict[int, list[tuple[float, int, Path]]]:
    """label -> [(elapsed_s, step, path)] oldest first; labels without checkpoints are left out."""
    from workers import checkpoint

    out = {}
    for k in labels:
        found = []
        for step, path in checkpoint.list_checkpoints(run_dir, k):
            try:
                found.append((_checkpoint_meta(path)["elapsed_s"], step, path))
            except Exception:  # deleted by pruning meanwhile, or unreadable: not an evaluation candidate
                continue
        if found:
            out[k] = sorted(found, key=lambda t: (t[1], t[0]))
    return out


def evaluation_schedule(ckpts: dict[int, list[tuple[float, int, Path]]], every_s: Optional[float],
                        log: Log = print) -> list[Evaluation]:
    """Intermediate evaluations at every_s, 2*every_s, ... (before the end of training), then the final one.

    At a mark t each label contributes its latest checkpoint with elapsed_s <= t (plus 5% of every_s:
    a checkpoint due at t is written at the end of the step that crosses t, a moment later); a mark
    where some label has none yet is skipped. The final evaluation uses every label's latest checkpoint, at the training
    time its slowest label reached.
    """
    final = {k: c[-1][2] for k, c in ckpts.items()}
    final_time = max(c[-1][0] for c in ckpts.values())
    evals: list[Evaluation] = []
    if every_s:
        n_marks = int(math.floor(final_time / every_s + 1e-9))
        for j in range(1, n_marks + 1):
            mark = j * every_s
            if mark >= final_time - 1e-9:
                break
            chosen = {}
            for k, c in ckpts.items():
                before = [p for (e, _, p) in c if e <= mark + 0.05 * every_s]
                if before:
                    chosen[k] = before[-1]
            if len(chosen) < len(ckpts):
                log(f"t={mark:g}s: {len(ckpts) - len(chosen)} label(s) have no checkpoint yet; skipped")
                continue
            if chosen == final:
                continue
            evals.append(Evaluation("checkpoint", float(mark), chosen))
    evals.append(Evaluation("final", float(final_time), final))
    return evals


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Atomic: a report rendered meanwhile never reads half a table."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=path.parent)
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evaluate_run(run_dir: str | os.PathLike, cfg: Optional[Config] = None, log: Log = print,
                 device: Optional[str | torch.device] = None,
                 storage: Optional[str | os.PathLike] = None) -> pd.DataFrame:
    """Scores the run in `run_dir` and writes results.csv, per_label.csv, metrics.json, plots and report.md.

    cfg: the run's config (default: run_dir/config.yaml). storage: where the classifier cache lives
    (default: the run directory's parent, i.e. run.storage). Returns the tidy results table.
    """
    from workers.data import describe

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if cfg is None:
        cfg = load_config(run_dir / "config.yaml")
    storage = Path(storage) if storage is not None else run_dir.resolve().parent
    info = describe(cfg.dataset, check_files=False)
    from workers.sampler import baseline_label_checkpoints, is_baseline_run

    if is_baseline_run(run_dir):  # data-parallel baseline: one checkpoint serves every label
        ckpts = baseline_label_checkpoints(run_dir, info.labels)
    else:
        ckpts = label_checkpoints(run_dir, info.labels)
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no checkpoints under labels/*/ckpt-*.pt or baseline/ckpt-*.pt")
    missing = [k for k in info.labels if k not in ckpts]
    if missing:
        log(f"labels {missing} have no checkpoint; scoring the ensemble of the other {len(ckpts)}")
    labels = sorted(ckpts)
    image_size = _checkpoint_meta(ckpts[labels[0]][-1][2]).get("image_size") or info.image_size

    from metrics.features import build_feature_space, single_thread_if_tiny

    space = build_feature_space(cfg, storage, image_size=image_size, device=device, log=log)
    evals = evaluation_schedule(ckpts, cfg.metrics.every_s, log)
    m = cfg.metrics
    log(f"scoring {len(evals)} evaluation(s) of {len(labels)} label(s), {m.samples_per_label} samples per label, "
        f"in {space.name} space")
    names = dict(zip(info.labels, info.label_names))
    with single_thread_if_tiny(space.device, image_size if space.name == "classifier" else 299):
        rows, per_label = score_evaluations(
            space, cfg.dataset, labels, image_size, evals, samples_per_label=m.samples_per_label,
            batch_size=m.batch_size, is_splits=m.is_splits, seed=m.seed, kid_subsets=m.kid_subsets,
            kid_subset_size=m.kid_subset_size, real_max_per_label=m.real_max_per_label, label_names=names, log=log)

    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    _write_csv(results, run_dir / "results.csv")
    _write_csv(pd.DataFrame(per_label), run_dir / "per_label.csv")
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
    (run_dir / "metrics.json").write_text(json.dumps(meta, indent=2))

    grid = run_dir / "samples" / "grid.png"
    if not grid.is_file():
        from metrics.grid import grid_labels, save_sample_grid
        from workers.sampler import sampler_from_checkpoint

        shown = grid_labels(labels)
        save_sample_grid(sampler_from_checkpoint({k: ckpts[k][-1][2] for k in shown}), shown, grid)

    from metrics.report import render_report

    report = render_report(run_dir)
    final = results[(results["eval"] == "final") & (results["label"] == "all")].set_index("metric")["value"]
    log(f"final FID {final.get('fid', float('nan')):.3f} ({space.name} space), "
        f"IS {final.get('is_mean', float('nan')):.3f}; wrote {report} in {meta['seconds']:.1f}s")
    return results
