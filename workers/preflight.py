"""What a label's budget buys, and the width ``model.width: auto`` picks for a run.

Shared by the label actors (which time steps on their devices) and the driver (which checks
and reports): torch is imported only where networks are counted, so the driver's early checks
stay light.

``model.width: auto``: each actor bisects :data:`WIDTHS` on its device, timing a couple of
steps per probed width under the load of training, for the widest width whose projected
generator steps reach :func:`min_generator_steps`; the run takes the narrowest of the actors'
picks (one architecture per run, and the slowest actor's labels reach the minimum too) and
records it in its ``config.yaml``, where a restarted actor, a resumed run, sampling and
scoring find it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from core.config import dump_config, load_config
from core.errors import ConfigError
from core.rundir import RunDir, write_text

# Generator steps below which a label's samples are still mostly noise, by image size. Rough
# guidance from this project's runs and WGAN-GP's schedules (Gulrajani et al. train 100k+):
# digits 8x8 reach class accuracy ~0.9 with ~300 steps; a 28x28 folder with 8 steps gave noise.
MIN_STEPS = ((16, 200), (32, 1000), (64, 2000))
MIN_STEPS_LARGER = 4000

# model.width: auto's candidates, narrow to wide (step time grows about with the square).
WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128)


def min_generator_steps(image_size: int) -> int:
    return next((steps for size, steps in MIN_STEPS if image_size <= size), MIN_STEPS_LARGER)


def projected_steps(step_s: float, budget_left_s: float, labels: int = 1) -> int:
    """Generator steps that fit in `budget_left_s` when an actor trains `labels` labels in turn."""
    round_s = step_s * labels
    if not math.isfinite(round_s):  # a width that did not fit the device
        return 0
    return int(max(0.0, budget_left_s) / max(round_s, 1e-9))


def choose_width(widths: Sequence[int], seconds_per_step: Callable[[int], float], budget_s: float,
                 need: int, labels: int = 1) -> tuple[int, int]:
    """(the widest width whose projected steps reach `need`, its projection), else the narrowest's.

    `widths` ascend and step time grows with width, so a bisection finds it: about
    log2(len(widths)) calls of `seconds_per_step`, each width timed once (timing costs start-up
    time, the widest most)."""
    timed: dict[int, int] = {}

    def projection(i: int) -> int:
        if i not in timed:
            timed[i] = projected_steps(seconds_per_step(widths[i]), budget_s, labels)
        return timed[i]

    passing, failing = -1, len(widths)  # widths[:passing + 1] reach `need`, widths[failing:] do not
    while failing - passing > 1:
        mid = (passing + failing) // 2
        if projection(mid) >= need:
            passing = mid
        else:
            failing = mid
    best = max(passing, 0)
    return widths[best], projection(best)


def candidate_widths(model_cfg, channels: int, image_size: int, max_width: Optional[int] = None) -> list[int]:
    """:data:`WIDTHS` up to `max_width` (the narrowest at least) whose networks fit model.max_parameters
    (a ConfigError naming the narrowest when none does)."""
    from workers.models import check_model_size  # deferred: torch

    fits: list[int] = []
    for width in WIDTHS:
        if fits and max_width is not None and width > max_width:
            break
        try:
            check_model_size(model_cfg.model_copy(update={"width": width}), channels, image_size)
        except ConfigError:
            if not fits:
                raise
            break
        fits.append(width)
    return fits


def largest_model(model_cfg, channels: int, image_size: int):
    """`model_cfg`, or with width auto its widest candidate: what the driver's size and disk checks
    go by before the actors have chosen (an upper bound)."""
    if model_cfg.width != "auto":
        return model_cfg
    return model_cfg.model_copy(update={"width": candidate_widths(model_cfg, channels, image_size)[-1]})


def recorded_width(run: RunDir) -> Optional[int]:
    """The width the run's config.yaml holds, None while it says auto (or there is none yet)."""
    if not run.config.is_file():
        return None
    width = load_config(run.config).model.width
    return None if width == "auto" else int(width)


def record_width(run: RunDir, width: int) -> None:
    """Put the chosen width in the run's config.yaml, which resume, sampling and scoring rebuild from."""
    cfg = load_config(run.config)
    cfg.model.width = int(width)
    write_text(run.config, dump_config(cfg))
