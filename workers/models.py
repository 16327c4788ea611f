"""DCGAN-style generator and critic that adapt their depth to the resolution.

The critic has no batch norm: the WGAN-GP penalty is per-sample, and batch
statistics would couple the samples it differentiates through.
"""

from __future__ import annotations

import torch
from torch import nn


def resolution_plan(image_size: int) -> tuple[int, int]:
    """(base size, number of 2x stages): 8 -> (4, 1), 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4)."""
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    base, stages = image_size, 0
    while base % 2 == 0 and base > 7:
        base //= 2
        stages += 1
    return base, stages


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


def build_models(model_cfg, channels: int, image_size: int) -> tuple[Generator, Critic]:
    return (
        Generator(model_cfg.z_dim, model_cfg.width, channels, image_size),
        Critic(model_cfg.width, channels, image_size),
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
