"""The config schema: defaults, typed overrides, the experiment files (bad input: test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_config


def test_defaults_resolve_to_digits():
    cfg = load_config(None, [])
    assert cfg.dataset.name == "digits" and cfg.train.n_critic == 5 and cfg.train.gp_weight == 10


def test_overrides_are_typed_yaml():
    cfg = load_config(None, ["train.lr=2e-4", "dataset.labels=[1,3]", "train.betas=[0.5,0.9]",
                             "resources.gpus_per_label=0.25"])
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.dataset.labels == [1, 3]
    assert cfg.train.betas == (0.5, 0.9)
    assert cfg.resources.gpus_per_label == 0.25


def test_experiment_files_validate():
    files = sorted(Path("experiments").glob("*.yaml"))
    assert {f.stem for f in files} >= {"digits", "cifar10", "cifar100", "imagenet1k", "folder"}
    for f in files:
        load_config(f, [])
