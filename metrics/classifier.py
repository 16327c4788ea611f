"""The classifier feature space: a small CNN trained on the data set's own training split.

Used where Inception is meaningless or unavailable (8x8 digits, grey or small images, no
weights file). Trained once per data set and resolution and cached under
``<storage>/_classifiers/<dataset>-<size>px.pt``. Its standardised 64-d penultimate layer is
the FID/KID feature space and its logits are the IS classifier; it also gives the class
accuracy of samples. Every score it produces is reported with its held-out accuracy, as
classifier-space, never as Inception FID.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from core.config import DatasetConfig
from core.rundir import load_checkpoint, save_checkpoint
from core.storage import local_path, pull
from workers.data import describe, load_split

logger = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1
CLASSIFIER_FEATURE_DIM = 64  # small: per-class FID has few samples, a wide feature space is singular
CLASSIFIER_DIRNAME = "_classifiers"


def _stage_plan(image_size: int) -> tuple[int, int]:
    """(number of 2x poolings, final spatial size): halve until the map is at most 4x4."""
    pools, size = 0, image_size
    while size > 4 and pools < 6:
        size //= 2
        pools += 1
    return pools, size


class SmallCNN(nn.Module):
    """Conv blocks down to <= 4x4, then a 64-d embedding (the feature space) and a linear head (logits).

    Takes float images in [-1, 1] (the generator's range) or uint8 [0, 255].
    """

    def __init__(self, channels: int, image_size: int, num_classes: int,
                 feature_dim: int = CLASSIFIER_FEATURE_DIM, width: int = 32):
        super().__init__()
        self.arch = dict(channels=channels, image_size=image_size, num_classes=num_classes,
                         feature_dim=feature_dim, width=width)
        pools, final = _stage_plan(image_size)
        layers, c_in = [], channels
        for i in range(pools + 1):
            c_out = min(width * 2 ** i, 256)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < pools:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in * final * final, feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        # Standardises the embedding per dimension (set from the training split after training), so
        # FID/KID in this space are in units of the real features' spread, and KID's polynomial kernel
        # (gamma = 1/d) sees O(1) values.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    @staticmethod
    def to_input(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.float().div(127.5).sub(1.0)
        return x.float()

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(self.to_input(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The FID/KID feature space: the standardised 64-d embedding."""
        return (self.embedding(x) - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embedding(x)
        return (e - self.feature_mean) / self.feature_std, self.head(e)


class ClassifierFeatures(nn.Module):
    """``feature=`` module for torchmetrics FID/KID: images (uint8 or float in [-1, 1]) -> [N, 64].

    Always in eval mode with no gradients: safe to hand to torchmetrics, which may call .train().
    """

    def __init__(self, model: SmallCNN):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features = model.feature_dim

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        with single_thread_if_tiny(p.device, self.model.arch["image_size"]):
            return self.model.features(x.to(p.device)).float()


@dataclass
class TrainedClassifier:
    model: SmallCNN
    accuracy: float                       # held-out (test split) accuracy over all classes
    per_class_accuracy: dict[int, float]  # held-out accuracy per class
    path: Path
    loaded_from_cache: bool
    n_train: int
    n_test: int
    train_seconds: float
    meta: dict = field(default_factory=dict)

    def features_module(self) -> ClassifierFeatures:
        return ClassifierFeatures(self.model)



def classifier_cache_path(storage: str | os.PathLike, dataset: str, image_size: int) -> Path:
    return local_path(storage) / CLASSIFIER_DIRNAME / f"{dataset}-{image_size}px.pt"


def _classifier_meta(dataset_cfg: DatasetConfig, image_size: int, max_per_label: Optional[int]) -> dict:
    """What the cached classifier depends on; a mismatch means it is retrained."""
    meta = {"version": CLASSIFIER_VERSION, "dataset": dataset_cfg.name, "image_size": int(image_size),
            "max_per_label": max_per_label}
    if dataset_cfg.name not in ("cifar10", "cifar100"):  # these have their own test split
        meta["test_fraction"] = float(dataset_cfg.test_fraction)
    if dataset_cfg.name in ("folder", "imagenet1k"):
        meta["root"] = str(Path(dataset_cfg.root or "").resolve())
    return meta


@contextmanager
def single_thread_if_tiny(device, image_size: int):
    """One intra-op thread for small-image CPU work (training the classifier, classifier-space scoring).

    Ops on 8x8 images are too small to gain from threads, and on a shared CPU (2 cores, other jobs) two
    spinning threads made classifier training 15x slower than one.
    """
    threads = torch.get_num_threads()
    tiny = torch.device(device).type == "cpu" and image_size < 32
    if tiny:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if tiny:
            torch.set_num_threads(threads)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def _accuracy(model: SmallCNN, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 512):
    model.eval()
    if len(x) == 0:
        return float("nan"), {}
    preds = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    correct = preds == y
    per_class = {int(k): float(correct[y == k].float().mean()) for k in y.unique().tolist()}
    return float(correct.float().mean()), per_class


def _augment(x: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to size/8 px (zero padding = background), and horizontal flips for photos."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [n, w]
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def _fit(model, x_train, y_train, epochs, batch_size, opt, sched, flip, gen, device) -> None:
    n = len(x_train)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            xb = _augment(x_train[idx].to(device).float().div(127.5).sub(1.0), flip, gen)
            loss = nn.functional.cross_entropy(model(xb), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def train_classifier(dataset_cfg: DatasetConfig, image_size: int, device=None, max_per_label: Optional[int] = None,
                     seed: int = 0, epochs: Optional[int] = None, batch_size: int = 64):
    """Trains a SmallCNN on the training split of every class; returns (model, accuracy, per_class, n_train, n_test)."""
    device = torch.device(device) if device is not None else default_device()
    full = dataset_cfg.model_copy(update={"labels": "all"})
    info = describe(full, check_files=False)
    classes = list(range(info.num_classes))
    x_train, y_train = load_split(full, classes, "train", image_size, max_per_label=max_per_label)
    x_test, y_test = load_split(full, classes, "test", image_size)
    n = len(x_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(info.channels, image_size, info.num_classes).to(device)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, -(-n // batch_size))
    if epochs is None:  # >= ~1000 steps for small data sets, 5 to 20 epochs
        epochs = int(min(20, max(5, -(-1000 // steps_per_epoch))))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    flip = info.channels == 3
    logger.info("training the %s %dpx classifier (%d train images, %d held-out, %d classes, %d epochs on %s)",
                info.name, image_size, n, len(x_test), info.num_classes, epochs, device)
    t0 = time.perf_counter()
    with single_thread_if_tiny(device, image_size):
        _fit(model, x_train, y_train, epochs, batch_size, opt, sched, flip, gen, device)
    seconds = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        emb = torch.cat([model.embedding(x_train[i:i + 512].to(device)) for i in range(0, n, 512)]).double()
        model.feature_mean.copy_(emb.mean(0).float())
        model.feature_std.copy_(emb.std(0).clamp(min=1e-6).float())
    acc, per_class = _accuracy(model, x_test, y_test, device)
    logger.info("classifier held-out accuracy %.4f on %d images (%.1fs)", acc, len(x_test), seconds)
    return model, acc, per_class, n, len(x_test), seconds


def get_classifier(dataset_cfg: DatasetConfig, storage: str | os.PathLike, image_size: Optional[int] = None,
                   device=None, max_per_label: Optional[int] = None, seed: int = 0,
                   retrain: bool = False) -> TrainedClassifier:
    """The cached classifier for this data set and resolution, training (and caching) it the first time."""
    if image_size is None:
        image_size = describe(dataset_cfg, check_files=False).image_size
    device = torch.device(device) if device is not None else default_device()
    path = classifier_cache_path(storage, dataset_cfg.name, image_size)
    meta = _classifier_meta(dataset_cfg, image_size, max_per_label)
    if not retrain and pull(path):
        try:
            blob = load_checkpoint(path)
        except Exception as err:  # truncated by a crash before the atomic rename existed, or foreign
            logger.warning("ignoring unreadable classifier cache %s (%s); retraining", path, err)
            blob = None
        if blob is not None and blob.get("meta") == meta:
            model = SmallCNN(**blob["arch"])
            model.load_state_dict(blob["state"])
            model.to(device).eval().requires_grad_(False)
            return TrainedClassifier(model, float(blob["accuracy"]),
                                     {int(k): float(v) for k, v in blob["per_class_accuracy"].items()},
                                     path, True, int(blob["n_train"]), int(blob["n_test"]),
                                     float(blob["train_seconds"]), meta)
        if blob is not None:
            logger.info("classifier cache %s was made for %s, need %s; retraining", path, blob.get("meta"), meta)
    model, acc, per_class, n_train, n_test, seconds = train_classifier(
        dataset_cfg, image_size, device=device, max_per_label=max_per_label, seed=seed)
    blob = {"meta": meta, "arch": model.arch, "state": {k: v.cpu() for k, v in model.state_dict().items()},
            "accuracy": acc, "per_class_accuracy": {str(k): v for k, v in per_class.items()},
            "n_train": n_train, "n_test": n_test, "train_seconds": seconds}
    save_checkpoint(blob, path)
    logger.info("cached classifier at %s", path)
    model.requires_grad_(False)
    return TrainedClassifier(model, acc, per_class, path, False, n_train, n_test, seconds, meta)
