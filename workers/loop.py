"""The budgeted training loop, shared by the label actors and the baseline's Ray Train workers.

One loop owns the budget clock, the log and save cadence and the stopping rule, so the
per-label ensemble and the data-parallel baseline stop by the same rule and a fixed-budget
comparison of the two is fair. What happens at a log or a save is the caller's (history.csv,
Ray metrics, progress reports, rank 0's files), passed in as callbacks.

Save cadence: saves are anchored to the budget clock, not to the previous save. The clock
(``elapsed``, restored budget included) has *marks* at every multiple of ``checkpoint_every_s``
and, if set, of ``marks_every_s`` (``metrics.every_s``: the times scores over training are taken
at). After the step whose end first crosses a checkpoint mark the loop calls ``on_checkpoint``
(full checkpoint and snapshot); after one that crosses only a metrics mark, ``on_snapshot``
(snapshot only). Either save stands for the latest mark crossed (``mark_s``), and is written within
one step of it; marks crossed during one step (or one slow save) share a save. A resumed loop
continues with the first mark past ``elapsed0``. The final save (``on_checkpoint``) comes at the
end, and stands for any mark crossed since the last save.

Stopping rule: after each step the loop stops when the next step would end more than half a
step past the budget (``elapsed + step_s / 2 >= budget_s``, with the step time smoothed), or
when ``max_steps`` is reached. Training therefore ends within half a step of the budget, on
either side. A resumed run counts the budget already spent (``elapsed0``).

Data-parallel workers must take each decision at the same step: ``agree`` maps this process's
decisions to the group's (the baseline broadcasts rank 0's), and ``reduce_stats`` averages the
losses a log row reports. A single process leaves both as they are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Protocol

from workers.gan import StepStats


class Trainable(Protocol):
    generator_steps: int

    @property
    def images_per_step(self) -> int: ...

    def step(self) -> StepStats: ...


class Decisions(NamedTuple):
    stop: bool
    log: bool
    checkpoint: bool
    snapshot: bool = False   # a metrics mark: a snapshot-only save (a checkpoint saves one anyway)


class Marks:
    """The marks ``k * every_s`` (k = 1, 2, ...) of the budget clock, from the first one past `start_s`."""

    def __init__(self, every_s: Optional[float], start_s: float = 0.0):
        self.every_s = every_s
        self.k = math.floor(start_s / every_s) + 1 if every_s else 0

    @property
    def next_s(self) -> float:
        return self.k * self.every_s if self.every_s else math.inf

    def due(self, elapsed_s: float) -> bool:
        return elapsed_s >= self.next_s

    def take(self, elapsed_s: float) -> Optional[float]:
        """Pass every mark up to `elapsed_s`; returns the latest of them (None if none was due)."""
        if not self.due(elapsed_s):
            return None
        self.k = max(self.k + 1, math.floor(elapsed_s / self.every_s) + 1)
        while self.k * self.every_s <= elapsed_s:
            self.k += 1
        return (self.k - 1) * self.every_s


def _latest(*marks: Optional[float]) -> Optional[float]:
    taken = [m for m in marks if m is not None]
    return max(taken) if taken else None


@dataclass
class LoopResult:
    start_step: int
    steps: int                      # generator steps reached (restored ones included)
    elapsed_s: float                # budget spent in all, restored time included
    trained_s: float                # of which in this call
    images_per_s: float             # over this call's training
    last: Optional[dict] = None     # the final log row (None when no step ran)
    first_step_unix: Optional[float] = None

    @property
    def steps_per_s(self) -> float:
        return (self.steps - self.start_step) / self.trained_s if self.trained_s > 0 else 0.0


class BudgetedLoop:
    def __init__(self, pair: Trainable, budget_s: float, *, max_steps: Optional[int] = None,
                 elapsed0: float = 0.0, log_every_s: float = 5.0, checkpoint_every_s: float = 30.0,
                 marks_every_s: Optional[float] = None,
                 images_per_step: Optional[int] = None,
                 agree: Callable[[Decisions], Decisions] = lambda d: d,
                 reduce_stats: Callable[[StepStats], StepStats] = lambda s: s):
        self.pair = pair
        self.budget_s = budget_s
        self.max_steps = max_steps
        self.elapsed0 = elapsed0
        self.log_every_s = log_every_s
        self.checkpoint_every_s = checkpoint_every_s
        self.marks_every_s = marks_every_s
        # Data-parallel workers count the images of every worker.
        self.images_per_step = images_per_step or pair.images_per_step
        self.agree = agree
        self.reduce_stats = reduce_stats

    def spent(self, elapsed_s: float, step_s: float) -> bool:
        """The stopping rule (see the module docstring)."""
        if self.max_steps is not None and self.pair.generator_steps >= self.max_steps:
            return True
        return elapsed_s + 0.5 * step_s >= self.budget_s

    def run(self, on_log: Callable[[dict], None], on_checkpoint: Callable[..., None],
            on_snapshot: Optional[Callable[[float, float], None]] = None) -> LoopResult:
        """Train until the budget is spent (see the module docstring for the cadence).

        `on_log(row)` every log_every_s (and once at the end); `on_checkpoint(elapsed_s, final,
        mark_s)` at each checkpoint mark and once at the end (`mark_s`: the mark the save stands for,
        None for a final save past no new mark); `on_snapshot(elapsed_s, mark_s)` at each metrics mark that is not
        also a checkpoint mark (required when marks_every_s is set)."""
        if self.marks_every_s and on_snapshot is None:
            raise ValueError("marks_every_s needs an on_snapshot callback")
        checkpoint = on_checkpoint
        pair = self.pair
        start_step = pair.generator_steps
        t0 = time.monotonic()
        last_log = t0
        ckpt_marks = Marks(self.checkpoint_every_s, self.elapsed0)
        metric_marks = Marks(self.marks_every_s, self.elapsed0)
        steps_at_log = start_step
        step_s = 0.0
        stats: Optional[StepStats] = None
        first_step_unix = None

        def elapsed(now: float) -> float:
            return self.elapsed0 + (now - t0)

        def row(stats: StepStats, now: float, rate: float) -> dict:
            return {"step": pair.generator_steps, "elapsed_s": round(elapsed(now), 3),
                    **self.reduce_stats(stats).floats(), "images_per_s": rate}

        running = not self.spent(self.elapsed0, 0.0)
        while running:
            t_step = time.monotonic()
            stats = pair.step()
            now = time.monotonic()
            if first_step_unix is None:
                first_step_unix = time.time()
            took = now - t_step
            step_s = took if step_s == 0.0 else 0.8 * step_s + 0.2 * took
            e = elapsed(now)
            d = self.agree(Decisions(stop=self.spent(e, step_s), log=now - last_log >= self.log_every_s,
                                     checkpoint=ckpt_marks.due(e), snapshot=metric_marks.due(e)))
            if d.stop:
                break
            if d.log:
                on_log(row(stats, now, (pair.generator_steps - steps_at_log) * self.images_per_step / (now - last_log)))
                last_log, steps_at_log = now, pair.generator_steps
            if d.checkpoint:
                checkpoint(e, False, _latest(ckpt_marks.take(e), metric_marks.take(e)))
            elif d.snapshot:
                on_snapshot(e, metric_marks.take(e))

        now = time.monotonic()
        trained_s = now - t0 if pair.generator_steps > start_step else 0.0
        rate = (pair.generator_steps - start_step) * self.images_per_step / trained_s if trained_s else 0.0
        last = None
        if stats is not None:
            last = row(stats, now, rate)
            on_log(last)
        end = max(elapsed(now), self.elapsed0) if trained_s else self.elapsed0
        checkpoint(end, True, _latest(ckpt_marks.take(end), metric_marks.take(end)))
        return LoopResult(start_step, pair.generator_steps, end, trained_s, rate, last, first_step_unix)
