"""Ray Jobs helpers: submit `python -m orchestrator ...` as Ray jobs, wait, read logs; a local head.

Used by `wcgan sweep` (one job per sweep point) and by the tests. Everything talks to the
cluster through Ray's own Jobs SDK (``ray.job_submission.JobSubmissionClient``) over the
dashboard's HTTP address, exactly like ``ray job submit``:

    client = job_client("http://head:8265")
    job_id = submit(client, "python -m orchestrator train --config experiments/digits.yaml")
    info = wait(client, job_id, timeout_s=3600, on_output=print)

Token authentication (on by default for new Ray clusters) needs the cluster's token on the
submitting side: Ray reads it from ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, or
``~/.ray/auth_token``. Like the ``ray`` CLI and ``ray.init(address=...)``, these helpers send
it only with ``RAY_AUTH_MODE=token`` set, or to a :class:`LocalHead` this process started.

:class:`LocalHead` starts a private ``ray start --head`` on free ports and a temp dir, for
sweeps on one machine and for tests. It is stopped by terminating its own process group,
never with ``ray stop`` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import atexit
import contextlib
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
from typing import Callable, Optional

import yaml

from orchestrator.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV_FILE = REPO_ROOT / "runtime_env.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(RuntimeError):
    """A job did not succeed (failed, stopped, or ran past its timeout)."""


# ---------------------------------------------------------------------------------- runtime env


def load_runtime_env(path: Optional[str | Path] = None, working_dir: Optional[str | Path] = REPO_ROOT) -> dict:
    """runtime_env.yaml (excludes, env vars) plus the working dir to upload."""
    path = Path(path) if path is not None else RUNTIME_ENV_FILE
    env: dict = {}
    if path.is_file():
        env = yaml.safe_load(path.read_text()) or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{path}: a runtime env must be a mapping (excludes, env_vars, ...)")
    elif path != RUNTIME_ENV_FILE:
        raise ConfigError(f"runtime env file not found: {path}")
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    return env


# ---------------------------------------------------------------------------------- auth + client


def token_auth_requested() -> bool:
    """RAY_AUTH_MODE=token in this process: Ray's own switch for sending the token to a cluster."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def _token() -> Optional[str]:
    """The local Ray auth token, where Ray itself looks for it (env, token path, ~/.ray/auth_token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        loader = AuthenticationTokenLoader.instance()
        if loader.has_token(ignore_auth_mode=True):
            return loader.get_raw_token(ignore_auth_mode=True)
    except Exception:  # older Ray without token auth, or an unreadable token file
        pass
    return None


def auth_headers(send_token: Optional[bool] = None) -> dict:
    """The bearer header for Ray's HTTP APIs. Like Ray's CLI, the token goes to a cluster only
    with RAY_AUTH_MODE=token (or `send_token=True`, for a head this process started)."""
    if send_token is None:
        send_token = token_auth_requested()
    token = _token() if send_token else None
    return {"Authorization": f"Bearer {token}"} if token else {}


AUTH_HINT = ("If the cluster uses token authentication (the default for new Ray clusters), export "
             "RAY_AUTH_MODE=token and make its token available here: ~/.ray/auth_token, RAY_AUTH_TOKEN "
             "or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` prints the local one).")


@contextlib.contextmanager
def explicit_address(address: Optional[str]):
    """Ray's HTTP clients let $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override their `address`
    argument; while one is built for an address given on our command line, hide them."""
    keys = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
    saved = {k: os.environ.pop(k) for k in keys if address and k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_client(address: Optional[str] = None, send_token: Optional[bool] = None):
    """A JobSubmissionClient for `address` (dashboard URL, e.g. http://head:8265; default
    $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS), with the auth token per :func:`auth_headers`."""
    from ray.job_submission import JobSubmissionClient

    try:
        with explicit_address(address):
            return JobSubmissionClient(address, headers=auth_headers(send_token) or None)
    except Exception as err:  # ConnectionError, AuthenticationError, ...
        where = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "the default"
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ConfigError(
            f"cannot use the Ray Jobs API at {where}: {first}. Pass the dashboard address "
            f"(http://<head>:8265). " + ("" if token_auth_requested() else AUTH_HINT)
        ) from None


# ---------------------------------------------------------------------------------- jobs


@contextlib.contextmanager
def _quiet_upload_logs():
    """Ray logs every ignored file and each default exclude at INFO/WARNING while it packages
    the working dir; keep its size warnings and errors only."""
    levels = {"ray._private.runtime_env.packaging": logging.WARNING,
              "ray._private.runtime_env.working_dir": logging.ERROR,
              "ray.dashboard.modules.dashboard_sdk": logging.WARNING}
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def submit(client, entrypoint: str, runtime_env: Optional[dict] = None, submission_id: Optional[str] = None,
           metadata: Optional[dict] = None, quiet: bool = True) -> str:
    """Submit `entrypoint` with runtime_env.yaml + this repo as working dir (unless given)."""
    env = load_runtime_env() if runtime_env is None else runtime_env
    with _quiet_upload_logs() if quiet else contextlib.nullcontext():
        return client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=submission_id,
                                 metadata=metadata)


def logs(client, job_id: str) -> str:
    return client.get_job_logs(job_id)


def wait(client, job_id: str, timeout_s: float, poll_s: float = 1.0,
         on_status: Optional[Callable[[str], None]] = None,
         on_output: Optional[Callable[[str], None]] = None, stop_on_timeout: bool = True):
    """Poll until the job ends; returns its JobDetails. `on_status` hears each new status,
    `on_output` each new line of the job's logs (progress while it runs). Raises JobError
    after `timeout_s` (stopping the job first when `stop_on_timeout`)."""
    deadline = time.monotonic() + timeout_s
    status, seen = None, 0
    while True:
        info = client.get_job_info(job_id)
        if on_output is not None:
            try:
                text = client.get_job_logs(job_id)
            except Exception:
                text = ""
            if len(text) > seen:
                chunk, seen = text[seen:], len(text)
                for line in chunk.splitlines():
                    on_output(line)
        if str(info.status) != status:
            status = str(info.status.value if hasattr(info.status, "value") else info.status)
            if on_status is not None:
                on_status(status)
        if status in TERMINAL:
            return info
        if time.monotonic() > deadline:
            if stop_on_timeout:
                try:
                    client.stop_job(job_id)
                except Exception:
                    pass
            raise JobError(f"job {job_id} still {status} after {timeout_s:g}s" +
                           ("; stopped it" if stop_on_timeout else ""))
        time.sleep(poll_s)


def job_wall_s(info) -> Optional[float]:
    """Seconds from the job's start to its end (Ray records milliseconds), if known."""
    if info.start_time and info.end_time:
        return (info.end_time - info.start_time) / 1000.0
    return None


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------- local head


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
                 start_timeout_s: float = 180.0, log: Callable[[str], None] = lambda _: None):
        self.num_cpus = num_cpus if num_cpus is not None else os.cpu_count()
        self.num_gpus = num_gpus
        self.extra_env = dict(env or {})
        self.object_store_memory = object_store_memory
        self.start_timeout_s = start_timeout_s
        self.log = log
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
        if env.get("RAY_AUTH_MODE", "").lower() != "token" or _token():
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
        self.log(f"starting a local Ray head (dashboard {self.dashboard_url}, temp dir {self.temp_dir})")
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
                    self.log(f"local Ray head ready at {self.gcs_address} (dashboard {self.dashboard_url})")
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
