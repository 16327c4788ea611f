"""Improved precision and recall (Kynkäänniemi et al. 2019, k=3): metrics.scores.precision_recall.

Checked on sets whose answer is known (a set with itself, two samples of one Gaussian, sets far
apart, a collapsed fake set) and against a brute-force reference on the full distance matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics import scores as S


def _reference(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """The paper's definition, literally: every pairwise distance at once (float64, explicit differences)."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(x):
        d = dist(x, x)
        np.fill_diagonal(d, np.inf)  # a sample is not its own neighbour
        return np.sort(d, axis=1)[:, k - 1]

    fr = dist(fake, real)
    precision = (fr <= radii(real)[None, :]).any(1).mean()
    recall = (fr.T <= radii(fake)[None, :]).any(1).mean()
    return float(precision), float(recall)


def _gauss(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def test_a_set_with_itself_and_two_samples_of_one_gaussian_score_about_one():
    real = _gauss(1000, 2, seed=0)
    assert S.precision_recall(real, real) == (1.0, 1.0)  # every sample is at distance 0 of its own sphere
    p, r = S.precision_recall(real, _gauss(1000, 2, seed=1))
    assert p >= 0.95 and r >= 0.95


def test_sets_far_apart_score_zero():
    p, r = S.precision_recall(_gauss(500, 8, seed=0), _gauss(500, 8, seed=1, shift=20.0))
    assert (p, r) == (0.0, 0.0)


def test_a_collapsed_fake_set_has_high_precision_and_low_recall():
    real = _gauss(1000, 2, seed=0)
    fake = _gauss(1000, 2, seed=1, scale=0.1)  # mode collapse: all of it inside the real mass, a small part of it
    p, r = S.precision_recall(real, fake)
    assert p >= 0.95 and r <= 0.15
    # the other way round the roles swap: a fake set spread wider than the real one
    p_wide, r_wide = S.precision_recall(fake, real)
    assert r_wide >= 0.95 and p_wide <= 0.15


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_real,n_fake,d,k,batch_size", [
    (120, 90, 16, 3, 7),      # blocks that do not divide the sizes
    (60, 150, 5, 1, 1000),    # one block; k=1
    (200, 200, 32, 3, 64),
    (40, 33, 8, 5, 1),        # one row at a time
])
def test_equals_a_brute_force_reference(dtype, n_real, n_fake, d, k, batch_size):
    gen = torch.Generator().manual_seed(n_real + d)
    real = torch.randn(n_real, d, generator=gen).to(dtype)
    # partly overlapping sets, so neither score is trivially 0 or 1
    fake = (0.9 * torch.randn(n_fake, d, generator=gen) + 0.6).to(dtype)
    expected = _reference(real.numpy(), fake.numpy(), k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert S.precision_recall(real, fake, k=k, batch_size=batch_size) == expected


def test_features_of_any_shape_and_dtype_and_too_few_samples():
    gen = torch.Generator().manual_seed(3)
    real = torch.randint(0, 255, (50, 1, 4, 4), generator=gen, dtype=torch.uint8)  # flattened, as float32
    fake = torch.randint(0, 255, (40, 1, 4, 4), generator=gen, dtype=torch.uint8)
    expected = _reference(real.reshape(50, -1).numpy(), fake.reshape(40, -1).numpy())
    assert S.precision_recall(real, fake, batch_size=16) == expected
    # float32 against float64: computed in float64
    assert S.precision_recall(real.float(), fake.double()) == expected
    # no more than k samples on a side: no k-th neighbour, NaN like fid()
    p, r = S.precision_recall(real[:3], fake)
    assert math.isnan(p) and math.isnan(r)
    with pytest.raises(ValueError, match="differ in size"):
        S.precision_recall(real, fake.reshape(40, -1)[:, :8])
    with pytest.raises(ValueError):
        S.precision_recall(real, fake, k=0)
