"""One run, one writer: a lock file in the run directory, held by the driver while it trains.

Ray's named actors already refuse a second driver for a live run on the *same* cluster. The
lock covers shared storage seen by several clusters (or a driver whose cluster died): it names
the holder (host, pid, Ray address, start time) and is renewed while the holder lives. A lock
whose holder is a dead process on this host, or that has not been renewed for
``stale_after_s``, is stale and taken over with a message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from core.errors import ConfigError
from core.rundir import RunDir, write_text

logger = logging.getLogger(__name__)


class RunLock:
    def __init__(self, run: RunDir, ray_address: str = "", stale_after_s: float = 120.0):
        self.path: Path = run.lock
        self.stale_after_s = stale_after_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "ray_address": ray_address,
                   "started": time.time()}
        self.held = False

    def holder(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: dict) -> bool:
        if time.time() - float(holder.get("renewed", 0)) > self.stale_after_s:
            return True
        if holder.get("host") == self.me["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True  # its driver died on this machine
            except (PermissionError, KeyError, ValueError):
                pass
        return False

    def acquire(self) -> None:
        """Take the lock, or ConfigError naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({**self.me, "renewed": time.time()})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self.holder() or {}
            if holder and not self._is_stale(holder):
                raise ConfigError(
                    f"run {self.path.parent.name} is being trained by another driver (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, Ray {holder.get('ray_address') or '?'}, renewed "
                    f"{time.time() - float(holder.get('renewed', 0)):.0f}s ago; lock {self.path}). Wait for it to "
                    f"finish, or stop it first; the lock goes stale {self.stale_after_s:g}s after its last renewal."
                ) from None
            logger.warning("taking over the stale lock of run %s (held by pid %s on %s)", self.path.parent.name,
                           holder.get("pid"), holder.get("host"))
            write_text(self.path, record)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(record)
        self.held = True

    def renew(self) -> None:
        if self.held:
            write_text(self.path, json.dumps({**self.me, "renewed": time.time()}))

    def release(self) -> None:
        if self.held:
            holder = self.holder() or {}
            if holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
                self.path.unlink(missing_ok=True)
            self.held = False
