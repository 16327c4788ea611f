"""The budgeted training loop, shared by the label actors and the baseline's Ray Train workers.

One loop owns the budget clock, the log and checkpoint cadence and the stopping rule, so the
per-label ensemble and the data-parallel baseline stop by the same rule and a fixed-budget
comparison of the two is fair. What happens at a log or a checkpoint is the caller's
(history.csv, Ray metrics, progress reports, rank 0's files), passed in as callbacks.

Stopping rule: after each step the loop stops when the next step would end more than half a
step past the budget (``elapsed + step_s / 2 >= budget_s``, with the step time smoothed), or
when ``max_steps`` is reached. Training therefore ends within half a step of the budget, on
either side. A resumed run counts the budget already spent (``elapsed0``).

Data-parallel workers must take each decision at the same step: ``agree`` maps this process's
decisions to the group's (the baseline broadcasts rank 0's), and ``reduce_stats`` averages the
losses a log row reports. A single process leaves both as they are.
"""

from __future__ import annotations

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
                 images_per_step: Optional[int] = None,
                 agree: Callable[[Decisions], Decisions] = lambda d: d,
                 reduce_stats: Callable[[StepStats], StepStats] = lambda s: s):
        self.pair = pair
        self.budget_s = budget_s
        self.max_steps = max_steps
        self.elapsed0 = elapsed0
        self.log_every_s = log_every_s
        self.checkpoint_every_s = checkpoint_every_s
        # Data-parallel workers count the images of every worker.
        self.images_per_step = images_per_step or pair.images_per_step
        self.agree = agree
        self.reduce_stats = reduce_stats

    def spent(self, elapsed_s: float, step_s: float) -> bool:
        """The stopping rule (see the module docstring)."""
        if self.max_steps is not None and self.pair.generator_steps >= self.max_steps:
            return True
        return elapsed_s + 0.5 * step_s >= self.budget_s

    def run(self, on_log: Callable[[dict], None], on_checkpoint: Callable[[float, bool], None]) -> LoopResult:
        """Train until the budget is spent. `on_log(row)` every log_every_s (and once at the end);
        `on_checkpoint(elapsed_s, final)` every checkpoint_every_s and once at the end."""
        pair = self.pair
        start_step = pair.generator_steps
        t0 = time.monotonic()
        last_log = last_ckpt = t0
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
            d = self.agree(Decisions(stop=self.spent(elapsed(now), step_s),
                                     log=now - last_log >= self.log_every_s,
                                     checkpoint=now - last_ckpt >= self.checkpoint_every_s))
            if d.stop:
                break
            if d.log:
                on_log(row(stats, now, (pair.generator_steps - steps_at_log) * self.images_per_step / (now - last_log)))
                last_log, steps_at_log = now, pair.generator_steps
            if d.checkpoint:
                on_checkpoint(elapsed(now), False)
                last_ckpt = time.monotonic()

        now = time.monotonic()
        trained_s = now - t0 if pair.generator_steps > start_step else 0.0
        rate = (pair.generator_steps - start_step) * self.images_per_step / trained_s if trained_s else 0.0
        last = None
        if stats is not None:
            last = row(stats, now, rate)
            on_log(last)
        end = max(elapsed(now), self.elapsed0) if trained_s else self.elapsed0
        on_checkpoint(end, True)
        return LoopResult(start_step, pair.generator_steps, end, trained_s, rate, last, first_step_unix)
