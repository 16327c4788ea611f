"""Bad input to `wcgan train`: exit code 2, a message naming the field or file, nothing left behind.

Every case runs the real CLI in-process on real files and is refused before a cluster is
contacted, so none starts Ray. All but the address cases also pass an address where nothing
listens (`guard`): were their check gone, the run would fail fast there, with another message,
instead of starting a local Ray and training.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from core.config import load_config
from orchestrator.cli import main
from workers.data import describe, load_label, min_images


# ------------------------------------------------------------------------------------ helpers

def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def closed_port():
    """A local port where nothing listens: bound, never listening, so a connect is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def reject(tmp_path, capsys, closed_port):
    """reject(*args, message, guard=True): run `wcgan train *args`, assert exit 2, `message` on
    stderr and that nothing was created under tmp_path (so no run directory under run.storage)."""
    def run(*args: str, message: str, guard: bool = True) -> str:
        assert not ray.is_initialized(), "a Ray connection from another test would skip the address checks"
        before = _tree(tmp_path)
        extra = ["--address", f"127.0.0.1:{closed_port}"] if guard else []
        code = main(["train", "--set", f"run.storage={tmp_path / 'runs'}", *extra, *args])
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err, err
        assert _tree(tmp_path) == before, f"left behind: {_tree(tmp_path) - before}"
        return err
    return run


def _images(d: Path, n: int, size: int = 12, seed: int = 0) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _folder(tmp_path: Path, per_label=(3, 3)) -> Path:
    root = tmp_path / "data"
    for k, n in enumerate(per_label):
        _images(root / f"class_{k}", n, seed=k)
    return root


def _folder_args(root) -> list[str]:
    return ["--set", "dataset.name=folder", "--set", f"dataset.root={root}"]


# ------------------------------------------------------------------------------------ --set values

@pytest.mark.parametrize("override, message", [
    ("run.id=a/b", "run.id: use letters, digits"),
    ("run.id=..", "run.id: use letters, digits"),
    ("run.id=../x", "run.id: use letters, digits"),
    ("run.name=a/b", "run.name: use letters, digits"),
    ("run.name=..", "run.name: use letters, digits"),
    ("run.name=../x", "run.name: use letters, digits"),
    ("run.name=" + "a" * 101, "run.name: at most 100 characters"),
    ("max_restarts=-1", "max_restarts: Input should be greater than or equal to 0"),
    ("train.budget_s=0", "train.budget_s: Input should be greater than 0"),
    ("train.batch_size=1", "train.batch_size: Input should be greater than or equal to 2"),
    ("train.batch_size=many", "train.batch_size: Input should be a valid integer"),
    ("train.betas=[0.5,1.5]", "train.betas: each beta must be in [0, 1)"),
    ("dataset.labels=[3,12]", "dataset.labels: [12] out of range; digits has 10 labels (0..9)"),
    ("dataset.labels=[1,1]", "dataset.labels: label indices must be unique"),
    ("dataset.labels=[]", "dataset.labels: must be 'all' or a non-empty list"),
    ("dataset.labels=[-1]", "dataset.labels: label indices must be >= 0"),
    ("dataset.image_size=2", "dataset.image_size: must be 'auto' or a number of pixels in [4, 1024]"),
    ("dataset.test_fraction=1", "dataset.test_fraction: Input should be less than 1"),
    ("dataset.name=mnist", "dataset.name: Input should be 'digits'"),
    ("resources.gpus_per_label=lots", "resources.gpus_per_label"),
    ("train=5", "train: is a section, not a value: set one of its keys, e.g. train.budget_s"),
    ("train.budget=5", "train.budget: unknown key (got 5); did you mean train.budget_s?"),
    ("trian.budget_s=5", "trian: unknown key"),
    ("budget_s=60", "budget_s: unknown key (got 60); did you mean train.budget_s?"),
])
def test_bad_value_names_the_field(reject, override, message):
    reject("--set", override, message=message)


@pytest.mark.parametrize("item, message", [
    ("train.budget_s", "--set 'train.budget_s': expected key=value"),
    ("=5", "--set '=5': expected key=value"),
    ("train..budget_s=5", "--set 'train..budget_s=5': empty part in the key"),
    ("train.budget_s.x=1", "--set train.budget_s.x: 'budget_s' is not a section"),
])
def test_malformed_set(reject, item, message):
    reject("--set", item, message=message)


# ------------------------------------------------------------------------------------ --config files

@pytest.mark.parametrize("content, message", [
    (b"- run\n- train\n", "top level must be a mapping of sections (run:, dataset:, train:, ...), not a list"),
    (b"", "is empty (or only comments)"),
    (b"# train:\n#   budget_s: 5\n", "is empty (or only comments)"),
    (b"train: [\n", "YAML error at line 2, column 1"),
    (b"train:\n  budget_s: 5\n  budget_s: 6\n", "YAML error at line 3, column 3: key 'budget_s' appears twice "
                                                 "(first at line 2)"),
    ("run:\n  name: café\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 16)"),
    (b"train: 5\n", "train: is a section, not a value"),
], ids=["list", "empty", "comments-only", "syntax", "duplicate-key", "latin-1", "scalar-section"])
def test_bad_config_file(reject, tmp_path, content, message):
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    err = reject("--config", str(path), message=message)
    assert str(path) in err


def test_config_is_a_directory(reject, tmp_path):
    (tmp_path / "experiments").mkdir()
    reject("--config", str(tmp_path / "experiments"), message="experiments is a directory; pass a YAML file")


def test_config_file_missing(reject, tmp_path):
    reject("--config", str(tmp_path / "nope.yaml"), message=f"config file not found: {tmp_path / 'nope.yaml'}")


def test_empty_mapping_and_empty_section_mean_defaults(tmp_path):
    # What an empty file's message suggests must work: `{}` is the built-in defaults, and a
    # section whose keys are all commented out is an empty section.
    (tmp_path / "a.yaml").write_text("{}\n")
    (tmp_path / "b.yaml").write_text("train:\n  budget_s: 7\nmetrics:\n  # enabled: false\n")
    assert load_config(tmp_path / "a.yaml").train.budget_s == load_config(None).train.budget_s
    b = load_config(tmp_path / "b.yaml")
    assert b.train.budget_s == 7 and b.metrics.enabled is True


# ------------------------------------------------------------------------------------ data

def test_folder_without_root(reject):
    reject("--set", "dataset.name=folder", message="dataset.root: required for dataset.name=folder")


def test_data_root_missing(reject, tmp_path):
    missing = tmp_path / "no-such-dir"
    reject(*_folder_args(missing), message=f"dataset.root: directory not found: {missing}")


def test_data_root_is_a_file(reject, tmp_path):
    (tmp_path / "data.tar").write_bytes(b"not a directory")
    reject(*_folder_args(tmp_path / "data.tar"), message="data.tar is a file, not a directory")


def test_data_root_is_a_dangling_symlink(reject, tmp_path):
    # The driver makes paths absolute for the actors without resolving links: the message names both.
    (tmp_path / "data").symlink_to(tmp_path / "unmounted")
    reject(*_folder_args(tmp_path / "data"),
           message=f"dataset.root: {tmp_path / 'data'} is a symlink to {tmp_path / 'unmounted'}, which does not exist")


def test_data_root_is_a_fifo(reject, tmp_path):
    os.mkfifo(tmp_path / "data")
    reject(*_folder_args(tmp_path / "data"), message="is a special file (pipe, socket or device), not a directory")


def test_label_folder_is_a_dangling_symlink(reject, tmp_path):
    # Skipping it would shift every later label's index: it must be an error, not a smaller data set.
    root = _folder(tmp_path)
    (root / "class_1b").symlink_to(tmp_path / "unmounted")
    reject(*_folder_args(root), message=f"{root / 'class_1b'} is a symlink to {tmp_path / 'unmounted'}")


def test_data_root_without_sub_folders(reject, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "0.png").write_bytes(b"")
    reject(*_folder_args(tmp_path / "data"), message="has no sub-folders; expected one sub-folder of images per label")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 directory; see the FIFO/symlink cases")
def test_data_root_unreadable(reject, tmp_path):
    root = _folder(tmp_path)
    root.chmod(0)
    try:
        reject(*_folder_args(root), message=f"dataset.root: cannot read directory {root}")
    finally:
        root.chmod(0o755)


def test_one_image_per_label(reject, tmp_path):
    # The split would leave nothing held out, and one image per label makes every FID NaN.
    root = _folder(tmp_path, per_label=(1, 1))
    reject(*_folder_args(root), message=f"label 0 ('class_0') has 1 image(s) in {root / 'class_0'}; each label needs "
                                        "at least 3 (2 to train on, 1 held out at dataset.test_fraction=0.2)")


def test_one_image_per_label_without_held_out(reject, tmp_path):
    root = _folder(tmp_path, per_label=(1, 1))
    reject(*_folder_args(root), "--set", "dataset.test_fraction=0",
           message="each label needs at least 2 (2 to train on): add images")


def test_minimum_images_are_enough(tmp_path):
    # The rule is not off by one: min_images per label passes, and splits into both halves.
    need = min_images(0.2)
    root = _folder(tmp_path, per_label=(need, need))
    cfg = load_config(None, _folder_args(root)[1::2]).dataset
    assert describe(cfg).labels == (0, 1)
    assert len(load_label(cfg, 0, "train")) == 2 and len(load_label(cfg, 0, "test")) == 1


def test_label_without_images(reject, tmp_path):
    root = _folder(tmp_path)
    (root / "class_2").mkdir()
    reject(*_folder_args(root), message=f"label 2 ('class_2') has no images in {root / 'class_2'}")


def test_zero_byte_image(reject, tmp_path):
    root = _folder(tmp_path)
    (root / "class_1" / "empty.png").write_bytes(b"")
    reject(*_folder_args(root), message=f"unreadable image: {root / 'class_1' / 'empty.png'} (an empty file, 0 bytes")


def test_image_that_is_not_an_image(reject, tmp_path):
    root = _folder(tmp_path)
    (root / "class_1" / "broken.png").write_bytes(b"this is not a png")
    reject(*_folder_args(root), message=f"unreadable image: {root / 'class_1' / 'broken.png'}")


def test_image_that_is_a_dangling_symlink(reject, tmp_path):
    root = _folder(tmp_path)
    (root / "class_0" / "moved.png").symlink_to(tmp_path / "gone.png")
    reject(*_folder_args(root), message=f"unreadable image: {root / 'class_0' / 'moved.png'} is a symlink to")


def test_cifar_root_without_data(reject, tmp_path):
    (tmp_path / "cifar").mkdir()
    reject("--set", "dataset.name=cifar10", "--set", f"dataset.root={tmp_path / 'cifar'}",
           message="cifar10 not found under")


def test_cifar_root_is_a_file(reject, tmp_path):
    (tmp_path / "cifar").write_bytes(b"")
    reject("--set", "dataset.name=cifar10", "--set", f"dataset.root={tmp_path / 'cifar'}",
           message=f"dataset.root: {tmp_path / 'cifar'} is a file, not a directory")


def test_inception_weights_missing(reject, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    weights = tmp_path / "inception.pth"
    reject("--set", "metrics.feature_extractor=inception", "--set", f"metrics.feature_extractor_weights_path={weights}",
           "--set", "metrics.download_weights=false",
           message=f"metrics.feature_extractor_weights_path points at {weights}, which does not exist")


# ------------------------------------------------------------------------------------ run.storage

@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot create files in, made so for real: chmod for a user,
    the immutable attribute for root (whom modes do not stop). Skips where neither works."""
    d = tmp_path / "readonly"
    d.mkdir()
    as_root = os.geteuid() == 0
    if as_root and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    elif not as_root:
        d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        yield d
    else:
        (d / "probe").unlink()
        pytest.skip("cannot make a directory unwritable here (root without chattr +i)")
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
        d.chmod(0o755)


def test_storage_is_a_file(reject, tmp_path):
    (tmp_path / "runs.txt").write_text("my notes\n")
    reject("--set", f"run.storage={tmp_path / 'runs.txt'}", message=f"run.storage: {tmp_path / 'runs.txt'} is a file")
    assert (tmp_path / "runs.txt").read_text() == "my notes\n"


def test_storage_below_a_file(reject, tmp_path):
    (tmp_path / "runs.txt").write_text("")
    reject("--set", f"run.storage={tmp_path / 'runs.txt' / 'runs'}",
           message=f"cannot create {tmp_path / 'runs.txt' / 'runs'}: {tmp_path / 'runs.txt'} is a file")


def test_storage_in_an_unwritable_directory(reject, unwritable_dir):
    reject("--set", f"run.storage={unwritable_dir / 'runs'}", message=f"{unwritable_dir} is not writable")


def test_storage_is_an_unwritable_directory(reject, unwritable_dir):
    reject("--set", f"run.storage={unwritable_dir}", message=f"run.storage: {unwritable_dir} is not writable")


# ------------------------------------------------------------------------------------ cluster address

@pytest.mark.timeout(60)  # without the check, ray.init would retry the GCS for minutes
def test_address_where_nothing_listens(reject, closed_port):
    reject("--address", f"127.0.0.1:{closed_port}", message=f"no Ray cluster answers at 127.0.0.1:{closed_port}",
           guard=False)


@pytest.mark.timeout(60)
def test_ray_address_where_nothing_listens(reject, closed_port, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port}")
    reject(message=f"no Ray cluster answers at 127.0.0.1:{closed_port}", guard=False)


@pytest.mark.timeout(60)
def test_address_whose_host_does_not_resolve(reject):
    reject("--address", "no-such-head.invalid:6379", message="no Ray cluster answers at no-such-head.invalid:6379",
           guard=False)


@pytest.mark.parametrize("address", ["localhost", "10.0.0.1:head", "10.0.0.1:99999", ":6379"])
def test_malformed_address(reject, address):
    reject("--address", address, message=f"RAY_ADDRESS/--address {address!r}: expected host:port", guard=False)


def test_dashboard_url_as_address(reject, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    reject(message="a dashboard (Jobs API) URL", guard=False)
