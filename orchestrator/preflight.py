"""Checks of where a run writes, before Ray starts.

A run whose run.storage cannot hold a run directory should fail in a second with the path
named, not with a NotADirectoryError traceback after the cluster was contacted and its
bundles placed; nor should a run that will fill its disk halfway (a full disk fails a label
for good). Nothing is created here: the storage directory is made with the run directory.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.errors import ConfigError
from core.storage import StorageError, check_remote, is_remote, local_path
from workers.preflight import candidate_widths, largest_model, min_generator_steps

logger = logging.getLogger(__name__)

# Per file: torch.save's zip (a local header, 64-byte alignment and a central directory entry per
# tensor, the pickle) and the plain fields. Measured: ~0.4 KiB per tensor, ~1.5 KiB per file.
_FILE_OVERHEAD = 4096
_TENSOR_OVERHEAD = 512
# history.csv, summary and report files, plots, sample grids, the config.
_RUN_FILES_BYTES = 16 * 2**20
_MARGIN = 1.10


def _nearest_existing(path: Path) -> Path:
    """`path` itself, or its closest ancestor on disk (links included, broken or not)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_storage(storage: str | os.PathLike) -> None:
    """A ConfigError unless run.storage is (or can be made) a directory this process can write in.

    Writability is probed by creating an unnamed temporary file (O_TMPFILE where supported), not
    with os.access: that is True for root even on some file systems that refuse root's writes.
    A store URI is probed with a small object (a bad bucket or missing credentials fails here,
    before any actor starts), and then its local mirror like any folder.
    """
    if is_remote(storage):
        try:
            check_remote(str(storage))
        except StorageError as err:
            raise ConfigError(str(err)) from None
    storage = local_path(storage).absolute()
    found = _nearest_existing(storage)
    if found.is_symlink() and not found.exists():
        raise ConfigError(f"run.storage: {found} is a symlink to {os.readlink(found)}, which does not exist")
    if not found.is_dir():
        where = "" if found == storage else f"cannot create {storage}: "
        raise ConfigError(f"run.storage: {where}{found} is a file, not a directory; point run.storage at a "
                          "directory (it holds one sub-directory per run)")
    try:
        tempfile.TemporaryFile(dir=found).close()
    except OSError as err:
        what = f"{storage} is" if found == storage else f"cannot create {storage}: {found} is"
        raise ConfigError(f"run.storage: {what} not writable ({err.strerror or err}); point run.storage "
                          "at a directory you can write in, e.g. --set run.storage=$HOME/runs") from None


# ------------------------------------------------------------------ disk space

@dataclass(frozen=True)
class DiskEstimate:
    """A run's model files, per owner (a label, or the one baseline) and in all."""

    owners: int
    snapshot_bytes: int      # one snapshot: the generator's state
    checkpoint_bytes: int    # one full checkpoint: both networks, both Adam states, RNG
    snapshots: int           # per owner, all kept
    checkpoints: int         # per owner at most at once: keep_checkpoints + the one being written
    total_bytes: int         # everything, with the margin and the run's other files
    width: Optional[int] = None  # model.width auto: the width sized at, the widest the run may choose

    def describe(self) -> str:
        return (f"{_human(self.total_bytes)}{f' at model.width {self.width}' if self.width else ''}: "
                f"{self.owners} x ({self.snapshots} snapshot(s) x "
                f"{_human(self.snapshot_bytes)} + {self.checkpoints} checkpoint(s) x {_human(self.checkpoint_bytes)}), "
                f"+{round((_MARGIN - 1) * 100)}% and {_human(_RUN_FILES_BYTES)} for the other files")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _state_sizes(module) -> tuple[int, int, int, int]:
    """(state_dict bytes, state_dict tensors, trainable parameter bytes, trainable parameters)."""
    state = module.state_dict()
    params = [p for p in module.parameters() if p.requires_grad]
    return (sum(t.numel() * t.element_size() for t in state.values()), len(state),
            sum(p.numel() * p.element_size() for p in params), len(params))


def estimate_disk(cfg, channels: int, image_size: int, n_labels: int,
                  num_classes: Optional[int] = None, width: Optional[int] = None) -> DiskEstimate:
    """What a run's snapshots and checkpoints take on disk, at most, from its config and data shape
    (at `width` when given; model.width auto: at its widest candidate).

    The networks are built on torch's "meta" device (shapes, no memory), so this is cheap for any
    size. `num_classes` estimates the data-parallel baseline instead: one conditional pair.
    """
    import torch  # deferred, with the models: the driver's other checks run without it

    from workers.models import build_models

    model = cfg.model if width is None else cfg.model.model_copy(update={"width": width})
    with torch.device("meta"):
        generator, critic = build_models(largest_model(model, channels, image_size), channels, image_size,
                                         num_classes)
    g_bytes, g_tensors, g_param_bytes, g_params = _state_sizes(generator)
    d_bytes, d_tensors, d_param_bytes, d_params = _state_sizes(critic)
    copies = 2 if cfg.model.ema else 1  # the generator and its moving average
    snapshot = copies * (g_bytes + _TENSOR_OVERHEAD * g_tensors) + _FILE_OVERHEAD
    # Adam: exp_avg and exp_avg_sq like each parameter, plus a step scalar; the RNG state ~5 KiB.
    adam_bytes = 2 * (g_param_bytes + d_param_bytes) + 4 * (g_params + d_params)
    checkpoint = (copies * g_bytes + d_bytes + adam_bytes + 8192 + _FILE_OVERHEAD
                  + _TENSOR_OVERHEAD * (copies * g_tensors + d_tensors + 3 * (g_params + d_params)))
    train = cfg.train
    saves = math.floor(train.budget_s / train.checkpoint_every_s + 1e-9) + 1  # periodic ones, then the final
    kept = saves if train.keep_checkpoints is None else min(saves, train.keep_checkpoints + 1)
    # A snapshot at every mark of either cadence (shared where they meet), then the final one.
    marks = {round(k * train.checkpoint_every_s, 6) for k in range(1, saves)}
    if cfg.metrics.every_s:
        marks |= {round(k * cfg.metrics.every_s, 6)
                  for k in range(1, math.floor(train.budget_s / cfg.metrics.every_s + 1e-9) + 1)}
    snaps = len(marks) + 1
    owners = 1 if num_classes is not None else n_labels
    models = owners * (snaps * snapshot + kept * checkpoint)
    total = int(models * _MARGIN) + _RUN_FILES_BYTES
    return DiskEstimate(owners, snapshot, checkpoint, snaps, kept, total, width)


def estimate_run_bytes(cfg, channels: int, image_size: int, n_labels: int,
                       num_classes: Optional[int] = None) -> int:
    """Bytes a run needs on run.storage, at most (see :func:`estimate_disk`)."""
    return estimate_disk(cfg, channels, image_size, n_labels, num_classes).total_bytes


def free_bytes(storage: str | os.PathLike) -> int:
    """Free space for this process on the file system that holds (or will hold) `storage`."""
    return shutil.disk_usage(_nearest_existing(local_path(storage).absolute())).free


def check_free_space(storage: str | os.PathLike, need_bytes: int, what: str = "") -> None:
    """A ConfigError (exit 2) when the file system of run.storage has less than `need_bytes` free."""
    free = free_bytes(storage)
    if free >= need_bytes:
        return
    raise ConfigError(
        f"run.storage: {storage} has {_human(free)} free, but this run needs about {_human(need_bytes)}"
        f"{' (' + what + ')' if what else ''}; a full disk fails a label for good. Keep fewer full "
        "checkpoints (train.keep_checkpoints=1), write them less often (a larger train.checkpoint_every_s: "
        "fewer snapshots), train fewer labels (dataset.labels), or point run.storage at a bigger disk")


def check_run_disk(cfg, channels: int, image_size: int, n_labels: int,
                   num_classes: Optional[int] = None) -> DiskEstimate:
    """Estimate a run's disk use, log it, and refuse it (ConfigError) when run.storage lacks the space.

    model.width auto: at the widest candidate width whose run fits (its `width`, which caps the label
    actors' choice), refused only when not even the narrowest does."""
    free = free_bytes(cfg.run.storage)
    auto = cfg.model.width == "auto" and num_classes is None
    for width in reversed(candidate_widths(cfg.model, channels, image_size)) if auto else [None]:
        est = estimate_disk(cfg, channels, image_size, n_labels, num_classes, width)
        if est.total_bytes <= free:
            break
    logger.info("disk: this run writes up to %s to %s (%s free)", est.describe(), cfg.run.storage, _human(free))
    check_free_space(cfg.run.storage, est.total_bytes, est.describe())
    return est


# ------------------------------------------------------------------ what the budget buys

def budget_projection(progress: dict[int, dict], cfg, image_size: int) -> Optional[tuple[str, bool]]:
    """(message, too few) from the labels' pre-flight step times, or None before they are known.
    With model.width auto it names the width the actors chose (reported with their projections)."""
    alive = [s for s in progress.values() if s.get("state") != "failed"]
    if not alive or any(s.get("projected_steps") is None for s in alive):
        return None  # not every label has timed its steps yet
    projected = [int(s["projected_steps"]) for s in alive]
    projected.sort()
    low, mid, high = projected[0], projected[len(projected) // 2], projected[-1]
    need = min_generator_steps(image_size)
    budget = cfg.train.budget_s
    auto = cfg.model.width == "auto"
    chosen = "/".join(sorted({str(s.get("width")) for s in alive})) if auto else None
    msg = (f"pre-flight: {f'model.width auto chose {chosen}; ' if auto else ''}{budget:g}s buys about "
           f"{low}/{mid}/{high} generator steps per label (min/median/max over {len(projected)} labels)")
    if low >= need:
        return msg + (f", at least the {need} that {image_size}px images need" if auto else ""), False
    step_s = max(float(s.get("step_s") or 0.0) for s in progress.values())
    longer = math.ceil(need * step_s / 10) * 10 if step_s else None
    # auto already took the widest width that reaches the minimum, else the narrowest candidate.
    fixes = ([] if auto else [f"lower model.width (now {cfg.model.width}; the cost grows about with its square)"]) \
        + ([f"give train.budget_s={longer:g} or more"] if longer else []) \
        + ["put fewer labels on each device (more GPUs or CPUs per label)"]
    fix = ", ".join(fixes[:-1]) + ", or " + fixes[-1] if len(fixes) > 1 else fixes[0]
    return f"{msg}: fewer than the {need} that {image_size}px images need for usable samples. " \
           f"{fix[0].upper()}{fix[1:]}", True
