"""Data sets, split by label: each trainer loads only its own label's images.

Images come back as uint8 tensors [N, C, H, W] at the configured resolution;
trainers keep them resident on their device as uint8 (4x smaller than float)
and convert per batch with :func:`to_model_range`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core.config import DatasetConfig
from core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagenet1k": 64}
DEFAULT_ROOT = "data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    labels: tuple[int, ...]          # the labels this run trains
    label_names: tuple[str, ...]     # names of those labels, same order
    num_classes: int                 # classes in the whole data set
    channels: int
    image_size: int


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the generator's tanh range)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return images.detach().float().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- sources

def _held_out(n: int, test_fraction: float) -> int:
    """How many of a label's n images the split holds out (at least one is always left to train on)."""
    return min(int(round(n * test_fraction)), max(n - 1, 0))


def _split_indices(n: int, label: int, test_fraction: float, split: str) -> np.ndarray:
    """Deterministic per-label train/test split (same on every node, no shared state)."""
    perm = np.random.default_rng(1000 + label).permutation(n)
    n_test = _held_out(n, test_fraction)
    return np.sort(perm[n_test:] if split == "train" else perm[:n_test])


MIN_TRAIN = 2  # a label's FID needs two real images (a covariance); one image is also no distribution


def min_images(test_fraction: float) -> int:
    """Fewest images a label of a split data set needs: MIN_TRAIN to train on and, unless
    test_fraction is 0, one held out (else its held-out scores are silently empty or NaN)."""
    n = MIN_TRAIN
    while n - _held_out(n, test_fraction) < MIN_TRAIN or (test_fraction > 0 and _held_out(n, test_fraction) < 1):
        n += 1
    return n


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read straight from its CSV.

    Importing sklearn costs each of the ten label actors ~3 s of CPU at start-up on a
    2-core machine, so the file is located without importing the package.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv_path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv_path is not None and csv_path.is_file():
        data = np.loadtxt(csv_path, delimiter=",")
        pixels, target = data[:, :-1], data[:, -1]
    else:  # a future sklearn may move the file: fall back to its public loader
        from sklearn.datasets import load_digits

        d = load_digits()
        pixels, target = d.data, d.target
    images = np.round(pixels.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # [N,1,8,8]
    return images, target.astype(np.int64)


def _cifar(cfg: DatasetConfig, split: str):
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    folder = "cifar-10-batches-py" if cfg.name == "cifar10" else "cifar-100-python"
    root = Path(cfg.root or DEFAULT_ROOT)
    if root.exists() or root.is_symlink():
        _check_dir(root)
    try:
        return cls(str(root), train=(split == "train"), download=cfg.download)
    except RuntimeError as err:
        raise DataError(
            f"dataset.root: {cfg.name} not found under {root.resolve()} ({err}). Either set "
            f"dataset.download=true on a machine with a network, or put the extracted '{folder}/' "
            f"directory there (dataset.root={root})."
        ) from None
    except OSError as err:  # download attempted without a network
        raise DataError(
            f"dataset.root: could not download {cfg.name} into {root.resolve()} ({err}). "
            f"Download it where a network exists and copy '{folder}/' to dataset.root."
        ) from None


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _check_dir(path: Path, what: str = "dataset.root") -> None:
    """A directory we can list, or a DataError saying what the path is instead."""
    if _broken_link(path):
        raise DataError(f"{what}: {path} is a symlink to {os.readlink(path)}, which does not exist")
    if not path.exists():
        raise DataError(f"{what}: directory not found: {path}")
    if not path.is_dir():
        kind = "a file" if path.is_file() else "a special file (pipe, socket or device)"
        raise DataError(f"{what}: {path} is {kind}, not a directory")
    try:
        with os.scandir(path):
            pass
    except OSError as err:  # permissions (never for root), a stale network mount
        raise DataError(f"{what}: cannot read directory {path}: {err.strerror or err}") from None


def _folder_root(cfg: DatasetConfig) -> Path:
    if cfg.root is None:
        raise DataError(f"dataset.root: required for dataset.name={cfg.name} (a directory with one sub-folder per label)")
    root = Path(cfg.root)
    _check_dir(root)
    return root


def _folder_classes(root: Path) -> list[str]:
    """Label sub-folders, sorted. A broken link among them is an error: skipping it would
    silently shift every later label's index."""
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    for e in entries:
        if e.is_symlink() and not os.path.exists(e.path):
            raise DataError(f"dataset.root: {e.path} is a symlink to {os.readlink(e.path)}, which does not exist "
                            "(an unmounted disk?); fix or remove the link")
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        raise DataError(f"dataset.root: {root} has no sub-folders; expected one sub-folder of images per label")
    return classes


def _folder_files(class_dir: Path) -> list[Path]:
    _check_dir(class_dir, "dataset.labels")  # rglob would skip an unreadable folder without a word
    files, other = [], []
    for p in sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        (files if p.is_file() else other).append(p)
    broken = next((p for p in other if p.is_symlink()), None)  # only non-files: one lstat per oddity
    if broken is not None:
        raise DataError(f"unreadable image: {broken} is a symlink to {os.readlink(broken)}, which does not exist")
    return files


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"unreadable image: {path} ({err})") from None


def _resize_square(img, size: int) -> np.ndarray:
    """Resize the short side to `size`, centre-crop to size x size."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _folder_image_size(cfg: DatasetConfig, root: Path, classes: list[str]) -> int:
    if cfg.image_size is not None:
        return cfg.image_size
    if cfg.name in NATIVE_SIZE:
        return NATIVE_SIZE[cfg.name]
    files = _folder_files(root / classes[0])
    if not files:
        raise DataError(f"label 0 ('{classes[0]}'): no images in {root / classes[0]}")
    return min(_open_rgb(files[0]).size)


# ---------------------------------------------------------------- public API

def describe(cfg: DatasetConfig, check_files: bool = True) -> DatasetInfo:
    """Validate the data set and the labels the run asks for, cheaply, before any actor starts.

    With `check_files` (the driver's check before a run): every folder image's header is opened,
    so an unreadable image is reported (with its path) before a run directory exists, and each
    label the run trains must have :func:`min_images`. Scoring passes False: it only needs the shape.
    """
    if cfg.name == "digits":
        names = [str(i) for i in range(10)]
        channels, native = 1, 8
        counts = np.bincount(_digits_arrays()[1], minlength=10)
    elif cfg.name in ("cifar10", "cifar100"):
        ds = _cifar(cfg, "train")
        names = list(ds.classes)
        channels, native = 3, 32
        counts = np.bincount(np.asarray(ds.targets), minlength=len(names))
    else:
        root = _folder_root(cfg)
        names = _folder_classes(root)
        channels = 3
        counts = np.zeros(len(names), dtype=np.int64)
        native = None
    labels = list(range(len(names))) if cfg.labels == "all" else list(cfg.labels)
    bad = [k for k in labels if k >= len(names)]
    if bad:
        raise DataError(f"dataset.labels: {bad} out of range; {cfg.name} has {len(names)} labels (0..{len(names) - 1})")
    if cfg.name in ("folder", "imagenet1k"):
        for k in labels:
            files = _folder_files(root / names[k])
            counts[k] = len(files)
            if check_files:
                for f in files:
                    _check_header(f)
        native = _folder_image_size(cfg, root, names)
    for k in labels:
        _check_count(cfg, k, names[k], int(counts[k]), strict=check_files)
    size = cfg.image_size or native
    return DatasetInfo(cfg.name, tuple(labels), tuple(names[k] for k in labels), len(names), channels, size)


def _check_count(cfg: DatasetConfig, k: int, name: str, n: int, strict: bool) -> None:
    """Enough images in label k: any at all, and with `strict` enough for the train/held-out split."""
    split = cfg.name not in ("cifar10", "cifar100")  # CIFAR brings its own test split
    tf = cfg.test_fraction if split else 0.0
    need = min_images(tf) if strict else 1
    if n >= need:
        return
    where = f" in {Path(cfg.root) / name}" if cfg.name in ("folder", "imagenet1k") else ""
    if n == 0:
        raise DataError(f"dataset.labels: label {k} ('{name}') has no images{where}")
    held = f", {_held_out(need, tf)} held out at dataset.test_fraction={tf:g}" if tf > 0 else ""
    fix = f"add images, or set dataset.test_fraction=0 (then {min_images(0.0)} suffice)" if tf > 0 else "add images"
    raise DataError(f"dataset.labels: label {k} ('{name}') has {n} image(s){where}; each label needs at least "
                    f"{need} ({need - _held_out(need, tf)} to train on{held}): {fix}")


def _check_header(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # header only: cheap even for ImageNet-sized folders
    except (UnidentifiedImageError, OSError, ValueError) as err:
        empty = path.is_file() and path.stat().st_size == 0
        why = "an empty file, 0 bytes: an interrupted copy?" if empty else getattr(err, "strerror", None) or err
        raise DataError(f"unreadable image: {path} ({why}); replace or remove it") from None


def _resize_tensor(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    t = torch.from_numpy(images).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def load_label(cfg: DatasetConfig, label: int, split: str = "train", image_size: Optional[int] = None) -> torch.Tensor:
    """Only this label's images of one split, uint8 [N, C, S, S]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if cfg.name == "digits":
        images, targets = _digits_arrays()
        own = images[targets == label]
        out = own[_split_indices(len(own), label, cfg.test_fraction, split)]
        size = image_size or cfg.image_size or 8
    elif cfg.name in ("cifar10", "cifar100"):
        ds = _cifar(cfg, split)
        out = ds.data[np.asarray(ds.targets) == label].transpose(0, 3, 1, 2)
        size = image_size or cfg.image_size or 32
    else:
        root = _folder_root(cfg)
        classes = _folder_classes(root)
        files = _folder_files(root / classes[label])
        if not files:
            raise DataError(f"label {label} ('{classes[label]}'): no images in {root / classes[label]}")
        files = [files[i] for i in _split_indices(len(files), label, cfg.test_fraction, split)]
        size = image_size or _folder_image_size(cfg, root, classes)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(lambda f: _resize_square(_open_rgb(f), size), files))
        out = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(_resize_tensor(out, size)))


def load_split(cfg: DatasetConfig, labels, split: str, image_size: Optional[int] = None,
               max_per_label: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of several labels (evaluation), optionally capped per label."""
    xs, ys = [], []
    for k in labels:
        x = load_label(cfg, k, split, image_size)
        if max_per_label is not None:
            x = x[:max_per_label]
        xs.append(x)
        ys.append(torch.full((len(x),), k, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)
