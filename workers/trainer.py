"""LabelTrainer: the Ray actor that trains one label's WGAN-GP pair under a wall-clock budget.

Plain class; the driver wraps it with ``ray.remote`` so it can also be driven
in-process. Heavy set-up happens in :meth:`run`, not ``__init__``: when Ray
restarts a dead actor (``max_restarts``) and retries ``run`` on it
(``max_task_retries``), the retry reloads the latest checkpoint and trains
only for the budget that is left.
"""

from __future__ import annotations

import csv
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from orchestrator.config import Config
from workers import checkpoint
from workers.data import load_label
from workers.wgan_gp import WGANGP, pick_device

HISTORY_FIELDS = ("step", "elapsed_s", "critic_loss", "generator_loss", "wasserstein",
                  "gradient_penalty", "images_per_s", "restarts")


class LabelTrainer:
    def __init__(self, run_dir: str, cfg: dict, label: int, run_id: str, threads: int = 1,
                 collector_name: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.cfg = Config.model_validate(cfg)
        self.label = label
        self.run_id = run_id
        self.threads = threads
        # Looked up by name rather than passed as a handle: a restarted actor finds the
        # collector again without Ray keeping constructor arguments alive for it.
        self.collector_name = collector_name
        self._collector = None

    # ------------------------------------------------------------------ info

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

    def _restarts_so_far(self, restored: Optional[dict]) -> int:
        previous = int(restored["restarts"]) if restored else 0
        try:
            import ray

            with warnings.catch_warnings():  # Ray warns about its own internal use of actor_id
                warnings.simplefilter("ignore", DeprecationWarning)
                if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
                    return previous + 1
        except Exception:  # outside an actor
            pass
        return previous

    def _setup(self):
        torch.set_num_threads(self.threads)
        cfg = self.cfg
        images = load_label(cfg.dataset, self.label, "train")
        channels, size = images.shape[1], images.shape[2]
        device = pick_device()
        gan = WGANGP(cfg.model, cfg.train, images, channels, size, device, seed=cfg.train.seed * 1000 + self.label)
        restored = None
        latest = checkpoint.latest_checkpoint(self.run_dir, self.label)
        if latest is not None:
            restored = checkpoint.load(latest, map_location=device)
            gan.load_state_dict(restored["state"])
        return gan, restored, channels, size

    def run(self) -> dict:
        cfg, train = self.cfg, self.cfg.train
        load_start = time.monotonic()
        try:
            gan, restored, channels, size = self._setup()
        except BaseException as err:
            # Tell the collector, so the other labels do not wait for this one at the start line.
            self._report("failed", f"{type(err).__name__}: {err}")
            raise
        elapsed0 = float(restored["elapsed_s"]) if restored else 0.0
        restarts = self._restarts_so_far(restored)
        images_seen0 = int(restored["images_seen"]) if restored else 0
        start_step = gan.generator_steps
        telemetry = _telemetry(self.run_id, self.label, start_step)
        self._wait_for_all_labels()
        self._report("progress", {"step": start_step, "elapsed_s": elapsed0, "budget_s": train.budget_s,
                                  "restarts": restarts, "state": "loaded",
                                  "setup_s": time.monotonic() - load_start, "device": str(gan.device)})

        def save(elapsed: float) -> None:
            path = checkpoint.checkpoint_path(self.run_dir, self.label, gan.generator_steps)
            checkpoint.save_atomic({
                "label": self.label, "state": gan.state_dict(), "elapsed_s": elapsed,
                "model": cfg.model.model_dump(), "channels": channels, "image_size": size,
                "images_seen": images_seen0 + (gan.generator_steps - start_step) * gan.images_per_step,
                "restarts": restarts, "dataset": cfg.dataset.name,
            }, path)
            checkpoint.prune(self.run_dir, self.label, train.keep_checkpoints)
            self._report("checkpoint", {"step": gan.generator_steps, "elapsed_s": elapsed, "path": str(path)})

        history = History(checkpoint.label_dir(self.run_dir, self.label) / "history.csv", keep_up_to=start_step)
        t0 = time.monotonic()
        last_log = last_ckpt = t0
        steps_at_log = start_step
        stats = None

        def elapsed_now() -> float:
            return elapsed0 + (time.monotonic() - t0)

        first_step_unix = None
        while elapsed_now() < train.budget_s and (train.max_steps is None or gan.generator_steps < train.max_steps):
            stats = gan.step()
            if first_step_unix is None:
                first_step_unix = time.time()
            now = time.monotonic()
            if now - last_log >= train.log_every_s:
                rate = (gan.generator_steps - steps_at_log) * gan.images_per_step / (now - last_log)
                row = self._log(history, telemetry, gan.generator_steps, elapsed_now(), stats, rate, restarts)
                self._report("progress", row)
                last_log, steps_at_log = now, gan.generator_steps
            if now - last_ckpt >= train.checkpoint_every_s:
                save(elapsed_now())
                last_ckpt = time.monotonic()

        elapsed = elapsed_now()
        trained_s = elapsed - elapsed0
        images_per_s = (gan.generator_steps - start_step) * gan.images_per_step / max(trained_s, 1e-9)
        final = {"step": gan.generator_steps, "elapsed_s": elapsed, "restarts": restarts, "images_per_s": images_per_s}
        if stats is not None:
            final.update(self._log(history, telemetry, gan.generator_steps, elapsed, stats, images_per_s, restarts))
        save(elapsed)
        summary = {
            "label": self.label,
            "steps": gan.generator_steps,
            "elapsed_s": round(elapsed, 3),
            "steps_per_s": (gan.generator_steps - start_step) / max(trained_s, 1e-9),
            "images_per_s": images_per_s,
            "critic_loss": final.get("critic_loss"),
            "generator_loss": final.get("generator_loss"),
            "wasserstein": final.get("wasserstein"),
            "restarts": restarts,
            "device": str(gan.device),
            "resumed_from_step": start_step if restored else None,
            "first_step_unix": first_step_unix,
        }
        self._report("done", summary)
        return summary

    # ------------------------------------------------------------------ reporting

    def _log(self, history, telemetry, step, elapsed, stats, rate, restarts) -> dict:
        row = {"step": step, "elapsed_s": round(elapsed, 3), **stats.floats(),
               "images_per_s": rate, "restarts": restarts}
        history.append(row)
        if telemetry is not None:
            telemetry.record(step, {**stats.floats(), "images_per_s": rate,
                                    "budget_left_s": max(0.0, self.cfg.train.budget_s - elapsed)})
        return {**row, "budget_s": self.cfg.train.budget_s, "state": "training"}

    @property
    def collector(self):
        if self._collector is None and self.collector_name is not None:
            import ray

            self._collector = ray.get_actor(self.collector_name)
        return self._collector

    def _wait_for_all_labels(self, poll_s: float = 0.5) -> None:
        """Start the budget clock only when every label is loaded and ready.

        Ray starts actor processes a few at a time (about one per CPU), so on a busy node
        the first labels would otherwise train while the last ones still import torch, and
        the labels would not share the machine equally within the budget.
        """
        if self.collector is None:
            return
        import ray

        ray.get(self.collector.mark_ready.remote(self.label))
        while not ray.get(self.collector.all_ready.remote()):
            time.sleep(poll_s)

    def _report(self, kind: str, payload: dict) -> None:
        if self.collector is not None:
            # Fire and forget: a slow collector must never stall training.
            getattr(self.collector, f"report_{kind}").remote(self.label, payload)


def _telemetry(run_id: str, label: int, start_step: int):
    import ray

    if not ray.is_initialized():
        return None
    from workers.telemetry import LabelMetrics

    return LabelMetrics(run_id, label, start_step)


class History:
    """history.csv, appended line by line so a crash loses at most the current interval."""

    def __init__(self, path: Path, keep_up_to: int = 0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            # After a restart, drop rows logged past the checkpoint we resumed from: those
            # steps are trained again and would otherwise appear twice.
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_up_to]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        self._new = not path.exists()

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            if self._new:
                writer.writeheader()
                self._new = False
            writer.writerow(row)
