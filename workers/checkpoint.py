"""What a checkpoint holds, for both kinds of run, and how a pair resumes from one.

One checkpoint dict (written through :mod:`core.rundir`, atomically, read weights-only):

    kind          "label" (one label's pair) or "conditional-wgan-gp" (the baseline's)
    state         the pair's state_dict (networks, optimisers, generator steps, RNG)
    elapsed_s     training budget spent when it was written
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
        return Resume(pair.generator_steps, float(blob["elapsed_s"]), int(blob.get("images_seen", 0)),
                      int(blob.get("restarts", 0)), path)
    if found:  # starting from scratch would silently discard the budget already spent
        raise RuntimeError(f"none of the {len(found)} checkpoint(s) in {run.owner_dir(owner)} loads (moved to *.corrupt)")
    return Resume()


class Checkpointer:
    """Writes one owner's checkpoints: the pair's state plus what sampling and scoring need."""

    def __init__(self, run: RunDir, owner: Owner, pair: WGANGP, cfg, resume: Resume, restarts: int,
                 labels: list[int], images_per_step: int, num_classes: Optional[int] = None,
                 world_size: int = 1):
        self.run, self.owner, self.pair, self.cfg = run, owner, pair, cfg
        self.resume, self.images_per_step = resume, images_per_step
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

    def save(self, elapsed_s: float, final: bool = False, images_per_s: Optional[float] = None) -> Path:
        path = self.run.checkpoint_path(self.owner, self.pair.generator_steps)
        save_checkpoint({**self.meta, "state": self.pair.state_dict(), "elapsed_s": elapsed_s,
                         "images_seen": self.images_seen, "final": final, "images_per_s": images_per_s}, path)
        self.run.prune(self.owner, self.cfg.train.keep_checkpoints)
        return path
