"""Curves that are true: models are saved at marks of the budget clock, and each point of the
scores over time is made of the models saved for its mark.

Real training on digits through :class:`workers.trainer.LabelTrainer`, in-process. Every step is
logged (``log_every_s`` tiny), so history.csv gives the end of each step: a save for mark t must
be written at the end of the first step that crossed t, that is, within one step of it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import small_config
from core.rundir import CheckpointRef, RunDir, checkpoint_meta
from metrics.evaluate import evaluation_schedule
from workers.checkpoint import Checkpointer, Resume
from workers.data import load_label
from workers.gan import WGANGP
from workers.loop import BudgetedLoop
from workers.trainer import LabelTrainer

LABEL = 0
EVERY_STEP = "train.log_every_s=0.000001"   # a history row at the end of every step


def _train(run: RunDir, label: int = LABEL, *overrides: str) -> None:
    torch.set_num_threads(1)
    cfg = small_config(run.path.parent, f"dataset.labels=[{label}]", "train.keep_checkpoints=null",
                       EVERY_STEP, *overrides)
    LabelTrainer(str(run.path), cfg.to_dict(), label, "t").run()


def _saves(run: RunDir, label: int = LABEL) -> list[dict]:
    """Every snapshot's fields, oldest first, with whether a full checkpoint was written beside it."""
    full = {s for s, _ in run.checkpoints(label)}
    return [{**checkpoint_meta(p), "full": s in full} for s, p in run.snapshots(label)]


def _step_ends(run: RunDir, label: int = LABEL) -> pd.Series:
    """step -> the budget clock at the end of that step (history.csv, one row per step)."""
    h = pd.read_csv(run.history(label)).drop_duplicates("step")  # the final row repeats the last step
    return h.set_index("step")["elapsed_s"]


def _assert_at_marks(run: RunDir, saves: list[dict], label: int = LABEL, start_s: float = 0.0) -> float:
    """Each marked save was written at the end of the first step whose end crossed its mark: the
    step before ended before the mark, so the save is less than one step past it. Returns the
    longest step seen."""
    ends = _step_ends(run, label)
    longest = float(ends.diff().max())
    for s in saves:
        if s["mark_s"] is None:
            continue
        before = float(ends.get(s["step"] - 1, start_s))
        assert before < s["mark_s"] + 1e-3 and s["mark_s"] <= s["elapsed_s"] + 1e-9, s
        assert s["elapsed_s"] - s["mark_s"] <= longest + 1e-3, (s, longest)
    return longest


def test_saves_are_anchored_to_the_budget_clock(tmp_path):
    """checkpoint_every_s=1: saves at 1 s, 2 s, ... of training, each within one step of its mark,
    not checkpoint_every_s after the previous save (which drifts by a step and a save each time)."""
    run = RunDir(tmp_path / "run")
    _train(run, LABEL, "train.budget_s=3", "train.checkpoint_every_s=1")
    saves = _saves(run)
    periodic = [s for s in saves if not s["final"]]
    assert [s["mark_s"] for s in periodic] == [1.0, 2.0]
    assert all(s["full"] for s in saves)                    # each a full checkpoint, with its snapshot
    final = saves[-1]
    assert final["final"] and final["mark_s"] == (3.0 if final["elapsed_s"] >= 3.0 else None)
    _assert_at_marks(run, saves)


@pytest.fixture(scope="module")
def marked_run(tmp_path_factory) -> RunDir:
    """A label with checkpoints every 1 s and metrics marks every 1.5 s, over 5 s."""
    run = RunDir(tmp_path_factory.mktemp("marks") / "run")
    _train(run, LABEL, "train.budget_s=5", "train.checkpoint_every_s=1", "metrics.every_s=1.5")
    return run


def test_metrics_marks_save_snapshots_between_checkpoints(marked_run):
    saves = _saves(marked_run)
    periodic = [s for s in saves if not s["final"]]
    assert [s["mark_s"] for s in periodic] == [1.0, 1.5, 2.0, 3.0, 4.0, 4.5]
    # 1.5 s and 4.5 s: a snapshot alone; 3.0 s is both kinds of mark: one full save
    assert [s["mark_s"] for s in periodic if not s["full"]] == [1.5, 4.5]
    _assert_at_marks(marked_run, saves)


def test_each_point_over_time_is_made_of_the_models_of_its_mark(tmp_path):
    """Two labels, each on its own clock, marks every 0.1 s: a step (~10 ms here) is much longer than
    the 5% window (5 ms) an older run is read with, so only the recorded marks pick the right models."""
    run = RunDir(tmp_path / "run")
    for label in (0, 1):
        _train(run, label, "train.budget_s=2", "train.checkpoint_every_s=1", "metrics.every_s=0.1")
    refs = run.snapshots_by_label()
    evals = evaluation_schedule(refs, 0.1)
    *points, final = evals
    assert len(points) >= 15 and final.name == "final"
    longest = max(float(_step_ends(run, k).diff().max()) for k in (0, 1))
    exact = 0
    for ev in points:
        own = 0
        for k, path in ev.checkpoints.items():
            marked = [r for r in refs[k] if r.mark_s == pytest.approx(ev.time_s)]
            # a mark crossed in the same step as the next one (a slow step) has no save of its own
            if marked:
                assert path == marked[-1].path, (ev, marked)
                own += 1
        exact += own
        assert ev.models_time_s <= ev.time_s + longest + 1e-3, (ev, longest)
        if own == len(ev.checkpoints):
            assert ev.models_time_s >= ev.time_s, ev
        assert ev.models_time_s == max(r.elapsed_s for k, r in _refs_of(ev, refs).items())
    assert exact >= len(points)  # at least as many label-marks as points: most have their own save
    assert final.models_time_s == final.time_s == max(r[-1].elapsed_s for r in refs.values())
    assert final.checkpoints == {k: r[-1].path for k, r in refs.items()}


def _refs_of(ev, refs: dict[int, list[CheckpointRef]]) -> dict[int, CheckpointRef]:
    return {k: next(r for r in refs[k] if r.path == path) for k, path in ev.checkpoints.items()}


def test_a_resumed_label_continues_with_the_next_mark(tmp_path):
    """Stopped at ~2.5 s and resumed with a 5 s budget: the next saves are at 3 s and 4 s of
    training, not 1 s and 2 s after the resume."""
    run = RunDir(tmp_path / "run")
    _train(run, LABEL, "train.budget_s=2.5", "train.checkpoint_every_s=1")
    first = _saves(run)
    resumed_at = first[-1]["elapsed_s"]
    assert first[-1]["final"] and 2.0 < resumed_at < 3.0
    _train(run, LABEL, "train.budget_s=5", "train.checkpoint_every_s=1")
    later = [s for s in _saves(run) if s["step"] > first[-1]["step"]]
    assert [s["mark_s"] for s in later if not s["final"]] == [3.0, 4.0]
    _assert_at_marks(run, later, start_s=resumed_at)


def test_a_data_parallel_group_saves_at_the_agreed_marks(tmp_path):
    """The baseline's workers take rank 0's decisions: a snapshot is saved when the group says so
    (the snapshot flag is part of what is agreed), and never on this process's own clock alone."""
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "train.keep_checkpoints=null")
    pair = WGANGP.build(cfg.model, cfg.train, load_label(cfg.dataset, LABEL), torch.device("cpu"), seed=0)
    run = RunDir(tmp_path / "run")
    ck = Checkpointer(run, LABEL, pair, cfg, Resume(), 0, [LABEL], pair.images_per_step)

    def agree(d):  # "rank 0" marks steps 3 and 5 for snapshots, and stops after step 6
        return d._replace(stop=pair.generator_steps >= 6, checkpoint=False, snapshot=pair.generator_steps in (3, 5))

    loop = BudgetedLoop(pair, budget_s=3600, checkpoint_every_s=3600, marks_every_s=3600, agree=agree)
    loop.run(lambda row: None, lambda e, final, mark_s: ck.save(e, final, mark_s=mark_s),
             lambda e, mark_s: ck.save_snapshot(e, mark_s))
    assert [s for s, _ in run.snapshots(LABEL)] == [3, 5, 6]
    assert [s for s, _ in run.checkpoints(LABEL)] == [6]       # snapshots alone, then the final save
    assert [checkpoint_meta(p)["mark_s"] for _, p in run.snapshots(LABEL)] == [None, None, None]


def test_the_schedule_reads_older_runs_by_their_training_time():
    """Models saved before marks were recorded: the latest with elapsed_s <= t + 5% of every_s."""
    p = lambda k, s: Path(f"l{k}/snap-{s}.pt")  # noqa: E731
    refs = {0: [CheckpointRef(10.4, 1, p(0, 1)), CheckpointRef(20.9, 2, p(0, 2)), CheckpointRef(30.0, 3, p(0, 3))],
            1: [CheckpointRef(10.2, 1, p(1, 1), mark_s=10.0), CheckpointRef(21.7, 2, p(1, 2), mark_s=20.0),
                CheckpointRef(29.0, 3, p(1, 3))]}
    evals = evaluation_schedule(refs, 10.0)
    assert [(e.name, e.time_s) for e in evals] == [("checkpoint", 10.0), ("checkpoint", 20.0), ("final", 30.0)]
    assert evals[0].checkpoints == {0: p(0, 1), 1: p(1, 1)} and evals[0].models_time_s == 10.4
    # label 1's model marked 20 s counts though written 1.7 s past it; label 0's 20.9 s is past the window
    assert evals[1].checkpoints == {0: p(0, 1), 1: p(1, 2)} and evals[1].models_time_s == 21.7
    assert evals[2].models_time_s == 30.0
