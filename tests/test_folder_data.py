"""Folder data at scale: sampled header checks, channels from the images, snapped sizes, the parameter cap.

Every case writes real images with PIL into tmp_path and reads them back through the public
functions; nothing is mocked and no Ray is started.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DatasetConfig, ModelConfig
from core.errors import ConfigError, DataError
from workers import data
from workers.data import describe, load_label, scan_folder
from workers.models import build_models, buildable, check_model_size, snap_image_size


def _cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="folder", root=str(root), **kw)


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _rgb(rng, w: int = 12, h: int = 12) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _grey(rng, w: int = 12, h: int = 12) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8))


def _grey_kinds(rng) -> list[Image.Image]:
    """One image of each grey kind describe() must recognise from the header alone."""
    palette = _grey(rng).convert("P")  # a palette whose entries are all grey
    return [_grey(rng), _grey(rng).convert("LA"), _grey(rng).convert("1"), palette,
            Image.fromarray(np.full((12, 12), 257 * 100, np.uint16))]  # 16-bit grey, "I;16"


# ------------------------------------------------------------------------------------ channels

def test_grey_folder_trains_with_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        for i, im in enumerate(_grey_kinds(rng)):
            _save(tmp_path / f"c{k}" / f"{i}.png", im)
    cfg = _cfg(tmp_path, test_fraction=0.0)
    assert describe(cfg).channels == 1
    assert describe(cfg, check_files=False).channels == 1  # what scoring sees
    x = load_label(cfg, 1)
    assert x.shape == (5, 1, 12, 12)
    assert (x[4] == 100).all()  # the 16-bit image is scaled to 8 bits, not clipped to 255


def test_mixed_grey_and_colour_trains_with_three_channels(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _save(tmp_path / "grey" / f"{i}.png", _grey(rng))
        _save(tmp_path / "colour" / f"{i}.png", _rgb(rng).quantize(16) if i == 0 else _rgb(rng))  # colour palette too
    cfg = _cfg(tmp_path)
    assert describe(cfg).channels == 3 and describe(cfg, check_files=False).channels == 3
    grey = load_label(cfg, 1)  # sorted classes: colour=0, grey=1
    assert grey.shape == (2, 3, 12, 12)
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()  # grey replicated into RGB
    assert load_label(cfg, 0).shape == (2, 3, 12, 12)


# ------------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("image_size", [None, "auto"])
def test_odd_image_size_snaps_to_a_buildable_size(tmp_path, caplog, image_size):
    rng = np.random.default_rng(2)
    for k in range(2):
        for i in range(3):
            _save(tmp_path / f"c{k}" / f"{i}.png", _rgb(rng, w=500, h=375))
    cfg = _cfg(tmp_path, image_size=image_size)
    with caplog.at_level(logging.INFO, logger="workers.data"):
        info = describe(cfg)
    assert info.image_size == 384
    assert "images are 375 px; training at 384 px (nearest size the networks build: 6 x 2^6)" in caplog.text
    assert load_label(cfg, 0).shape == (2, 3, 384, 384)


def test_unbuildable_image_size_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    for k in range(2):
        for i in range(3):
            _save(tmp_path / f"c{k}" / f"{i}.png", _rgb(rng, w=500, h=375))
    for load in (describe, lambda c: load_label(c, 0)):
        with pytest.raises(ConfigError, match=r"dataset.image_size=375: the networks cannot build.*nearest: 320 or 384"):
            load(_cfg(tmp_path, image_size=375))
    assert describe(_cfg(tmp_path, image_size=320)).image_size == 320


def test_buildable_sizes_are_small_bases_doubled():
    expected = sorted({b * 2 ** k for b in range(4, 8) for k in range(9) if b * 2 ** k <= 1024})
    assert [s for s in range(1, 1025) if buildable(s)] == expected
    assert (snap_image_size(375), snap_image_size(9), snap_image_size(28), snap_image_size(4000)) == (384, 8, 28, 1024)


# ------------------------------------------------------------------------------------ sampled checks

def test_describe_counts_every_class_but_opens_only_a_sample(tmp_path):
    rng = np.random.default_rng(4)
    png = tmp_path / "one.png"
    _rgb(rng, 8, 8).save(png)
    counts = [20 + k % 3 for k in range(50)]
    for k, n in enumerate(counts):
        d = tmp_path / "data" / f"class_{k:02d}"
        d.mkdir(parents=True)
        for i in range(n - 1):
            (d / f"{i:02d}.png").write_bytes(png.read_bytes())
        (d / "nested").mkdir()
        (d / "nested" / "x.png").write_bytes(png.read_bytes())  # images in sub-folders count too
    root = tmp_path / "data"
    cfg = _cfg(root)

    scan = scan_folder(root)
    assert scan.counts == tuple(counts)
    assert len(scan.sample) == 50 * data.SAMPLE_PER_CLASS < sum(counts)

    # A corrupt file outside the sample: describe() passes, the label's own load names it.
    files = sorted((root / "class_07").rglob("*.png"))
    outside = next(f for i, f in enumerate(files) if i not in data._sample_indices(len(files), data.SAMPLE_PER_CLASS))
    outside.write_bytes(b"not a png")
    assert describe(cfg).labels == tuple(range(50))
    with pytest.raises(DataError, match=f"unreadable image: {outside}"):
        load_label(cfg, 7, "train"), load_label(cfg, 7, "test")

    # A corrupt file inside the sample (the first of each class always is): describe() names it.
    inside = sorted((root / "class_03").rglob("*.png"))[0]
    inside.write_bytes(b"")
    with pytest.raises(DataError, match=f"unreadable image: {inside} \\(an empty file, 0 bytes"):
        describe(cfg)


# ------------------------------------------------------------------------------------ parameter cap

def test_parameter_cap_refuses_huge_models_unless_raised():
    big = ModelConfig(width=1024)
    with pytest.raises(ConfigError, match=r"model.max_parameters: the generator would have 3,943,161,859 parameters"):
        check_model_size(big, 3, 256)
    with pytest.raises(ConfigError, match="model.max_parameters"):
        build_models(big, 3, 256)  # refused before a byte is allocated
    g, d = check_model_size(ModelConfig(width=1024, max_parameters=4_000_000_000), 3, 256)
    assert g == 3_943_161_859 and d > 200_000_000
    # The 375 px folder image that once built a 1.15-billion-parameter generator; 384 px is small.
    with pytest.raises(ConfigError, match="model.max_parameters"):
        check_model_size(ModelConfig(), 3, 375)
    assert check_model_size(ModelConfig(), 3, 384)[0] < 20_000_000
