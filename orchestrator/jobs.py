"""Ray Jobs helpers: submit `python -m orchestrator ...` as Ray jobs, wait, read logs.

Used by `wcgan sweep` (one job per sweep point), `wcgan status` and the tests. Everything talks to the
cluster through Ray's own Jobs SDK (``ray.job_submission.JobSubmissionClient``) over the
dashboard's HTTP address, exactly like ``ray job submit``:

    client = job_client("http://head:8265")
    job_id = submit(client, "python -m orchestrator train --config experiments/digits.yaml")
    info = wait(client, job_id, timeout_s=3600, on_output=print)

Token authentication (on by default for new Ray clusters) needs the cluster's token on the
submitting side: Ray reads it from ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, or
``~/.ray/auth_token``. Like the ``ray`` CLI and ``ray.init(address=...)``, these helpers send
it only with ``RAY_AUTH_MODE=token`` set, or to a local head this process started
(:mod:`orchestrator.local_head`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from core.errors import ConfigError, JobError

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV_FILE = REPO_ROOT / "runtime_env.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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


def local_token() -> Optional[str]:
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
    token = local_token() if send_token else None
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
