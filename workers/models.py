"""DCGAN-style generators and critics that adapt their depth to the resolution.

The per-label pair (:class:`Generator`, :class:`Critic`) and the data-parallel baseline's
conditional pair (:class:`ConditionalGenerator`, :class:`ProjectionCritic`) share one layer
plan (``resolution_plan`` + ``stage_channels``), so at equal ``model.width`` each label's
network in the ensemble and the shared conditional network have the same architecture; the
conditional pair only adds label embeddings:

* ConditionalGenerator: conditional batch norm (de Vries et al. 2017; Miyato & Koyama 2018):
  batch statistics are shared, the affine gamma/beta come from a per-class embedding.
* ProjectionCritic (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018):
  ``D(x, y) = head(phi(x)) + <embed(y), sum_hw phi(x)>``.

Critics have no batch norm: the WGAN-GP penalty is per-sample, and batch statistics would
couple the samples it differentiates through. Labels are the data set's own class indices
(``0 .. num_classes-1``), so a run of ``dataset.labels=[0,3,7]`` embeds all classes.

Only sizes ``b * 2^k`` with a 4-7 px base grow cleanly (:func:`buildable`); any other size keeps
a large base, and the generator's first linear layer grows with its square (375 px once asked
for 1.15 billion parameters). :func:`check_model_size` counts parameters on the meta device
(nothing allocated) and refuses networks over ``model.max_parameters``; :func:`build_models`
calls it, so no path builds one unchecked.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from core.errors import ConfigError

MAX_BASE = 7                        # resolution_plan halves even sizes down to a 4-7 px base
DEFAULT_MAX_PARAMETERS = 200_000_000  # model.max_parameters' default, for model configs without it


def resolution_plan(image_size: int) -> tuple[int, int]:
    """(base size, number of 2x stages): 8 -> (4, 1), 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4)."""
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    base, stages = image_size, 0
    while base % 2 == 0 and base > 7:
        base //= 2
        stages += 1
    return base, stages


def buildable(image_size: int) -> bool:
    """Whether the networks grow to this size from a 4-7 px base by doubling (4, 5, 6, 7, 8, 10,
    12, 14, 16, 20, ..., 320, 384, 448, 512, ...)."""
    return image_size >= 4 and resolution_plan(image_size)[0] <= MAX_BASE


def nearest_buildable(image_size: int) -> tuple[Optional[int], int]:
    """(largest buildable size <= image_size or None, smallest buildable size >= image_size)."""
    below = image_size
    while below >= 4 and not buildable(below):
        below -= 1
    above = max(image_size, 4)
    while not buildable(above):  # gaps are at most a fifth of the size: a short walk
        above += 1
    return (below if below >= 4 else None), above


def snap_image_size(image_size: int, limit: int = 1024) -> int:
    """The buildable size nearest `image_size` (a tie goes down: less upscaling, a smaller model),
    never above `limit` (the largest dataset.image_size the config accepts)."""
    below, above = nearest_buildable(min(image_size, limit))
    if below is None:
        return above
    if above > limit or image_size - below <= above - image_size:
        return below
    return above


def stage_channels(width: int, stages: int) -> list[int]:
    """Channels from the base (widest) to the output resolution; at most 8x width."""
    return [width * min(2 ** (stages - i), 8) for i in range(stages + 1)]


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, channels: int, image_size: int):
        super().__init__()
        self.z_dim, self.image_size = z_dim, image_size
        self.base, stages = resolution_plan(image_size)
        chans = stage_channels(width, stages)
        self.project = nn.Sequential(
            nn.Linear(z_dim, chans[0] * self.base * self.base),
            nn.BatchNorm1d(chans[0] * self.base * self.base),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(nn.Conv2d(chans[-1], channels, kernel_size=3, padding=1), nn.Tanh())
        self._first_channels = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self._first_channels, self.base, self.base)
        return self.to_image(self.blocks(h))


class Critic(nn.Module):
    def __init__(self, width: int, channels: int, image_size: int):
        super().__init__()
        self.base, stages = resolution_plan(image_size)
        chans = list(reversed(stage_channels(width, stages)))
        layers = [nn.Conv2d(channels, chans[0], kernel_size=3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_channels = chans[-1]
        self.head = nn.Linear(chans[-1] * self.base * self.base, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine; gamma/beta looked up per class."""

    def __init__(self, num_features: int, num_classes: int, dims: int = 2):
        super().__init__()
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.bn = bn(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)
        self.dims = dims

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        gamma, beta = self.gamma(y), self.beta(y)
        if self.dims == 2:
            gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        return gamma * h + beta


class ConditionalGenerator(nn.Module):
    def __init__(self, z_dim: int, width: int, channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.z_dim, self.image_size, self.num_classes = z_dim, image_size, num_classes
        self.base, stages = resolution_plan(image_size)
        chans = stage_channels(width, stages)
        self._first_channels = chans[0]
        self.project = nn.Linear(z_dim, chans[0] * self.base * self.base)
        self.project_norm = ConditionalBatchNorm(chans[0] * self.base * self.base, num_classes, dims=1)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in zip(chans[:-1], chans[1:])
        )
        self.norms = nn.ModuleList(ConditionalBatchNorm(c, num_classes) for c in chans[1:])
        self.to_image = nn.Sequential(nn.Conv2d(chans[-1], channels, kernel_size=3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.project_norm(self.project(z), y))
        h = h.view(-1, self._first_channels, self.base, self.base)
        for up, norm in zip(self.ups, self.norms):
            h = torch.relu(norm(up(h), y))
        return self.to_image(h)


class ProjectionCritic(Critic):
    """The per-label Critic plus a class projection, so both methods share one critic body."""

    def __init__(self, width: int, channels: int, image_size: int, num_classes: int):
        super().__init__(width, channels, image_size)
        # Projection on globally sum-pooled features (Miyato & Koyama): one C-vector per class.
        self.embed = nn.Embedding(num_classes, self.feature_channels)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        out = self.head(h.flatten(1)).squeeze(1)
        return out + (self.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)


def parameter_counts(model_cfg, channels: int, image_size: int,
                     num_classes: Optional[int] = None) -> tuple[int, int]:
    """(generator, critic) parameters, counted on the meta device: no memory, milliseconds."""
    with torch.device("meta"):
        generator, critic = _construct(model_cfg, channels, image_size, num_classes)
    return count_parameters(generator), count_parameters(critic)


def check_model_size(model_cfg, channels: int, image_size: int,
                     num_classes: Optional[int] = None) -> tuple[int, int]:
    """(generator, critic) parameters, or a ConfigError when either is over model.max_parameters."""
    g, d = parameter_counts(model_cfg, channels, image_size, num_classes)
    cap = getattr(model_cfg, "max_parameters", DEFAULT_MAX_PARAMETERS)
    if max(g, d) > cap:
        raise ConfigError(
            f"model.max_parameters: the generator would have {g:,} parameters and the critic {d:,} "
            f"(model.width={model_cfg.width}, dataset.image_size={image_size}, {channels} channel(s)), over "
            f"model.max_parameters={cap:,}. Lower model.width or dataset.image_size, or raise "
            f"model.max_parameters (e.g. --set model.max_parameters={max(g, d)}) if you mean it")
    return g, d


def build_models(model_cfg, channels: int, image_size: int,
                 num_classes: Optional[int] = None) -> tuple[nn.Module, nn.Module]:
    """The per-label pair, or with `num_classes` the conditional pair of the baseline; refused
    (ConfigError) over model.max_parameters."""
    check_model_size(model_cfg, channels, image_size, num_classes)
    return _construct(model_cfg, channels, image_size, num_classes)


def _construct(model_cfg, channels: int, image_size: int,
               num_classes: Optional[int]) -> tuple[nn.Module, nn.Module]:
    if num_classes is None:
        return (Generator(model_cfg.z_dim, model_cfg.width, channels, image_size),
                Critic(model_cfg.width, channels, image_size))
    return (ConditionalGenerator(model_cfg.z_dim, model_cfg.width, channels, image_size, num_classes),
            ProjectionCritic(model_cfg.width, channels, image_size, num_classes))
