"""One sampling API for both kinds of run: ``load_sampler(run_dir).sample(labels, seed)``.

* per-label ensemble run (``<run>/labels/<k>/ckpt-*.pt``): :class:`workers.ensemble.Ensemble`
* data-parallel baseline run (``<run>/baseline/ckpt-*.pt``): :class:`BaselineSampler`

Both expose ``.labels``, ``.z_dim``, ``.device``, ``.generators`` (label -> module; for the
baseline every label maps to the one shared conditional generator) and
``.sample(labels, seed=None, batch_size=1024) -> float [-1, 1] images`` in the order of
``labels``. With the same seed both draw the same noise for the same (label, position among
that label's requests), so the two methods are compared on identical z.

For scoring over time: :func:`checkpoints_over_time` lists a run's checkpoints with their
training time, and :func:`sampler_from_checkpoint` builds a sampler from one baseline
checkpoint or from a {label: checkpoint} mapping of an ensemble.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from orchestrator.config import ModelConfig
from workers import checkpoint
from workers.baseline import BASELINE_DIRNAME, MODEL_KIND, baseline_dir, is_baseline_run, list_baseline_checkpoints
from workers.conditional_models import ConditionalGenerator
from workers.ensemble import Ensemble, sample_by_label


class BaselineSampler:
    """The data-parallel baseline's conditional generator behind the Ensemble's interface."""

    kind = "baseline"

    def __init__(self, generator: ConditionalGenerator, labels: Sequence[int], z_dim: int,
                 device: str | torch.device = "cpu", meta: Optional[dict] = None):
        self.generator = generator
        self._labels = sorted(int(k) for k in labels)
        self.z_dim = z_dim
        self.device = torch.device(device)
        self.generator.to(self.device).eval()
        self.meta = dict(meta or {})

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def generators(self) -> dict[int, ConditionalGenerator]:
        """label -> generator, like Ensemble.generators (here the same module for every label)."""
        return {k: self.generator for k in self._labels}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "BaselineSampler":
        ckpt = checkpoint.load(path)
        if ckpt.get("kind") != MODEL_KIND:
            raise ValueError(f"{path} is not a baseline checkpoint (kind={ckpt.get('kind')!r})")
        model_cfg = ModelConfig(**ckpt["model"])
        g = ConditionalGenerator(model_cfg.z_dim, model_cfg.width, ckpt["channels"], ckpt["image_size"],
                                 ckpt["num_classes"])
        g.load_state_dict(ckpt["state"]["generator"])
        meta = {k: ckpt.get(k) for k in ("elapsed_s", "images_seen", "world_size", "dataset")}
        meta["step"] = int(ckpt["state"]["generator_steps"])
        meta["path"] = str(path)
        return cls(g, ckpt["labels"], model_cfg.z_dim, device, meta)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "BaselineSampler":
        ckpts = list_baseline_checkpoints(run_dir)
        if not ckpts:
            raise FileNotFoundError(f"{run_dir}: no baseline checkpoints under baseline/ckpt-*.pt")
        return cls.from_checkpoint(ckpts[-1][1], device)

    @torch.no_grad()
    def sample(self, labels: Sequence[int] | torch.Tensor, seed: Optional[int] = None,
               batch_size: int = 1024) -> torch.Tensor:
        """Images in [-1, 1], one per entry of `labels`, in the same order (noise drawn as Ensemble does)."""
        def generate(k: int, z: torch.Tensor) -> torch.Tensor:
            return self.generator(z, torch.full((len(z),), k, dtype=torch.long, device=self.device))

        return sample_by_label(labels, self._labels, self.z_dim, self.device, generate, seed, batch_size)


Sampler = Union[Ensemble, BaselineSampler]


def run_kind(run_dir: str | Path) -> str:
    """'baseline' when the run has a baseline/ folder, else 'ensemble'."""
    return "baseline" if is_baseline_run(run_dir) else "ensemble"


def load_sampler(run_dir: str | Path, device: str | torch.device = "cpu") -> Sampler:
    """The latest model of a run, whichever kind it is (raises FileNotFoundError when it has none)."""
    run_dir = Path(run_dir)
    if is_baseline_run(run_dir):
        return BaselineSampler.from_run(run_dir, device)
    return Ensemble.from_run(run_dir, device)


def is_baseline_checkpoint(path: str | Path) -> bool:
    """By location, without loading: baseline checkpoints live in <run>/baseline/, label ones in <run>/labels/<k>/."""
    return Path(path).parent.name == BASELINE_DIRNAME


@lru_cache(maxsize=2)
def _cached_baseline(path: str, mtime_ns: int, device: str) -> BaselineSampler:
    return BaselineSampler.from_checkpoint(path, device)


def baseline_sampler(path: str | Path, device: str | torch.device = "cpu") -> BaselineSampler:
    """BaselineSampler of one checkpoint, cached: scoring asks for the same checkpoint once per label."""
    path = Path(path)
    return _cached_baseline(str(path.resolve()), path.stat().st_mtime_ns, str(torch.device(device)))


def sampler_from_checkpoint(ckpt: str | Path | Mapping[int, str | Path],
                            device: str | torch.device = "cpu") -> Sampler:
    """The sampler of one evaluation point, for either kind of run.

    * a baseline checkpoint path, or a {label: path} mapping whose paths are baseline checkpoints
      (the same file for every label) -> BaselineSampler
    * a {label: label-checkpoint path} mapping -> Ensemble of those generators
    """
    if isinstance(ckpt, Mapping):
        paths = {Path(p) for p in ckpt.values()}
        if paths and all(is_baseline_checkpoint(p) for p in paths):
            if len(paths) > 1:
                raise ValueError(f"one baseline checkpoint per evaluation, got {sorted(map(str, paths))}")
            return baseline_sampler(next(iter(paths)), device)
        return Ensemble.from_checkpoints(ckpt, device)
    return baseline_sampler(ckpt, device)


def sampler_for_label(path: str | Path, label: int, device: str | torch.device = "cpu") -> Sampler:
    """What generates label `label` at checkpoint `path`: its ensemble member, or the baseline's generator."""
    if is_baseline_checkpoint(path):
        return baseline_sampler(path, device)
    return Ensemble.from_checkpoints({label: path}, device)


def baseline_label_checkpoints(run_dir: str | Path, labels: Sequence[int]) -> dict[int, list[tuple[float, int, Path]]]:
    """The baseline's checkpoints in the shape metrics.evaluate.label_checkpoints returns for an ensemble:
    label -> [(elapsed_s, step, path)] oldest first, the same list for every label the baseline trained."""
    found = []
    trained: set[int] = set()
    for step, path in list_baseline_checkpoints(run_dir):
        try:
            blob = checkpoint.load(path)
        except Exception:  # pruned meanwhile, or unreadable: not an evaluation candidate
            continue
        found.append((float(blob.get("elapsed_s", float("nan"))), step, path))
        trained = set(int(k) for k in blob.get("labels", []))
    return {int(k): list(found) for k in labels if found and int(k) in trained}


def _elapsed(path: Path) -> float:
    return float(checkpoint.load(path).get("elapsed_s", 0.0))


def checkpoints_over_time(run_dir: str | Path) -> list[dict]:
    """Every checkpoint of a run with its training time, oldest first.

    Baseline: ``{"step", "elapsed_s", "path"}`` per checkpoint (``sampler_from_checkpoint(row["path"])``).
    Ensemble: ``{"label", "step", "elapsed_s", "path"}`` per label checkpoint; to score the ensemble at
    time t take, per label, the newest checkpoint with ``elapsed_s <= t`` and pass that
    {label: path} mapping to :func:`sampler_from_checkpoint` (see :func:`ensemble_at`).
    Loading each checkpoint for its time is cheap next to scoring it.
    """
    run_dir = Path(run_dir)
    if is_baseline_run(run_dir):
        return [{"step": s, "elapsed_s": _elapsed(p), "path": str(p)} for s, p in list_baseline_checkpoints(run_dir)]
    rows = []
    labels_root = run_dir / "labels"
    if labels_root.is_dir():
        for d in sorted(labels_root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
            if d.name.isdigit():
                for s, p in checkpoint.list_checkpoints(run_dir, int(d.name)):
                    rows.append({"label": int(d.name), "step": s, "elapsed_s": _elapsed(p), "path": str(p)})
    return sorted(rows, key=lambda r: (r["elapsed_s"], r["label"]))


def ensemble_at(rows: list[dict], t: float) -> dict[int, str]:
    """{label: newest checkpoint path with elapsed_s <= t} from :func:`checkpoints_over_time` rows
    (labels with no checkpoint by then are left out)."""
    best: dict[int, dict] = {}
    for r in rows:
        if r["elapsed_s"] <= t + 1e-9 and (r["label"] not in best or r["elapsed_s"] >= best[r["label"]]["elapsed_s"]):
            best[r["label"]] = r
    return {k: r["path"] for k, r in sorted(best.items())}


__all__ = ["BaselineSampler", "load_sampler", "sampler_from_checkpoint", "sampler_for_label", "checkpoints_over_time",
           "ensemble_at", "run_kind", "baseline_dir", "is_baseline_run", "is_baseline_checkpoint",
           "baseline_label_checkpoints"]
