"""Bad input: a clear message naming the field or file, exit code 2, no run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main
from core.config import ConfigError, load_config


def run_cli(tmp_path, capsys, *args):
    storage = tmp_path / "runs"
    code = main(["train", "--set", f"run.storage={storage}", *args])
    err = capsys.readouterr().err
    return code, err, storage


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


@pytest.mark.parametrize("override, field", [
    ("trian.budget_s=5", "trian"),                     # unknown section
    ("train.budget=5", "train.budget"),                # unknown key
    ("train.batch_size=many", "train.batch_size"),     # wrong type
    ("train.budget_s=-1", "train.budget_s"),           # out of range
    ("train.betas=[0.5,1.5]", "train.betas"),          # out of range inside a list
    ("resources.gpus_per_label=lots", "resources.gpus_per_label"),
    ("dataset.name=mnist", "dataset.name"),
    ("dataset.labels=[1,1]", "dataset.labels"),
    ("run.name=a/b", "run.name"),
])
def test_bad_values_name_the_field(tmp_path, capsys, override, field):
    code, err, storage = run_cli(tmp_path, capsys, "--set", override)
    assert code == 2
    assert field in err
    assert not storage.exists()


def test_malformed_set_and_missing_file(tmp_path, capsys):
    code, err, storage = run_cli(tmp_path, capsys, "--set", "train.budget_s")
    assert code == 2 and "key=value" in err and not storage.exists()
    code, err, _ = run_cli(tmp_path, capsys, "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err


def test_label_out_of_range(tmp_path, capsys):
    code, err, storage = run_cli(tmp_path, capsys, "--set", "dataset.labels=[3,12]")
    assert code == 2 and "dataset.labels" in err and "12" in err and not storage.exists()


def _folder(tmp_path, per_label=(3, 3), size=12):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k, n in enumerate(per_label):
        d = root / f"class_{k}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    code, err, storage = run_cli(tmp_path, capsys, "--set", "dataset.name=folder", "--set", f"dataset.root={missing}")
    assert code == 2 and "dataset.root" in err and str(missing) in err and not storage.exists()


def test_unreadable_image(tmp_path, capsys):
    root = _folder(tmp_path)
    bad = root / "class_1" / "broken.png"
    bad.write_bytes(b"this is not a png")
    code, err, storage = run_cli(tmp_path, capsys, "--set", "dataset.name=folder", "--set", f"dataset.root={root}")
    assert code == 2 and str(bad) in err and not storage.exists()


def test_label_without_images(tmp_path, capsys):
    root = _folder(tmp_path)
    (root / "class_2").mkdir()
    code, err, storage = run_cli(tmp_path, capsys, "--set", "dataset.name=folder", "--set", f"dataset.root={root}")
    assert code == 2 and "label 2" in err and "class_2" in err and not storage.exists()


def test_cifar_missing_names_where_it_goes(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        from workers.data import describe

        describe(load_config(None, ["dataset.name=cifar10", f"dataset.root={tmp_path}"]).dataset)


def test_dashboard_url_as_address_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    code = main(["train", "--set", f"run.storage={tmp_path / 'runs'}", "--set", "dataset.labels=[0]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dashboard" in err and "6379" in err
    assert not (tmp_path / "runs").exists()
