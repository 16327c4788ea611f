"""LabelTrainer: the Ray actor that trains one label's WGAN-GP pair under a wall-clock budget.

A plain class; the driver wraps it with ``ray.remote`` (tests also drive it in-process).
Heavy set-up happens in :meth:`run`, not ``__init__``: when Ray restarts a dead actor
(``max_restarts``) and retries ``run`` on it (``max_task_retries``), the retry reloads the
latest checkpoint and trains only for the budget that is left.

    run():  load this label's images -> build the pair -> resume from the latest checkpoint
            -> wait at the start line -> BudgetedLoop (history, metrics, progress, checkpoints)
            -> summary
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Optional

import torch

from core.actors import NAMESPACE
from core.config import Config
from core.logs import configure as configure_logging
from core.rundir import History, RunDir, write_text
from workers.checkpoint import Checkpointer, Resume, restore
from workers.data import load_label
from workers.gan import WGANGP, pick_device, use_fast_fixed_shape_kernels
from workers.loop import BudgetedLoop

logger = logging.getLogger(__name__)


class LabelTrainer:
    def __init__(self, run_dir: str, cfg: dict, label: int, run_id: str, threads: int = 1,
                 collector_name: Optional[str] = None):
        configure_logging()  # this process's messages reach the driver's terminal through Ray
        self.run = RunDir(run_dir)
        self.cfg = Config.model_validate(cfg)
        self.label = label
        self.run_id = run_id
        self.threads = threads
        # Looked up by name rather than passed as a handle: a restarted actor finds the
        # collector again without Ray keeping constructor arguments alive for it.
        self.collector_name = collector_name
        self._collector = None

    def placement(self) -> dict:
        """Where Ray put this actor: node, GPU ids it was given, process."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "label": self.label,
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ training

    def _setup(self) -> tuple[WGANGP, Resume]:
        torch.set_num_threads(self.threads)
        images = load_label(self.cfg.dataset, self.label, "train")
        device = pick_device()
        use_fast_fixed_shape_kernels(device)
        pair = WGANGP.build(self.cfg.model, self.cfg.train, images, device, seed=self.cfg.train.seed * 1000 + self.label)
        for stale in self.run.sweep_temporaries(self.label):  # a killed predecessor's half-written files
            logger.info("label %d: removed %s", self.label, stale.name)
        return pair, restore(self.run, self.label, pair)

    def run(self) -> dict:
        train = self.cfg.train
        load_start = time.monotonic()
        # First word of this incarnation: the driver stops reading the last one's (maybe stale) progress.
        self._report("progress", {"state": "setting up"})
        try:
            pair, resume = self._setup()
        except BaseException as err:
            # Tell the collector, so the other labels do not wait for this one at the start line.
            self._report("failed", f"{type(err).__name__}: {err}")
            raise
        restarts = self._count_restarts(resume)
        telemetry = _telemetry(self.run_id, self.label, resume.start_step)
        history = History(self.run.history(self.label), keep_up_to=resume.start_step)
        checkpointer = Checkpointer(self.run, self.label, pair, self.cfg, resume, restarts, [self.label],
                                    pair.images_per_step)
        self._wait_for_all_labels()
        self._report("progress", {"step": resume.start_step, "elapsed_s": resume.elapsed_s, "budget_s": train.budget_s,
                                  "restarts": restarts, "state": "loaded", "resumed_from_s": resume.elapsed_s,
                                  "setup_s": time.monotonic() - load_start, "device": str(pair.device)})

        def on_log(row: dict) -> None:
            row = {**row, "restarts": restarts}
            history.append(row)
            if telemetry is not None:
                telemetry.record(row["step"], {**row, "budget_left_s": max(0.0, train.budget_s - row["elapsed_s"])})
            self._report("progress", {**row, "budget_s": train.budget_s, "state": "training"})

        def on_checkpoint(elapsed_s: float, final: bool) -> None:
            path = checkpointer.save(elapsed_s, final)
            self._report("checkpoint", {"step": pair.generator_steps, "elapsed_s": elapsed_s, "path": str(path)})

        loop = BudgetedLoop(pair, train.budget_s, max_steps=train.max_steps, elapsed0=resume.elapsed_s,
                            log_every_s=train.log_every_s, checkpoint_every_s=train.checkpoint_every_s)
        result = loop.run(on_log, on_checkpoint)
        last = result.last or {}
        summary = {
            "label": self.label,
            "steps": result.steps,
            "elapsed_s": round(result.elapsed_s, 3),
            # Over all the training kept in checkpoints, so a resumed (or already finished) run
            # reports its real rate, not this session's alone.
            "steps_per_s": result.steps / result.elapsed_s if result.elapsed_s > 0 else 0.0,
            "images_per_s": checkpointer.images_seen / result.elapsed_s if result.elapsed_s > 0 else 0.0,
            "critic_loss": last.get("critic_loss"),
            "generator_loss": last.get("generator_loss"),
            "wasserstein": last.get("wasserstein"),
            "restarts": restarts,
            "device": str(pair.device),
            "resumed_from_step": resume.start_step if resume.path is not None else None,
            "first_step_unix": result.first_step_unix,
        }
        self._report("done", summary)
        return summary

    def _count_restarts(self, resume: Resume) -> int:
        """Restarts of this label over the whole run. Counted in a file as well as in checkpoints:
        two deaths within one checkpoint interval must count twice."""
        path = self.run.owner_dir(self.label) / ".restarts"
        try:
            counted = int(path.read_text())
        except (OSError, ValueError):
            counted = 0
        restarts = max(resume.restarts, counted) + (1 if _was_restarted() else 0)
        write_text(path, str(restarts))
        return restarts

    # ------------------------------------------------------------------ the collector

    @property
    def collector(self):
        if self._collector is None and self.collector_name is not None:
            import ray

            self._collector = ray.get_actor(self.collector_name, namespace=NAMESPACE)
        return self._collector

    def _wait_for_all_labels(self, retry_s: float = 1.0) -> None:
        """Start the budget clock only when every label is loaded and ready.

        Ray starts actor processes a few at a time (about one per CPU), so on a busy node
        the first labels would otherwise train while the last ones still import torch, and
        the labels would not share the machine equally within the budget. One call, answered
        when the line opens; if the collector dies meanwhile, Ray restarts it and we ask again.
        """
        if self.collector is None:
            return
        import ray

        while True:
            try:
                ray.get(self.collector.wait_for_start.remote(self.label))
                return
            except ray.exceptions.RayActorError:
                logger.warning("label %d: the collector died at the start line; asking its successor", self.label)
                time.sleep(retry_s)

    def _report(self, kind: str, payload) -> None:
        if self.collector is not None:
            # Fire and forget: a slow collector must never stall training.
            getattr(self.collector, f"report_{kind}").remote(self.label, payload)


def _was_restarted() -> bool:
    """Whether Ray re-created this actor after it died (False outside an actor)."""
    try:
        import ray

        with warnings.catch_warnings():  # Ray warns about its own internal use of actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # outside an actor
        return False


def _telemetry(run_id: str, label: int, start_step: int):
    import ray

    if not ray.is_initialized():
        return None
    from workers.telemetry import LabelMetrics  # deferred: ray.util.metrics, only inside a Ray actor

    return LabelMetrics(run_id, label, start_step)
