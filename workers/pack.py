"""Several labels' pairs trained in turn by one process, as one trainable for :class:`BudgetedLoop`.

Past ``resources.max_actors_per_gpu`` processes a GPU spends its memory on CUDA contexts and
cuDNN workspaces, not on training; a pack keeps one context for many labels. Each step of the
pack is one generator step of every label, in a fixed order, so within any budget every label
gets the same number of steps (its fair share of the device) and the loop's one clock, stopping
rule and checkpoint cadence hold for all of them. The labels never exchange anything: each pair
keeps its own networks, optimisers, data and RNG, exactly as in a process of its own.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional

import torch

from workers.gan import WGANGP, StepStats


class Pack:
    """`start_s`: the budget each label had spent when this session began. Labels of one pack
    are checkpointed together, but a kill between two of their saves, or a resume that packs
    labels differently, can leave them apart: a label ahead waits until the pack's clock
    (which starts at the least spent budget) reaches its own, so no label trains past its
    budget and none loses what it spent. `max_steps` stops each label at that step."""

    def __init__(self, pairs: Mapping[int, WGANGP], start_s: Optional[Mapping[int, float]] = None,
                 max_steps: Optional[int] = None):
        if not pairs:
            raise ValueError("a pack needs at least one label")
        self.pairs = dict(pairs)
        self.start_s = {k: float((start_s or {}).get(k, 0.0)) for k in self.pairs}
        self.max_steps = max_steps
        self.last: dict[int, StepStats] = {}
        self._t0: Optional[float] = None

    @property
    def elapsed0(self) -> float:
        """Where the pack's budget clock starts: the least budget any of its labels has spent."""
        return min(self.start_s.values())

    def elapsed_s(self) -> float:
        return self.elapsed0 + (time.monotonic() - self._t0 if self._t0 is not None else 0.0)

    @property
    def generator_steps(self) -> int:
        """Steps every label has reached (the loop's max_steps check: all labels are done)."""
        return min(p.generator_steps for p in self.pairs.values())

    @property
    def images_per_step(self) -> int:
        return sum(p.images_per_step for p in self.pairs.values())

    def step(self) -> StepStats:
        """One step of each label that may train now; the mean of their stats (each label's
        own are in `last`)."""
        if self._t0 is None:
            self._t0 = time.monotonic()
        now = self.elapsed_s()
        stepped = []
        for label, pair in self.pairs.items():
            if self.max_steps is not None and pair.generator_steps >= self.max_steps:
                continue
            if now < self.start_s[label]:
                continue  # ahead of the pack's clock: waits for it
            self.last[label] = stats = pair.step()
            stepped.append(stats)
        if not stepped:  # every label waits (cannot happen: the least spent one always trains)
            raise RuntimeError("no label of the pack could step")
        if len(stepped) == 1:
            return stepped[0]
        return StepStats.from_tensor(torch.stack([s.tensor() for s in stepped]).mean(0))
