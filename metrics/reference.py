"""Real images' features, per label and split, extracted once and cached beside the classifier cache.

Scoring compares generated images with the training split (and the held-out split for the
real-against-real floor). Extracting those real features is most of an evaluation's cost for
large data sets and the same for every evaluation of every run on that data, so they are
stored under ``<run.storage>/_reference/<key>/``, one file per (split, label): the features,
IS logits and class logits the scores need. The key holds everything that changes them: the
data set (and its root), resolution, split, per-label cap, feature space and the SHA-256 of
the extractor's weights; a change in any recomputes, and ``key.json`` says what a folder holds.

    wcgan reference --config FILE      # precompute them (a login node with the data)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from core.config import DatasetConfig
from core.rundir import load_checkpoint, save_checkpoint, write_text
from core.storage import exists, local_path, pull
from metrics.inception import cached_sha256

logger = logging.getLogger(__name__)

REFERENCE_DIRNAME = "_reference"
VERSION = 1


def extractor_digests(space) -> dict[str, Optional[str]]:
    """The weights behind every output of `space`: Inception's file and the classifier's cache file."""
    weights = getattr(space.extractor, "weights_path", None)
    clf = space.classifier
    return {"inception": cached_sha256(weights) if space.name == "inception" and weights else None,
            "classifier": cached_sha256(clf.path) if clf is not None and Path(clf.path).is_file() else None}


def reference_key(dataset: DatasetConfig, image_size: int, space, real_max_per_label: Optional[int]) -> dict:
    root = os.path.abspath(dataset.root) if dataset.root else None
    return {"version": VERSION, "dataset": dataset.name, "root": root, "test_fraction": dataset.test_fraction,
            "image_size": int(image_size), "real_max_per_label": real_max_per_label,
            "feature_space": space.name, "weights_sha256": extractor_digests(space)}


class ReferenceCache:
    """One key's folder of per-(split, label) real features."""

    def __init__(self, storage: str | os.PathLike, key: dict):
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = local_path(storage) / REFERENCE_DIRNAME / f"{key['dataset']}-{key['image_size']}px-{key['feature_space']}-{digest}"
        self.hits = self.misses = 0

    def path(self, split: str, label: int) -> Path:
        return self.dir / f"{split}-{int(label)}.pt"

    def get(self, split: str, label: int, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The cached outputs, or `compute()`'s, stored for next time (atomically)."""
        path = self.path(split, label)
        if pull(path):
            try:
                blob = load_checkpoint(path)  # ours, written below; read weights-only
                self.hits += 1
                return blob["outputs"]
            except Exception as err:  # damaged: recompute and replace
                logger.warning("recomputing damaged reference features %s (%s)", path, err)
        outputs = compute()
        self.misses += 1
        if not exists(self.dir / "key.json"):
            write_text(self.dir / "key.json", json.dumps(self.key, indent=2, sort_keys=True))
        save_checkpoint({"outputs": {k: v.contiguous() for k, v in outputs.items()}}, path)
        return outputs
