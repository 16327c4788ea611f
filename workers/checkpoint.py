"""What a checkpoint and a snapshot hold, for both kinds of run, and how a pair resumes from one.

A save at a checkpoint mark writes two files (through :mod:`core.rundir`, atomically, read
weights-only); a save at a metrics mark (see :mod:`workers.loop`) writes the snapshot alone:

* a full checkpoint, ``<owner>/ckpt-<step>.pt``: what a resume needs; the newest
  ``train.keep_checkpoints`` are kept, older ones are pruned once the new one is written;
* a snapshot, ``<owner>/snapshots/snap-<step>.pt``: the generator only, for sampling and for
  scores over training time; every one is kept.

Both are one dict with the same plain fields:

    kind          "label" (one label's pair) or "conditional-wgan-gp" (the baseline's)
    state         checkpoint: the pair's state_dict (networks, optimisers, generator steps, RNG)
                  snapshot: {"generator": the generator's state_dict, "generator_steps": step}
    snapshot      True in a snapshot (absent in checkpoints)
    step, elapsed_s  generator steps and training budget spent when it was written
    mark_s        the mark of the budget clock the save stands for (None: none, or written before marks)
    model, channels, image_size, num_classes (baseline), label (label runs), labels
    images_seen, restarts, dataset, device, world_size, final, images_per_s
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.rundir import BASELINE, Owner, RunDir, load_checkpoint, save_checkpoint
from workers.gan import WGANGP

logger = logging.getLogger(__name__)

LABEL_KIND = "label"
BASELINE_KIND = "conditional-wgan-gp"


@dataclass
class Resume:
    """Where a (re)started pair picks up: zeros for a fresh one."""

    start_step: int = 0
    elapsed_s: float = 0.0
    images_seen: int = 0
    restarts: int = 0
    path: Optional[Path] = None


def restore(run: RunDir, owner: Owner, pair: WGANGP, restore_rng: bool = True) -> Resume:
    """Load the owner's newest readable checkpoint into `pair`, if there is one.

    A checkpoint that fails to load (truncated by a dying disk, say) is moved out of the way and
    the previous one is tried, so one bad file costs one checkpoint interval, not the run.
    Snapshots past the step resumed from are deleted: those steps are trained again (as their
    history.csv rows are dropped), and the old snapshots would score a discarded line of training.
    """
    found = run.checkpoints(owner)
    for _, path in reversed(found):
        try:
            # On the CPU: a GPU still freeing a dead predecessor's memory must not look like damage.
            blob = load_checkpoint(path, map_location="cpu")
        except OSError:
            raise  # the storage, not the file (NFS hiccup, permissions): fail, retry later, keep the file
        except Exception as err:  # zip, unpickling, EOF: the file itself is damaged
            logger.warning("skipping damaged checkpoint %s (%s: %s)", path, type(err).__name__, err)
            try:
                run.quarantine(path)  # out of every listing; a data-parallel peer may have moved it already
            except OSError:
                pass
            continue
        pair.load_state_dict(blob["state"], restore_rng=restore_rng)
        _drop_later_snapshots(run, owner, pair.generator_steps)
        return Resume(pair.generator_steps, float(blob["elapsed_s"]), int(blob.get("images_seen", 0)),
                      int(blob.get("restarts", 0)), path)
    if found:  # starting from scratch would silently discard the budget already spent
        raise RuntimeError(f"none of the {len(found)} checkpoint(s) in {run.owner_dir(owner)} loads (moved to *.corrupt)")
    _drop_later_snapshots(run, owner, 0)
    return Resume()


def _drop_later_snapshots(run: RunDir, owner: Owner, step: int) -> None:
    dropped = run.drop_snapshots_after(owner, step)
    if dropped:
        logger.warning("%s: dropped %d snapshot(s) past step %d, the step this run resumes from",
                       run.owner_dir(owner), len(dropped), step)


def generator_state(pair: WGANGP) -> dict:
    """What a snapshot keeps of a pair: the generator's weights (and buffers) and its step."""
    state = {"generator": pair.generator.state_dict(), "generator_steps": pair.generator_steps}
    if pair.generator_ema is not None:
        state["generator_ema"] = pair.generator_ema.state_dict()
    return state


class Checkpointer:
    """Writes one owner's checkpoints and snapshots: the pair's state plus what sampling and scoring need."""

    def __init__(self, run: RunDir, owner: Owner, pair: WGANGP, cfg, resume: Resume, restarts: int,
                 labels: list[int], images_per_step: int, num_classes: Optional[int] = None,
                 world_size: int = 1):
        self.run, self.owner, self.pair, self.cfg = run, owner, pair, cfg
        self.resume, self.images_per_step = resume, images_per_step
        self.last_snapshot: Optional[Path] = None
        self.meta = {
            "kind": BASELINE_KIND if owner == BASELINE else LABEL_KIND,
            "model": cfg.model.model_dump(), "channels": int(pair.images.shape[1]),
            "image_size": int(pair.images.shape[2]), "labels": [int(k) for k in labels],
            "restarts": restarts, "dataset": cfg.dataset.name, "device": str(pair.device),
            "world_size": world_size,
        }
        if owner == BASELINE:
            self.meta["num_classes"] = num_classes
        else:
            self.meta["label"] = int(owner)

    @property
    def images_seen(self) -> int:
        """Real images the critic(s) saw over the whole run, restored sessions included."""
        return self.resume.images_seen + (self.pair.generator_steps - self.resume.start_step) * self.images_per_step

    def _fields(self, elapsed_s: float, final: bool, images_per_s: Optional[float], mark_s: Optional[float]) -> dict:
        return {**self.meta, "step": self.pair.generator_steps, "elapsed_s": elapsed_s, "mark_s": mark_s,
                "images_seen": self.images_seen, "final": final, "images_per_s": images_per_s}

    def _write_snapshot(self, fields: dict) -> Path:
        self.last_snapshot = save_checkpoint({**fields, "snapshot": True, "state": generator_state(self.pair)},
                                             self.run.snapshot_path(self.owner, fields["step"]))
        return self.last_snapshot

    def save(self, elapsed_s: float, final: bool = False, images_per_s: Optional[float] = None,
             mark_s: Optional[float] = None) -> Path:
        """Writes the full checkpoint, then the snapshot, then prunes the oldest full checkpoints;
        returns the checkpoint's path. A failed write raises (an OSError naming the file for a full
        disk) before anything is pruned, so the previous checkpoint is still there to resume from.

        The checkpoint goes first: a snapshot then always belongs to a step a resume can reach."""
        fields = self._fields(elapsed_s, final, images_per_s, mark_s)
        path = save_checkpoint({**fields, "state": self.pair.state_dict()}, self.run.checkpoint_path(self.owner, fields["step"]))
        self._write_snapshot(fields)
        self.run.prune(self.owner, self.cfg.train.keep_checkpoints)
        return path

    def save_snapshot(self, elapsed_s: float, mark_s: Optional[float] = None) -> Path:
        """Writes the snapshot alone (a metrics mark between checkpoints), atomically; returns its path.
        A resume from an earlier checkpoint drops it (:func:`restore`): those steps are trained again."""
        return self._write_snapshot(self._fields(elapsed_s, False, None, mark_s))
