"""Collector: one actor per run that hears from every label actor; it coordinates, and scores nothing.

Label actors report progress, checkpoints and completion to it (fire and forget, one call per
actor for all its labels) and wait for each other at its start line; the driver polls
:meth:`progress` for its live table. Scoring is a task of its own with real resources
(:mod:`metrics.finalize`): this actor holds no CPU and no GPU.

It holds nothing that cannot be rebuilt: Ray restarts it when it dies (the driver asks for
``max_restarts=-1``), and a restarted collector reads each label's step and budget spent from
its latest checkpoint and whether the start line has opened from the run directory, while
the label actors keep training and their reports resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from core.devices import hide_unassigned_gpus, visible_gpus
from core.logs import configure as configure_logging
from core.rundir import RunDir, checkpoint_meta, write_text
from workers.preflight import record_width, recorded_width

logger = logging.getLogger(__name__)


class Collector:
    def __init__(self, run_dir: str, labels: list[int], log_level: Optional[str] = None):
        hide_unassigned_gpus()  # it asked for no GPU: nothing here may land on GPU 0 unreserved
        configure_logging(log_level)  # scoring logs from this process reach the driver's terminal
        self.run = RunDir(run_dir)
        self.labels = list(labels)
        self.state: dict[int, dict] = {k: self._restored_state(k) for k in self.labels}
        self.ready: set[int] = set()
        self.failed: set[int] = set()
        self._all_ready: Optional[asyncio.Event] = None  # made in the actor's event loop
        self.opened = self.run.has(self.run.started)  # a restart after the start line opened
        # model.width auto: each label's actor's pick, and the run's width once chosen (kept in config.yaml).
        self.width_picks: dict[int, int] = {}
        self.width: Optional[int] = recorded_width(self.run)
        self._width_chosen: Optional[asyncio.Event] = None

    def _restored_state(self, label: int) -> dict:
        latest = self.run.latest_checkpoint(label)
        if latest is None:
            return {"state": "starting", "step": 0}
        try:
            meta = checkpoint_meta(latest)
        except Exception:  # being replaced right now, or damaged: the label's next report says
            return {"state": "starting", "step": 0}
        return {"state": "restored", "step": int(latest.stem.split("-")[1]), "elapsed_s": meta.get("elapsed_s"),
                "restarts": meta.get("restarts", 0)}

    # ------------------------------------------------------------- reports from label actors

    # Each takes {label: payload}: an actor training several labels reports them in one call.

    def report_progress(self, updates: dict[int, dict]) -> None:
        now = time.time()
        for label, stats in updates.items():
            self.state[label] = {**self.state.get(label, {}), **stats, "updated": now}

    def report_checkpoint(self, updates: dict[int, dict]) -> None:
        for label, meta in updates.items():
            self.state[label] = {**self.state.get(label, {}), "last_checkpoint_step": meta["step"]}

    def report_done(self, updates: dict[int, dict]) -> None:
        for label, summary in updates.items():
            self.state[label] = {**self.state.get(label, {}), **summary, "step": summary["steps"], "state": "done"}

    def report_failed(self, label: int, error: str) -> None:
        self.failed.add(label)
        self.state[label] = {**self.state.get(label, {}), "state": "failed", "error": error}
        self._maybe_open()
        self._maybe_choose_width()

    # ------------------------------------------------------------- the start line

    async def wait_for_start(self, labels: int | list[int]) -> None:
        """Returns once every label has loaded its data or failed for good: one call per actor
        (for all of its labels), however long the wait. Stays open for restarted label actors,
        and across a restart of this collector (the opening is recorded in the run directory)."""
        if self._all_ready is None:
            self._all_ready = asyncio.Event()
        self.ready.update([labels] if isinstance(labels, int) else labels)
        self._maybe_open()
        if not self.opened:
            await self._all_ready.wait()

    def _maybe_open(self) -> None:
        if not self.opened and len(self.ready | self.failed) >= len(self.labels):
            self.opened = True
            try:
                write_text(self.run.started, f"{time.time()}\n")
            except OSError as err:  # a storage hiccup: the line opens all the same
                logger.warning("could not record the opened start line in %s (%s)", self.run.started, err)
        if self.opened and self._all_ready is not None:
            self._all_ready.set()

    # ------------------------------------------------------------- model.width: auto

    async def agree_width(self, labels: list[int], pick: int) -> int:
        """The run's width, once every label's actor has said its pick (the widest width whose projection
        reaches the minimum there) or failed: the narrowest pick, so the slowest actor's labels reach it too.
        Recorded in config.yaml before anyone hears it, so restarts (of actors or of this collector) reuse it."""
        if self._width_chosen is None:
            self._width_chosen = asyncio.Event()
        self.width_picks.update({k: int(pick) for k in labels})
        self._maybe_choose_width()
        if self.width is None:
            await self._width_chosen.wait()
        return self.width

    def _maybe_choose_width(self) -> None:
        if self.width is None and self.width_picks and len(set(self.width_picks) | self.failed) >= len(self.labels):
            width = min(self.width_picks.values())
            try:
                record_width(self.run, width)
            except OSError as err:  # a storage hiccup: this session goes on; a restarted actor would time again
                logger.warning("could not record model.width=%d in %s (%s)", width, self.run.config, err)
            self.width = width
        if self.width is not None and self._width_chosen is not None:
            self._width_chosen.set()

    # ------------------------------------------------------------- queries

    def progress(self) -> dict[int, dict]:
        return self.state

    def visible_gpus(self) -> Optional[str]:
        """What CUDA may see in this process ("": none), for tests and `wcgan status`."""
        return visible_gpus()
