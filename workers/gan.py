"""One WGAN-GP pair and its update step (Gulrajani et al. 2017), free of Ray.

The same class trains a label's unconditional pair in a label actor and the baseline's
conditional pair on each Ray Train worker: the pair owns its step, and the budgeted loop
(:mod:`workers.loop`) only decides when to call it. With ``labels`` given the pair is
conditional (the baseline): real batches carry their labels, fake images are generated for
labels drawn at the data's own frequencies, and both networks take the labels as a second
argument. ``grad_sync`` averages gradients over data-parallel workers after each backward.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from workers.data import to_model_range
from workers.models import build_models

GradSync = Callable[[Sequence[nn.Parameter]], None]


# ------------------------------------------------------------------ devices

def pick_device() -> torch.device:
    """CUDA when this process sees a GPU, else the CPU.

    Ray's GPU ids are logical, so an actor "on a GPU" of a CPU-only test cluster sees no
    CUDA device here and trains on the CPU.
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_fast_fixed_shape_kernels(device: torch.device) -> None:
    """cuDNN autotuning and TF32 for the fp32 parts: every training step has the same shapes.

    Process-wide switches, so training entry points call this explicitly, once.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def amp_supported(amp: bool, device: torch.device) -> bool:
    """bf16 autocast only where bf16 is native (compute capability 8.0+, A100/H100): on
    V100s (the paper's hardware) it is emulated and slower than fp32."""
    return bool(amp) and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def autocast(use_amp: bool):
    """bf16 autocast on CUDA when `use_amp`, else a no-op context."""
    if use_amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ the step

def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     rng: torch.Generator, use_amp: bool = False) -> torch.Tensor:
    """E[(||grad_x critic(x)||_2 - 1)^2] at random interpolates of real and fake images."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device, generator=rng)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast(use_amp):
        scores = critic(mixed)
    (grads,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((grads.flatten(1).float().norm(2, dim=1) - 1) ** 2).mean()


@dataclass
class StepStats:
    """Detached 0-d tensors: reading them (`floats()`) syncs the device, so callers do it
    only when they log."""

    critic_loss: torch.Tensor
    generator_loss: torch.Tensor
    wasserstein: torch.Tensor       # E[D(real)] - E[D(fake)], the critic's distance estimate
    gradient_penalty: torch.Tensor

    def tensor(self) -> torch.Tensor:
        return torch.stack([self.critic_loss, self.generator_loss, self.wasserstein, self.gradient_penalty]).float()

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "StepStats":
        return cls(*t.unbind())

    def floats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


EMA_DECAY = 0.999


class WGANGP:
    """A generator/critic pair, its Adam optimisers, its device-resident data and its RNG."""

    def __init__(self, generator: nn.Module, critic: nn.Module, train_cfg, images_uint8: torch.Tensor,
                 device: torch.device, labels: Optional[torch.Tensor] = None, seed: int = 0,
                 grad_sync: Optional[GradSync] = None, ema: bool = False):
        if len(images_uint8) == 0:
            raise ValueError("no training images")
        self.device = device
        self.cfg = train_cfg
        self.generator, self.critic = generator.to(device), critic.to(device)
        # The generator's moving average: what sampling and scoring use when kept (model.ema).
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False) if ema else None
        betas = tuple(train_cfg.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=train_cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=train_cfg.lr, betas=betas)
        # Resident on the device as uint8 (4x smaller than float); pinned first so the one
        # host-to-GPU copy is asynchronous.
        if device.type == "cuda":
            images_uint8 = images_uint8.pin_memory()
            labels = labels.pin_memory() if labels is not None else None
        self.images = images_uint8.to(device, non_blocking=True)
        self.labels = labels.to(device, non_blocking=True) if labels is not None else None
        self.z_dim = generator.z_dim
        self.batch_size = train_cfg.batch_size
        self.generator_steps = 0
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(seed)
        self.use_amp = amp_supported(train_cfg.amp, device)
        self.grad_sync = grad_sync

    @classmethod
    def build(cls, model_cfg, train_cfg, images_uint8: torch.Tensor, device: torch.device, *,
              labels: Optional[torch.Tensor] = None, num_classes: Optional[int] = None, seed: int = 0,
              data_seed: Optional[int] = None, grad_sync: Optional[GradSync] = None) -> "WGANGP":
        """Networks initialised from `seed` (the same on every data-parallel worker), batches and
        noise drawn from `data_seed` (default: `seed`). `num_classes` makes the pair conditional."""
        torch.manual_seed(seed)
        channels, size = int(images_uint8.shape[1]), int(images_uint8.shape[2])
        generator, critic = build_models(model_cfg, channels, size, num_classes)
        return cls(generator, critic, train_cfg, images_uint8, device, labels=labels,
                   seed=seed if data_seed is None else data_seed, grad_sync=grad_sync,
                   ema=getattr(model_cfg, "ema", False))

    @property
    def images_per_step(self) -> int:
        """Real images the critic sees per generator step (on this worker)."""
        return self.batch_size * self.cfg.n_critic

    # batches -------------------------------------------------------------------------------
    def _real_batch(self) -> tuple[torch.Tensor, tuple]:
        idx = torch.randint(0, len(self.images), (self.batch_size,), device=self.device, generator=self.rng)
        return to_model_range(self.images[idx]), self._cond(idx)

    def _fake_cond(self) -> tuple:
        """Labels for the generator update, at the data's own label frequencies (none if unconditional)."""
        if self.labels is None:
            return ()
        return self._cond(torch.randint(0, len(self.labels), (self.batch_size,), device=self.device,
                                        generator=self.rng))

    def _cond(self, idx: torch.Tensor) -> tuple:
        return () if self.labels is None else (self.labels[idx],)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device, generator=self.rng)

    def _sync(self, module: nn.Module) -> None:
        if self.grad_sync is not None:
            self.grad_sync(list(module.parameters()))

    # the update ----------------------------------------------------------------------------
    def step(self) -> StepStats:
        """n_critic critic updates, then one generator update with the critic frozen."""
        cfg = self.cfg
        self.generator.train()
        self.critic.requires_grad_(True)
        for _ in range(cfg.n_critic):
            real, cond = self._real_batch()
            with torch.no_grad(), autocast(self.use_amp):
                fake = self.generator(self._noise(real.size(0)), *cond)
            fake = fake.float()
            with autocast(self.use_amp):
                d_real = self.critic(real, *cond).float().mean()
                d_fake = self.critic(fake, *cond).float().mean()
            if cfg.gp_weight > 0:
                gp = gradient_penalty(lambda x: self.critic(x, *cond), real, fake, self.rng, self.use_amp)
            else:
                gp = torch.zeros((), device=self.device)
            loss_d = d_fake - d_real + cfg.gp_weight * gp
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self._sync(self.critic)
            self.opt_d.step()

        self.critic.requires_grad_(False)
        cond = self._fake_cond()
        with autocast(self.use_amp):
            loss_g = -self.critic(self.generator(self._noise(self.batch_size), *cond), *cond).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self._sync(self.generator)
        self.opt_g.step()
        self.generator_steps += 1
        self._update_ema()
        return StepStats(loss_d.detach(), loss_g.detach(), (d_real - d_fake).detach(), gp.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights; buffers (batch-norm statistics) copied. The
        decay warms up, so a short run's average is not dominated by its first, untrained weights."""
        if self.generator_ema is None:
            return
        t = self.generator_steps - 1  # updates before this one
        decay = min(EMA_DECAY, (1 + t) / (10 + t))
        torch._foreach_lerp_(list(self.generator_ema.parameters()), list(self.generator.parameters()), 1 - decay)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    # checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **({"generator_ema": self.generator_ema.state_dict()} if self.generator_ema is not None else {}),
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "generator_steps": self.generator_steps,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict, restore_rng: bool = True) -> None:
        self.generator.load_state_dict(state["generator"])
        if self.generator_ema is not None:  # a checkpoint written without an average starts one from its weights
            self.generator_ema.load_state_dict(state.get("generator_ema", state["generator"]))
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.generator_steps = int(state["generator_steps"])
        if restore_rng:
            try:
                self.rng.set_state(state["rng"].cpu())
            except RuntimeError:
                # Saved on another device type (CPU vs CUDA RNG state): continue with a fresh stream.
                self.rng.manual_seed(int(state["generator_steps"]))
