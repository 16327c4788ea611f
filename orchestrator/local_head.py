"""A private single-node Ray cluster for sweeps on one machine and for tests.

:class:`LocalHead` starts ``ray start --head --block`` on free ports and its own temp dir, and is
stopped by terminating its own process group, never with ``ray stop`` (which would stop every
Ray on the machine).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from core.errors import ConfigError
from orchestrator.jobs import job_client, local_token, tail

logger = logging.getLogger(__name__)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the OS reports free right now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_executable() -> str:
    """The `ray` CLI next to this Python (a venv's), else the one on PATH."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command was not found next to this Python or on PATH")
    return found


class LocalHead:
    """A private single-node Ray cluster: `ray start --head --block` on free ports, own temp dir.

    Token authentication stays on (RAY_AUTH_MODE=token unless the environment says otherwise;
    a token is generated in ~/.ray/auth_token when none exists, as `ray get-auth-token
    --generate` does). The Python running this comes first on the head's PATH, so job
    entrypoints `python -m orchestrator ...` run with the same interpreter and packages.

    Use as a context manager, or call start()/stop(). stop() terminates the head's own process
    group (the `ray start --block` process and every Ray process it started).
    """

    def __init__(self, num_cpus: Optional[float] = None, num_gpus: Optional[int] = None,
                 env: Optional[dict] = None, object_store_memory: Optional[int] = None,
                 start_timeout_s: float = 180.0):
        self.num_cpus = num_cpus if num_cpus is not None else os.cpu_count()
        self.num_gpus = num_gpus
        self.extra_env = dict(env or {})
        self.object_store_memory = object_store_memory
        self.start_timeout_s = start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.temp_dir: Optional[str] = None
        self.gcs_address: Optional[str] = None
        (self.port, self.dashboard_port, self.client_port, self.metrics_export_port, self.agent_http_port,
         self.agent_grpc_port, self.runtime_env_agent_port, self.node_manager_port,
         self.object_manager_port) = free_ports(9)

    # addresses ---------------------------------------------------------------------------

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        """This node's Prometheus endpoint (Ray system metrics and ray.util.metrics series)."""
        return f"http://127.0.0.1:{self.metrics_export_port}/metrics"

    def client(self):
        """A Jobs SDK client for this head (it always gets this machine's token)."""
        return job_client(self.dashboard_url, send_token=True)

    @property
    def log_path(self) -> Path:
        return Path(self.temp_dir) / "ray-start.log"

    # lifecycle ---------------------------------------------------------------------------

    def _env(self) -> dict:
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(key, None)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("RAY_AUTH_MODE", "token")
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.update(self.extra_env)
        return env

    def _ensure_token(self, env: dict) -> None:
        if env.get("RAY_AUTH_MODE", "").lower() != "token" or local_token():
            return
        # The same as `ray get-auth-token --generate`: creates ~/.ray/auth_token if missing.
        subprocess.run([ray_executable(), "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> "LocalHead":
        base = "/tmp" if os.path.isdir("/tmp") else None  # short: Ray's socket paths must fit 107 chars
        self.temp_dir = tempfile.mkdtemp(prefix="wcgan-ray-", dir=base)
        env = self._env()
        self._ensure_token(env)
        cmd = [
            ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
            f"--num-cpus={self.num_cpus:g}" if isinstance(self.num_cpus, float) else f"--num-cpus={self.num_cpus}",
            f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.client_port}", f"--metrics-export-port={self.metrics_export_port}",
            f"--dashboard-agent-listen-port={self.agent_http_port}",
            f"--dashboard-agent-grpc-port={self.agent_grpc_port}",
            f"--runtime-env-agent-port={self.runtime_env_agent_port}",
            f"--node-manager-port={self.node_manager_port}", f"--object-manager-port={self.object_manager_port}",
            f"--temp-dir={self.temp_dir}",
        ]
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        if self.object_store_memory is not None:
            cmd.append(f"--object-store-memory={int(self.object_store_memory)}")
        logger.info("starting a local Ray head (dashboard %s, temp dir %s)", self.dashboard_url, self.temp_dir)
        with open(self.log_path, "w") as out:
            # Own session and process group: stop() ends exactly this cluster.
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        address_file = Path(self.temp_dir) / "ray_current_cluster"
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with code {self.proc.returncode}:\n"
                                   + tail(self.log_path.read_text(errors="replace")))
            if address_file.is_file() and self.gcs_address is None:
                self.gcs_address = address_file.read_text().strip() or None
            if self.gcs_address is not None:
                try:
                    client = self.client()
                    client.list_jobs()
                    logger.info("local Ray head ready at %s (dashboard %s)", self.gcs_address, self.dashboard_url)
                    return
                except Exception as err:  # dashboard still starting
                    last_err = err
            time.sleep(1.0)
        raise TimeoutError(f"local Ray head not ready after {self.start_timeout_s:g}s (last error: {last_err}); "
                           f"log:\n" + tail(self.log_path.read_text(errors="replace")))

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the head's process group, SIGKILL to whatever is left after `grace_s`
        (the cluster is thrown away, so a slow graceful shutdown buys nothing)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the leader's pid
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(pgid):
                proc.poll()  # reap the leader once it exits
                time.sleep(0.5)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.2)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def __enter__(self) -> "LocalHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
