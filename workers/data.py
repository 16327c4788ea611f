"""Data sets, split by label: each trainer loads only its own label's images.

Images come back as uint8 tensors [N, C, H, W] at the configured resolution;
trainers keep them resident on their device as uint8 (4x smaller than float)
and convert per batch with :func:`to_model_range`.

Folder data (and ImageNet) is checked from a sample so that a 1.28-million-file root validates in
seconds: :func:`describe` lists and counts every class folder but opens at most SAMPLE_TOTAL image
headers (a few per class, evenly spaced, the same in every process). A bad file outside the sample
fails its label when that label's actor loads it (:func:`load_label` names the file). The same
sample decides a folder's channels (1 when every sampled image is grey, else 3) and, for
``dataset.image_size`` None/auto, its size (the first image's short side, snapped to the nearest
size the networks build), so the driver, the label actors and scoring agree without being told.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from core.config import DatasetConfig
from core.errors import ConfigError, DataError
from workers.models import buildable, nearest_buildable, resolution_plan, snap_image_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagenet1k": 64}
NATIVE_CHANNELS = {"digits": 1, "cifar10": 3, "cifar100": 3, "imagenet1k": 3}  # folders: from their images
DEFAULT_ROOT = "data"
MAX_IMAGE_SIZE = 1024       # dataset.image_size's upper bound; auto never snaps above it
SAMPLE_PER_CLASS = 8        # image headers describe() opens per class folder ...
SAMPLE_TOTAL = 2000         # ... and in all (past SAMPLE_TOTAL classes, evenly spaced classes only)
IO_THREADS = 16             # listing and header reads wait on the file system (NFS, Lustre), not the CPU
GREY_MODES = ("1", "L", "LA", "La", "I", "F")  # and "I;16*"; "P"/"PA": grey when every palette entry is


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


def _image_paths(class_dir: Path) -> list[str]:
    """Image files under a label folder, recursively (not into linked folders), sorted as paths are
    (the order the train/test split is drawn in). One os.scandir per folder: cheap at ImageNet scale."""
    _check_dir(class_dir, "dataset.labels")
    files, broken, dirs = [], [], [str(class_dir)]
    while dirs:
        d = dirs.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as err:  # a sub-folder we cannot read would silently drop its images
            raise DataError(f"dataset.labels: cannot read directory {d}: {err.strerror or err}") from None
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                dirs.append(e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                if e.is_file():
                    files.append(e.path)
                elif e.is_symlink() and not os.path.exists(e.path):
                    broken.append(e.path)
    if broken:
        first = min(broken, key=_path_key)
        raise DataError(f"unreadable image: {first} is a symlink to {os.readlink(first)}, which does not exist")
    return sorted(files, key=_path_key)


def _path_key(path: str) -> list[str]:
    return path.split(os.sep)  # the order of sorted(Path, ...): component by component


def _folder_files(class_dir: Path) -> list[Path]:
    return [Path(p) for p in _image_paths(class_dir)]


def _unreadable(path: Union[str, Path], err: Exception) -> str:
    empty = os.path.isfile(path) and os.path.getsize(path) == 0
    why = "an empty file, 0 bytes: an interrupted copy?" if empty else getattr(err, "strerror", None) or err
    return f"unreadable image: {path} ({why}); replace or remove it"


def _open_image(path: Path, channels: int):
    """The decoded image with `channels` channels: grey to RGB replicates the channel, colour to
    grey is its luminance (a colour image outside describe()'s sample of a grey folder)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):  # 16-bit grey: scale to 8 bits, where convert() would clip
                im = Image.fromarray((np.asarray(im, dtype=np.float32) / 257.0).round().astype(np.uint8))
            return im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"unreadable image: {path} ({err})") from None


def _resize_square(img, size: int) -> np.ndarray:
    """Resize the short side to `size`, centre-crop to size x size; [C, size, size]."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    array = np.asarray(img, dtype=np.uint8)
    return (array[:, :, None] if array.ndim == 2 else array).transpose(2, 0, 1)


# ---------------------------------------------------------------- folder sample

@dataclass(frozen=True)
class _Header:
    path: str
    size: tuple[int, int] = (0, 0)   # (width, height)
    grey: bool = False
    error: Optional[str] = None      # the DataError message when the header cannot be read


@dataclass(frozen=True)
class FolderScan:
    """A folder data set's class counts and header sample, and what the sample decides."""
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    unlisted: tuple[Optional[str], ...]     # per class: why its folder cannot be listed, else None
    bad_headers: tuple[Optional[str], ...]  # per class: its first unreadable sampled image, else None
    sample: tuple[_Header, ...]             # in class order, then path order
    channels: int
    first_size: Optional[tuple[int, int]]  # the first readable sampled image's (width, height)


def _is_grey(im) -> bool:
    """Grey from the header alone: a grey mode, or a palette whose every entry has r == g == b."""
    if im.mode in GREY_MODES or im.mode.startswith("I;16"):
        return True
    if im.mode not in ("P", "PA") or im.palette is None or im.palette.mode not in ("RGB", "RGBA"):
        return False
    entries = np.frombuffer(bytes(im.palette.palette), np.uint8)
    n = len(im.palette.mode)
    rgb = entries[: len(entries) // n * n].reshape(-1, n)[:, :3]
    return bool((rgb == rgb[:, :1]).all())


def _read_header(path: str) -> _Header:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # header only: no pixels are decoded
            return _Header(path, im.size, _is_grey(im))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return _Header(path, error=_unreadable(path, err))


def _sample_indices(n: int, k: int) -> list[int]:
    """k of range(n), evenly spaced, always the first: deterministic, and spread over the folder."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _list_class(class_dir: Path, k: int) -> tuple[int, list[str], Optional[str]]:
    """(image count, the paths to sample, or the DataError message why the folder cannot be listed)."""
    try:
        files = _image_paths(class_dir)
    except DataError as err:
        return 0, [], str(err)
    return len(files), [files[i] for i in _sample_indices(len(files), k)], None


def scan_folder(root: Path) -> FolderScan:
    """Count every class folder's images (in parallel) and read a sample of their headers."""
    classes = _folder_classes(root)
    per_class = max(1, min(SAMPLE_PER_CLASS, SAMPLE_TOTAL // len(classes)))
    sampled = set(_sample_indices(len(classes), SAMPLE_TOTAL))
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        listed = list(pool.map(lambda i: _list_class(root / classes[i], per_class if i in sampled else 0),
                               range(len(classes))))
        headers = list(pool.map(_read_header, [p for _, paths, _ in listed for p in paths]))
    errors = {h.path: h.error for h in headers}
    bad_headers = tuple(next((errors[p] for p in paths if errors[p]), None) for _, paths, _ in listed)
    readable = [h for h in headers if h.error is None]
    channels = 1 if readable and all(h.grey for h in readable) else 3
    return FolderScan(tuple(classes), tuple(n for n, _, _ in listed), tuple(u for _, _, u in listed), bad_headers,
                      tuple(headers), channels, readable[0].size if readable else None)


_scans: dict[str, FolderScan] = {}
_scans_lock = threading.Lock()


def _folder_scan(root: Path, refresh: bool = False) -> FolderScan:
    """scan_folder, kept per root for this process (scoring loads every label twice); describe's
    file check refreshes it."""
    key = os.path.abspath(root)
    with _scans_lock:
        scan = None if refresh else _scans.get(key)
    if scan is None:
        scan = scan_folder(root)
        with _scans_lock:
            if len(_scans) >= 8:
                _scans.pop(next(iter(_scans)))
            _scans[key] = scan
    return scan


# ---------------------------------------------------------------- sizes and channels

def _check_buildable(size: int) -> int:
    if not buildable(size):
        below, above = nearest_buildable(size)
        near = " or ".join(str(s) for s in (below, above) if s is not None)
        raise ConfigError(f"dataset.image_size={size}: the networks cannot build this size (they grow from a "
                          f"4-7 px base by doubling: 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ..., 320, 384, 448, "
                          f"512, ...); nearest: {near}, or 'auto' to snap the data set's own size")
    return size


def _snap(short_side: int, log_level: int) -> int:
    size = snap_image_size(short_side, MAX_IMAGE_SIZE)
    base, stages = resolution_plan(size)
    if size == short_side:
        logger.log(log_level, "dataset.image_size auto: training at %d px, the first image's short side", size)
    else:
        why = (f"the largest dataset.image_size allowed is {MAX_IMAGE_SIZE}" if short_side > MAX_IMAGE_SIZE
               else f"nearest size the networks build: {base} x 2^{stages}")
        logger.log(log_level, "dataset.image_size auto: images are %d px; training at %d px (%s)",
                   short_side, size, why)
    return size


def _image_size(cfg: DatasetConfig, scan: Optional[FolderScan] = None, log_level: int = logging.DEBUG) -> int:
    """The training resolution: an explicit size (if the networks build it), else the data set's own
    (a folder's first sampled image, snapped)."""
    if isinstance(cfg.image_size, int):
        return _check_buildable(cfg.image_size)
    if cfg.name in NATIVE_SIZE:
        return NATIVE_SIZE[cfg.name]
    scan = scan or _folder_scan(_folder_root(cfg))
    if scan.first_size is None:
        raise DataError(f"dataset.root: no readable image in {cfg.root} (sampled {len(scan.sample)} of "
                        f"{sum(scan.counts)}) to take dataset.image_size from; set it explicitly")
    return _snap(min(scan.first_size), log_level)


def _channels(cfg: DatasetConfig) -> int:
    if cfg.name in NATIVE_CHANNELS:
        return NATIVE_CHANNELS[cfg.name]
    return _folder_scan(_folder_root(cfg)).channels


# ---------------------------------------------------------------- public API

def describe(cfg: DatasetConfig, check_files: bool = True) -> DatasetInfo:
    """Validate the data set and the labels the run asks for, cheaply, before any actor starts.

    With `check_files` (the driver's check before a run): a folder's sampled image headers are
    opened afresh, an unreadable one in a label the run trains is reported with its path before
    a run directory exists, and each such label must have :func:`min_images`. Scoring passes False:
    it only needs the shape, which both agree on (the same sample decides it).
    """
    if isinstance(cfg.image_size, int):
        _check_buildable(cfg.image_size)
    scan = None
    if cfg.name == "digits":
        names = [str(i) for i in range(10)]
        counts = np.bincount(_digits_arrays()[1], minlength=10)
    elif cfg.name in ("cifar10", "cifar100"):
        ds = _cifar(cfg, "train")
        names = list(ds.classes)
        counts = np.bincount(np.asarray(ds.targets), minlength=len(names))
    else:
        scan = _folder_scan(_folder_root(cfg), refresh=check_files)
        names, counts = list(scan.classes), np.asarray(scan.counts)
    labels = list(range(len(names))) if cfg.labels == "all" else list(cfg.labels)
    bad = [k for k in labels if k >= len(names)]
    if bad:
        raise DataError(f"dataset.labels: {bad} out of range; {cfg.name} has {len(names)} labels (0..{len(names) - 1})")
    if scan is not None:
        for k in labels:
            problem = scan.unlisted[k] or (scan.bad_headers[k] if check_files else None)
            if problem:
                raise DataError(problem)
    size = _image_size(cfg, scan, logging.INFO if check_files else logging.DEBUG)
    for k in labels:
        _check_count(cfg, k, names[k], int(counts[k]), strict=check_files)
    channels = NATIVE_CHANNELS.get(cfg.name) or scan.channels
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


def _resize_tensor(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    t = torch.from_numpy(images).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def load_label(cfg: DatasetConfig, label: int, split: str = "train", image_size: Optional[int] = None,
               channels: Optional[int] = None) -> torch.Tensor:
    """Only this label's images of one split, uint8 [N, C, S, S]. `image_size` and `channels`
    default to what :func:`describe` decides (a folder's sample is read once per process)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    size = image_size or _image_size(cfg)
    if cfg.name == "digits":
        images, targets = _digits_arrays()
        own = images[targets == label]
        out = own[_split_indices(len(own), label, cfg.test_fraction, split)]
    elif cfg.name in ("cifar10", "cifar100"):
        ds = _cifar(cfg, split)
        out = ds.data[np.asarray(ds.targets) == label].transpose(0, 3, 1, 2)
    else:
        root = _folder_root(cfg)
        classes = _folder_classes(root)
        files = _folder_files(root / classes[label])
        if not files:
            raise DataError(f"label {label} ('{classes[label]}'): no images in {root / classes[label]}")
        files = [files[i] for i in _split_indices(len(files), label, cfg.test_fraction, split)]
        c = channels or _channels(cfg)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(lambda f: _resize_square(_open_image(f, c), size), files))
        out = np.stack(arrays) if arrays else np.zeros((0, c, size, size), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(_resize_tensor(out, size)))


def load_split(cfg: DatasetConfig, labels, split: str, image_size: Optional[int] = None,
               max_per_label: Optional[int] = None,
               channels: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of several labels (evaluation), optionally capped per label."""
    xs, ys = [], []
    for k in labels:
        x = load_label(cfg, k, split, image_size, channels)
        if max_per_label is not None:
            x = x[:max_per_label]
        xs.append(x)
        ys.append(torch.full((len(x),), k, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)
