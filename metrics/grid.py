"""Sample grids: one row per label, so a person sees at a glance what each generator learned."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torchvision.utils import save_image

from core.rundir import RunDir, atomic_write
from workers.sampler import Sampler

MAX_GRID_LABELS = 20


def grid_labels(labels: Sequence[int], max_rows: int = MAX_GRID_LABELS) -> list[int]:
    """At most `max_rows` labels spread over the range: a 1,000-label run gets a readable grid
    and never loads all its generators for it."""
    labels = list(labels)
    if len(labels) <= max_rows:
        return labels
    step = len(labels) / max_rows
    return [labels[int(i * step)] for i in range(max_rows)]


def save_sample_grid(sampler, labels: Sequence[int], path: str | Path, per_label: int = 10,
                     seed: int = 0, upscale_to: int = 32) -> Path:
    """Writes a PNG grid; rows follow `labels`. Tiny images (8x8 digits) are upscaled so they are visible."""
    labels = list(labels)
    wanted = torch.tensor(labels).repeat_interleave(per_label)
    images = sampler.sample(wanted, seed=seed).add(1).div(2).clamp(0, 1)
    if images.shape[-1] < upscale_to:
        factor = -(-upscale_to // images.shape[-1])
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    return atomic_write(path, lambda f: save_image(images, f, format="png", nrow=per_label, padding=2,
                                                   pad_value=0.5))


def save_run_grid(run: RunDir, per_label: int = 10) -> Path:
    """samples/grid.png of a run's latest models (either kind), at most MAX_GRID_LABELS rows."""
    latest = run.latest_snapshots()
    if not latest:
        raise FileNotFoundError(f"{run.path}: no snapshots or checkpoints to sample a grid from")
    shown = grid_labels(sorted(latest))
    sampler = Sampler.from_checkpoints({k: latest[k] for k in shown})
    return save_sample_grid(sampler, shown, run.grid, per_label=per_label)
