"""The end of a run, as a Ray task with resources of its own: the sample grid, then the scores.

The collector holds no CPU and no GPU (it only coordinates), so scoring there would run on one
thread, and, with the GPUs hidden from it, never on a GPU. The driver submits :func:`finalize_run`
once the label actors have given their devices back, asking for a GPU where the cluster has one
and else for the CPUs of a node, and the task uses exactly what it was given.
"""

from __future__ import annotations

import os
from typing import Optional

from core.devices import hide_unassigned_gpus
from core.logs import configure as configure_logging
from core.rundir import RunDir


def finalize_run(run_dir: str | os.PathLike, evaluate: bool = True, threads: Optional[int] = None,
                 log_level: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict:
    """Write samples/grid.png and, with `evaluate`, results.csv, the plots and report.md
    (`overrides`: --set items applied to the run's config, e.g. metrics.protocol=standard).
    Returns their paths, and where it ran (``gpu_ids``, ``threads``)."""
    gpu_ids = hide_unassigned_gpus()
    configure_logging(log_level)
    import torch  # deferred: a driver importing this module to submit it needs no torch

    if threads:
        torch.set_num_threads(threads)
    from metrics.evaluate import evaluate_run
    from metrics.grid import save_run_grid

    from core.config import load_config

    run = RunDir(run_dir)
    outputs = {"grid": str(save_run_grid(run))}
    if evaluate:
        evaluate_run(run.path, cfg=load_config(run.config, overrides) if overrides else None)
        outputs["results"] = str(run.results_csv)
        outputs["report"] = str(run.report)
    return {**outputs, "gpu_ids": gpu_ids, "threads": torch.get_num_threads()}
