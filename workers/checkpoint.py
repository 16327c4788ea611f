"""Atomic, weights-only checkpoints of one label's WGAN-GP pair.

Layout: ``<run>/labels/<k>/ckpt-<step:08d>.pt``. A checkpoint is written to a
temporary file in the same directory and renamed, so a crash mid-write never
leaves a truncated file where a restarted actor would look for one.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


def label_dir(run_dir: str | Path, label: int) -> Path:
    return Path(run_dir) / "labels" / str(label)


def checkpoint_path(run_dir: str | Path, label: int, step: int) -> Path:
    return label_dir(run_dir, label) / f"ckpt-{step:08d}.pt"


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_checkpoints(run_dir: str | Path, label: int) -> list[tuple[int, Path]]:
    """(step, path) pairs, oldest first."""
    d = label_dir(run_dir, label)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path, label: int) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir, label)
    return ckpts[-1][1] if ckpts else None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def prune(run_dir: str | Path, label: int, keep: Optional[int]) -> None:
    if keep is None:
        return
    for _, p in list_checkpoints(run_dir, label)[:-keep]:
        p.unlink(missing_ok=True)
