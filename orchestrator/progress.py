"""The driver's progress view of a run: one compact view, whatever the number of labels.

On a terminal a small table (a row per label up to ``max_rows``, else the aggregate) is redrawn
in place every interval. Elsewhere (``ray job logs``, CI, a file) each interval is one line:

    [   40s] training 10 labels: 0 done; step min/median/max 120/125/131; 9,050 img/s in all; budget left 80s
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Optional



def _left(s: dict, budget_s: float) -> float:
    return max(0.0, budget_s - float(s.get("elapsed_s") or 0.0))


def summary_line(state: dict[int, dict], budget_s: float, elapsed_wall: float) -> str:
    """The whole run in one line."""
    labels = sorted(state)
    by_state: dict[str, int] = {}
    for k in labels:
        by_state[state[k].get("state", "?")] = by_state.get(state[k].get("state", "?"), 0) + 1
    done, failed = by_state.get("done", 0), by_state.get("failed", 0)
    training = by_state.get("training", 0) + by_state.get("checkpointing", 0) + by_state.get("loaded", 0)
    phase = "training" if training else ("setting up" if done + failed < len(labels) else "finished")
    line = f"[{elapsed_wall:6.0f}s] {phase} {len(labels)} labels: {done} done"
    if failed:
        line += f", {failed} failed"
    steps = sorted(int(state[k].get("step") or 0) for k in labels)
    if steps and steps[-1]:
        line += f"; step min/median/max {steps[0]}/{steps[len(steps) // 2]}/{steps[-1]}"
    rate = sum(float(state[k].get("images_per_s") or 0.0) for k in labels if state[k].get("state") == "training")
    if rate:
        line += f"; {round(rate):,} img/s in all"
    running = [_left(state[k], budget_s) for k in labels if state[k].get("state") not in ("done", "failed")]
    if running:
        line += f"; budget left {max(running):.0f}s"
    restarts = sum(int(state[k].get("restarts") or 0) for k in labels)
    return line + (f"; {restarts} restart(s)" if restarts else "")


# The driver's own marks, then each label's (from its progress rows), in the order they pass.
STARTUP_STAGES = (("driver start (imports, checks)", "driver_ready"), ("Ray start", "ray_up"),
                  ("actor processes up", "up_unix"), ("data loaded, models built", "loaded_unix"),
                  ("start line and pre-flight", "training_unix"))


def startup_line(marks: dict[str, float], state: dict[int, dict]) -> Optional[str]:
    """Where the time from the command to every label training went, once every label that has
    not failed is training (None before). `marks`: the driver's ``command``, ``driver_ready``
    and ``ray_up`` wall-clock times; a label's marks are the latest of its actor's."""
    live = [s for s in state.values() if s.get("state") != "failed"]
    if not live or any(s.get("training_unix") is None for s in live):
        return None
    at = dict(marks)
    for _, key in STARTUP_STAGES[2:]:
        at[key] = max(float(s.get(key) or 0.0) for s in live)
    parts, prev = [], at["command"]
    for name, key in STARTUP_STAGES:
        t = max(at.get(key) or prev, prev)
        parts.append(f"{name} {t - prev:.1f}s")
        prev = t
    imports = sorted(float(s["up_unix"]) - float(s["spawned_unix"]) for s in live
                     if s.get("up_unix") and s.get("spawned_unix"))
    line = f"start-up: {prev - at['command']:.1f}s from the command to every label training: " + ", ".join(parts)
    if imports:
        line += f" (a label process takes {imports[len(imports) // 2]:.1f}s from spawn to ready, median)"
    return line


def format_progress(state: dict[int, dict], budget_s: float, elapsed_wall: float, max_rows: int = 16) -> str:
    """The summary line, then a row per label for small runs."""
    lines = [summary_line(state, budget_s, elapsed_wall)]
    if len(state) <= max_rows:
        for k in sorted(state):
            s = state[k]
            ips, w = s.get("images_per_s"), s.get("wasserstein")
            lines.append(
                f"  label {k:>4}: {s.get('state', '?'):<9} step {int(s.get('step') or 0):>7}"
                f"  budget left {_left(s, budget_s):6.0f}s"
                + (f"  {ips:8.0f} img/s" if ips is not None else "")
                + (f"  W {w:7.3f}" if w is not None else "")
                + (f"  restarts {s['restarts']}" if s.get("restarts") else "")
                + (f"  {s['error'][:60]}" if s.get("error") else ""))
    return "\n".join(lines)


class _Interleaved(logging.Filter):
    """Notes that some other log record reached the terminal since the table was drawn."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "wcgan_progress", False):
            self.seen = True
        return True


class ProgressView:
    """Shows progress through `logger`: a table redrawn in place on a terminal, one line per
    interval elsewhere. Other log messages in between are never overwritten: the table is then
    drawn anew below them."""

    def __init__(self, logger: logging.Logger, stream: Optional[IO[str]] = None, max_rows: int = 16):
        self.logger, self.max_rows = logger, max_rows
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0
        self._others = _Interleaved()
        if self.tty:
            for handler in self._handlers():
                handler.addFilter(self._others)

    def _handlers(self) -> list[logging.Handler]:
        log, out = self.logger, []
        while log is not None:
            out += log.handlers
            log = log.parent if log.propagate else None
        return out

    def show(self, state: dict[int, dict], budget_s: float, elapsed_wall: float) -> None:
        if not self.tty:
            self.logger.info(summary_line(state, budget_s, elapsed_wall))
            return
        text = format_progress(state, budget_s, elapsed_wall, self.max_rows)
        if self._drawn and not self._others.seen:
            text = f"\x1b[{self._drawn}F\x1b[J" + text  # back to the table's first line, clear below
        self.logger.info(text, extra={"wcgan_progress": True})
        self._drawn = text.count("\n") + 1
        self._others.seen = False

    def close(self) -> None:
        for handler in self._handlers():
            handler.removeFilter(self._others)
