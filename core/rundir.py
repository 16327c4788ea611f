"""The run directory: the one owner of its paths, its checkpoints and every atomic write.

    <run>/config.yaml                              resolved config
    <run>/labels/<k>/ckpt-<step>.pt                per-label ensemble run: one WGAN-GP pair per label
    <run>/labels/<k>/snapshots/snap-<step>.pt
    <run>/labels/<k>/history.csv
    <run>/baseline/ckpt-<step>.pt                  data-parallel baseline run: one conditional pair
    <run>/baseline/snapshots/snap-<step>.pt
    <run>/baseline/history.csv, summary.json
    <run>/summary.csv, results.csv, per_label.csv, metrics.json, report.md, samples/, plots/

Two kinds of model file, written together at every checkpoint interval:

* a full *checkpoint* (``ckpt-*``): generator, critic, optimisers, RNG, what a resume needs;
  only the newest ``train.keep_checkpoints`` are kept (:meth:`RunDir.prune`);
* a *snapshot* (``snapshots/snap-*``): the generator's weights and the fields sampling and
  scoring need, a fraction of the size; every one is kept, for scores over training time.

Both kinds of run are read through the same calls: an *owner* is a label (``int``) or
:data:`BASELINE`, and :meth:`RunDir.snapshots_by_label` gives, for either kind, the models that
generate each label over training time (snapshots; a run written before snapshots existed
falls back to its full checkpoints).

Every file is written atomically (a temporary file in the same folder, fsync, rename, fsync
of the folder), so a crash never leaves a half-written file under a final name.

A run may live on an object store (``run.storage: s3://bucket/runs``): then :attr:`RunDir.path` is
its local mirror (see core/storage.py), every atomic write is uploaded before it returns, listings
and deletions go to the store, and a model file is fetched when it is read. :attr:`RunDir.location`
is what another process or node is given.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Optional, Union

from core import storage
from core.storage import TMP_PREFIX

BASELINE = "baseline"
Owner = Union[int, str]  # a label, or BASELINE
CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
SNAP_RE = re.compile(r"^snap-(\d{8})\.pt$")
SNAPSHOTS = "snapshots"
HISTORY_FIELDS = ("step", "elapsed_s", "critic_loss", "generator_loss", "wasserstein",
                  "gradient_penalty", "images_per_s", "restarts")


# ------------------------------------------------------------------ atomic writes

def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 check: Optional[Callable[[Path], None]] = None) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it into place.

    `check(tmp_path)`, if given, runs on the complete temporary file and may raise to refuse it
    (nothing is then left behind).

    A failed write (a full disk, a quota, an I/O error) removes the temporary file, leaves any
    previous file at `path` untouched, and raises an OSError with the errno and `path` in its
    message, even where the writer hid it (torch.save reports a full disk as a RuntimeError
    about zip positions)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
        storage.push(path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(err) if isinstance(err, Exception) else None
        if cause is not None and cause.errno in _STORAGE_ERRNOS:
            raise OSError(cause.errno, f"{cause.strerror} (nothing written; any previous file is intact)",
                          str(path)) from err
        raise
    return path


# The storage refusing a write (not, say, a network error raised by the `write` callback).
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _os_error_in(err: BaseException) -> Optional[OSError]:
    """The OSError `err` is or was raised from (its cause/context chain), if any."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(frame, path: str | os.PathLike) -> Path:
    """A pandas DataFrame as CSV, atomically (a report rendered meanwhile never reads half a table)."""
    return write_text(path, frame.to_csv(index=False))


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    import torch  # deferred: the driver lists run directories without importing torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Tensors and plain values only (``weights_only``): a checkpoint never runs code when read."""
    import torch

    _fetch(path)
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's plain fields (elapsed_s, image_size, labels, ...) without reading its tensors."""
    import torch

    _fetch(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: no mmap
        blob = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in blob.items() if k != "state"}


def _fetch(path: str | os.PathLike) -> None:
    """Bring a model file of a stored run into its mirror (a no-op for local runs)."""
    if not storage.pull(path) and storage.is_remote(path):
        raise FileNotFoundError(errno.ENOENT, "not in the store", storage.uri_of(path))


# ------------------------------------------------------------------ the directory

@dataclass(frozen=True)
class CheckpointRef:
    elapsed_s: float   # training time of the models in it
    step: int          # generator steps
    path: Path
    mark_s: Optional[float] = None   # the budget-clock mark it was saved for (None: none, or an older run)

    @classmethod
    def of(cls, step: int, path: Path, meta: dict) -> "CheckpointRef":
        mark = meta.get("mark_s")
        return cls(float(meta.get("elapsed_s", float("nan"))), step, path, None if mark is None else float(mark))


class RunDir:
    """Paths and checkpoints of one run directory (ensemble or baseline)."""

    def __init__(self, location: str | os.PathLike):
        """`location`: a path, or a store URI (its top-level files are fetched into the mirror)."""
        self.path = storage.local_path(location)
        if self.is_remote:
            storage.pull_tree(self.path, keep=lambda rel: not rel.startswith(TMP_PREFIX), recursive=False)

    def __repr__(self) -> str:
        return f"RunDir({self.location!r})"

    @property
    def location(self) -> str:
        """The run as another process or node must be given it: a store URI, or an absolute path."""
        return storage.uri_of(self.path)

    @property
    def is_remote(self) -> bool:
        return storage.is_remote(self.path)

    def exists(self) -> bool:
        """Whether the run has been created (its config is written), on the store when it is stored."""
        return storage.exists(self.config)

    def has(self, path: Path) -> bool:
        """Whether one of the run's files exists, asking the store when the run is stored."""
        return storage.exists(path)

    def sync(self) -> "RunDir":
        """Fetch every small file of a stored run (tables, histories, summaries; not models) into
        its mirror, for the readers that open them by path; a no-op for local runs."""
        storage.pull_tree(self.path, keep=lambda rel: not rel.endswith(".pt") and TMP_PREFIX not in rel)
        return self

    def remove(self) -> None:
        """Delete the whole run, from the store too."""
        storage.remove_tree(self.path)

    # files ----------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_csv(self) -> Path:
        return self.path / "summary.csv"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def per_label_csv(self) -> Path:
        return self.path / "per_label.csv"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def grid(self) -> Path:
        return self.path / "samples" / "grid.png"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def baseline_summary(self) -> Path:
        return self.owner_dir(BASELINE) / "summary.json"

    @property
    def lock(self) -> Path:
        """Held by the driver writing this run (see core/runlock.py)."""
        return self.path / ".lock"

    @property
    def started(self) -> Path:
        """Written once every label has passed the start line: a restarted collector reopens it at once."""
        return self.path / ".started"

    # kinds and owners ------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        return storage.is_dir(self.owner_dir(BASELINE))

    def owner_dir(self, owner: Owner) -> Path:
        if owner == BASELINE:
            return self.path / BASELINE
        return self.path / "labels" / str(int(owner))

    def history(self, owner: Owner) -> Path:
        return self.owner_dir(owner) / "history.csv"

    def label_owners(self) -> list[int]:
        """Labels with a folder under labels/ (ensemble runs), ascending."""
        return sorted(int(name) for name in storage.listdir(self.path / "labels") if name.isdigit())

    # checkpoints -----------------------------------------------------------------------------
    def checkpoint_path(self, owner: Owner, step: int) -> Path:
        return self.owner_dir(owner) / f"ckpt-{step:08d}.pt"

    def checkpoints(self, owner: Owner) -> list[tuple[int, Path]]:
        """(step, path) pairs, oldest first."""
        return _numbered(self.owner_dir(owner), CKPT_RE)

    def latest_checkpoint(self, owner: Owner) -> Optional[Path]:
        found = self.checkpoints(owner)
        return found[-1][1] if found else None

    # snapshots: generator weights only, every one kept ----------------------------------------
    def snapshot_dir(self, owner: Owner) -> Path:
        return self.owner_dir(owner) / SNAPSHOTS

    def snapshot_path(self, owner: Owner, step: int) -> Path:
        return self.snapshot_dir(owner) / f"snap-{step:08d}.pt"

    def snapshots(self, owner: Owner) -> list[tuple[int, Path]]:
        """(step, path) pairs of the owner's snapshots, oldest first."""
        return _numbered(self.snapshot_dir(owner), SNAP_RE)

    def models(self, owner: Owner) -> list[tuple[int, Path]]:
        """(step, path) of every model of the owner to sample or score, oldest first: its snapshots,
        plus any full checkpoint at a step without one (a run written before snapshots existed, or
        a save that failed between the two files)."""
        by_step = dict(self.checkpoints(owner))
        by_step.update(self.snapshots(owner))
        return sorted(by_step.items())

    def latest_model(self, owner: Owner) -> Optional[Path]:
        found = self.models(owner)
        return found[-1][1] if found else None

    def drop_snapshots_after(self, owner: Owner, step: int) -> list[Path]:
        """Delete the snapshots past `step`: a run resuming from the checkpoint of `step` trains those
        steps again, and the old ones would score a discarded line of training. Returns them."""
        dropped = [p for s, p in self.snapshots(owner) if s > step]
        for p in dropped:
            storage.remove(p)
        return dropped

    def sweep_temporaries(self, owner: Owner) -> list[Path]:
        """Delete the temporary files a killed writer left in the owner's folders; returns them."""
        stale = []
        for d in (self.owner_dir(owner), self.snapshot_dir(owner)):
            stale += [d / name for name in storage.listdir(d) if name.startswith(TMP_PREFIX)]
            if d.is_dir():  # a mirror's own leftovers
                stale += [p for p in d.iterdir() if p.name.startswith(TMP_PREFIX) and p not in stale]
        for p in stale:
            storage.remove(p)
        return stale

    def quarantine(self, path: Path) -> Path:
        """Rename an unreadable checkpoint out of every listing (kept for inspection)."""
        target = path.with_name(path.name + ".corrupt")
        storage.rename(path, target)
        return target

    def prune(self, owner: Owner, keep: Optional[int]) -> None:
        """Delete all but the newest `keep` full checkpoints (None keeps all); snapshots are never pruned."""
        if keep is None:
            return
        for _, p in self.checkpoints(owner)[:-keep]:
            storage.remove(p)

    def has_checkpoints(self, labels: Iterable[int]) -> bool:
        return self.latest_checkpoint(BASELINE) is not None or any(self.latest_checkpoint(k) for k in labels)

    def snapshots_by_label(self, labels: Optional[Iterable[int]] = None) -> dict[int, list[CheckpointRef]]:
        """label -> the models that generate it over training time, oldest first, for either kind of run.

        Ensemble: each label's own snapshots (see :meth:`models`). Baseline: every baseline
        snapshot, for each label it trained. Labels without any are left out; a file pruned or
        unreadable while listing is skipped.
        """
        if self.is_baseline:
            refs, trained = [], set()
            for step, path in self.models(BASELINE):
                meta = _meta_or_none(path)
                if meta is not None:
                    refs.append(CheckpointRef.of(step, path, meta))
                    trained = {int(k) for k in meta.get("labels", [])}
            wanted = trained if labels is None else trained & {int(k) for k in labels}
            return {k: list(refs) for k in sorted(wanted)} if refs else {}
        out = {}
        for k in (self.label_owners() if labels is None else labels):
            refs = []
            for step, path in self.models(k):
                meta = _meta_or_none(path)
                if meta is not None:
                    refs.append(CheckpointRef.of(step, path, meta))
            if refs:
                out[int(k)] = refs
        return out

    def latest_snapshots(self, labels: Optional[Iterable[int]] = None) -> dict[int, Path]:
        """label -> the newest model that generates it (the same file for every label of a baseline)."""
        if self.is_baseline:
            latest = self.latest_model(BASELINE)
            if latest is None:
                return {}
            trained = [int(k) for k in checkpoint_meta(latest).get("labels", [])]
            return {k: latest for k in trained if labels is None or k in set(labels)}
        out = {}
        for k in (self.label_owners() if labels is None else labels):
            latest = self.latest_model(k)
            if latest is not None:
                out[int(k)] = latest
        return out

    # the names these had when every checkpoint was kept and scored
    checkpoints_by_label = snapshots_by_label
    latest_by_label = latest_snapshots


def _numbered(directory: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """(step, path) of the files in `directory` whose names `pattern` matches, oldest first (listed
    on the store for a stored run: other nodes write there)."""
    return sorted((int(m.group(1)), directory / name) for name in storage.listdir(directory)
                  if (m := pattern.match(name)))


def _meta_or_none(path: Path) -> Optional[dict]:
    try:
        return checkpoint_meta(path)
    except Exception:  # pruned meanwhile, or unreadable: not a candidate
        return None


# ------------------------------------------------------------------ history.csv

class History:
    """history.csv of one owner, appended row by row so a crash loses at most one log interval.

    On resume the rows past the checkpoint being resumed from are dropped (atomically): those
    steps are trained again and would otherwise be logged twice.
    """

    def __init__(self, path: str | os.PathLike, keep_up_to: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if storage.pull(self.path):
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_up_to]
            atomic_write(self.path, lambda out: out.write(_csv_text(rows, header=True).encode()))

    def append(self, row: dict) -> None:
        header = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            f.write(_csv_text([row], header=header))
        storage.push(self.path)


def _csv_text(rows: list[dict], header: bool) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
