"""This process's own facts that more than one stage reports (the start-up breakdown's clocks)."""

from __future__ import annotations

import time


def started_unix() -> float:
    """When this process was created (wall clock), for timing what came before our first line ran;
    now, where the OS will not say."""
    try:
        import psutil  # a dependency of Ray

        return psutil.Process().create_time()
    except Exception:
        return time.time()
