"""Shared fixtures: one real local Ray per test module, pinned to the machine's 2 cores.

Tests that start Ray (through these fixtures, or marked ``e2e`` by hand) are end-to-end tests;
``make test-fast`` runs the others (``-m "not e2e"``), ``make test`` runs everything.
"""

from __future__ import annotations

import os

import pytest
import ray
import torch

from core.config import load_config


RAY_FIXTURES = {"ray_local", "gpu_cluster", "head"}  # fixtures that start a real Ray


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def storage(tmp_path):
    return tmp_path / "runs"


def small_config(storage, *overrides: str):
    """A digits config that trains in seconds: few labels, tiny nets, fast checkpoints."""
    return load_config(None, [
        f"run.storage={storage}", "run.name=t", "dataset.labels=[0,1,2]",
        "model.width=8", "model.z_dim=16", "train.batch_size=32", "train.n_critic=2",
        "train.budget_s=6", "train.checkpoint_every_s=2", "train.log_every_s=1",
        "metrics.enabled=false", *overrides,
    ])


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    # Tests start their own Ray; never reach for a cluster named in the environment.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield


os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def two_tone_images(n: int, size: int = 8) -> torch.Tensor:
    """n grey images, uint8 [n, 1, size, size]: the first half all dark (0), the rest all bright (255).

    A data set whose labels a generator can only mix up if it ignores the label."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[n // 2:] = 255
    return images


def two_tone_folder(root, n_per_label: int = 24, size: int = 8):
    """A folder data set: label 0 ('0-dark') all-black PNGs, label 1 ('1-bright') all-white PNGs."""
    from PIL import Image

    for name, value in (("0-dark", 0), ("1-bright", 255)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            Image.new("L", (size, size), value).save(d / f"{i:03d}.png")
    return root


def save_random_inception(path, monkeypatch, accept: bool = True) -> dict:
    """A randomly initialised state dict of torch-fidelity's InceptionV3 architecture (no download),
    saved at `path` and, with `accept`, its digest accepted for this test."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from metrics import inception as I

    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    state = torch.nn.Module.state_dict(net)
    torch.save(state, path)
    if accept:
        monkeypatch.setitem(I.ACCEPTED_SHA256, I.sha256_file(path), "test: a random InceptionV3")
    return state

