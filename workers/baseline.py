"""The usual distributed baseline: one conditional WGAN-GP on all labels, data-parallel with Ray Train.

``train_baseline`` runs :func:`train_loop_per_worker` on N Ray Train workers
(``TorchTrainer``; process group gloo on CPU, NCCL on GPU). Each worker holds a
1/N shard of every training label's images, resident on its device, samples
its own batch of ``train.batch_size`` (the global batch is N x batch_size), and
after every backward the gradients are averaged over the workers with one
all-reduce per update -- the DDP update rule.

Why not ``DistributedDataParallel(critic)``: the WGAN-GP penalty differentiates
through ``autograd.grad(..., create_graph=True)``, which DDP does not support
(pytorch/pytorch#47562 gives wrong gradients, #63929 tracks higher-order
gradients). Like NVIDIA's StyleGAN2-ADA training loop, the gradients are
flattened and all-reduced explicitly instead, which is the same arithmetic as
DDP minus the bucketing overlap. The same all-reduce carries the losses (so the
logged losses are means over workers) and two control flags, so every worker
stops and calls ``ray.train.report`` (a barrier) at the same step without an
extra collective.

Rank 0 writes atomic checkpoints to ``<run_dir>/baseline/ckpt-<step:08d>.pt``
and ``<run_dir>/baseline/history.csv``; on a restart (``max_failures``) every
worker reloads the latest checkpoint and trains only for the budget that is left.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from orchestrator.config import Config
from workers import checkpoint
from workers.conditional_models import build_conditional_models
from workers.data import load_label, to_model_range
from workers.wgan_gp import GANPairState, StepStats, amp_supported, autocast_context, gradient_penalty, pick_device

BASELINE_DIRNAME = "baseline"
MODEL_KIND = "conditional-wgan-gp"

# Flags riding on the generator all-reduce: summed over workers, then tested > 0.
_STOP, _REPORT = range(2)
_N_STATS = 4  # critic_loss, generator_loss, wasserstein, gradient_penalty


# ------------------------------------------------------------------ layout

def baseline_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / BASELINE_DIRNAME


def is_baseline_run(run_dir: str | Path) -> bool:
    return baseline_dir(run_dir).is_dir()


def baseline_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return baseline_dir(run_dir) / f"ckpt-{step:08d}.pt"


def list_baseline_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) pairs, oldest first."""
    d = baseline_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = checkpoint.CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_baseline_checkpoint(run_dir: str | Path) -> Optional[Path]:
    ckpts = list_baseline_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def _prune(run_dir: Path, keep: Optional[int]) -> None:
    if keep is None:
        return
    for _, p in list_baseline_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------ the conditional pair and its step

GradSync = Callable[[Sequence[torch.nn.Parameter], Optional[torch.Tensor]], Optional[torch.Tensor]]


def no_sync(params, extras: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Single process: nothing to average."""
    return extras


def allreduce_mean(world_size: int) -> GradSync:
    """Average the parameters' gradients (and an extra vector) over the workers: one all-reduce."""
    import torch.distributed as dist

    def sync(params, extras):
        grads = [p.grad for p in params if p.grad is not None]
        parts = [g.reshape(-1) for g in grads]
        if extras is not None:
            parts.append(extras.reshape(-1).to(grads[0].dtype if grads else torch.float32))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        return flat[offset:] if extras is not None else None

    return sync


class ConditionalWGANGP(GANPairState):
    """One conditional WGAN-GP pair on one worker's shard; Ray-free (tests drive it in-process)."""

    def __init__(self, model_cfg, train_cfg, images_uint8: torch.Tensor, labels: torch.Tensor, channels: int,
                 image_size: int, num_classes: int, device: torch.device, seed: int = 0,
                 data_seed: Optional[int] = None, grad_sync: GradSync = no_sync):
        self.device = device
        self.train_cfg = train_cfg
        torch.manual_seed(seed)  # same seed on every worker: same initial weights
        self.generator, self.critic = (m.to(device) for m in
                                       build_conditional_models(model_cfg, channels, image_size, num_classes))
        self.z_dim = model_cfg.z_dim
        lr, betas = train_cfg.lr, tuple(train_cfg.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)
        if len(images_uint8) == 0:
            raise ValueError("this worker's shard has no images")
        if device.type == "cuda":
            images_uint8, labels = images_uint8.pin_memory(), labels.pin_memory()
        self.images = images_uint8.to(device, non_blocking=True)
        self.labels = labels.to(device, non_blocking=True)
        self.batch_size = train_cfg.batch_size
        self.generator_steps = 0
        self.generator_ = torch.Generator(device=device)
        self.generator_.manual_seed(seed if data_seed is None else data_seed)
        self.use_amp = amp_supported(train_cfg.amp, device)
        self.grad_sync = grad_sync

    def _autocast(self):
        return autocast_context(self.use_amp)

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.images), (self.batch_size,), device=self.device, generator=self.generator_)
        return to_model_range(self.images[idx]), self.labels[idx]

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device, generator=self.generator_)

    def _fake_labels(self, n: int) -> torch.Tensor:
        """Labels for the generator update, drawn from the shard's own label frequencies."""
        idx = torch.randint(0, len(self.labels), (n,), device=self.device, generator=self.generator_)
        return self.labels[idx]

    def step(self, flags: Optional[torch.Tensor] = None) -> tuple[StepStats, Optional[torch.Tensor]]:
        """n_critic critic updates, then one generator update; returns the worker-mean stats and
        the worker-summed `flags` (they ride on the generator's gradient all-reduce)."""
        cfg = self.train_cfg
        self.generator.train()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        for _ in range(cfg.n_critic):
            real, y = self._real_batch()
            with torch.no_grad(), self._autocast():
                fake = self.generator(self._noise(real.size(0)), y)
            fake = fake.float()
            with self._autocast():
                d_real = self.critic(real, y).float().mean()
                d_fake = self.critic(fake, y).float().mean()
            if cfg.gp_weight > 0:
                gp = gradient_penalty(lambda x: self.critic(x, y), real, fake, self.generator_, self.use_amp)
            else:
                gp = torch.zeros((), device=self.device)
            loss_d = d_fake - d_real + cfg.gp_weight * gp
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.grad_sync(list(self.critic.parameters()), None)
            self.opt_d.step()

        for p in self.critic.parameters():
            p.requires_grad_(False)
        y_g = self._fake_labels(self.batch_size)
        with self._autocast():
            loss_g = -self.critic(self.generator(self._noise(self.batch_size), y_g), y_g).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        stats = torch.stack([loss_d.detach(), loss_g.detach(), (d_real - d_fake).detach(), gp.detach()]).float()
        extras = stats if flags is None else torch.cat([stats, flags.to(self.device, torch.float32)])
        synced = self.grad_sync(list(self.generator.parameters()), extras)
        if synced is None:
            synced = extras
        self.opt_g.step()
        self.generator_steps += 1
        mean = synced[:_N_STATS]
        out_flags = None if flags is None else synced[_N_STATS:]
        return StepStats(mean[0], mean[1], mean[2], mean[3]), out_flags

    def images_per_step(self, world_size: int = 1) -> int:
        """Real images the critics see per generator step, over all workers."""
        return self.batch_size * self.train_cfg.n_critic * world_size


# ------------------------------------------------------------------ data

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


# ------------------------------------------------------------------ the Ray Train loop

def _report_interval(log_every_s: float) -> float:
    """Seconds between ray.train.report calls in the loop.

    Ray Train V2 queues one report per worker (queue of size 1) and its controller drains it once per
    health check (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): a report made sooner blocks the
    worker until that poll, about 2 s of lost training each time. Reporting no more often than every
    2.5 polls never blocks; history.csv still gets a row every train.log_every_s.
    """
    poll_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0))
    return max(log_every_s, 2.5 * poll_s)


def _broadcast_state(modules, src: int = 0) -> None:
    import torch.distributed as dist

    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config`: {"run_dir", "cfg" (Config dict), "threads", "num_classes"}."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from workers.trainer import History  # the same history.csv format as the label actors

    run_dir = Path(config["run_dir"])
    cfg = Config.model_validate(config["cfg"])
    train = cfg.train
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]
    if device.type == "cuda":
        pick_device()  # the label trainers' cuDNN benchmark / TF32 settings, so both run the same kernels
    distributed = world > 1 and dist.is_available() and dist.is_initialized()

    load_start = time.monotonic()
    labels = list(config["labels"])
    images, ys = load_shard(cfg.dataset, labels, rank, world)
    channels, size = int(images.shape[1]), int(images.shape[2])
    latest = latest_baseline_checkpoint(run_dir)
    restored = checkpoint.load(latest, map_location=device) if latest is not None else None
    start_steps = int(restored["state"]["generator_steps"]) if restored else 0
    gan = ConditionalWGANGP(
        cfg.model, train, images, ys, channels, size, int(config["num_classes"]), device,
        seed=train.seed, data_seed=(train.seed * 1000 + rank) * 1_000_003 + start_steps,
        grad_sync=allreduce_mean(world) if distributed else no_sync,
    )
    if restored is not None:
        gan.load_state_dict(restored["state"], restore_rng=False)  # each worker keeps its own data stream
    if distributed:
        _broadcast_state([gan.generator, gan.critic])
    elapsed0 = float(restored["elapsed_s"]) if restored else 0.0
    restarts = int(restored.get("restarts", 0)) + 1 if restored else 0
    images_seen0 = int(restored["images_seen"]) if restored else 0
    ips = gan.images_per_step(world)
    setup_s = time.monotonic() - load_start
    report_every_s = _report_interval(train.log_every_s)

    def save(elapsed: float, final: bool = False, rate: Optional[float] = None) -> Path:
        path = baseline_checkpoint_path(run_dir, gan.generator_steps)
        checkpoint.save_atomic({
            "kind": MODEL_KIND, "state": gan.state_dict(), "elapsed_s": elapsed,
            "model": cfg.model.model_dump(), "channels": channels, "image_size": size,
            "num_classes": int(config["num_classes"]), "labels": labels,
            "images_seen": images_seen0 + (gan.generator_steps - start_steps) * ips,
            "restarts": restarts, "dataset": cfg.dataset.name, "world_size": world,
            "device": str(device), "final": final, "images_per_s": rate,
        }, path)
        _prune(run_dir, train.keep_checkpoints)
        return path

    history = History(baseline_dir(run_dir) / "history.csv", keep_up_to=start_steps) if rank == 0 else None
    t0 = time.monotonic()
    last_log = last_ckpt = t0
    steps_at_log = gan.generator_steps
    step_s = 0.0
    stats: Optional[StepStats] = None

    def elapsed_now() -> float:
        return elapsed0 + (time.monotonic() - t0)

    def make_row(rate: float) -> dict:
        return {"step": gan.generator_steps, "elapsed_s": round(elapsed_now(), 3), **stats.floats(),
                "images_per_s": rate, "restarts": restarts}

    # Deterministic on every worker (all restored the same checkpoint), so no collective is needed.
    def more_to_do() -> bool:
        return elapsed0 < train.budget_s and (train.max_steps is None or gan.generator_steps < train.max_steps)

    # The flags of step k are acted on after step k+1 has been launched, so on a GPU reading them
    # never stalls the launch queue (the copy to pinned memory is waited for one step late).
    # Every worker lags the same way, so all still stop and report at the same step.
    cuda = device.type == "cuda"
    pinned = [torch.zeros(2, pin_memory=True) for _ in range(2)] if cuda else []
    pending = None  # (flags tensor, cuda event or None) of the previous step
    last_report, steps_at_report = t0, gan.generator_steps
    running = more_to_do()
    while running:
        t_step = time.monotonic()
        flags = torch.zeros(2)
        # The flag is read a step late, so raise it when 1.5 (smoothed) steps are left: training then
        # ends within half a step of the budget (the label trainers end at most one step past it).
        flags[_STOP] = float(elapsed_now() + 1.5 * step_s >= train.budget_s)
        if rank == 0:
            flags[_REPORT] = float(t_step - last_report >= report_every_s)
        stats, synced = gan.step(flags)
        if cuda:
            buf = pinned[gan.generator_steps % 2]
            buf.copy_(synced, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            current = (buf, event)
        else:
            current = (synced, None)
        decided, pending = pending, current
        now = time.monotonic()
        step_s = now - t_step if step_s == 0.0 else 0.8 * step_s + 0.2 * (now - t_step)
        if train.max_steps is not None and gan.generator_steps >= train.max_steps:
            break  # deterministic: the same step on every worker
        if decided is None:
            continue
        if decided[1] is not None:
            decided[1].synchronize()
        if decided[0][_STOP] > 0:
            break
        # history.csv and checkpoints are rank 0's alone: no collective, decided by its own clock.
        if rank == 0 and now - last_log >= train.log_every_s:
            rate = (gan.generator_steps - steps_at_log) * ips / max(now - last_log, 1e-9)
            history.append(make_row(rate))
            last_log, steps_at_log = now, gan.generator_steps
        if rank == 0 and now - last_ckpt >= train.checkpoint_every_s:
            save(elapsed_now())
            last_ckpt = time.monotonic()
        # ray.train.report is a barrier over all workers: every worker calls it at the same step.
        if decided[0][_REPORT] > 0:
            ray.train.report({"step": gan.generator_steps, "elapsed_s": round(elapsed_now(), 3),
                              **stats.floats(),
                              "images_per_s": (gan.generator_steps - steps_at_report) * ips / max(now - last_report, 1e-9),
                              "budget_s": train.budget_s, "world_size": world})
            last_report, steps_at_report = time.monotonic(), gan.generator_steps

    elapsed = max(elapsed_now(), elapsed0)
    trained_s = elapsed - elapsed0 if gan.generator_steps > start_steps else 0.0
    images_per_s = (gan.generator_steps - start_steps) * ips / max(trained_s, 1e-9) if trained_s else 0.0
    summary = {
        "method": "baseline", "steps": gan.generator_steps, "elapsed_s": round(elapsed, 3),
        "trained_s": round(trained_s, 3),
        "steps_per_s": (gan.generator_steps - start_steps) / max(trained_s, 1e-9) if trained_s else 0.0,
        "images_per_s": images_per_s, "world_size": world, "device": str(device), "restarts": restarts,
        "resumed_from_step": start_steps if restored else None, "setup_s": round(setup_s, 3),
        "critic_loss": None, "generator_loss": None, "wasserstein": None,
    }
    if stats is not None:
        final_row = make_row(images_per_s)
        summary.update({k: final_row[k] for k in ("critic_loss", "generator_loss", "wasserstein")})
        if rank == 0:
            history.append(final_row)
    if rank == 0:
        path = save(elapsed, final=True, rate=images_per_s)
        summary["checkpoint"] = str(path)
        tmp = baseline_dir(run_dir) / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, baseline_dir(run_dir) / "summary.json")
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})


# ------------------------------------------------------------------ driver side

def _check_fits(num_workers: int, use_gpu: bool, resources_per_worker: dict) -> None:
    """Fail fast (a Ray Train worker group that does not fit waits for resources forever)."""
    import ray

    from orchestrator.cluster import alive_nodes
    from orchestrator.resources import PlacementError, _labels_that_fit

    nodes = alive_nodes()
    gpus = float(resources_per_worker.get("GPU", 1.0 if use_gpu else 0.0))
    cpus = float(resources_per_worker.get("CPU", 1.0))
    fits = _labels_that_fit(nodes, gpus, cpus)
    if fits < num_workers:
        raise PlacementError(
            f"baseline: cannot place {num_workers} Ray Train workers x ({gpus:g} GPU + {cpus:g} CPU); "
            f"only {fits} fit on this cluster ({ray.cluster_resources()})"
        )


def train_baseline(cfg: Config, run_dir: str | Path, num_workers: int, use_gpu: bool = False,
                   resources_per_worker: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
    """Train the data-parallel conditional baseline into `run_dir` (resuming from its checkpoints).

    Needs a connected Ray (``orchestrator.cluster.connect``). Writes ``run_dir/config.yaml``,
    ``run_dir/baseline/{ckpt-*.pt,history.csv,summary.json}``, ``run_dir/samples/grid.png`` and
    Ray Train's own files under ``run_dir/ray_train/`` (never ``~/ray_results``). Returns the summary.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.config import save_config
    from workers.data import describe

    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    info = describe(cfg.dataset)  # bad data fails here, before any worker starts
    run_dir = Path(run_dir).resolve()
    resources = dict(resources_per_worker or ({"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": 1.0}))
    if use_gpu:
        resources.setdefault("GPU", 1.0)
    _check_fits(num_workers, use_gpu, resources)
    run_dir.mkdir(parents=True, exist_ok=True)
    baseline_dir(run_dir).mkdir(exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    threads = max(1, int(math.floor(float(resources.get("CPU", 1.0)) + 1e-9)))
    backend = "nccl" if use_gpu else "gloo"
    log(f"baseline: {num_workers} Ray Train worker(s) x {resources} ({backend}), conditional WGAN-GP on "
        f"{len(info.labels)} labels, budget {cfg.train.budget_s:g}s, batch {cfg.train.batch_size} per worker")
    if latest_baseline_checkpoint(run_dir) is not None:
        log(f"baseline: resuming from {latest_baseline_checkpoint(run_dir)}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run_dir": str(run_dir), "cfg": cfg.to_dict(), "threads": threads,
                           "labels": list(info.labels), "num_classes": info.num_classes},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name="ray_train", storage_path=str(run_dir),
                             failure_config=FailureConfig(max_failures=cfg.max_restarts)),
    )
    t0 = time.monotonic()
    try:
        trainer.fit()
    except Exception as err:  # ray.train.TrainingFailedError and friends, after max_failures restarts
        from orchestrator.run import RunFailed

        raise RunFailed(
            f"baseline training failed after {cfg.max_restarts} restart(s): {str(err).strip().splitlines()[-1]}. "
            f"Checkpoints are kept in {baseline_dir(run_dir)}; re-running resumes from the latest."
        ) from err
    summary_path = baseline_dir(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update({"wall_s": round(time.monotonic() - t0, 3), "num_workers": num_workers,
                    "resources_per_worker": resources, "backend": backend})
    summary_path.write_text(json.dumps(summary, indent=2))
    try:
        from metrics.grid import save_sample_grid
        from workers.sampler import load_sampler

        sampler = load_sampler(run_dir)
        summary["grid"] = str(save_sample_grid(sampler, sampler.labels, run_dir / "samples" / "grid.png"))
    except Exception as err:  # a grid is a convenience; never fail a finished run over it
        log(f"baseline: could not write the sample grid: {err}")
    log(f"baseline: {summary['steps']} steps in {summary['elapsed_s']:.0f}s, "
        f"{summary['images_per_s']:.0f} img/s over {num_workers} worker(s); {run_dir}")
    return summary


__all__ = ["ConditionalWGANGP", "train_loop_per_worker", "train_baseline", "baseline_dir", "is_baseline_run",
           "list_baseline_checkpoints", "latest_baseline_checkpoint", "load_shard", "BASELINE_DIRNAME"]
