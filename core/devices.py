"""Each Ray process sees exactly the GPUs Ray assigned to it: none when it asked for none.

Ray sets ``CUDA_VISIBLE_DEVICES`` for a task or actor that requested GPUs, but since 2.4x it
leaves the variable alone for one that requested none (unless ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
is set on every node). torch in such a process sees every GPU of the node and would put its
work, and a CUDA context, on GPU 0, which Ray reserved for somebody else. Checking the runtime
context's accelerator ids is not enough: any library that probes CUDA would still find them.

:func:`hide_unassigned_gpus` must run before anything in the process touches CUDA (torch reads
the variable once, at its first CUDA call): the label actors, the collector and the scoring task
call it first thing. Ray Train's CPU workers (the baseline on CPUs) call it too, but Ray Train
probes CUDA before the training function starts; they stay on the CPU because Ray Train gives
them the CPU device, not because CUDA cannot see the GPUs.
"""

from __future__ import annotations

import os
from typing import Optional

VISIBLE = "CUDA_VISIBLE_DEVICES"


def hide_unassigned_gpus() -> Optional[list[str]]:
    """Hide every GPU from a Ray process that was assigned none.

    A process with GPUs keeps what Ray set: its own ids (a label actor), or for Ray Train's
    GPU workers every id of the workers on its node, which NCCL needs and which Ray Train's
    device choice indexes into. Returns the assigned ids, or None outside a Ray task or actor
    (a driver, a plain script, a test driving a trainer in-process): there the environment is
    left as the user set it.
    """
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    if not ray.is_initialized():
        return None
    if ray._private.worker.global_worker.mode != ray.WORKER_MODE:  # a driver: its devices are the user's
        return None
    ids = [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    if not ids:
        os.environ[VISIBLE] = ""
    return ids


def visible_gpus() -> Optional[str]:
    """What CUDA may see in this process (None: not restricted)."""
    return os.environ.get(VISIBLE)
