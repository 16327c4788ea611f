"""One sampling API for both kinds of run: ``load_sampler(run_dir).sample(labels, seed)``.

A :class:`Sampler` maps each label to the network that generates it: in a per-label ensemble
run label k's own generator (the ensemble *is* the conditional generator), in a
data-parallel baseline run the one conditional generator, told the label. With the same seed
both draw the same noise for the same (label, position among that label's requests), so the
two methods are compared on identical z.

    from workers.sampler import load_sampler
    model = load_sampler("runs/digits-20261125-120000")
    images = model.sample([0, 0, 7, 3], seed=0)   # float [-1, 1], [4, C, H, W]
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from core.config import ModelConfig
from core.rundir import RunDir, load_checkpoint
from core import storage
from workers.models import build_models


class Sampler:
    def __init__(self, networks: Mapping[int, nn.Module], z_dim: int, device: str | torch.device = "cpu",
                 conditional: bool = False):
        self.generators = dict(networks)
        self.z_dim = z_dim
        self.device = torch.device(device)
        self.conditional = conditional
        for g in set(self.generators.values()):
            g.to(self.device).eval()

    @property
    def labels(self) -> list[int]:
        return sorted(self.generators)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_checkpoints(cls, paths: Mapping[int, str | Path], device: str | torch.device = "cpu",
                         ema: bool = True) -> "Sampler":
        """label -> snapshot or checkpoint: label files (an ensemble) or one baseline file for every label.
        `ema`: the generators' moving averages where the files keep them."""
        if not paths:
            raise FileNotFoundError("no checkpoints given")
        loaded: dict[Path, tuple[nn.Module, int, bool, list[int]]] = {}  # a baseline's file serves every label
        nets = {}
        for label, path in paths.items():
            path = Path(path)
            if path not in loaded:
                loaded[path] = _load_generator(path, ema)
            nets[int(label)] = loaded[path][0]
        kinds = {conditional for _, _, conditional, _ in loaded.values()}
        if kinds == {True} and len(loaded) > 1:
            raise ValueError(f"one baseline checkpoint per sampler, got {sorted(map(str, loaded))}")
        if len(kinds) > 1:
            raise ValueError("a sampler is either an ensemble of label checkpoints or one baseline checkpoint")
        _, z_dim, conditional, _ = next(iter(loaded.values()))
        return cls(nets, z_dim, device, conditional)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> "Sampler":
        """The model in one checkpoint: a label's generator, or the baseline's for every label it trained."""
        generator, z_dim, conditional, labels = _load_generator(Path(path), ema)
        return cls({k: generator for k in labels}, z_dim, device, conditional)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, labels: Sequence[int] | torch.Tensor, seed: Optional[int] = None,
               batch_size: int = 1024) -> torch.Tensor:
        """Images in [-1, 1], one per entry of `labels`, in the same order.

        Noise is drawn per label in a fixed order, so for one seed every model sees the same z
        for each (label, position among that label's requests).
        """
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        unknown = sorted(set(labels.tolist()) - set(self.generators))
        if unknown:
            raise KeyError(f"labels {unknown} have no generator; this model has {self.labels}")
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
                z = torch.randn(len(chunk), self.z_dim, generator=rng).to(self.device)
                imgs = self._generate(k, z).float().cpu()
                if out is None:
                    out = torch.empty((len(labels), *imgs.shape[1:]))
                out[chunk] = imgs
        return out if out is not None else torch.empty(0)

    def _generate(self, label: int, z: torch.Tensor) -> torch.Tensor:
        g = self.generators[label]
        if self.conditional:
            return g(z, torch.full((len(z),), label, dtype=torch.long, device=self.device))
        return g(z)


def _load_generator(path: Path, ema: bool = True) -> tuple[nn.Module, int, bool, list[int]]:
    """(generator, z_dim, conditional, labels it generates) of a snapshot or full checkpoint of either kind
    (both hold the generator's weights under state["generator"], and its average under
    state["generator_ema"] when model.ema kept one: used when `ema`)."""
    blob = load_checkpoint(path)
    model_cfg = ModelConfig(**blob["model"])
    num_classes = blob.get("num_classes")
    generator, _ = build_models(model_cfg, blob["channels"], blob["image_size"], num_classes)
    state = blob["state"]
    generator.load_state_dict(state["generator_ema"] if ema and "generator_ema" in state else state["generator"])
    labels = [int(k) for k in blob.get("labels") or [blob["label"]]]  # "labels" is absent in older label checkpoints
    return generator, model_cfg.z_dim, num_classes is not None, labels


def load_sampler(run_dir: str | Path, device: str | torch.device = "cpu") -> Sampler:
    """The latest model of a run, whichever kind it is (FileNotFoundError when it has none).

    Read from the run's newest snapshots (generator only); a run written before snapshots
    existed is read from its full checkpoints."""
    run = RunDir(run_dir)
    if not storage.is_dir(run.path):
        raise FileNotFoundError(f"run directory not found: {run.location}")
    latest = run.latest_snapshots()
    if not latest:
        raise FileNotFoundError(f"{run.path}: no models under labels/*/snapshots/, labels/*/ckpt-*.pt, "
                                "baseline/snapshots/ or baseline/ckpt-*.pt")
    return Sampler.from_checkpoints(latest, device)


__all__ = ["Sampler", "load_sampler"]
