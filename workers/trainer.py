"""LabelTrainer: the Ray actor that trains its labels' WGAN-GP pairs under a wall-clock budget.

Usually one label per actor. Where a GPU would otherwise hold more than
``resources.max_actors_per_gpu`` processes, an actor trains several labels in turn
(:class:`workers.pack.Pack`), each with its own checkpoints, history, metrics and progress rows,
exactly as if it had a process of its own.

A plain class; the driver wraps it with ``ray.remote`` (tests also drive it in-process).
Heavy set-up happens in :meth:`run`, not ``__init__``: when Ray restarts a dead actor
(``max_restarts``) and retries ``run`` on it (``max_task_retries``), the retry reloads the
latest checkpoints and trains only for the budget that is left.

    run():  per label: load its images -> build its pair -> resume from its latest checkpoint
            -> wait at the start line -> BudgetedLoop over the pack (history, metrics, progress,
            checkpoints, per label) -> summaries
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from core.actors import NAMESPACE
from core.config import Config
from core.devices import hide_unassigned_gpus, visible_gpus
from core.errors import ConfigError
from core.logs import configure as configure_logging
from core.process import started_unix
from core import storage
from core.rundir import History, RunDir, write_text
from workers.checkpoint import Checkpointer, Resume, restore
from workers.data import load_label
from workers.gan import WGANGP, pick_device, use_fast_fixed_shape_kernels
from workers.loop import BudgetedLoop
from workers.pack import Pack
from workers.preflight import candidate_widths, choose_width, min_generator_steps, projected_steps, recorded_width

logger = logging.getLogger(__name__)


@dataclass
class Lane:
    """One label's share of an actor: its pair and everything written in its name."""

    label: int
    pair: WGANGP
    resume: Resume
    restarts: int
    history: History
    checkpointer: Checkpointer
    telemetry: object = None


class LabelTrainer:
    def __init__(self, run_dir: str, cfg: dict, labels: Union[int, Sequence[int]], run_id: str, threads: int = 1,
                 collector_name: Optional[str] = None, max_width: Optional[int] = None):
        self.up_unix = time.time()  # this module (torch included) is imported: the process is up
        hide_unassigned_gpus()  # before anything can touch CUDA: only the GPUs Ray gave this actor
        configure_logging()  # this process's messages reach the driver's terminal through Ray
        self.rundir = RunDir(run_dir)
        self.cfg = Config.model_validate(cfg)
        self.labels = [int(labels)] if isinstance(labels, int) else [int(k) for k in labels]
        self.run_id = run_id
        self.threads = threads
        # Looked up by name rather than passed as a handle: a restarted actor finds the
        # collector again without Ray keeping constructor arguments alive for it.
        self.collector_name = collector_name
        self._collector = None
        self._loaded: dict[int, torch.Tensor] = {}  # width auto: images loaded before their lanes
        self.max_width = max_width  # model.width auto: at most this (the widest whose run fits the disk)

    def placement(self) -> dict:
        """Where Ray put this actor: node, GPU ids it was given, what CUDA may see, process."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "labels": self.labels,
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
            "visible_gpus": visible_gpus(),
            "cuda_devices": torch.cuda.device_count(),  # what torch finds (no CUDA context is made)
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ training

    def _lane(self, label: int, device: torch.device) -> Lane:
        cfg = self.cfg
        images = self._images(label)
        pair = WGANGP.build(cfg.model, cfg.train, images, device, seed=cfg.train.seed * 1000 + label)
        for stale in self.rundir.sweep_temporaries(label):  # a killed predecessor's half-written files
            logger.info("label %d: removed %s", label, stale.name)
        resume = restore(self.rundir, label, pair)
        restarts = self._count_restarts(label, resume)
        return Lane(label, pair, resume, restarts,
                    History(self.rundir.history(label), keep_up_to=resume.start_step),
                    Checkpointer(self.rundir, label, pair, cfg, resume, restarts, [label], pair.images_per_step),
                    _telemetry(self.run_id, label, resume.start_step))

    def _device(self) -> torch.device:
        torch.set_num_threads(self.threads)
        device = pick_device()
        use_fast_fixed_shape_kernels(device)
        return device

    def _images(self, label: int) -> torch.Tensor:
        """The label's training images: loaded now, or handed over from width auto's timing, which loads
        them before the lanes exist."""
        images = self._loaded.pop(label, None)
        return load_label(self.cfg.dataset, label, "train") if images is None else images

    def _setup(self) -> tuple[dict[int, Lane], dict[int, ConfigError]]:
        """Every label's lane. Bad data of one label (a DataError naming the file) fails that label
        alone; the pack trains the others. Anything else fails the whole actor."""
        device = self._device()
        lanes: dict[int, Lane] = {}
        bad: dict[int, ConfigError] = {}
        for label in self.labels:
            try:
                lanes[label] = self._lane(label, device)
            except ConfigError as err:
                if len(self.labels) == 1:
                    raise
                bad[label] = err
                self._report_failed(label, f"{type(err).__name__}: {err}")
        if len(self.labels) == 1 and not lanes:
            raise next(iter(bad.values()))
        return lanes, bad

    def run(self) -> dict:
        """Train every label of this actor. Returns ``{"summaries": {label: summary}, "failures":
        {label: DataError}}``; failures are labels whose data could not be loaded."""
        train = self.cfg.train
        load_start = time.monotonic()
        # First word of this incarnation: the driver stops reading the last one's (maybe stale) progress.
        self._report("progress", {k: {"state": "setting up", "up_unix": self.up_unix, "spawned_unix": started_unix()}
                                  for k in self.labels})
        try:
            self._resolve_width()
            lanes, bad = self._setup()
            loaded_unix = time.time()
        except BaseException as err:
            # Tell the collector, so the other labels do not wait for these at the start line.
            for label in self.labels:
                self._report_failed(label, f"{type(err).__name__}: {err}")
            raise
        if not lanes:  # every label of the pack had bad data: each failure names its own file
            return {"summaries": {}, "failures": bad}
        self._wait_for_all_labels(list(lanes))
        # Pre-flight: what the budget buys, from a few steps that are then undone. Timed after the start
        # line, while every label does the same, so the machine is as busy as in training; the budget
        # clock starts after them. A pack's labels share one model shape: one is timed.
        round_s = _time_steps(next(iter(lanes.values())).pair) * len(lanes)
        setup_s = time.monotonic() - load_start
        self._report("progress", {k: {"step": ln.resume.start_step, "elapsed_s": ln.resume.elapsed_s,
                                      "budget_s": train.budget_s, "restarts": ln.restarts, "state": "loaded",
                                      "resumed_from_s": ln.resume.elapsed_s, "setup_s": setup_s,
                                      "device": str(ln.pair.device), "step_s": round_s,
                                      "width": self.cfg.model.width, "loaded_unix": loaded_unix,
                                      "training_unix": time.time(),
                                      "projected_steps": ln.pair.generator_steps + projected_steps(
                                          round_s, train.budget_s - ln.resume.elapsed_s)}
                                  for k, ln in lanes.items()})
        # Labels that finished before this session (a pack re-formed on resume) are not trained again.
        done = {k: ln for k, ln in lanes.items() if self._finished(ln)}
        lanes = {k: ln for k, ln in lanes.items() if k not in done}
        summaries = {k: self._summary(ln, ln.resume.elapsed_s, None, len(lanes) + len(done)) for k, ln in done.items()}
        if not lanes:
            self._report("done", summaries)
            return {"summaries": summaries, "failures": bad}
        pack = Pack({k: ln.pair for k, ln in lanes.items()}, {k: ln.resume.elapsed_s for k, ln in lanes.items()},
                    max_steps=train.max_steps)

        def on_log(row: dict) -> None:
            rows = {}
            for k, ln in lanes.items():
                if k not in pack.last:
                    continue  # waiting for the pack's clock: nothing new to say
                own = {**row, "step": ln.pair.generator_steps, **pack.last[k].floats(),
                       "elapsed_s": max(row["elapsed_s"], ln.resume.elapsed_s),
                       "images_per_s": row["images_per_s"] / len(lanes), "restarts": ln.restarts}
                ln.history.append(own)
                if ln.telemetry is not None:
                    ln.telemetry.record(own["step"], {**own, "budget_left_s": max(0.0, train.budget_s - own["elapsed_s"])})
                rows[k] = {**own, "budget_s": train.budget_s, "state": "training"}
            self._report("progress", rows)

        def on_checkpoint(elapsed_s: float, final: bool, mark_s: Optional[float]) -> None:
            if len(lanes) > 1:  # a pack's saves take a while: not a stall
                self._report("progress", {k: {"state": "checkpointing"} for k in lanes})
            notices = {}
            for k, ln in lanes.items():
                own_s = max(elapsed_s, ln.resume.elapsed_s)  # a label that waited keeps what it spent
                # A label still waiting for the pack's clock stands for its own time, not the mark.
                path = ln.checkpointer.save(own_s, final, mark_s=mark_s if own_s == elapsed_s else None)
                notices[k] = {"step": ln.pair.generator_steps, "elapsed_s": own_s, "path": str(path)}
            self._report("checkpoint", notices)

        def on_snapshot(elapsed_s: float, mark_s: Optional[float]) -> None:
            for ln in lanes.values():
                if elapsed_s >= ln.resume.elapsed_s:  # a label still waiting has nothing new to save
                    ln.checkpointer.save_snapshot(elapsed_s, mark_s)

        loop = BudgetedLoop(pack, train.budget_s, max_steps=train.max_steps, elapsed0=pack.elapsed0,
                            log_every_s=train.log_every_s, checkpoint_every_s=train.checkpoint_every_s,
                            marks_every_s=self.cfg.metrics.every_s)
        result = loop.run(on_log, on_checkpoint, on_snapshot)
        summaries.update({k: self._summary(ln, max(result.elapsed_s, ln.resume.elapsed_s), pack.last.get(k),
                                           len(pack.pairs), result.first_step_unix) for k, ln in lanes.items()})
        self._report("done", summaries)
        return {"summaries": summaries, "failures": bad}

    # ------------------------------------------------------------------ model.width: auto

    def _resolve_width(self) -> None:
        """model.width auto: the run's one width (sampling, scoring and resume rebuild one architecture
        from config.yaml), chosen once: a restarted actor, like a resumed run, reads it from there."""
        if self.cfg.model.width != "auto":
            return
        width = recorded_width(self.rundir)
        if width is None:
            pick = self._pick_width()
            if pick is None:
                return  # no label's data loads: each fails in _setup, naming its file
            width = pick if self.collector is None else int(self._ask_collector("agree_width", self.labels, pick))
        self.cfg.model.width = width

    def _pick_width(self) -> Optional[int]:
        """This actor's widest width whose projected steps reach the minimum for the resolution, else
        the narrowest; timed on a throwaway pair per probed width once every label of the run has
        loaded its data (the start line), so the device is as busy as in training."""
        device = self._device()
        for label in self.labels:
            try:
                self._loaded[label] = load_label(self.cfg.dataset, label, "train")
            except ConfigError:
                pass  # fails again in _setup: that label alone, or the actor when it trains only that one
        self._wait_for_all_labels(self.labels)
        if not self._loaded:
            return None
        # Batches are drawn at random, so any images time alike: one batch's worth is copied per probe.
        images = next(iter(self._loaded.values()))[: self.cfg.train.batch_size]
        size = int(images.shape[2])

        def seconds_per_step(width: int) -> float:
            try:
                pair = WGANGP.build(self.cfg.model.model_copy(update={"width": width}), self.cfg.train, images,
                                    device, seed=self.cfg.train.seed)
                return _seconds_per_step(pair, n=2)
            except torch.cuda.OutOfMemoryError:
                return math.inf  # does not fit beside the device's other labels

        widths = candidate_widths(self.cfg.model, int(images.shape[1]), size, self.max_width)
        width, projected = choose_width(widths, seconds_per_step, self.cfg.train.budget_s, min_generator_steps(size),
                                        labels=len(self._loaded))
        if device.type == "cuda":  # give the probes' memory back to the labels sharing the GPU
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        logger.debug("labels %s: model.width auto picks %d (about %d generator steps)", self.labels, width, projected)
        return width

    def _finished(self, lane: Lane) -> bool:
        train = self.cfg.train
        return lane.resume.elapsed_s >= train.budget_s or (
            train.max_steps is not None and lane.pair.generator_steps >= train.max_steps)

    def _summary(self, lane: Lane, elapsed: float, last_stats, labels_in_actor: int,
                 first_step_unix: Optional[float] = None) -> dict:
        last = last_stats.floats() if last_stats is not None else {}
        return {
            "label": lane.label,
            "steps": lane.pair.generator_steps,
            "elapsed_s": round(elapsed, 3),
            # Over all the training kept in checkpoints, so a resumed (or already finished) run
            # reports its real rate, not this session's alone.
            "steps_per_s": lane.pair.generator_steps / elapsed if elapsed > 0 else 0.0,
            "images_per_s": lane.checkpointer.images_seen / elapsed if elapsed > 0 else 0.0,
            "critic_loss": last.get("critic_loss"),
            "generator_loss": last.get("generator_loss"),
            "wasserstein": last.get("wasserstein"),
            "restarts": lane.restarts,
            "device": str(lane.pair.device),
            "resumed_from_step": lane.resume.start_step if lane.resume.path is not None else None,
            "first_step_unix": first_step_unix,
            "labels_in_actor": labels_in_actor,
            "peak_gpu_mb": _peak_gpu_mb(lane.pair.device, labels_in_actor),
        }

    def _count_restarts(self, label: int, resume: Resume) -> int:
        """Restarts of this label over the whole run. Counted in a file as well as in checkpoints:
        two deaths within one checkpoint interval must count twice."""
        path = self.rundir.owner_dir(label) / ".restarts"
        try:
            storage.pull(path)
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

    def _wait_for_all_labels(self, labels: list[int], retry_s: float = 1.0) -> None:
        """Start the budget clock only when every label is loaded and ready.

        Ray starts actor processes a few at a time (about one per CPU), so on a busy node
        the first labels would otherwise train while the last ones still import torch, and
        the labels would not share the machine equally within the budget. One call, answered
        when the line opens; if the collector dies meanwhile, Ray restarts it and we ask again.
        """
        if self.collector is not None:
            self._ask_collector("wait_for_start", labels, retry_s=retry_s)

    def _ask_collector(self, method: str, *args, retry_s: float = 1.0):
        """A call the collector answers when it can (the start line, the width); if it dies meanwhile,
        Ray restarts it and we ask again."""
        import ray

        while True:
            try:
                return ray.get(getattr(self.collector, method).remote(*args))
            except ray.exceptions.RayActorError:
                logger.warning("labels %s: the collector died during %s; asking its successor", self.labels, method)
                time.sleep(retry_s)

    def _report(self, kind: str, updates: dict[int, dict]) -> None:
        """One call per actor however many labels it trains: {label: payload}."""
        if self.collector is not None:
            # Fire and forget: a slow collector must never stall training.
            getattr(self.collector, f"report_{kind}").remote(updates)

    def _report_failed(self, label: int, error: str) -> None:
        if self.collector is not None:
            self.collector.report_failed.remote(label, error)


def _time_steps(pair: WGANGP, n: int = 3) -> float:
    """Seconds per generator step of `pair`, timed on steps that are then undone: networks,
    optimisers, step count and RNG are restored, so training is exactly as if none had run."""
    saved = copy.deepcopy(pair.state_dict())
    seconds = _seconds_per_step(pair, n)
    pair.load_state_dict(saved)
    return seconds


def _seconds_per_step(pair: WGANGP, n: int) -> float:
    """Seconds per generator step over `n` steps after one warm-up step (allocator, cuDNN autotuning)."""
    pair.step()
    t0 = time.monotonic()
    for _ in range(n):
        stats = pair.step()
    float(stats.critic_loss)  # waits for the device
    return (time.monotonic() - t0) / n


def _peak_gpu_mb(device: torch.device, labels: int) -> Optional[float]:
    """This label's share of the tensors its process held at peak (CUDA context not included)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20 / labels, 1)


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
