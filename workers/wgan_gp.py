"""One WGAN-GP pair and its update step (Gulrajani et al. 2017), free of Ray.

The label actor and the in-process benchmark both drive this class, so the
benchmark ratio measures exactly what Ray adds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from workers.data import to_model_range
from workers.models import build_models


def pick_device() -> torch.device:
    """CUDA when Ray gave this process a GPU (CUDA_VISIBLE_DEVICES) and it is real, else CPU.

    Ray's GPU ids are logical, so an actor "on a GPU" of a CPU-only test cluster
    lands here with no CUDA device and trains on the CPU.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # Fixed shapes every step: let cuDNN pick the fastest kernels; TF32 for the fp32 parts.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda")


def amp_supported(amp: bool, device: torch.device) -> bool:
    """bf16 autocast only where bf16 is native (compute capability 8.0+, A100/H100): on
    V100s (the paper's hardware) it is emulated and slower than fp32."""
    return bool(amp) and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def autocast_context(use_amp: bool):
    """bf16 autocast on CUDA when `use_amp`, else a no-op context."""
    if use_amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator,
                     use_amp: bool = False) -> torch.Tensor:
    """E[(||grad_x critic(x)||_2 - 1)^2] at random interpolates of real and fake.

    `critic` is any callable images -> scores (the conditional baseline passes a closure
    that adds the labels), so both trainers share this one implementation.
    """
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device, generator=rng)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with autocast_context(use_amp):
        scores = critic(mixed)
    (grads,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((grads.flatten(1).float().norm(2, dim=1) - 1) ** 2).mean()


class GANPairState:
    """Checkpoint state of a generator/critic pair with Adam optimisers and a seeded RNG
    (shared by the per-label pair and the conditional baseline)."""

    generator: torch.nn.Module
    critic: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    generator_: torch.Generator
    generator_steps: int

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "generator_steps": self.generator_steps,
            "rng": self.generator_.get_state(),
        }

    def load_state_dict(self, state: dict, restore_rng: bool = True) -> None:
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.generator_steps = int(state["generator_steps"])
        if restore_rng:
            try:
                self.generator_.set_state(state["rng"].cpu())
            except RuntimeError:
                # Saved on another device type (CPU vs CUDA RNG state): continue with a fresh stream.
                self.generator_.manual_seed(int(state["generator_steps"]))


@dataclass
class StepStats:
    """Detached 0-d tensors: reading them (`floats()`) syncs the device, so callers do it
    only when they log."""

    critic_loss: torch.Tensor
    generator_loss: torch.Tensor
    wasserstein: torch.Tensor       # E[D(real)] - E[D(fake)], the critic's distance estimate
    gradient_penalty: torch.Tensor

    def floats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class WGANGP(GANPairState):
    def __init__(self, model_cfg, train_cfg, images_uint8: torch.Tensor, channels: int, image_size: int,
                 device: torch.device, seed: int = 0):
        self.device = device
        self.train_cfg = train_cfg
        torch.manual_seed(seed)
        self.generator, self.critic = (m.to(device) for m in build_models(model_cfg, channels, image_size))
        self.z_dim = model_cfg.z_dim
        lr, betas = train_cfg.lr, tuple(train_cfg.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)
        # Resident on the device as uint8; pinned first so the one host->GPU copy is async.
        if device.type == "cuda":
            images_uint8 = images_uint8.pin_memory()
        self.images = images_uint8.to(device, non_blocking=True)
        self.batch_size = train_cfg.batch_size
        self.generator_steps = 0
        self.generator_ = torch.Generator(device=device)
        self.generator_.manual_seed(seed)
        self.use_amp = amp_supported(train_cfg.amp, device)

    def _autocast(self):
        return autocast_context(self.use_amp)

    def _real_batch(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.images), (self.batch_size,), device=self.device, generator=self.generator_)
        return to_model_range(self.images[idx])

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device, generator=self.generator_)

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return gradient_penalty(self.critic, real, fake, self.generator_, self.use_amp)

    def step(self) -> StepStats:
        """n_critic critic updates, then one generator update."""
        cfg = self.train_cfg
        self.generator.train()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        for _ in range(cfg.n_critic):
            real = self._real_batch()
            with torch.no_grad(), self._autocast():
                fake = self.generator(self._noise(real.size(0)))
            fake = fake.float()
            with self._autocast():
                d_real = self.critic(real).float().mean()
                d_fake = self.critic(fake).float().mean()
            gp = self._gradient_penalty(real, fake) if cfg.gp_weight > 0 else torch.zeros((), device=self.device)
            loss_d = d_fake - d_real + cfg.gp_weight * gp
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        for p in self.critic.parameters():
            p.requires_grad_(False)
        with self._autocast():
            loss_g = -self.critic(self.generator(self._noise(self.batch_size))).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.generator_steps += 1
        return StepStats(loss_d.detach(), loss_g.detach(), (d_real - d_fake).detach(), gp.detach())

    @property
    def images_per_step(self) -> int:
        """Real images the critic sees per generator step."""
        return self.batch_size * self.train_cfg.n_critic
