"""The usual distributed baseline, worker side: one conditional WGAN-GP on all labels, data-parallel.

:func:`train_loop_per_worker` runs on each of N Ray Train workers (``TorchTrainer``; gloo on
CPU, NCCL on GPU; started by :mod:`orchestrator.baseline`). Each worker holds a 1/N shard of
every training label's images, resident on its device, samples its own batch of
``train.batch_size`` (the global batch is N x batch_size), and after every backward the
gradients are averaged over the workers with one all-reduce per update: the DDP update rule.

Why not ``DistributedDataParallel(critic)``: the WGAN-GP penalty differentiates through
``autograd.grad(..., create_graph=True)``, which DDP does not support (pytorch/pytorch#47562
gives wrong gradients, #63929 tracks higher-order gradients). Like NVIDIA's StyleGAN2-ADA
training loop, the gradients are flattened and all-reduced explicitly instead, which is the
same arithmetic as DDP minus the bucketing overlap.

The pair and the loop are the label actors' own (:class:`workers.gan.WGANGP`,
:class:`workers.loop.BudgetedLoop`), so both methods stop by the same rule. Rank 0's clock
decides when to stop, log and checkpoint, and its decisions are broadcast (over a gloo group on
the host, so the GPU never waits for them), so every worker takes them at the same step. Rank 0 alone writes ``<run>/baseline/ckpt-*.pt``,
``history.csv`` and ``summary.json``; after a restart (``max_failures``) every worker reloads
the latest checkpoint and trains only for the budget that is left.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Sequence

import torch

from core.config import Config
from core.devices import hide_unassigned_gpus
from core.logs import configure as configure_logging
from core.rundir import BASELINE, History, RunDir, write_text
from workers.checkpoint import Checkpointer, restore
from workers.data import load_label
from workers.gan import WGANGP, StepStats, use_fast_fixed_shape_kernels
from workers.loop import BudgetedLoop, Decisions

logger = logging.getLogger(__name__)


def load_shard(dataset_cfg, labels: Sequence[int], rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `world_size`-th training image of every label, starting at `rank`: class-balanced
    shards that together hold the training split exactly once."""
    xs, ys = [], []
    for k in labels:
        x = load_label(dataset_cfg, k, "train")
        part = x[rank::world_size]
        if len(part) == 0:  # fewer images of this label than workers: reuse one so no shard lacks it
            part = x[rank % len(x):rank % len(x) + 1]
        xs.append(part.clone())
        ys.append(torch.full((len(part),), int(k), dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def allreduce_mean(world_size: int):
    """A grad_sync that averages the parameters' gradients over the workers: one all-reduce."""
    import torch.distributed as dist

    def sync(params) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    return sync


def _rank0_decides():
    """Every worker takes rank 0's decisions (stop, log, checkpoint, snapshot), exchanged over a
    gloo group on the host: four floats per step, and no device synchronisation even when
    training uses NCCL."""
    import torch.distributed as dist

    control = dist.new_group(backend="gloo")

    def agree(d: Decisions) -> Decisions:
        flags = torch.tensor([float(x) for x in d])
        dist.broadcast(flags, src=0, group=control)
        return Decisions(*(bool(x) for x in flags.tolist()))

    return agree


def _mean_over_workers(world_size: int):
    import torch.distributed as dist

    def reduce(stats: StepStats) -> StepStats:
        t = stats.tensor()
        dist.all_reduce(t)
        return StepStats.from_tensor(t / world_size)

    return reduce


def _broadcast_weights(modules, src: int = 0) -> None:
    import torch.distributed as dist

    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src)


def _quiet_ray_train_reports(level: int) -> None:
    """Ray Train logs every ray.train.report at INFO ("Reporting training result N:
    TrainingReport(...)"), a line per log interval in the user's terminal: shown with -v only."""
    if level <= logging.DEBUG:
        return
    try:
        from ray.train.v2._internal.execution import context  # its logger is named after the file
    except ImportError:  # another Ray Train layout: its lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config`: {"run_dir", "cfg" (Config dict), "threads", "labels", "num_classes"}."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    t_setup = time.monotonic()
    hide_unassigned_gpus()  # a CPU worker on a GPU node: Ray Train gives it no GPU, so CUDA must see none
    _quiet_ray_train_reports(configure_logging())
    run = RunDir(config["run_dir"])
    cfg = Config.model_validate(config["cfg"])
    train = cfg.train
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]
    use_fast_fixed_shape_kernels(device)  # the label actors' kernels, so both run the same code
    distributed = world > 1 and dist.is_available() and dist.is_initialized()

    labels = [int(k) for k in config["labels"]]
    num_classes = int(config["num_classes"])
    images, ys = load_shard(cfg.dataset, labels, rank, world)
    start_steps = _latest_step(run)
    pair = WGANGP.build(cfg.model, train, images, device, labels=ys, num_classes=num_classes, seed=train.seed,
                        # each worker its own batches, and a fresh stream after a resume
                        data_seed=(train.seed * 1000 + rank) * 1_000_003 + start_steps,
                        grad_sync=allreduce_mean(world) if distributed else None)
    if rank == 0:
        run.sweep_temporaries(BASELINE)  # a killed predecessor's half-written files
    resume = restore(run, BASELINE, pair, restore_rng=False)
    if distributed:
        _broadcast_weights([pair.generator, pair.critic])
    restarts = resume.restarts + 1 if resume.path is not None else 0
    images_per_step = pair.images_per_step * world
    checkpointer = Checkpointer(run, BASELINE, pair, cfg, resume, restarts, labels, images_per_step,
                                num_classes=num_classes, world_size=world)
    history = History(run.history(BASELINE), keep_up_to=resume.start_step) if rank == 0 else None
    setup_s = time.monotonic() - t_setup

    def on_log(row: dict) -> None:
        if history is not None:
            history.append({**row, "restarts": restarts})
            logger.info("baseline: step %d, %.0f/%gs, %.0f img/s over %d worker(s), W %.3f", row["step"],
                        row["elapsed_s"], train.budget_s, row["images_per_s"], world, row["wasserstein"])

    def on_checkpoint(elapsed_s: float, final: bool, mark_s: float | None) -> None:
        if rank == 0:
            rate = checkpointer.images_seen / elapsed_s if final and elapsed_s > 0 else None
            checkpointer.save(elapsed_s, final, rate, mark_s=mark_s)

    def on_snapshot(elapsed_s: float, mark_s: float | None) -> None:
        if rank == 0:
            checkpointer.save_snapshot(elapsed_s, mark_s)

    loop = BudgetedLoop(pair, train.budget_s, max_steps=train.max_steps, elapsed0=resume.elapsed_s,
                        log_every_s=train.log_every_s, checkpoint_every_s=train.checkpoint_every_s,
                        marks_every_s=cfg.metrics.every_s,
                        images_per_step=images_per_step,
                        agree=_rank0_decides() if distributed else (lambda d: d),
                        reduce_stats=_mean_over_workers(world) if distributed else (lambda s: s))
    result = loop.run(on_log, on_checkpoint, on_snapshot)
    if rank == 0:
        last = result.last or {}
        summary = {
            "method": "baseline", "steps": result.steps, "elapsed_s": round(result.elapsed_s, 3),
            "trained_s": round(result.trained_s, 3),
            # over all the training kept in checkpoints (a resumed run reports its real rate)
            "steps_per_s": result.steps / result.elapsed_s if result.elapsed_s > 0 else 0.0,
            "images_per_s": checkpointer.images_seen / result.elapsed_s if result.elapsed_s > 0 else 0.0,
            "world_size": world, "device": str(device),
            "restarts": restarts, "resumed_from_step": resume.start_step if resume.path is not None else None,
            "setup_s": round(setup_s, 3),
            "checkpoint": str(run.latest_checkpoint(BASELINE)),
            **{k: last.get(k) for k in ("critic_loss", "generator_loss", "wasserstein")},
        }
        write_text(run.baseline_summary, json.dumps(summary, indent=2))


def _latest_step(run: RunDir) -> int:
    """The step the workers will resume from (seeds a fresh data stream after a restart)."""
    found = run.checkpoints(BASELINE)
    return found[-1][0] if found else 0


__all__ = ["train_loop_per_worker", "load_shard", "allreduce_mean"]
