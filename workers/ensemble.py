"""The per-label ensemble as one conditional generator: sample(label=k) runs generator k."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch

from orchestrator.config import ModelConfig
from workers import checkpoint
from workers.models import Generator


class Ensemble:
    def __init__(self, generators: Mapping[int, Generator], z_dim: int, device: str | torch.device = "cpu"):
        self.generators = dict(generators)
        self.z_dim = z_dim
        self.device = torch.device(device)
        for g in self.generators.values():
            g.to(self.device).eval()

    @property
    def labels(self) -> list[int]:
        return sorted(self.generators)

    @classmethod
    def from_checkpoints(cls, paths: Mapping[int, str | Path], device: str | torch.device = "cpu") -> "Ensemble":
        gens, z_dim = {}, None
        for label, path in paths.items():
            ckpt = checkpoint.load(path)
            model_cfg = ModelConfig(**ckpt["model"])
            g = Generator(model_cfg.z_dim, model_cfg.width, ckpt["channels"], ckpt["image_size"])
            g.load_state_dict(ckpt["state"]["generator"])
            gens[int(label)] = g
            z_dim = model_cfg.z_dim
        if not gens:
            raise FileNotFoundError("no checkpoints given")
        return cls(gens, z_dim, device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "Ensemble":
        """The latest checkpoint of every label in a run directory."""
        run_dir = Path(run_dir)
        labels_root = run_dir / "labels"
        if not labels_root.is_dir():
            raise FileNotFoundError(f"{run_dir} is not a wcgan run directory (no labels/ inside)")
        paths = {}
        for d in sorted(labels_root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
            if d.name.isdigit():
                latest = checkpoint.latest_checkpoint(run_dir, int(d.name))
                if latest is not None:
                    paths[int(d.name)] = latest
        if not paths:
            raise FileNotFoundError(f"{run_dir}: no label checkpoints under labels/*/ckpt-*.pt")
        return cls.from_checkpoints(paths, device)

    @torch.no_grad()
    def sample(self, labels: Sequence[int] | torch.Tensor, seed: Optional[int] = None,
               batch_size: int = 1024) -> torch.Tensor:
        """Images in [-1, 1], one per entry of `labels`, in the same order."""
        return sample_by_label(labels, self.generators, self.z_dim, self.device,
                               lambda k, z: self.generators[k](z), seed, batch_size)


def sample_by_label(labels: Sequence[int] | torch.Tensor, known: Iterable[int], z_dim: int, device: torch.device,
                    generate: Callable[[int, torch.Tensor], torch.Tensor], seed: Optional[int] = None,
                    batch_size: int = 1024) -> torch.Tensor:
    """Draw noise per label in a fixed order and call `generate(label, z)`; results keep `labels`' order.

    Shared by the per-label ensemble and the conditional baseline so that, for one seed,
    both models see the same noise for each (label, position).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    known = set(known)
    unknown = sorted(set(labels.tolist()) - known)
    if unknown:
        raise KeyError(f"labels {unknown} have no generator; this model has {sorted(known)}")
    rng = torch.Generator(device="cpu")
    if seed is not None:
        rng.manual_seed(seed)
    else:
        rng.seed()
    out: Optional[torch.Tensor] = None
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero().flatten()
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            z = torch.randn(len(chunk), z_dim, generator=rng).to(device)
            imgs = generate(k, z).float().cpu()
            if out is None:
                out = torch.empty((len(labels), *imgs.shape[1:]))
            out[chunk] = imgs
    return out if out is not None else torch.empty(0)
