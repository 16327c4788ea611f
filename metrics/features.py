"""The feature space a run is scored in: Inception (torch-fidelity) or the data set's classifier.

``metrics.feature_extractor=auto`` picks Inception for RGB images of 32 px and up when its
weights are on the machine, else the classifier (:mod:`metrics.classifier`); the choice and its
reason are recorded with the scores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from core.config import Config, MetricsConfig
from metrics.classifier import TrainedClassifier, default_device, get_classifier
from metrics.inception import WEIGHTS_FILENAME, InceptionFeatures, find_inception_weights, resolve_inception_weights
from workers.data import describe

logger = logging.getLogger(__name__)


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
                        class_accuracy: bool = True, inception_fid_feature: str = "2048") -> FeatureSpace:
    """The feature space the run is scored in; trains/loads the classifier when it is needed."""
    info = describe(cfg.dataset, check_files=False)
    size = image_size or info.image_size
    device = torch.device(device) if device is not None else default_device()
    name, reason = choose_feature_extractor(cfg.metrics, info.channels, size)
    logger.info("metrics feature space: %s (%s)", name, reason)
    m = cfg.metrics
    classifier = None
    if name == "classifier" or class_accuracy:
        classifier = get_classifier(cfg.dataset, storage, size, device=device,
                                    max_per_label=m.real_max_per_label,
                                    seed=m.seed)
    if name == "inception":
        weights = resolve_inception_weights(m.feature_extractor_weights_path,
                                            download=m.download_weights)
        extractor = InceptionFeatures(weights, fid_feature=inception_fid_feature).to(device)
    else:
        extractor = classifier.features_module()
    return FeatureSpace(name, extractor, classifier, reason)
