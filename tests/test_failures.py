"""Failures after Ray is up: a broken label must not hang the run or leave a half-written run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import small_config  # noqa: E402
from orchestrator.cli import main
from core.config import ConfigError
from orchestrator.run import check_resume_compatible


def test_bad_data_found_by_every_actor_exits_2_without_a_run_dir(ray_local, tmp_path, capsys):
    # The headers are fine (the driver's check passes) but the pixels are cut off: only the label
    # actors that decode them find out. No label trained anything, so it is bad input: exit 2 and
    # nothing left behind. (One bad label among good ones: tests/test_fault_tolerance.py.)
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"c{k}" / f"{i}.png")
        broken = root / f"c{k}" / "1.png"  # in the training split of both labels
        broken.write_bytes(broken.read_bytes()[:60])
    storage = tmp_path / "runs"
    code = main(["train", "--set", "dataset.name=folder", "--set", f"dataset.root={root}",
                 "--set", f"run.storage={storage}", "--set", "train.budget_s=30", "--set", "model.width=8",
                 "--set", "train.batch_size=4", "--set", "metrics.enabled=false", "--set", "max_restarts=0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert any(str(root / f"c{k}" / "1.png") in err for k in range(2)), err  # names the file
    assert not any(storage.glob("*/config.yaml"))


def test_resume_refuses_other_model_settings_and_names_them(tmp_path):
    saved = small_config(tmp_path)
    check_resume_compatible(saved, small_config(tmp_path, "train.budget_s=60", "max_restarts=3"))
    with pytest.raises(ConfigError, match=r"model\.width \(was 8, now 16\)"):
        check_resume_compatible(saved, small_config(tmp_path, "model.width=16"))
    with pytest.raises(ConfigError, match=r"dataset\.labels"):
        check_resume_compatible(saved, small_config(tmp_path, "dataset.labels=[0,1]"))

