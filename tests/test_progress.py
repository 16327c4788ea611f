"""The driver's progress view: one line per interval off a terminal, a table redrawn in place on one."""

from __future__ import annotations

import io
import logging

from orchestrator.progress import ProgressView, summary_line

STATE = {k: {"state": "training", "step": 100 + k, "elapsed_s": 40.0, "images_per_s": 900.0, "wasserstein": 1.0}
         for k in range(10)}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _logger(name: str, stream) -> logging.Logger:
    log = logging.getLogger(f"wcgan-test-{name}")
    log.handlers[:] = [logging.StreamHandler(stream)]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def test_off_a_terminal_each_interval_is_one_line():
    out = io.StringIO()
    view = ProgressView(_logger("pipe", out), stream=out)
    view.show(STATE, 120.0, 41.0)
    view.show({**STATE, 3: {"state": "done", "step": 300, "elapsed_s": 120.0}}, 120.0, 51.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[    41s] training 10 labels: 0 done; step min/median/max 100/105/109; 9,000 img/s in all; budget left 80s",
        "[    51s] training 10 labels: 1 done; step min/median/max 100/106/300; 8,100 img/s in all; budget left 80s"]
    assert "\x1b[" not in out.getvalue()


def test_on_a_terminal_the_table_is_redrawn_in_place_unless_something_was_logged_between():
    term = _Terminal()
    log = _logger("tty", term)
    view = ProgressView(log, stream=term)
    view.show(STATE, 120.0, 41.0)
    first = term.getvalue()
    assert first.count("\n") == 11 and "  label    9: training" in first and "\x1b[" not in first
    view.show(STATE, 120.0, 51.0)
    assert term.getvalue()[len(first):].startswith("\x1b[11F\x1b[J[    51s]")  # back over the 11 lines drawn
    log.warning("label 3 failed: something")  # a message between two tables must stay on screen
    mark = len(term.getvalue())
    view.show(STATE, 120.0, 61.0)
    assert term.getvalue()[mark:].startswith("[    61s]")
    view.close()


def test_large_runs_show_the_summary_only():
    state = {k: {"state": "setting up"} for k in range(1000)}
    assert summary_line(state, 60.0, 5.0) == "[     5s] setting up 1000 labels: 0 done; budget left 60s"


def test_the_start_up_line_waits_for_every_live_label_and_splits_the_time_into_stages():
    from orchestrator.progress import startup_line

    marks = {"command": 100.0, "driver_ready": 102.0, "ray_up": 105.5}
    state = {0: {"state": "loaded", "spawned_unix": 106.0, "up_unix": 108.0, "loaded_unix": 109.0, "training_unix": 110.0},
             1: {"state": "setting up", "spawned_unix": 106.5, "up_unix": 109.0}}
    assert startup_line(marks, state) is None  # label 1 is not training yet
    state[1].update(state="training", loaded_unix=111.0, training_unix=112.5)
    line = startup_line(marks, state)
    assert line.startswith("start-up: 12.5s from the command to every label training")
    for part in ("driver start (imports, checks) 2.0s", "Ray start 3.5s", "actor processes up 3.5s",
                 "data loaded, models built 2.0s", "start line and pre-flight 1.5s", "spawn to ready, median"):
        assert part in line
    state[2] = {"state": "failed"}  # a failed label does not hold the line back
    assert startup_line(marks, state) is not None
