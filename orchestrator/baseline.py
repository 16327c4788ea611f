"""Driver side of the data-parallel baseline: start Ray Train's TorchTrainer on the worker loop.

The worker side (shards, the conditional pair, gradient averaging) is
:mod:`workers.baseline`; this module plans, checks the cluster can hold the workers, runs
``TorchTrainer.fit`` and turns its outcome into a summary, a sample grid or a
:class:`core.errors.RunFailed`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

from core.config import Config, dump_config
from core.errors import ConfigError, RunFailed
from core.rundir import BASELINE, RunDir, write_text
from core.storage import is_uri, pull
from metrics.grid import save_run_grid
from orchestrator.cluster import alive_nodes
from orchestrator.preflight import check_run_disk
from orchestrator.resources import check_workers_fit
from workers.baseline import train_loop_per_worker
from workers.data import describe

logger = logging.getLogger(__name__)


def train_baseline(cfg: Config, run_dir: str | Path, num_workers: int, use_gpu: bool = False,
                   resources_per_worker: Optional[dict] = None) -> dict:
    """Train the data-parallel conditional baseline into `run_dir` (resuming from its checkpoints).

    Needs a connected Ray (``orchestrator.cluster.connect``). Writes ``run_dir/config.yaml``,
    ``run_dir/baseline/{ckpt-*.pt,history.csv,summary.json}``, ``run_dir/samples/grid.png`` and
    Ray Train's own files under ``run_dir/ray_train/`` (never ``~/ray_results``). Returns the summary.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # deferred: Ray Train imports pyarrow
    from ray.train.torch import TorchConfig, TorchTrainer

    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    if cfg.model.width == "auto":  # chosen by an ensemble's label actors timing steps; the baseline has none
        raise ConfigError("model.width: the baseline needs a number of channels, not auto (wcgan compare gives "
                          "it the width its ensemble chose)")
    info = describe(cfg.dataset)  # bad data fails here, before any worker starts
    check_run_disk(cfg, info.channels, info.image_size, len(info.labels), num_classes=info.num_classes)
    run = RunDir(run_dir if is_uri(run_dir) else Path(run_dir).resolve())
    resources = dict(resources_per_worker or ({"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": 1.0}))
    if use_gpu:
        resources.setdefault("GPU", 1.0)
    check_workers_fit(num_workers, resources, alive_nodes())
    run.owner_dir(BASELINE).mkdir(parents=True, exist_ok=True)
    write_text(run.config, dump_config(cfg))
    threads = max(1, int(math.floor(float(resources.get("CPU", 1.0)) + 1e-9)))
    backend = "nccl" if use_gpu else "gloo"
    logger.info("baseline: %d Ray Train worker(s) x %s (%s), conditional WGAN-GP on %d labels, budget %gs, "
                "batch %d per worker", num_workers, resources, backend, len(info.labels), cfg.train.budget_s,
                cfg.train.batch_size)
    latest = run.latest_checkpoint(BASELINE)
    if latest is not None:
        logger.info("baseline: resuming from %s", latest)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run_dir": run.location, "cfg": cfg.to_dict(), "threads": threads,
                           "labels": list(info.labels), "num_classes": info.num_classes},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name="ray_train", storage_path=run.location,
                             failure_config=FailureConfig(max_failures=cfg.max_restarts)),
    )
    t0 = time.monotonic()
    try:
        trainer.fit()
    except Exception as err:  # ray.train.TrainingFailedError and friends, after max_failures restarts
        raise RunFailed(
            f"baseline training failed after {cfg.max_restarts} restart(s): {str(err).strip().splitlines()[-1]}. "
            f"Checkpoints are kept in {run.owner_dir(BASELINE)}; re-running resumes from the latest."
        ) from err
    pull(run.baseline_summary)
    summary = json.loads(run.baseline_summary.read_text())
    summary.update({"wall_s": round(time.monotonic() - t0, 3), "num_workers": num_workers,
                    "resources_per_worker": resources, "backend": backend})
    write_text(run.baseline_summary, json.dumps(summary, indent=2))
    try:
        summary["grid"] = str(save_run_grid(run))
    except Exception as err:  # a grid is a convenience; never fail a finished run over it
        logger.warning("baseline: could not write the sample grid: %s", err)
    logger.info("baseline: %d steps in %.0fs, %.0f img/s over %d worker(s); %s", summary["steps"],
                summary["elapsed_s"], summary["images_per_s"], num_workers, run.path)
    return summary
