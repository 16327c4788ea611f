"""The math of the scores, on features: FID, KID, IS, precision/recall, as streaming accumulators and pure functions.

Nothing here knows about runs, models or images: :mod:`metrics.scoring` feeds it features label by
label, into running Gaussian statistics (FID), a bounded random reservoir (KID) and per-split sums
(IS), so no whole split is ever held.

The statistics are torchmetrics' own, made streaming or faster where that matters, and the tests
check each against torchmetrics on the same features:

* FID: the same mean / covariance estimates as ``FrechetInceptionDistance``; the trace of the matrix
  square root is computed from symmetric eigendecompositions (``sqrt(S1) S2 sqrt(S1)``) instead of
  ``eigvals(S1 @ S2)`` — identical in exact arithmetic, ~10x faster at 2048-d on a CPU (3.5 s instead
  of 35 s here) — or, when n_a * n_b < d^2 (per-class FID in Inception space), from the singular
  values of the cross-product of the centred features, which is exact too.
* KID: ``KernelInceptionDistance`` itself on the (reservoir-capped) features, seeded.
* IS: ``InceptionScore``'s formula and its seeded ``randperm`` split assignment, accumulated per split
  so the logits of all samples are never kept.
* Precision and recall: Kynkäänniemi et al. 2019 (k-NN hyperspheres, k=3), a pure function computed in
  blocks of pairwise distances; checked against a brute-force full-matrix reference.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import nn


# ------------------------------------------------------------------ building blocks

class Passthrough(nn.Module):
    """A torchmetrics ``feature=`` module for features that are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class GaussianStats:
    """Running sum and outer-product sum of features (float64): what FID needs, in O(d^2) memory."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> "GaussianStats":
        f = features.detach().to("cpu", torch.float64).reshape(len(features), -1)
        if f.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d features, got {f.shape[1]}")
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    @classmethod
    def of(cls, features: torch.Tensor) -> "GaussianStats":
        return cls(features.shape[-1]).update(features)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        mu = self.mean
        return (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2); NaN if either side has fewer than 2 samples."""
    if a.n < 2 or b.n < 2:
        return float("nan")
    s_a, s_b = a.cov, b.cov
    r = _sqrt_psd(s_a)
    m = r @ s_b @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mean - b.mean).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt
    return float(value)


def frechet_distance_lowrank(a: torch.Tensor, b: torch.Tensor) -> float:
    """The same FID from the features themselves, exact and cheap when n_a * n_b < d^2 (per-class FID in 2048-d).

    With centred features A (n_a x d), B (n_b x d): the non-zero eigenvalues of S_a S_b are the squared
    singular values of A B^T / sqrt((n_a - 1)(n_b - 1)), so tr (S_a S_b)^1/2 is their sum.
    """
    a = a.detach().to("cpu", torch.float64).reshape(len(a), -1)
    b = b.detach().to("cpu", torch.float64).reshape(len(b), -1)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    tr_sqrt = torch.linalg.svdvals(ac @ bc.T).sum() / math.sqrt(na * nb)
    value = (mu_a - mu_b).square().sum() + ac.square().sum() / na + bc.square().sum() / nb - 2 * tr_sqrt
    return float(value)


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID between two feature sets, by whichever exact method is cheaper."""
    d = real_features.shape[-1]
    if len(real_features) * len(fake_features) <= d * d:
        return frechet_distance_lowrank(real_features, fake_features)
    return frechet_distance(GaussianStats.of(real_features), GaussianStats.of(fake_features))


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """torchmetrics KernelInceptionDistance on features; (mean, std, subset size used). Seeded."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = int(min(subset_size, len(real_features), len(fake_features)))
    if size < 2:
        return float("nan"), float("nan"), size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=Passthrough(real_features.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real_features.float(), real=True)
    metric.update(fake_features.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """torchmetrics InceptionScore on logits (all held in memory; use StreamingInceptionScore for many)."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=Passthrough(logits.shape[1]), splits=splits)
    metric.update(logits.float())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


class StreamingInceptionScore:
    """torchmetrics' InceptionScore, accumulated per split so no logits are kept.

    torchmetrics shuffles the N logits with ``torch.randperm(N)`` and cuts them into ``splits`` chunks;
    here the same seeded permutation assigns the i-th arriving sample to its chunk up front, and each
    chunk keeps sum_x p(y|x) and sum_x sum_y p log p. With the same seed the result equals
    ``InceptionScore`` computed after ``torch.manual_seed(seed)``.
    """

    def __init__(self, n_total: int, splits: int = 10, seed: int = 0):
        if n_total < 1:
            raise ValueError("n_total must be >= 1")
        self.n_total, self.splits, self.seed = n_total, splits, seed
        perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
        position = torch.empty_like(perm)
        position[perm] = torch.arange(n_total)
        chunk = -(-n_total // splits)
        self.split_of = position // chunk
        self.n_splits = -(-n_total // chunk)
        self.seen = 0
        self.p_sum: Optional[torch.Tensor] = None
        self.plogp_sum = torch.zeros(self.n_splits, dtype=torch.float64)
        self.count = torch.zeros(self.n_splits, dtype=torch.float64)

    def update(self, logits: torch.Tensor) -> None:
        b = len(logits)
        if self.seen + b > self.n_total:
            raise ValueError(f"more than the announced {self.n_total} samples")
        idx = self.split_of[self.seen:self.seen + b]
        self.seen += b
        logp = logits.detach().to("cpu", torch.float64).log_softmax(1)
        p = logp.exp()
        if self.p_sum is None:
            self.p_sum = torch.zeros(self.n_splits, logits.shape[1], dtype=torch.float64)
        self.p_sum.index_add_(0, idx, p)
        self.plogp_sum.index_add_(0, idx, (p * logp).sum(1))
        self.count.index_add_(0, idx, torch.ones(b, dtype=torch.float64))

    def compute(self) -> tuple[float, float]:
        if self.seen != self.n_total:
            raise RuntimeError(f"saw {self.seen} of the announced {self.n_total} samples")
        p_mean = self.p_sum / self.count[:, None]
        kl = self.plogp_sum / self.count - torch.special.xlogy(p_mean, p_mean).sum(1)
        scores = kl.exp()
        std = float(scores.std()) if len(scores) > 1 else float("nan")
        return float(scores.mean()), std


class Reservoir:
    """A uniform random subset of at most `capacity` rows of a stream (seeded): KID's sample buffer."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.seen = 0
        self.data: Optional[torch.Tensor] = None
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.detach().cpu()
        if self.data is None:
            self.data = torch.empty((0, *rows.shape[1:]), dtype=rows.dtype)
        free = self.capacity - len(self.data)
        if free > 0:
            self.data = torch.cat([self.data, rows[:free]])
            self.seen += min(free, len(rows))
            rows = rows[free:]
        if len(rows) == 0:
            return
        # Algorithm R, vectorised: item number t (1-based) replaces a random slot with probability cap/t.
        t = self.seen + torch.arange(1, len(rows) + 1, dtype=torch.float64)
        slot = (torch.rand(len(rows), generator=self.gen, dtype=torch.float64) * t).long()
        keep = slot < self.capacity
        self.data[slot[keep]] = rows[keep]
        self.seen += len(rows)

    def tensor(self) -> torch.Tensor:
        return self.data if self.data is not None else torch.empty(0)


# ------------------------------------------------------------------ precision and recall

def _as_rows(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.detach().reshape(len(x), -1).to(device)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _kth_neighbour_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row (itself excluded), one block of rows at a time."""
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), batch_size):
        d = torch.cdist(x[i:i + batch_size], x)
        rows = torch.arange(len(d), device=x.device)
        d[rows, rows + i] = float("inf")  # not its own neighbour, whatever rounding made of the zero
        radii[i:i + len(d)] = d.topk(k, dim=1, largest=False).values[:, -1]
    return radii


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) of `fake` against `real` features.

    Each real sample's hypersphere has the radius of its distance to its k-th nearest other real
    sample (itself excluded); precision is the fraction of fake samples inside at least one real
    hypersphere (distance <= radius). Recall is the same with the roles swapped: fake radii, real samples.
    (NaN, NaN) when either side has no more than k samples.

    Cost: three passes of pairwise distances, real-real, fake-fake and fake-real (the last serves both
    scores), i.e. (n_r^2 + n_f^2 + n_f n_r) * 2d multiply-adds, in ``batch_size``-row blocks of
    ``torch.cdist`` on the device the features are on. Memory: the features plus about three
    ``batch_size x max(n_r, n_f)`` distance blocks: 10,000 x 10,000 x 2048-d float32 features hold
    ~160 MiB, each block ~40 MiB; about 1.2 TFLOP in all (seconds on a GPU, tens of seconds on a CPU).
    Float64 features are computed in float64, anything else in float32.
    """
    if k < 1 or batch_size < 1:
        raise ValueError("k and batch_size must be >= 1")
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    real = _as_rows(real, real.device)
    fake = _as_rows(fake, real.device)
    if fake.dtype != real.dtype:
        real, fake = real.double(), fake.double()
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in size: {real.shape[1]} and {fake.shape[1]}")
    real_radii = _kth_neighbour_radii(real, k, batch_size)
    fake_radii = _kth_neighbour_radii(fake, k, batch_size)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    real_inside = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for i in range(0, len(fake), batch_size):
        d = torch.cdist(fake[i:i + batch_size], real)  # [b fake, n real]
        fake_inside[i:i + len(d)] = (d <= real_radii[None, :]).any(1)
        real_inside |= (d <= fake_radii[i:i + len(d), None]).any(0)
    return float(fake_inside.double().mean()), float(real_inside.double().mean())
