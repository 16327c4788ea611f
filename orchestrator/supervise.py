"""Waiting for the label actors: progress, a deadline, stalled labels, and failures kept per label.

The driver never waits without a bound and never lets one label's failure end the others:

* Each actor's ``run()`` ends in a summary or a failure per label: bad data found in the
  actor (with the file's path) fails that label alone; an exception, an actor that died after
  its restarts, or any other Ray error (object lost, out of memory, ...) fails the labels of
  that actor (one, unless it trains a pack of labels) and no other.
* A label in training that reports no new step for ``train.stall_timeout_s`` has its actor
  killed with Ray's restart allowed: while restarts remain, Ray re-creates it and it resumes
  from its latest checkpoints; when none remain, its labels fail.
* Past ``budget_s + deadline_grace_s`` from the start, labels still running are stopped and
  reported as failed.
* The collector may die and be restarted by Ray meanwhile: a progress poll that does not
  answer is skipped, and training goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import ray

from core.config import Config
from core.errors import ConfigError
from orchestrator.preflight import budget_projection
from orchestrator.progress import ProgressView, startup_line

logger = logging.getLogger(__name__)

PROGRESS_TIMEOUT_S = 10.0


@dataclass
class Outcome:
    summaries: dict[int, dict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    user_errors: dict[int, ConfigError] = field(default_factory=dict)  # bad data found by the actor


def stall_timeout_s(cfg: Config) -> float:
    return cfg.train.stall_timeout_s or max(60.0, 12 * cfg.train.log_every_s)


class Supervisor:
    def __init__(self, cfg: Config, actors: dict[tuple[int, ...], ray.actor.ActorHandle], collector,
                 started: Callable[[], bool] = lambda: False, image_size: Optional[int] = None,
                 startup_marks: Optional[dict[str, float]] = None):
        """`actors`: each actor keyed by the labels it trains (finished ones are removed from it)."""
        self.cfg = cfg
        self.actors = actors
        self.pack_of = {label: pack for pack in actors for label in pack}
        self.collector = collector
        self.started = started  # whether the labels' start line has opened
        self.outcome = Outcome()
        self._restarting: dict[int, int] = {}  # killed for a stall -> its restart count then
        self._last_step: dict[int, tuple[int, float]] = {}  # label -> (step, when it was first seen)
        self._progress: dict[int, dict] = {}
        self._exiting: list = []  # refs of finished actors' graceful exits
        self.view = ProgressView(logger)
        self.image_size = image_size
        self._projected = False  # the pre-flight projection was shown
        self._startup_marks = startup_marks  # the driver's; None once the start-up line was shown

    def run(self) -> Outcome:
        try:
            return self._run()
        finally:
            self.view.close()

    def _run(self) -> Outcome:
        train = self.cfg.train
        pending = {actor.run.remote(): pack for pack, actor in self.actors.items()}
        t0 = time.monotonic()
        opened: Optional[float] = None  # when the start line opened: the budget clocks start there
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=train.log_every_s)
            for ref in done:
                self._settle(pending.pop(ref), ref)
            if opened is None and self.started():
                opened = time.monotonic()
            progress = self._poll_progress()
            if progress and opened is not None and not self._projected and self.image_size:
                self._show_projection(progress)
            if progress and self._startup_marks is not None:
                line = startup_line(self._startup_marks, progress)
                if line is not None:
                    logger.info(line)
                    self._startup_marks = None
            if progress:
                self.view.show(progress, train.budget_s, time.monotonic() - t0)
            if time.monotonic() > (opened or t0) + train.budget_s + train.deadline_grace_s:
                self._give_up(pending, f"not done {train.budget_s + train.deadline_grace_s:g}s after the start "
                                       f"(train.budget_s + train.deadline_grace_s)")
                break
            if progress:  # judge stalls on fresh news only
                self._restart_stalled({label for pack in pending.values() for label in pack})
            else:
                self._last_step.clear()
        return self.outcome

    def _show_projection(self, progress: dict[int, dict]) -> None:
        found = budget_projection(progress, self.cfg, self.image_size)
        if found is not None:
            message, too_few = found
            (logger.warning if too_few else logger.info)(message)
            self._projected = True

    # ------------------------------------------------------------------ one label's end

    def _settle(self, pack: tuple[int, ...], ref) -> None:
        try:
            result = ray.get(ref)
            self.outcome.summaries.update(result["summaries"])
            for label, err in result["failures"].items():  # bad data of one label of a pack
                self.outcome.user_errors[label] = err
                self._fail(label, str(err))
            self._retire(pack)
            return
        except ray.exceptions.RayTaskError as err:
            cause = err.cause  # the actor's own exception, without Ray's header and traceback
            if isinstance(cause, ConfigError):
                self.outcome.user_errors.update({label: cause for label in pack})
                message = str(cause)  # names the file or setting
            else:
                message = _last_line(err)
        except ray.exceptions.RayActorError as err:
            message = f"actor died after {self.cfg.max_restarts} restart(s): {_first_line(err)}"
        except ray.exceptions.RayError as err:  # object lost, out of memory, ...: this label's failure only
            message = f"{type(err).__name__}: {_first_line(err)}"
        for label in pack:
            self._fail(label, message)

    def _fail(self, label: int, message: str) -> None:
        self.outcome.failures[label] = message
        logger.error("label %d failed: %s", label, message)
        try:
            self.collector.report_failed.remote(label, message)
        except Exception:  # the collector is being restarted: the driver's outcome is what counts
            pass

    def _retire(self, pack: tuple[int, ...]) -> None:
        """A finished actor exits on its own: no kill signal, so no traceback in the user's log."""
        # No retries: the call ends with the actor (retrying it would log a false alarm).
        self._exiting.append(self.actors.pop(pack).__ray_terminate__.options(max_task_retries=0).remote())

    def wait_for_exits(self, timeout_s: float = 30.0) -> None:
        """Let the finished actors leave before their placement group is removed (which would kill them)."""
        if self._exiting:
            ray.wait(self._exiting, num_returns=len(self._exiting), timeout=timeout_s)

    def _give_up(self, pending: dict, why: str) -> None:
        for pack in sorted(pending.values()):
            ray.kill(self.actors[pack], no_restart=True)
            for label in pack:
                self._fail(label, why)
        pending.clear()

    # ------------------------------------------------------------------ watching progress

    def _poll_progress(self) -> dict[int, dict]:
        for label, failure in self.outcome.failures.items():
            # Idempotent, so a restarted collector (which cannot know) hears of every failure too:
            # its start line must not wait for a label that will never come.
            self.collector.report_failed.remote(label, failure)
        try:
            state = ray.get(self.collector.progress.remote(), timeout=PROGRESS_TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as err:
            logger.warning("the collector did not answer (%s); the labels keep training while Ray restarts it",
                           type(err).__name__)
            return {}
        self._progress = {int(k): v for k, v in state.items()}
        for label, failure in self.outcome.failures.items():  # the driver's word is final
            self._progress[label] = {**self._progress.get(label, {}), "state": "failed", "error": failure}
        return self._progress

    def _restart_stalled(self, running: set[int]) -> None:
        now, limit = time.monotonic(), stall_timeout_s(self.cfg)
        killed: set[tuple[int, ...]] = set()
        for label in sorted(running):
            if self.pack_of[label] in killed:
                continue
            state = self._progress.get(label, {})
            if label in self._restarting:
                if state.get("state") == "training" and int(state.get("restarts") or 0) <= self._restarting[label]:
                    continue  # still the killed incarnation's last report
                del self._restarting[label]  # the new incarnation has reported
            step = int(state.get("step") or 0)
            seen_step, since = self._last_step.get(label, (None, now))
            if step != seen_step or state.get("state") != "training":
                self._last_step[label] = (step, now)
                continue
            if now - since >= limit:
                pack = self.pack_of[label]
                also = f" (and labels {', '.join(map(str, pack))} of its actor)" if len(pack) > 1 else ""
                logger.warning("label %d: no progress for %.0fs at step %d (train.stall_timeout_s=%g); restarting "
                               "it%s from its latest checkpoint", label, now - since, step, limit, also)
                ray.kill(self.actors[pack], no_restart=False)  # Ray re-creates it while restarts remain
                killed.add(pack)
                for k in pack:
                    self._restarting[k] = int(self._progress.get(k, {}).get("restarts") or 0)
                    self._last_step.pop(k, None)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _last_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else repr(err)


__all__ = ["Supervisor", "Outcome", "stall_timeout_s"]
