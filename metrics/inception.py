"""torch-fidelity's InceptionV3: its weights file, found, fetched and verified, and the feature module.

The network behind the published FID and IS figures, built through torchmetrics'
``NoTrainInceptionV3`` with ``antialias=False`` (TF1-compatible resize, numbers comparable with
papers). Weights are read from ``metrics.feature_extractor_weights_path`` or the torch hub cache
(``torch.hub.get_dir()/checkpoints/``); nothing is downloaded unless asked, and a missing file
raises :class:`core.errors.MissingWeightsError`, which names the file, where it comes from and
where to put it. ``python -m metrics.inception fetch [--dest PATH]`` (``make fetch-weights``)
downloads it where a network exists.

The file is a pickle that torch-fidelity reads with ``torch.load(weights_only=False)``, which can run
code, so :func:`verify_inception_weights` checks its SHA-256 against the pinned :data:`WEIGHTS_SHA256`
(streamed, 1 MiB at a time) before anything opens it as a pickle: a mismatch is a
:class:`~core.errors.MissingWeightsError` naming the file and both digests, and the file is never
loaded. The verdict is cached per (path, device, inode, size, mtime, ctime), so building the extractor
again does not re-hash 95 MB. :data:`ACCEPTED_SHA256` holds the digests accepted (tests add the digest
of a random InceptionV3 state dict they saved).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import os
import sys
import urllib.request
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from core.errors import MissingWeightsError
from core.rundir import atomic_write

logger = logging.getLogger("metrics.inception")  # also when run as __main__

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
# SHA-256 of torch-fidelity's v0.2.0 release file (the same bytes as pytorch-fid's
# pt_inception-2015-12-05-6726825d.pth, 95,628,359 bytes); the "6726825d" in its name is the first 8 hex
# digits of this digest (torch.hub's convention).
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_SIZE = 95_628_359
# digest -> what it is. The pinned file only; tests add theirs (monkeypatch.setitem), nothing else should.
ACCEPTED_SHA256: dict[str, str] = {WEIGHTS_SHA256: WEIGHTS_FILENAME}
INCEPTION_NUM_FEATURES = 2048
INCEPTION_IS_FEATURE = "logits_unbiased"  # what torch-fidelity and torchmetrics use for IS


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
        "      make fetch-weights            (or: python -m metrics.inception fetch [--dest PATH])",
        f"  and put it either at the configured path (metrics.feature_extractor_weights_path={p or 'PATH'})",
        f"  or in the torch hub cache: {hub_weights_path()} (torch.hub.get_dir()/checkpoints/).",
        "  Or set metrics.feature_extractor=classifier (or auto) to score in a classifier's feature space.",
    ]
    if reason:
        lines.insert(1, f"  Download attempt failed: {reason}")
    return "\n".join(lines)


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), read 1 MiB at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


_digests: dict[tuple, str] = {}  # (path, dev, inode, size, mtime_ns, ctime_ns) -> its SHA-256


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def cached_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file, hashed once per (path, inode, size, mtime, ctime) in this process."""
    path = Path(path)
    key = _stat_key(path)
    digest = _digests.get(key)
    if digest is None:
        digest = sha256_file(path)
        if _stat_key(path) == key:  # not changed while it was read: the digest is the file's
            _digests[key] = digest
        logger.debug("sha256 %s: %s", path, digest)
    return digest


def verify_inception_weights(path: str | os.PathLike) -> Path:
    """The path, once its SHA-256 is one of :data:`ACCEPTED_SHA256`; else MissingWeightsError naming the file,
    the expected and the actual digest. Reads the file's bytes only, nothing is unpickled: call it before
    anything reads the file with ``torch.load``."""
    p = Path(path)
    try:
        digest = cached_sha256(p)
    except OSError as err:
        raise MissingWeightsError(f"Inception weights file {p} cannot be read ({type(err).__name__}: {err})") from None
    if digest in ACCEPTED_SHA256:
        return p
    size = p.stat().st_size
    raise MissingWeightsError(
        f"Inception weights file {p} is not {WEIGHTS_FILENAME}: its SHA-256 is {digest} ({size:,} bytes), "
        f"expected {WEIGHTS_SHA256} ({WEIGHTS_SIZE:,} bytes). It was not loaded (a pickle can run code).\n"
        f"  Delete it and fetch the file again (make fetch-weights, or download {WEIGHTS_URL}), "
        "or set metrics.feature_extractor=classifier.")


def _check_weights_file(path: Path) -> None:
    """Checks the SHA-256 first (nothing is unpickled before), then loads the file into torch-fidelity's
    InceptionV3 architecture (strict); MissingWeightsError if it is not the weights (an HTML error page, a
    truncated or tampered download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        verify_inception_weights(path)
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    except Exception as err:
        raise MissingWeightsError(f"the file downloaded from {WEIGHTS_URL} is not {WEIGHTS_FILENAME} "
                                  f"({type(err).__name__}: {err}); nothing was saved") from None


def fetch_inception_weights(dest: Optional[str | os.PathLike] = None, timeout_s: float = 60.0) -> Path:
    """Downloads the Inception weights to `dest` (a file or a directory) or the torch hub cache.

    Written to a temporary file next to the target, checked by loading it into the architecture, then
    renamed into place, so a failed or partial download never leaves a file that looks valid.
    Already present: returns the path without downloading.
    """
    target = _configured_path(dest) or hub_weights_path()
    if target.is_file():
        verify_inception_weights(target)
        logger.info("%s already present", target)
        return target
    logger.info("downloading %s\n  -> %s", WEIGHTS_URL, target)
    sha = hashlib.sha256()
    def copy(out) -> None:
        while chunk := resp.read(1 << 20):
            sha.update(chunk)
            out.write(chunk)

    with urllib.request.urlopen(WEIGHTS_URL, timeout=timeout_s) as resp:  # no network: fails before any write
        atomic_write(target, copy, check=_check_weights_file)
    logger.info("saved %s (%.1f MiB, sha256 %s...)", target, target.stat().st_size / 2**20, sha.hexdigest()[:16])
    return target


def resolve_inception_weights(path: Optional[str | os.PathLike] = None, download: bool = False) -> Path:
    """The local weights file, verified (:func:`verify_inception_weights`), fetching it first if `download` and a
    network allows; else MissingWeightsError."""
    found = find_inception_weights(path)
    if found is not None:
        return verify_inception_weights(found)
    reason = None
    if download:
        try:
            return fetch_inception_weights(path, timeout_s=30.0)
        except Exception as err:  # no network, proxy, HTTP error, corrupt file
            reason = f"{type(err).__name__}: {err}"
    raise MissingWeightsError(missing_weights_message(path, reason))


class InceptionFeatures(nn.Module):
    """torch-fidelity InceptionV3 via torchmetrics' NoTrainInceptionV3, antialias=False.

    ``forward(uint8 [N,3,H,W]) -> [N, num_features]`` pool features (usable as ``feature=`` in torchmetrics);
    :meth:`extract` returns the pool features and the IS logits (``logits_unbiased``) from one pass.
    Grayscale images are repeated to three channels. The weights file's SHA-256 is checked before it is read.
    """

    def __init__(self, weights_path: str | os.PathLike, fid_feature: str = "2048"):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        verify_inception_weights(weights_path)  # before torch-fidelity's torch.load(weights_only=False)

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



def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics.inception", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"download {WEIGHTS_FILENAME} (needs a network)")
    f.add_argument("--dest", default=None,
                   help=f"file or directory to save to (default: the torch hub cache, {hub_weights_path()})")
    f.add_argument("--timeout", type=float, default=60.0)
    w = sub.add_parser("where", help="print where the weights are looked for and whether they are present")
    w.add_argument("--path", default=None, help="a configured metrics.feature_extractor_weights_path")
    args = parser.parse_args(argv)
    from core.logs import configure

    configure()
    if args.cmd == "fetch":
        target = _configured_path(args.dest) or hub_weights_path()
        try:
            fetch_inception_weights(args.dest, timeout_s=args.timeout)
        except Exception as err:
            if isinstance(err, MissingWeightsError) and target.is_file():  # present, not the weights: say so
                print(err, file=sys.stderr)
                return 1
            print(f"could not download {WEIGHTS_FILENAME} ({type(err).__name__}: {err}).\n"
                  f"  Download {WEIGHTS_URL}\n  where a network exists and copy it to {target}\n"
                  f"  (or to any path named by metrics.feature_extractor_weights_path).", file=sys.stderr)
            return 1
        return 0
    found = find_inception_weights(args.path)
    print(f"looked at: {_configured_path(args.path) or hub_weights_path()}")
    print(f"present: {found is not None}")
    if found is None:
        return 1
    try:
        verify_inception_weights(found)
    except MissingWeightsError as err:
        print(f"verified: no\n{err}")
        return 1
    print(f"verified: yes (sha256 {cached_sha256(found)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
