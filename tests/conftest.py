"""Shared fixtures: one real local Ray per test module, pinned to the machine's 2 cores."""

from __future__ import annotations

import os

import pytest
import ray

from orchestrator.config import load_config


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
