"""Collector: one actor per run that hears from every label actor and scores the ensemble.

Label actors report progress, checkpoints and completion to it (fire and forget) and wait
for each other at its start line; the driver polls :meth:`progress` for its live table and
calls :meth:`finalize` once every label is done.

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

from core.logs import configure as configure_logging
from core.rundir import RunDir, checkpoint_meta, write_text

logger = logging.getLogger(__name__)



class Collector:
    def __init__(self, run_dir: str, labels: list[int], log_level: Optional[str] = None):
        configure_logging(log_level)  # scoring logs from this process reach the driver's terminal
        self.run = RunDir(run_dir)
        self.labels = list(labels)
        self.state: dict[int, dict] = {k: self._restored_state(k) for k in self.labels}
        self.ready: set[int] = set()
        self.failed: set[int] = set()
        self._all_ready: Optional[asyncio.Event] = None  # made in the actor's event loop
        self.opened = self.run.started.exists()  # a restart after the start line opened

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

    def report_progress(self, label: int, stats: dict) -> None:
        self.state[label] = {**self.state.get(label, {}), **stats, "updated": time.time()}

    def report_checkpoint(self, label: int, meta: dict) -> None:
        self.state[label] = {**self.state.get(label, {}), "last_checkpoint_step": meta["step"]}

    def report_done(self, label: int, summary: dict) -> None:
        self.state[label] = {**self.state.get(label, {}), **summary, "step": summary["steps"], "state": "done"}

    def report_failed(self, label: int, error: str) -> None:
        self.failed.add(label)
        self.state[label] = {**self.state.get(label, {}), "state": "failed", "error": error}
        self._maybe_open()

    # ------------------------------------------------------------- the start line

    async def wait_for_start(self, label: int) -> None:
        """Returns once every label has loaded its data or failed for good: one call per label,
        however long the wait. Stays open for restarted label actors, and across a restart of
        this collector (the opening is recorded in the run directory)."""
        if self._all_ready is None:
            self._all_ready = asyncio.Event()
        self.ready.add(label)
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

    # ------------------------------------------------------------- queries

    def progress(self) -> dict[int, dict]:
        return self.state

    # ------------------------------------------------------------- the end of a run

    def finalize(self, evaluate: bool = True) -> dict:
        """The sample grid, then the metrics (results.csv, plots, report.md). Runs on this actor's event
        loop, so progress calls wait meanwhile; by then every label is done."""
        # Deferred: torch and matplotlib would slow this actor's start, beside the label actors'.
        from metrics.evaluate import evaluate_run
        from metrics.grid import save_run_grid

        outputs = {"grid": str(save_run_grid(self.run))}
        if evaluate:
            evaluate_run(self.run.path)
            outputs["results"] = str(self.run.results_csv)
            outputs["report"] = str(self.run.report)
        return outputs

