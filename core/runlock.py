"""One run, one writer: a lock file in the run directory, held by the driver while it trains.

Ray's named actors already refuse a second driver for a live run on the *same* cluster. The
lock covers shared storage seen by several clusters (or a driver whose cluster died): it names
the holder (host, pid, Ray address, start time) and a background thread renews it while the
holder lives. A lock is stale when its holder is a dead process on this host, or (another
host's) when it has not been renewed for ``stale_after_s`` by this host's clock (hosts sharing
storage are assumed to keep their clocks in step, as NTP does). A stale lock is taken over
with a message: renamed aside atomically, so two drivers cannot both take it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
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
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def holder(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") == self.me["host"]:
            try:  # on this machine the process table decides, whatever the timestamps say
                os.kill(int(holder["pid"]), 0)
                return False
            except ProcessLookupError:
                return True  # its driver died
            except (PermissionError, KeyError, ValueError, TypeError):
                pass
        return time.time() - float(holder.get("renewed", 0)) > self.stale_after_s

    def _is_mine(self, holder: Optional[dict]) -> bool:
        return bool(holder) and all(holder.get(k) == self.me[k] for k in ("host", "pid", "started"))

    def acquire(self) -> None:
        """Take the lock, or ConfigError naming the live holder; then keep it renewed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder() or {}
                if holder and not self._is_stale(holder):
                    raise ConfigError(
                        f"run {self.path.parent.name} is being trained by another driver (pid {holder.get('pid')} "
                        f"on {holder.get('host')}, Ray {holder.get('ray_address') or '?'}, renewed "
                        f"{time.time() - float(holder.get('renewed', 0)):.0f}s ago; lock {self.path}). Wait for it "
                        f"to finish, or stop it first; the lock goes stale {self.stale_after_s:g}s after its last "
                        f"renewal.") from None
                try:  # atomic: of two drivers taking over, one renames the stale lock, the other retries
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.stale-{os.getpid()}"))
                except FileNotFoundError:
                    continue
                logger.warning("taking over the stale lock of run %s (held by pid %s on %s)",
                               self.path.parent.name, holder.get("pid"), holder.get("host"))
                self.path.with_name(f"{self.path.name}.stale-{os.getpid()}").unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({**self.me, "renewed": time.time()}))
            self.held = True
            self._renewer = threading.Thread(target=self._renew_loop, name="wcgan-run-lock", daemon=True)
            self._renewer.start()
            return
        raise ConfigError(f"could not take the lock {self.path}: other drivers keep taking it")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.stale_after_s / 4):
            try:
                holder = self.holder()
                if not self._is_mine(holder):
                    logger.error("run %s: lost its lock %s to %s; another driver may be writing this run",
                                 self.path.parent.name, self.path, holder)
                    return
                write_text(self.path, json.dumps({**self.me, "renewed": time.time()}))
            except OSError as err:  # a storage hiccup: the labels train on; try again next time
                logger.warning("could not renew the lock %s (%s)", self.path, err)

    def release(self) -> None:
        self._stop.set()
        if self.held:
            if self._is_mine(self.holder()):
                self.path.unlink(missing_ok=True)
            self.held = False
