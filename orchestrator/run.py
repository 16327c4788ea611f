"""Run lifecycle: validate, plan, place, train every label at once, collect.

Everything that can fail on bad input (config, data, placement) fails before
the run directory is created, so a rejected run leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core import storage
from core.actors import NAMESPACE, collector_actor, label_actor, live_actors
from core.config import Config, dump_config, load_config
from core.errors import ConfigError, PlacementError, RunFailed
from core.fmt import resources as fmt_resources
from core.rundir import RunDir, write_csv, write_text
from core.process import started_unix
from core.runlock import RunLock
from core.storage import join
from metrics.collector import Collector
from metrics.finalize import finalize_run
from metrics.inception import resolve_inception_weights
from orchestrator.cluster import alive_nodes, connect
from orchestrator.preflight import check_run_disk, check_storage
from orchestrator.resources import ResourcePlan, plan_resources, plan_scoring
from orchestrator.supervise import Supervisor
from workers.data import DatasetInfo, describe
from workers.models import check_model_size
from workers.preflight import largest_model, recorded_width
from workers.trainer import LabelTrainer

logger = logging.getLogger(__name__)

@dataclass
class RunResult:
    run_dir: Path
    plan: ResourcePlan
    summaries: list[dict]
    outputs: dict
    wall_s: float


def new_run_id(cfg: Config) -> str:
    return cfg.run.id or f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def place(plan: ResourcePlan, run_id: str, timeout_s: float):
    """A placement group holding every label's bundle, or a PlacementError (never a silent pend)."""
    pg = placement_group(plan.bundles, strategy=plan.strategy, name=f"wcgan/{run_id}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(
            f"could not place {plan.describe()} within resources.placement_timeout_s={timeout_s:g}s; "
            f"cluster resources: {ray.cluster_resources()}, available: {ray.available_resources()}"
        )
    return pg


def start_label_actors(run: RunDir, cfg: Config, run_id: str, labels, plan: ResourcePlan, pg,
                       collector: Optional[str] = None,
                       max_width: Optional[int] = None) -> dict[tuple[int, ...], ray.actor.ActorHandle]:
    """One named actor per pack of labels (one label each unless the plan packs them), bundle i of
    the placement group for pack i. `max_width` caps what model.width auto may choose (the disk's room)."""
    remote_trainer = ray.remote(LabelTrainer)
    return {
        pack: remote_trainer.options(
            name=label_actor(run_id, pack),
            namespace=NAMESPACE,
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,
            max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_restarts,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(run.location, cfg.to_dict(), list(pack), run_id, plan.torch_threads, collector, max_width=max_width)
        for i, pack in enumerate(plan.packs(labels))
    }


def _absolute_paths(cfg: Config) -> Config:
    """Actors on other nodes resolve relative paths against their own working directory:
    hand them absolute ones (which must be on a shared file system on a multi-node cluster;
    a store URI needs none)."""
    cfg = cfg.model_copy(deep=True)
    # abspath, not resolve: a symlink stays a symlink, so errors name what the user wrote
    if not storage.is_uri(cfg.run.storage):
        cfg.run.storage = os.path.abspath(os.path.expanduser(cfg.run.storage))
    if cfg.dataset.root is not None:
        cfg.dataset.root = os.path.abspath(os.path.expanduser(cfg.dataset.root))
    return cfg


# Settings a resumed run may change; anything else must match the checkpoints.
_RESUMABLE = {"run", "resources", "metrics", "max_restarts",
              "train.budget_s", "train.max_steps", "train.checkpoint_every_s", "train.keep_checkpoints",
              "train.log_every_s", "train.amp", "dataset.root", "dataset.download"}


def check_resume_compatible(saved: Config, cfg: Config) -> None:
    """Resuming with another model, data or optimiser would fail deep inside torch: say which field."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    old, new = flat(saved.to_dict()), flat(cfg.to_dict())
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in _RESUMABLE and k.split(".")[0] not in _RESUMABLE]
    if changed:
        raise ConfigError(
            "run.id names an existing run whose checkpoints were trained with other settings: "
            + ", ".join(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in changed)
            + ". Use a new run.id, or resume with the saved values."
        )


def with_chosen_width(run: RunDir, cfg: Config) -> Config:
    """`cfg` with model.width auto replaced by the width `run` chose (kept in its config.yaml), once it
    has: a resumed run is never timed again, and a comparison's baseline gets its ensemble's width."""
    width = recorded_width(run) if cfg.model.width == "auto" else None
    if width is None:
        return cfg
    logger.info("model.width auto: %d, the width %s chose", width, run.path.name)
    cfg = cfg.model_copy(deep=True)
    cfg.model.width = width
    return cfg


def _check_metrics_inputs(cfg: Config, evaluate: bool) -> None:
    """A missing Inception weights file should stop the run before training, not after it."""
    if evaluate and cfg.metrics.feature_extractor == "inception":
        resolve_inception_weights(cfg.metrics.feature_extractor_weights_path,
                                  download=cfg.metrics.download_weights)


def _refuse_live_run(run_id: str) -> None:
    """A second driver for a run whose actors are alive on this cluster would train every label twice."""
    alive = live_actors(run_id)
    if alive:
        raise ConfigError(f"run {run_id} is already running on this cluster ({len(alive)} of its actors are alive, "
                          f"e.g. {alive[0]}; `wcgan status --run {run_id}` shows them). Wait for it, or stop it "
                          f"first, or use another run.id.")


def start_collector(run: RunDir, run_id: str, labels):
    """The run's coordinator; Ray restarts it when it dies, and it rebuilds its view from the run directory."""
    storage.remove(run.started)  # this driver's labels meet at a fresh start line
    return ray.remote(Collector).options(
        name=collector_actor(run_id), namespace=NAMESPACE, num_cpus=0, max_restarts=-1, max_task_retries=3,
        # An async actor: every label waits at the start line in one call, and each holds a slot.
        max_concurrency=len(labels) + 32,
    ).remote(run.location, list(labels), logging.getLevelName(logger.getEffectiveLevel()))


def train(cfg: Config, address: Optional[str] = None, evaluate: Optional[bool] = None) -> RunResult:
    """Validate, plan, place, train every label at once, collect. Bad input fails before the run
    directory exists; a label that fails does not stop the others (RunFailed names it at the end)."""
    t_start = time.monotonic()
    marks = {"command": _command_started()}
    cfg = _absolute_paths(cfg)
    check_storage(cfg.run.storage)
    do_eval = cfg.metrics.enabled if evaluate is None else evaluate
    info: DatasetInfo = describe(cfg.dataset)
    # No 1-billion-parameter surprise on the actors (model.width auto: its widest candidate under the cap).
    check_model_size(largest_model(cfg.model, info.channels, info.image_size), info.channels, info.image_size)
    disk = check_run_disk(cfg, info.channels, info.image_size, len(info.labels))  # a full disk fails labels for good
    run_id = new_run_id(cfg)
    run = RunDir(join(cfg.run.storage, run_id))
    resuming = run.exists()
    if resuming:
        cfg = with_chosen_width(run, cfg)
        check_resume_compatible(load_config(run.config), cfg)
    _check_metrics_inputs(cfg, do_eval)
    marks["driver_ready"] = time.time()
    connect(address)
    marks["ray_up"] = time.time()
    _refuse_live_run(run_id)
    plan = plan_resources(len(info.labels), alive_nodes(), cfg.resources)
    logger.info("run %s: %s %dx%dx%d, %d labels, budget %gs per label; %s", run_id, info.name, info.image_size,
                info.image_size, info.channels, len(info.labels), cfg.train.budget_s, plan.describe())

    existed = resuming or run.path.exists()
    lock = RunLock(run, ray_address=ray.get_runtime_context().gcs_address)
    pg = None
    actors: dict[tuple[int, ...], ray.actor.ActorHandle] = {}
    collector = None

    def release() -> None:
        """Free the label actors' devices and the bundles (idempotent)."""
        nonlocal pg
        for a in actors.values():
            ray.kill(a, no_restart=True)
        actors.clear()
        if pg is not None:
            remove_placement_group(pg)
            pg = None

    try:
        lock.acquire()
        pg = place(plan, run_id, cfg.resources.placement_timeout_s)
        write_text(run.config, dump_config(cfg))
        if resuming:
            logger.info("resuming %s: labels continue from their latest checkpoints", run.location)
        collector = start_collector(run, run_id, info.labels)
        actors.update(start_label_actors(run, cfg, run_id, info.labels, plan, pg, collector_actor(run_id),
                                         max_width=disk.width))
        supervisor = Supervisor(cfg, actors, collector, started=lambda: run.has(run.started),  # removes finished actors
                                startup_marks=marks,
                                image_size=info.image_size)
        outcome = supervisor.run()
        supervisor.wait_for_exits()
        if outcome.user_errors and not outcome.summaries and not run.has_checkpoints(info.labels):
            raise next(iter(outcome.user_errors.values()))  # bad data and nothing trained: a user error, exit 2
        release()  # scoring needs none of the label actors' devices
        summaries = [outcome.summaries[k] for k in sorted(outcome.summaries)]
        outputs = {"summary": str(write_summary(run, summaries))} if summaries else {}
        do_eval = do_eval and not outcome.failures  # a partial ensemble is scored after the resume
        logger.info("%s; collecting%s", "all labels done" if not outcome.failures else
                    f"{len(summaries)} of {len(info.labels)} labels done", " and scoring the ensemble" if do_eval else "")
        if summaries:
            outputs.update(_finalize(run, do_eval))
        if outcome.failures:
            raise RunFailed(
                f"{len(outcome.failures)} of {len(info.labels)} labels failed: "
                + "; ".join(f"label {k}: {msg}" for k, msg in sorted(outcome.failures.items()))
                + f". The other labels finished; checkpoints are kept in {run.location}. Fix the cause and re-run "
                  f"the same command with --set run.id={run_id} to resume (finished labels are not retrained)."
            )
        logger.info("run directory: %s", run.location)
        return RunResult(run.path, plan, summaries, outputs, time.monotonic() - t_start)
    except (ConfigError, KeyboardInterrupt):
        # Bad input or an interrupt before any work was saved: leave no half-written run (only ours:
        # a driver refused by another's lock must not touch that run's directory).
        release()  # first, so no actor writes a checkpoint into the directory being removed
        ours = lock.held
        lock.release()
        if ours and not existed and not run.has_checkpoints(info.labels):
            run.remove()
        raise
    finally:
        release()
        if collector is not None:
            ray.kill(collector, no_restart=True)
        lock.release()


_trained_before = False


def _command_started() -> float:
    """When the user's command began: this process's start for its first run, else now (a
    comparison trains several runs in one process)."""
    global _trained_before
    first, _trained_before = not _trained_before, True
    return started_unix() if first else time.time()


SUMMARY_COLUMNS = ["label", "steps", "elapsed_s", "steps_per_s", "images_per_s", "critic_loss",
                   "generator_loss", "wasserstein", "restarts", "device", "resumed_from_step", "first_step_unix",
                   "labels_in_actor", "peak_gpu_mb"]


def write_summary(run: RunDir, summaries: list[dict]) -> Path:
    """summary.csv: one row per finished label, from the summaries the label actors returned."""
    frame = pd.DataFrame(summaries, columns=SUMMARY_COLUMNS).sort_values("label")
    return write_csv(frame, run.summary_csv)


def score_on_cluster(run: RunDir, address: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict:
    """`wcgan evaluate` against a cluster: the end-of-run scoring task, on its own."""
    connect(address)
    return _finalize(run, True, overrides)


def _finalize(run: RunDir, evaluate: bool, overrides: Optional[list[str]] = None) -> dict:
    """The sample grid and, if asked, the scores, in a task holding a GPU (or a node's CPUs) now that
    the label actors are gone; a failure here loses no training, so say how to redo it."""
    res = plan_scoring(alive_nodes())
    logger.info("scoring with %s", fmt_resources(res["num_gpus"], res["num_cpus"]))
    task = ray.remote(finalize_run).options(**res, max_retries=0)
    try:
        outputs = ray.get(task.remote(run.location, evaluate, threads=int(res["num_cpus"]),
                                      log_level=logging.getLevelName(logger.getEffectiveLevel()), overrides=overrides))
        return {k: v for k, v in outputs.items() if k in ("grid", "results", "report")}
    except ray.exceptions.RayError as err:
        raise RunFailed(f"every label finished, but scoring failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[-1] if str(err).strip() else err!r}). Training is kept in "
                        f"{run.location}; `wcgan evaluate --run {run.location}` scores it again.") from err


__all__ = ["train", "RunResult", "new_run_id"]
