"""Feature spaces for FID / KID / IS: torch-fidelity's InceptionV3, or a classifier of the data set's own.

inception
    torch-fidelity's InceptionV3 (the network behind the published FID and IS figures), built through
    torchmetrics' ``NoTrainInceptionV3`` with ``antialias=False`` (TF1-compatible resize, numbers comparable
    with papers). Weights are read from ``metrics.feature_extractor_weights_path`` or the torch hub cache
    (``torch.hub.get_dir()/checkpoints/``); nothing is downloaded implicitly unless asked, and a missing
    file raises :class:`MissingWeightsError`, which names the file, where it comes from and where to put it.
    ``python -m metrics.features fetch [--dest PATH]`` (``make fetch-weights``) downloads it where a
    network exists.

classifier
    A small CNN trained on the data set's training split and evaluated on its held-out split, cached
    under ``<storage>/_classifiers/<dataset>-<size>px.pt`` so it is trained once per data set and
    resolution. Its 64-d penultimate layer is the FID/KID feature space and its logits are the IS
    classifier; it also gives the class accuracy of samples. Every score it produces is reported with
    its held-out accuracy, as classifier-space, never as Inception FID.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from orchestrator.config import ConfigError, Config, DatasetConfig, MetricsConfig

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
INCEPTION_NUM_FEATURES = 2048
INCEPTION_IS_FEATURE = "logits_unbiased"  # what torch-fidelity and torchmetrics use for IS

CLASSIFIER_VERSION = 1
CLASSIFIER_FEATURE_DIM = 64  # small: per-class FID has few samples, a wide feature space is singular
CLASSIFIER_DIRNAME = "_classifiers"

Log = Callable[[str], None]


class MissingWeightsError(ConfigError):
    """The Inception weights file is not on this machine and could not be fetched."""


# ------------------------------------------------------------------ inception weights

def hub_weights_path() -> Path:
    """Where torch.hub (and so torch-fidelity) looks for the weights: <hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _configured_path(path: Optional[str | os.PathLike]) -> Optional[Path]:
    """A configured path names the file itself (an existing file, or a name ending in .pth/.pt) or a
    directory holding it (anything else)."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if p.is_file() or (p.suffix in (".pth", ".pt") and not str(path).endswith(("/", os.sep))):
        return p
    return p / WEIGHTS_FILENAME


def find_inception_weights(path: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The weights file if it is on this machine: the configured path when one is given, else the hub cache."""
    p = _configured_path(path)
    candidate = p if p is not None else hub_weights_path()
    return candidate if candidate.is_file() else None


def missing_weights_message(path: Optional[str | os.PathLike] = None, reason: Optional[str] = None) -> str:
    p = _configured_path(path)
    where = (f"metrics.feature_extractor_weights_path points at {p}, which does not exist"
             if p is not None else f"it is not in the torch hub cache ({hub_weights_path()})")
    lines = [
        f"Inception weights file {WEIGHTS_FILENAME} not found: {where}.",
        f"  It is torch-fidelity's InceptionV3 (the FID/IS reference network), released at {WEIGHTS_URL}",
        "  On a machine with a network (an HPC login node, say) fetch it with",
        "      make fetch-weights            (or: python -m metrics.features fetch [--dest PATH])",
        f"  and put it either at the configured path (metrics.feature_extractor_weights_path={p or 'PATH'})",
        f"  or in the torch hub cache: {hub_weights_path()} (torch.hub.get_dir()/checkpoints/).",
        "  Or set metrics.feature_extractor=classifier (or auto) to score in a classifier's feature space.",
    ]
    if reason:
        lines.insert(1, f"  Download attempt failed: {reason}")
    return "\n".join(lines)


def _check_weights_file(path: Path) -> None:
    """Loads the file into torch-fidelity's InceptionV3 architecture (strict): raises if it is not the weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))


def fetch_inception_weights(dest: Optional[str | os.PathLike] = None, timeout_s: float = 60.0,
                            log: Log = print) -> Path:
    """Downloads the Inception weights to `dest` (a file or a directory) or the torch hub cache.

    Written to a temporary file next to the target, checked by loading it into the architecture, then
    renamed into place, so a failed or partial download never leaves a file that looks valid.
    Already present: returns the path without downloading.
    """
    target = _configured_path(dest) or hub_weights_path()
    if target.is_file():
        log(f"{target} already present")
        return target
    log(f"downloading {WEIGHTS_URL}\n  -> {target}")
    sha = hashlib.sha256()
    with urllib.request.urlopen(WEIGHTS_URL, timeout=timeout_s) as resp:  # no network: fails before any write
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    sha.update(chunk)
                    out.write(chunk)
            _check_weights_file(Path(tmp))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    log(f"saved {target} ({target.stat().st_size / 2**20:.1f} MiB, sha256 {sha.hexdigest()[:16]}...)")
    return target


def resolve_inception_weights(path: Optional[str | os.PathLike] = None, download: bool = False,
                              log: Log = print) -> Path:
    """The local weights file, fetching it first if `download` and a network allows; else MissingWeightsError."""
    found = find_inception_weights(path)
    if found is not None:
        return found
    reason = None
    if download:
        try:
            return fetch_inception_weights(path, timeout_s=30.0, log=log)
        except Exception as err:  # no network, proxy, HTTP error, corrupt file
            reason = f"{type(err).__name__}: {err}"
    raise MissingWeightsError(missing_weights_message(path, reason))


class InceptionFeatures(nn.Module):
    """torch-fidelity InceptionV3 via torchmetrics' NoTrainInceptionV3, antialias=False.

    ``forward(uint8 [N,3,H,W]) -> [N, num_features]`` pool features (usable as ``feature=`` in torchmetrics);
    :meth:`extract` returns the pool features and the IS logits (``logits_unbiased``) from one pass.
    Grayscale images are repeated to three channels.
    """

    def __init__(self, weights_path: str | os.PathLike, fid_feature: str = "2048"):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        kwargs = {}
        if "antialias" in inspect.signature(NoTrainInceptionV3.__init__).parameters:
            kwargs["antialias"] = False
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[fid_feature, INCEPTION_IS_FEATURE],
                                      feature_extractor_weights_path=str(weights_path), **kwargs)
        self.num_features = int(fid_feature)
        self.num_logits = 1008
        self.weights_path = str(weights_path)
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError("Inception features expect uint8 images in [0, 255]")
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net._torch_fidelity_forward(self._prepare(x))
        return pool.reshape(len(x), -1).float(), logits.reshape(len(x), -1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x)[0]


# ------------------------------------------------------------------ classifier

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


class _Frozen(nn.Module):
    """Always in eval mode, no gradients: safe to hand to torchmetrics (which may call .train())."""

    def train(self, mode: bool = True):
        return super().train(False)


class ClassifierFeatures(_Frozen):
    """``feature=`` module for torchmetrics FID/KID: images (uint8 or float in [-1, 1]) -> [N, 64]."""

    def __init__(self, model: SmallCNN):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features = self._width(model)

    @staticmethod
    def _width(model: SmallCNN) -> int:
        return model.feature_dim

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        with single_thread_if_tiny(p.device, self.model.arch["image_size"]):
            return self._output(x.to(p.device)).float()


class ClassifierLogits(ClassifierFeatures):
    """``feature=`` module for torchmetrics InceptionScore: images -> [N, num_classes] logits."""

    @staticmethod
    def _width(model: SmallCNN) -> int:
        return model.num_classes

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


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

    def logits_module(self) -> ClassifierLogits:
        return ClassifierLogits(self.model)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        p = next(self.model.parameters())
        with single_thread_if_tiny(p.device, self.model.arch["image_size"]):
            out = [self.model(images[i:i + batch_size].to(p.device)).argmax(1).cpu()
                   for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def classifier_cache_path(storage: str | os.PathLike, dataset: str, image_size: int) -> Path:
    return Path(storage) / CLASSIFIER_DIRNAME / f"{dataset}-{image_size}px.pt"


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


def _default_device() -> torch.device:
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
                     seed: int = 0, log: Log = print, epochs: Optional[int] = None, batch_size: int = 64):
    """Trains a SmallCNN on the training split of every class; returns (model, accuracy, per_class, n_train, n_test)."""
    from workers.data import describe, load_split

    device = torch.device(device) if device is not None else _default_device()
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
    log(f"training the {info.name} {image_size}px classifier ({n} train images, {len(x_test)} held-out, "
        f"{info.num_classes} classes, {epochs} epochs on {device})")
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
    log(f"classifier held-out accuracy {acc:.4f} on {len(x_test)} images ({seconds:.1f}s)")
    return model, acc, per_class, n, len(x_test), seconds


def get_classifier(dataset_cfg: DatasetConfig, storage: str | os.PathLike, image_size: Optional[int] = None,
                   device=None, max_per_label: Optional[int] = None, seed: int = 0, log: Log = print,
                   retrain: bool = False) -> TrainedClassifier:
    """The cached classifier for this data set and resolution, training (and caching) it the first time."""
    from workers.data import describe

    if image_size is None:
        image_size = describe(dataset_cfg, check_files=False).image_size
    device = torch.device(device) if device is not None else _default_device()
    path = classifier_cache_path(storage, dataset_cfg.name, image_size)
    meta = _classifier_meta(dataset_cfg, image_size, max_per_label)
    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated by a crash before the atomic rename existed, or foreign
            log(f"ignoring unreadable classifier cache {path} ({err}); retraining")
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
            log(f"classifier cache {path} was made for {blob.get('meta')}, need {meta}; retraining")
    model, acc, per_class, n_train, n_test, seconds = train_classifier(
        dataset_cfg, image_size, device=device, max_per_label=max_per_label, seed=seed, log=log)
    blob = {"meta": meta, "arch": model.arch, "state": {k: v.cpu() for k, v in model.state_dict().items()},
            "accuracy": acc, "per_class_accuracy": {str(k): v for k, v in per_class.items()},
            "n_train": n_train, "n_test": n_test, "train_seconds": seconds}
    from workers.checkpoint import save_atomic

    save_atomic(blob, path)
    log(f"cached classifier at {path}")
    model.requires_grad_(False)
    return TrainedClassifier(model, acc, per_class, path, False, n_train, n_test, seconds, meta)


# ------------------------------------------------------------------ the feature space of a run

@dataclass
class FeatureSpace:
    """Everything the scores need from images: FID/KID features, IS logits, class predictions."""

    name: str                               # "inception" | "classifier"
    extractor: nn.Module                    # InceptionFeatures or ClassifierFeatures
    classifier: Optional[TrainedClassifier]
    reason: str = ""                        # why this space was chosen (for the log and report)

    @property
    def num_features(self) -> int:
        return int(self.extractor.num_features)

    @property
    def classifier_accuracy(self) -> Optional[float]:
        return self.classifier.accuracy if self.classifier is not None else None

    @property
    def title(self) -> str:
        if self.name == "inception":
            return "Inception (torch-fidelity InceptionV3, pool3 2048-d)"
        return f"classifier space ({self.num_features}-d features of a small CNN; held-out accuracy " \
               f"{self.classifier.accuracy:.3f})"

    @property
    def device(self) -> torch.device:
        return next(self.extractor.parameters()).device

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 images [N,C,S,S] -> {"features": [N,d], "is_logits": [N,K], "class_logits": [N,K'] (if a classifier)}."""
        x = images.to(self.device)
        out: dict[str, torch.Tensor] = {}
        if self.name == "inception":
            out["features"], out["is_logits"] = self.extractor.extract(x)
            if self.classifier is not None:
                out["class_logits"] = self.classifier.model(x).float()
        else:
            f, logits = self.classifier.model.features_and_logits(x)
            out["features"], out["is_logits"], out["class_logits"] = f.float(), logits.float(), logits.float()
        return {k: v.cpu() for k, v in out.items()}


def choose_feature_extractor(metrics: MetricsConfig, channels: int, image_size: int) -> tuple[str, str]:
    """("inception" | "classifier", reason) for metrics.feature_extractor."""
    if metrics.feature_extractor != "auto":
        return metrics.feature_extractor, f"metrics.feature_extractor={metrics.feature_extractor}"
    if channels != 3 or image_size < 32:
        return "classifier", (f"auto: Inception is meaningless for {channels}-channel {image_size}px images; "
                              "using a classifier trained on the data set")
    found = find_inception_weights(metrics.feature_extractor_weights_path)
    if found is None:
        return "classifier", (f"auto: Inception weights {WEIGHTS_FILENAME} not on this machine "
                              f"(see `make fetch-weights`); using a classifier trained on the data set")
    return "inception", f"auto: 3-channel {image_size}px images and Inception weights at {found}"


def build_feature_space(cfg: Config, storage: str | os.PathLike, image_size: Optional[int] = None, device=None,
                        log: Log = print, class_accuracy: bool = True, inception_fid_feature: str = "2048") -> FeatureSpace:
    """The feature space the run is scored in; trains/loads the classifier when it is needed."""
    from workers.data import describe

    info = describe(cfg.dataset, check_files=False)
    size = image_size or info.image_size
    device = torch.device(device) if device is not None else _default_device()
    name, reason = choose_feature_extractor(cfg.metrics, info.channels, size)
    log(f"metrics feature space: {name} ({reason})")
    m = cfg.metrics
    classifier = None
    if name == "classifier" or class_accuracy:
        classifier = get_classifier(cfg.dataset, storage, size, device=device,
                                    max_per_label=m.real_max_per_label,
                                    seed=m.seed, log=log)
    if name == "inception":
        weights = resolve_inception_weights(m.feature_extractor_weights_path,
                                            download=m.download_weights, log=log)
        extractor = InceptionFeatures(weights, fid_feature=inception_fid_feature).to(device)
    else:
        extractor = classifier.features_module()
    return FeatureSpace(name, extractor, classifier, reason)


# ------------------------------------------------------------------ CLI: python -m metrics.features fetch

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics.features", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"download {WEIGHTS_FILENAME} (needs a network)")
    f.add_argument("--dest", default=None,
                   help=f"file or directory to save to (default: the torch hub cache, {hub_weights_path()})")
    f.add_argument("--timeout", type=float, default=60.0)
    w = sub.add_parser("where", help="print where the weights are looked for and whether they are present")
    w.add_argument("--path", default=None, help="a configured metrics.feature_extractor_weights_path")
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        try:
            fetch_inception_weights(args.dest, timeout_s=args.timeout)
        except Exception as err:
            target = _configured_path(args.dest) or hub_weights_path()
            print(f"could not download {WEIGHTS_FILENAME} ({type(err).__name__}: {err}).\n"
                  f"  Download {WEIGHTS_URL}\n  where a network exists and copy it to {target}\n"
                  f"  (or to any path named by metrics.feature_extractor_weights_path).", file=sys.stderr)
            return 1
        return 0
    found = find_inception_weights(args.path)
    print(f"looked at: {_configured_path(args.path) or hub_weights_path()}")
    print(f"present: {found is not None}")
    return 0 if found is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
