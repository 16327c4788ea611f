"""Run lifecycle: validate, plan, place, train every label at once, collect.

Everything that can fail on bad input (config, data, placement) fails before
the run directory is created, so a rejected run leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core.config import Config, dump_config, load_config
from core.errors import ConfigError, PlacementError, RunFailed
from core.rundir import RunDir, write_text
from metrics.collector import Collector
from metrics.inception import resolve_inception_weights
from orchestrator.cluster import alive_nodes, connect
from orchestrator.progress import format_progress
from orchestrator.resources import ResourcePlan, plan_resources
from workers.data import DatasetInfo, describe
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


def actor_name(run_id: str, label: int) -> str:
    return f"wcgan/{run_id}/label-{label}"


def collector_name(run_id: str) -> str:
    return f"wcgan/{run_id}/collector"


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


def start_label_actors(run_dir: Path, cfg: Config, run_id: str, labels, plan: ResourcePlan, pg,
                       collector_name: Optional[str] = None) -> list:
    """One named actor per label, bundle i of the placement group for label i."""
    remote_trainer = ray.remote(LabelTrainer)
    return [
        remote_trainer.options(
            name=actor_name(run_id, label),
            num_cpus=plan.cpus_per_label,
            num_gpus=plan.gpus_per_label,
            max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_restarts,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(str(run_dir), cfg.to_dict(), label, run_id, plan.torch_threads, collector_name)
        for i, label in enumerate(labels)
    ]


def _absolute_paths(cfg: Config) -> Config:
    """Actors on other nodes resolve relative paths against their own working directory:
    hand them absolute ones (which must be on a shared file system on a multi-node cluster)."""
    cfg = cfg.model_copy(deep=True)
    cfg.run.storage = str(Path(cfg.run.storage).expanduser().resolve())
    if cfg.dataset.root is not None:
        cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
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


def _check_metrics_inputs(cfg: Config, evaluate: bool) -> None:
    """A missing Inception weights file should stop the run before training, not after it."""
    if evaluate and cfg.metrics.feature_extractor == "inception":
        resolve_inception_weights(cfg.metrics.feature_extractor_weights_path,
                                  download=cfg.metrics.download_weights)


def train(cfg: Config, address: Optional[str] = None, evaluate: Optional[bool] = None) -> RunResult:
    t_start = time.monotonic()
    cfg = _absolute_paths(cfg)
    do_eval = cfg.metrics.enabled if evaluate is None else evaluate
    info: DatasetInfo = describe(cfg.dataset)
    run_id = new_run_id(cfg)
    run = RunDir(Path(cfg.run.storage) / run_id)
    run_dir = run.path
    resuming = run.config.exists()
    if resuming:
        check_resume_compatible(load_config(run.config), cfg)
    _check_metrics_inputs(cfg, do_eval)
    connect(address)
    plan = plan_resources(len(info.labels), alive_nodes(), cfg.resources)
    logger.info("run %s: %s %dx%dx%d, %d labels, budget %gs per label; %s", run_id, info.name, info.image_size,
                info.image_size, info.channels, len(info.labels), cfg.train.budget_s, plan.describe())

    pg = place(plan, run_id, cfg.resources.placement_timeout_s)
    actors: list = []
    collector = None

    def release() -> None:
        """Free the label actors' devices and the bundles (idempotent)."""
        nonlocal pg
        for a in actors:
            ray.kill(a, no_restart=True)
        actors.clear()
        if pg is not None:
            remove_placement_group(pg)
            pg = None

    created_dir = not run_dir.exists()
    try:
        write_text(run.config, dump_config(cfg))
        if resuming:
            logger.info("resuming %s: labels continue from their latest checkpoints", run_dir)
        collector = ray.remote(Collector).options(
            name=collector_name(run_id), num_cpus=0, max_restarts=0,
        ).remote(str(run_dir), list(info.labels), logging.getLevelName(logger.getEffectiveLevel()))
        actors.extend(start_label_actors(run_dir, cfg, run_id, info.labels, plan, pg, collector_name(run_id)))
        pending = {a.run.remote(): label for a, label in zip(actors, info.labels)}
        summaries, failures = [], {}
        t_train = time.monotonic()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=cfg.train.log_every_s)
            for ref in done:
                label = pending.pop(ref)
                try:
                    summaries.append(ray.get(ref))
                except ray.exceptions.RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    if isinstance(cause, ConfigError):
                        raise cause from None  # bad data found by the actor: a user error, not a crash
                    failures[label] = str(err).splitlines()[-1] if str(err) else repr(err)
                    collector.report_failed.remote(label, failures[label])
                except ray.exceptions.RayActorError as err:
                    failures[label] = f"actor died: {err}".splitlines()[0]
                    collector.report_failed.remote(label, failures[label])
            logger.info(format_progress(ray.get(collector.progress.remote()), cfg.train.budget_s,
                                        time.monotonic() - t_train))
        if failures:
            raise RunFailed(
                f"{len(failures)} of {len(info.labels)} labels failed after {cfg.max_restarts} restarts: "
                + "; ".join(f"label {k}: {msg}" for k, msg in sorted(failures.items()))
                + f". Checkpoints are kept in {run_dir}; re-run with --set run.id={run_id} to resume."
            )
        release()  # scoring needs none of the label actors' GPUs
        logger.info("all labels done; collecting" + (" and scoring the ensemble" if do_eval else ""))
        summaries.sort(key=lambda s: s["label"])
        outputs = ray.get(collector.finalize.remote(summaries, evaluate=do_eval))
        result = RunResult(run_dir, plan, summaries, outputs, time.monotonic() - t_start)
        logger.info("run directory: %s", run_dir)
        return result
    except (ConfigError, KeyboardInterrupt):
        # Bad input or an interrupt before any work was saved: leave no half-written run.
        release()  # first, so no actor writes a checkpoint into the directory being removed
        if created_dir and not run.has_checkpoints(info.labels):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        release()
        if collector is not None:
            ray.kill(collector, no_restart=True)


__all__ = ["train", "RunResult", "actor_name", "collector_name", "new_run_id"]
