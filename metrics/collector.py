"""Collector: one actor per run that hears from every label actor and scores the ensemble.

Label actors report progress, checkpoints and completion to it (fire and
forget); the driver polls :meth:`progress` for its live table and calls
:meth:`finalize` once every label is done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pandas as pd

from core.logs import configure as configure_logging
from core.rundir import RunDir, write_csv

SUMMARY_COLUMNS = ["label", "steps", "elapsed_s", "steps_per_s", "images_per_s", "critic_loss",
                   "generator_loss", "wasserstein", "restarts", "device", "resumed_from_step", "first_step_unix"]


class Collector:
    def __init__(self, run_dir: str, labels: list[int], log_level: Optional[str] = None):
        configure_logging(log_level)  # scoring logs from this process reach the driver's terminal
        self.run = RunDir(run_dir)
        self.labels = list(labels)
        self.started = time.time()
        self.state: dict[int, dict] = {k: {"state": "starting", "step": 0} for k in self.labels}
        self.summaries: dict[int, dict] = {}
        self.ready: set[int] = set()
        self.failed: set[int] = set()

    # ------------------------------------------------------------- reports from label actors

    def report_progress(self, label: int, stats: dict) -> None:
        self.state[label] = {**self.state.get(label, {}), **stats, "updated": time.time()}

    def report_checkpoint(self, label: int, meta: dict) -> None:
        self.state[label] = {**self.state.get(label, {}), "last_checkpoint_step": meta["step"]}

    def report_done(self, label: int, summary: dict) -> None:
        self.summaries[label] = summary
        self.state[label] = {**self.state.get(label, {}), **summary, "step": summary["steps"], "state": "done"}

    def report_failed(self, label: int, error: str) -> None:
        self.failed.add(label)
        self.state[label] = {**self.state.get(label, {}), "state": "failed", "error": error}

    def mark_ready(self, label: int) -> None:
        self.ready.add(label)

    def all_ready(self) -> bool:
        """True once every label has loaded its data or failed for good (and stays true for
        restarted actors), so one broken label never holds the others at the start line."""
        return len(self.ready | self.failed) == len(self.labels)

    # ------------------------------------------------------------- queries

    def progress(self) -> dict[int, dict]:
        return self.state

    # ------------------------------------------------------------- the end of a run

    def finalize(self, summaries: Optional[list[dict]] = None, evaluate: bool = True) -> dict:
        """Summary table and sample grid; then the metrics (results.csv, plots, report.md).

        The driver passes the summaries it got from the label actors: their fire-and-forget
        `report_done` calls may still be in flight when it calls this.
        """
        # Deferred: torch, pandas and matplotlib would slow this actor's start, beside the label actors'.
        from metrics.evaluate import evaluate_run
        from metrics.grid import save_run_grid

        summaries = summaries if summaries is not None else list(self.summaries.values())
        outputs = {"summary": str(write_summary(self.run, summaries)), "grid": str(save_run_grid(self.run))}
        if evaluate:
            evaluate_run(self.run.path)
            outputs["results"] = str(self.run.results_csv)
            outputs["report"] = str(self.run.report)
        return outputs


def write_summary(run: RunDir, summaries) -> Path:
    frame = pd.DataFrame(list(summaries), columns=SUMMARY_COLUMNS).sort_values("label")
    return write_csv(frame, run.summary_csv)
