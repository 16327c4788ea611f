"""Connecting to Ray: the RAY_ADDRESS cluster when set, else a local one sized to the machine."""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray

from core.errors import ConfigError

logger = logging.getLogger(__name__)


def connect(address: Optional[str] = None) -> None:
    """Idempotent: reuses an existing connection (tests, `ray job submit` drivers)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise ConfigError(
            f"RAY_ADDRESS/--address is {address!r}, a dashboard (Jobs API) URL: `ray job submit` takes that, "
            f"but a driver connects to the cluster's GCS, <head>:6379. Pass --address <head>:6379, or "
            f"submit this command with `ray job submit` (see README, 'Ray jobs')."
        )
    if address:
        ray.init(address=address, log_to_driver=True)
        logger.info("connected to Ray cluster at %s", address)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=True)
        logger.info("started a local Ray with %d CPUs (set RAY_ADDRESS to use a cluster)", os.cpu_count())


def alive_nodes() -> list[dict[str, float]]:
    """Resources of every alive node, for planning bundles that must fit on one node."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
