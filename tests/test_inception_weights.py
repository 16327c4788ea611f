"""The Inception weights file is verified (SHA-256) before anything unpickles it.

torch-fidelity reads the file with ``torch.load(weights_only=False)``, which runs whatever the pickle
says. These tests craft a pickle whose loading has a visible side effect (it creates a directory) and
show that every way into the extractor refuses a file with the wrong digest without loading it; that
an accepted file passes and loads; and that the verdict is cached per file state.

No network, no real weights: accepted digests are added to ``metrics.inception.ACCEPTED_SHA256``
with ``monkeypatch.setitem`` (undone after each test).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from conftest import save_random_inception
from core.config import load_config
from core.errors import ConfigError, MissingWeightsError
from metrics import features as F
from metrics import inception as I  # noqa: E741


class Trap:
    """Unpickling this creates `marker`: the proof that something loaded the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _trap_bytes(marker: Path) -> bytes:
    return pickle.dumps({"pad": bytes(4096), "trap": Trap(marker)})


def _flip_one_byte(data: bytes) -> bytes:
    i = data.index(bytes(4096)) + 2048  # inside the padding: still a pickle that would spring the trap
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _accept(monkeypatch, path: Path) -> str:
    digest = I.sha256_file(path)
    monkeypatch.setitem(I.ACCEPTED_SHA256, digest, f"test file {path.name}")
    return digest


@pytest.fixture
def no_network(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(I.urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)


def test_the_pinned_digest_is_the_one_the_file_name_carries():
    assert re.fullmatch(r"[0-9a-f]{64}", I.WEIGHTS_SHA256)
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", I.WEIGHTS_FILENAME).group(1)  # torch.hub's convention
    assert I.WEIGHTS_SHA256.startswith(prefix) and I.WEIGHTS_URL.endswith(I.WEIGHTS_FILENAME)
    assert I.WEIGHTS_SHA256 in I.ACCEPTED_SHA256
    assert issubclass(MissingWeightsError, ConfigError)  # bad input: exit 2, no traceback


def test_a_tampered_file_is_refused_before_anything_unpickles_it(tmp_path, monkeypatch, no_network, capsys):
    marker = tmp_path / "the-pickle-ran"
    genuine = tmp_path / "genuine" / I.WEIGHTS_FILENAME
    genuine.parent.mkdir()
    genuine.write_bytes(_trap_bytes(marker))
    good = _accept(monkeypatch, genuine)  # stands for the real file here
    assert I.verify_inception_weights(genuine) == genuine  # verifying reads bytes, never unpickles
    assert not marker.exists()

    tampered = tmp_path / "w" / I.WEIGHTS_FILENAME
    tampered.parent.mkdir()
    tampered.write_bytes(_flip_one_byte(genuine.read_bytes()))
    bad = I.sha256_file(tampered)
    assert bad != good

    real_load, loads = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    def refused(call, *names):
        with pytest.raises(MissingWeightsError) as err:
            call()
        for name in names:
            assert name in str(err.value)
        return str(err.value)

    msg = refused(lambda: I.verify_inception_weights(tampered), str(tampered), I.WEIGHTS_SHA256,
                  bad, "make fetch-weights", "not loaded")
    assert f"{tampered.stat().st_size:,} bytes" in msg
    refused(lambda: I.resolve_inception_weights(tampered), str(tampered), bad)
    refused(lambda: I.resolve_inception_weights(tampered.parent, download=True), str(tampered), bad)
    refused(lambda: I.InceptionFeatures(tampered), str(tampered), bad)
    refused(lambda: I.fetch_inception_weights(tampered), str(tampered), bad)  # already there: checked, not trusted
    cfg = load_config(None, ["dataset.labels=[0]", "metrics.feature_extractor=inception",
                             f"metrics.feature_extractor_weights_path={tampered.parent}",
                             "metrics.download_weights=false"])
    refused(lambda: F.build_feature_space(cfg, tmp_path / "store", device="cpu", class_accuracy=False),
            str(tampered), bad)

    # a download with these bytes is refused by its check, and nothing is saved
    import io

    class Response(io.BytesIO):
        def __enter__(self):
            return self

    monkeypatch.setattr(I.urllib.request, "urlopen", lambda url, timeout=None: Response(tampered.read_bytes()))
    with pytest.raises(MissingWeightsError, match=f"is not {re.escape(I.WEIGHTS_FILENAME)}.*{bad}"):
        I.fetch_inception_weights(tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []

    # the CLI says so too
    assert I.main(["where", "--path", str(tampered)]) == 1
    assert "verified: no" in capsys.readouterr().out
    assert I.main(["fetch", "--dest", str(tampered)]) == 1
    assert bad in capsys.readouterr().err

    assert loads == [] and not marker.exists()
    # ...and the trap was real: loading the tampered file the way torch-fidelity does springs it
    with pytest.raises(Exception):
        real_load(tampered, weights_only=False)
    assert marker.is_dir()


def test_an_accepted_file_passes_and_loads(tmp_path, monkeypatch, no_network):
    weights = tmp_path / I.WEIGHTS_FILENAME
    save_random_inception(weights, monkeypatch, accept=False)
    with pytest.raises(MissingWeightsError, match=re.escape(str(weights))):  # not the pinned file: refused
        I.InceptionFeatures(weights)
    _accept(monkeypatch, weights)
    assert I.resolve_inception_weights(tmp_path) == weights
    net = I.InceptionFeatures(weights)
    assert net.num_features == 2048 and net.weights_path == str(weights)


def test_the_verdict_is_cached_per_file_state(tmp_path, monkeypatch):
    hashed = []
    sha256_file = I.sha256_file
    monkeypatch.setattr(I, "sha256_file", lambda p: hashed.append(Path(p)) or sha256_file(p))
    path = tmp_path / "w.pth"
    path.write_bytes(_trap_bytes(tmp_path / "marker"))
    with pytest.raises(MissingWeightsError):
        I.verify_inception_weights(path)
    monkeypatch.setitem(I.ACCEPTED_SHA256, sha256_file(path), "test")
    for _ in range(3):
        assert I.verify_inception_weights(path) == path
    assert hashed == [path]  # once, refused or accepted

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    I.verify_inception_weights(path)
    assert len(hashed) == 2
    copy = tmp_path / "copy.pth"
    shutil.copy(path, copy)  # another path: hashed on its own
    I.verify_inception_weights(copy)
    assert hashed[-1] == copy and len(hashed) == 3

    # changed in place, same size, mtime put back: the ctime still tells
    time.sleep(0.05)
    st = path.stat()
    path.write_bytes(_flip_one_byte(path.read_bytes()))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(MissingWeightsError, match=re.escape(str(path))):
        I.verify_inception_weights(path)
    assert len(hashed) == 4
    # a digest no longer accepted is refused from the cache, without hashing again
    monkeypatch.delitem(I.ACCEPTED_SHA256, sha256_file(copy))
    with pytest.raises(MissingWeightsError):
        I.verify_inception_weights(copy)
    assert len(hashed) == 4
    assert not (tmp_path / "marker").exists()
