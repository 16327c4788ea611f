"""Logging set-up: every module logs to ``logging.getLogger(__name__)``; entry points call
:func:`configure` once (the CLI with ``--quiet``/``--verbose``, actors with the driver's level)."""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "WCGAN_LOG_LEVEL"
_FORMAT = "%(message)s"
_DEBUG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def configure(level: int | str | None = None) -> int:
    """Route wcgan's loggers to stderr at `level` (default: $WCGAN_LOG_LEVEL, else INFO).

    Only the project's own loggers are touched; Ray's and torch's keep their settings. The
    level is exported in the environment, so a local Ray's worker processes inherit it.
    """
    if level is None:
        level = os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    os.environ[LEVEL_ENV] = logging.getLevelName(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_DEBUG_FORMAT if level <= logging.DEBUG else _FORMAT))
    for name in ("core", "workers", "metrics", "orchestrator"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return level
