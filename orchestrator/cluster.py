"""Connecting to Ray: the RAY_ADDRESS cluster when set, else a local one sized to the machine."""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

import ray

from core.errors import ConfigError
from orchestrator.jobs import AUTH_HINT, token_auth_requested

logger = logging.getLogger(__name__)


def check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Fail in seconds on a malformed or wrong host:port: ray.init would retry the GCS for minutes,
    and on an address without a port it raises a bare ValueError."""
    if not address or address in ("auto", "local") or address.startswith(("http://", "https://")):
        return
    hostport = address.removeprefix("ray://")  # Ray Client: the same host:port form
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"RAY_ADDRESS/--address {address!r}: expected host:port, e.g. 10.0.0.1:6379 "
                          "(the head's GCS port, 6379 unless `ray start --port` changed it)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"RAY_ADDRESS/--address: no Ray cluster answers at {address} ({err.strerror or err}); "
                          "pass the head's GCS address (host:6379, as for `ray start --address`)") from None


def _refused_token(err: BaseException) -> bool:
    """Whether the cluster turned the connection down for its token (somewhere in the cause chain)."""
    while err is not None:
        if "Authentication" in type(err).__name__ or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


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
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, ValueError) as err:  # reachable, but no Ray there, or it refused our token
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = f" {AUTH_HINT}" if _refused_token(err) and not token_auth_requested() else ""
            raise ConfigError(f"RAY_ADDRESS/--address: cannot connect to a Ray cluster at {address}: {first}."
                              f"{hint}") from None
        logger.info("connected to Ray cluster at %s", address)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=True)
        logger.info("started a local Ray with %d CPUs (set RAY_ADDRESS to use a cluster)", os.cpu_count())


def alive_nodes() -> list[dict[str, float]]:
    """Resources of every alive node, for planning bundles that must fit on one node."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
