"""Checks of where a run writes, before Ray starts.

A run whose run.storage cannot hold a run directory should fail in a second with the path
named, not with a NotADirectoryError traceback after the cluster was contacted and its
bundles placed. Nothing is created here: the storage directory is made with the run directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    """`path` itself, or its closest ancestor on disk (links included, broken or not)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_storage(storage: str | os.PathLike) -> None:
    """A ConfigError unless run.storage is (or can be made) a directory this process can write in.

    Writability is probed by creating an unnamed temporary file (O_TMPFILE where supported), not
    with os.access: that is True for root even on some file systems that refuse root's writes.
    """
    storage = Path(storage).expanduser().absolute()
    found = _nearest_existing(storage)
    if found.is_symlink() and not found.exists():
        raise ConfigError(f"run.storage: {found} is a symlink to {os.readlink(found)}, which does not exist")
    if not found.is_dir():
        where = "" if found == storage else f"cannot create {storage}: "
        raise ConfigError(f"run.storage: {where}{found} is a file, not a directory; point run.storage at a "
                          "directory (it holds one sub-directory per run)")
    try:
        tempfile.TemporaryFile(dir=found).close()
    except OSError as err:
        what = f"{storage} is" if found == storage else f"cannot create {storage}: {found} is"
        raise ConfigError(f"run.storage: {what} not writable ({err.strerror or err}); point run.storage "
                          "at a directory you can write in, e.g. --set run.storage=$HOME/runs") from None
