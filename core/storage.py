"""Where runs live: a local folder, or an object store that a local folder mirrors.

``run.storage`` is a path, a ``file://`` URI, or any URI that ``pyarrow.fs.FileSystem.from_uri``
resolves: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``abfs://...``, ``hdfs://...``. pyarrow
is the library Ray itself resolves ``RunConfig(storage_path=...)`` with, so one set of URIs and
one set of credentials serve both; it reads them from each cloud SDK's standard environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, instance roles;
``GOOGLE_APPLICATION_CREDENTIALS``; ...), never from the config file.

An object-store location ``<scheme>://<bucket>/<key>`` is worked on through its *mirror*, the
local folder ``<cache>/store/<scheme>/<bucket>/<key>`` (``<cache>`` is ``$WCGAN_CACHE_DIR``, else
``~/.cache/wcgan``). Every process reads and writes plain local files there, so torch, pandas
and matplotlib need no store-aware code, and:

* :func:`push` uploads a finished local file to its key, atomically: to a temporary key
  beside it, then moved to the final key, so no reader ever sees a partial object there.
  ``core.rundir.atomic_write`` calls it, so every file the project writes reaches the store;
* :func:`pull` / :func:`pull_tree` download what the store has and the mirror lacks or holds
  an older copy of; unchanged files are reused, which is the cache for sampling and scoring;
* :func:`listdir`, :func:`exists` and :func:`remove` ask the store, not the mirror, since other
  nodes write the same run.

The mapping between a mirror path and its URI is lexical, so a process needs no registry: any
path under ``<cache>/store`` is backed by the store, any other path is just local.
"""

from __future__ import annotations

import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

CACHE_ENV = "WCGAN_CACHE_DIR"
TMP_PREFIX = ".tmp-"
# Files that belong to one machine's mirror, never to the store: the driver's run lock
# (object stores offer pyarrow no atomic create-if-absent to lock with).
LOCAL_ONLY = frozenset({".lock"})


CREDENTIALS_HINT = (" Credentials and endpoints come from the cloud SDK's environment: for S3, "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role) and, for an "
                    "S3-compatible server, AWS_ENDPOINT_URL; for GCS, GOOGLE_APPLICATION_CREDENTIALS.")


class StorageError(OSError):
    """The store refused or could not be reached; the message names the URI and the usual fix."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/wcgan").expanduser().absolute()


def mirror_root() -> Path:
    return cache_root() / "store"


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` (a URI, or a local path) is backed by an object store."""
    text = str(location)
    if is_uri(text):
        return not text.startswith("file://")
    return _split_mirror(Path(text)) is not None


def join(location: str | os.PathLike, *names: str) -> str:
    """`location`/`names`, for a path or a URI alike."""
    text = str(location)
    if is_uri(text):
        return "/".join([text.rstrip("/"), *names])
    return str(Path(text, *names))


def local_path(location: str | os.PathLike) -> Path:
    """The local folder that holds `location`: itself for a path, its mirror for a store URI."""
    text = str(location)
    if not is_uri(text):
        return Path(text).expanduser()
    if text.startswith("file://"):
        return Path(text[len("file://"):]).expanduser()
    scheme, rest = text.split("://", 1)
    bucket, _, key = rest.strip("/").partition("/")
    if not bucket:
        raise StorageError(f"{text}: no bucket in the URI; write {scheme}://<bucket>/<prefix>")
    return mirror_root() / scheme / bucket / key


def uri_of(path: str | os.PathLike) -> str:
    """The location another process or node should be given: the store URI of a mirror path,
    else the path itself (absolute)."""
    split = _split_mirror(Path(path))
    if split is None:
        return str(Path(path).absolute())
    scheme, bucket, key = split
    return f"{scheme}://{bucket}/{key}".rstrip("/")


def _split_mirror(path: Path) -> Optional[tuple[str, str, str]]:
    """(scheme, bucket, key) of a path under the mirror root, else None."""
    try:
        rel = path.absolute().relative_to(mirror_root())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 2:
        return None
    return parts[0], parts[1], "/".join(parts[2:])


@lru_cache(maxsize=None)
def _filesystem(scheme: str, bucket: str):
    import pyarrow.fs as pafs  # deferred: local runs never import pyarrow's cloud clients

    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    except Exception as err:  # an unknown scheme, or (S3) the bucket's region could not be looked up
        raise StorageError(f"{scheme}://{bucket}: cannot open the store: {_first_line(err)}.{CREDENTIALS_HINT}") from None
    return fs


def _remote(path: str | os.PathLike):
    """(file system, object path) of a mirror path, else None."""
    split = _split_mirror(Path(path))
    if split is None:
        return None
    scheme, bucket, key = split
    return _filesystem(scheme, bucket), f"{bucket}/{key}".rstrip("/")


def _call(what: str, uri: str, fn: Callable, *args):
    try:
        return fn(*args)
    except StorageError:
        raise
    except OSError as err:
        raise StorageError(f"{uri}: {what} failed: {err}") from err


# ------------------------------------------------------------------ writes

def push(path: str | os.PathLike) -> None:
    """Upload a finished local file to its key (temporary key, then move); a no-op off the store."""
    path = Path(path)
    remote = _remote(path)
    if remote is None or path.name in LOCAL_ONLY:
        return
    fs, key = remote
    parent, _, name = key.rpartition("/")
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"

    def upload():
        with path.open("rb") as src, fs.open_output_stream(tmp) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        fs.move(tmp, key)

    try:
        _call("upload", uri_of(path), upload)
    except BaseException:
        _quietly(fs.delete_file, tmp)
        raise
    _stamp(path, fs.get_file_info(key))


def remove(path: str | os.PathLike) -> None:
    """Delete a file from the mirror and the store (missing is fine)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    remote = _remote(path)
    if remote is not None:
        fs, key = remote
        _quietly(fs.delete_file, key)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder from the mirror and the store (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)
    remote = _remote(path)
    if remote is not None:
        fs, key = remote
        _quietly(fs.delete_dir, key)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a file in the mirror and (as a server-side move) in the store."""
    os.replace(src, dst)
    remote_src, remote_dst = _remote(src), _remote(dst)
    if remote_src is not None and remote_dst is not None:
        _call("move", uri_of(src), remote_src[0].move, remote_src[1], remote_dst[1])


# ------------------------------------------------------------------ reads

def exists(path: str | os.PathLike) -> bool:
    remote = _remote(path)
    if remote is None:
        return Path(path).exists()
    from pyarrow.fs import FileType

    fs, key = remote
    return _call("look-up", uri_of(path), fs.get_file_info, key).type != FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    remote = _remote(path)
    if remote is None:
        return Path(path).is_dir()
    from pyarrow.fs import FileType

    fs, key = remote
    return _call("look-up", uri_of(path), fs.get_file_info, key).type == FileType.Directory


def listdir(path: str | os.PathLike) -> list[str]:
    """Names in a folder (files and sub-folders; [] when it does not exist), from the store when
    the folder is mirrored."""
    remote = _remote(path)
    if remote is None:
        return sorted(os.listdir(path)) if Path(path).is_dir() else []
    from pyarrow.fs import FileSelector

    fs, key = remote
    infos = _call("listing", uri_of(path), fs.get_file_info, FileSelector(key, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def pull(path: str | os.PathLike) -> bool:
    """Make the mirror's copy of one file current; False when the store has no such file.
    Off the store: whether the file exists."""
    path = Path(path)
    remote = _remote(path)
    if remote is None:
        return path.is_file()
    from pyarrow.fs import FileType

    fs, key = remote
    info = _call("look-up", uri_of(path), fs.get_file_info, key)
    if info.type != FileType.File:
        return False
    _download(fs, info, path)
    return True


def pull_tree(path: str | os.PathLike, keep: Callable[[str], bool] = lambda key: True,
              recursive: bool = True) -> int:
    """Mirror a folder's files for which `keep(relative key)` holds: download new or changed ones,
    delete local ones the store no longer has. Returns the number downloaded; a no-op off the store."""
    path = Path(path)
    remote = _remote(path)
    if remote is None:
        return 0
    from pyarrow.fs import FileSelector, FileType

    fs, key = remote
    infos = _call("listing", uri_of(path), fs.get_file_info,
                  FileSelector(key, recursive=recursive, allow_not_found=True))
    wanted = {}
    for info in infos:
        rel = info.path[len(key) + 1:]
        if info.type == FileType.File and keep(rel) and not info.base_name.startswith(TMP_PREFIX):
            wanted[rel] = info
    fetched = sum(_download(fs, info, path / rel) for rel, info in wanted.items())
    if path.is_dir():
        for local in (path.rglob("*") if recursive else path.iterdir()):
            rel = local.relative_to(path).as_posix()
            if local.is_file() and keep(rel) and rel not in wanted and local.name not in LOCAL_ONLY:
                local.unlink(missing_ok=True)
    return fetched


def _download(fs, info, path: Path) -> bool:
    """Fetch one object into the mirror unless the copy there is current (same size and mtime)."""
    try:
        st = path.stat()
        if st.st_size == info.size and info.mtime is not None and int(st.st_mtime) == int(info.mtime.timestamp()):
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        with fs.open_input_stream(info.path) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{uri_of(path)}: download failed: {err}") from err
    _stamp(path, info)
    return True


def _stamp(path: Path, info) -> None:
    """Give the mirror's copy the object's mtime, so an unchanged object is never fetched again."""
    if info.mtime is not None:
        t = info.mtime.timestamp()
        os.utime(path, (t, t))


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass


# ------------------------------------------------------------------ pre-flight

def check_remote(location: str) -> None:
    """Raise StorageError unless this process can write and delete under `location` (one small
    probe object), so a bad bucket or missing credentials fails before any actor starts."""
    root = local_path(location)
    fs, key = _remote(root)
    bucket = key.split("/", 1)[0]
    hint = CREDENTIALS_HINT
    from pyarrow.fs import FileType

    try:
        found = fs.get_file_info(bucket).type
    except OSError as err:
        raise StorageError(f"run.storage: cannot reach {location}: {_first_line(err)}.{hint}") from None
    if found == FileType.NotFound:
        raise StorageError(f"run.storage: bucket {bucket!r} of {location} does not exist (or these credentials "
                           f"cannot see it); create it, or fix the URI.{hint}")
    probe = f"{key}/{TMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"wcgan")
        fs.delete_file(probe)
    except OSError as err:
        raise StorageError(f"run.storage: cannot write to {location}: {_first_line(err)}.{hint}") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
