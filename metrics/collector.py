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

SUMMARY_COLUMNS = ["label", "steps", "elapsed_s", "steps_per_s", "images_per_s", "critic_loss",
                   "generator_loss", "wasserstein", "restarts", "device", "resumed_from_step", "first_step_unix"]


class Collector:
    def __init__(self, run_dir: str, labels: list[int]):
        self.run_dir = Path(run_dir)
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
        summaries = summaries if summaries is not None else list(self.summaries.values())
        outputs = {"summary": str(write_summary(self.run_dir, summaries))}
        outputs["grid"] = str(write_grid(self.run_dir, self.labels))
        if evaluate:
            from metrics.evaluate import evaluate_run

            evaluate_run(self.run_dir)
            outputs["results"] = str(self.run_dir / "results.csv")
            outputs["report"] = str(self.run_dir / "report.md")
        return outputs


def write_summary(run_dir: Path, summaries) -> Path:
    frame = pd.DataFrame(list(summaries), columns=SUMMARY_COLUMNS).sort_values("label")
    path = Path(run_dir) / "summary.csv"
    frame.to_csv(path, index=False)
    return path


def write_grid(run_dir: Path, labels: list[int], per_label: int = 10) -> Path:
    from metrics.grid import grid_labels, save_sample_grid
    from workers import checkpoint
    from workers.ensemble import Ensemble

    shown = grid_labels([k for k in labels if checkpoint.latest_checkpoint(run_dir, k) is not None])
    ensemble = Ensemble.from_checkpoints({k: checkpoint.latest_checkpoint(run_dir, k) for k in shown})
    return save_sample_grid(ensemble, shown, Path(run_dir) / "samples" / "grid.png", per_label=per_label)


def format_progress(state: dict[int, dict], budget_s: float, elapsed_wall: float,
                    max_rows: int = 16) -> str:
    """One line per label for small runs; an aggregate for large ones (1,000 labels)."""
    labels = sorted(state)
    done = sum(1 for k in labels if state[k].get("state") == "done")
    failed = sum(1 for k in labels if state[k].get("state") == "failed")
    head = f"[{elapsed_wall:6.0f}s] {done}/{len(labels)} labels done" + (f", {failed} failed" if failed else "")
    if len(labels) <= max_rows:
        lines = [head]
        for k in labels:
            s = state[k]
            left = max(0.0, budget_s - float(s.get("elapsed_s", 0.0)))
            ips = s.get("images_per_s")
            w = s.get("wasserstein")
            lines.append(
                f"  label {k:>4}: {s.get('state', '?'):<9} step {int(s.get('step', 0)):>7}"
                f"  budget left {left:6.0f}s"
                + (f"  {ips:8.0f} img/s" if ips is not None else "")
                + (f"  W {w:7.3f}" if w is not None else "")
                + (f"  restarts {s['restarts']}" if s.get("restarts") else "")
            )
        return "\n".join(lines)
    steps = sorted(int(state[k].get("step", 0)) for k in labels)
    lefts = [max(0.0, budget_s - float(state[k].get("elapsed_s", 0.0))) for k in labels]
    return (f"{head}; steps min/median/max {steps[0]}/{steps[len(steps) // 2]}/{steps[-1]}; "
            f"budget left max {max(lefts):.0f}s")
