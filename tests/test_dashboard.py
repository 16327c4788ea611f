"""Dashboard monitoring on a real `ray start --head`: per-label Prometheus series and `wcgan status`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from core.errors import JobError
from orchestrator import jobs
from orchestrator.local_head import LocalHead
from orchestrator.cli import main
from core.actors import parse
from orchestrator.status import format_status

REPO = jobs.REPO_ROOT
# ray.util.metrics series reach Prometheus as ray_<name> (counters with a _total suffix).
SERIES = re.compile(r"^(?:ray_)?(wcgan_[a-z_]+?)(?:_total)?\{(?P<tags>[^}]*)\} (?P<value>\S+)$")
TAG = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
EXPECTED = {"wcgan_generator_steps", "wcgan_step", "wcgan_generator_loss", "wcgan_critic_loss",
            "wcgan_wasserstein", "wcgan_images_per_s", "wcgan_budget_left_s"}
LABELS = ("0", "1")


def test_status_table_format():
    assert parse("wcgan/r-1/label-12") == ("r-1", (12, 12))
    assert parse("wcgan/r-1/labels-16-31") == ("r-1", (16, 31))
    assert parse("wcgan/r-1/collector") == ("r-1", None)
    assert parse("wcgan/r-1/other") is None
    runs = {"r1": {"labels": {(0, 0): {"name": "wcgan/r1/label-0", "state": "ALIVE", "pid": 7, "node_id": "abcdef0123"}},
                   "collector": {"name": "wcgan/r1/collector"},
                   "progress": {0: {"state": "training", "step": 42, "elapsed_s": 10.0, "budget_s": 60.0,
                                    "images_per_s": 1234.5, "wasserstein": 0.5}}}}
    text = format_status(runs, "127.0.0.1:6379")
    assert "run r1: 1 label actors alive, 0/1 labels done" in text
    row = next(line for line in text.splitlines() if line.startswith("wcgan/r1/label-0"))
    assert row.split()[:6] == ["wcgan/r1/label-0", "ALIVE", "training", "42", "50", "1234"]
    assert "no running wcgan runs" in format_status({}, "x")


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """{(metric, run, label): value} of the wcgan series on a node's Prometheus endpoint."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            tags = dict(TAG.findall(m["tags"]))
            found[(m.group(1), tags.get("run"), tags.get("label"))] = float(m["value"])
    return found


@pytest.fixture(scope="module")
def head():
    # Report metrics every second instead of every 10 s, so series show up while a short run trains.
    h = LocalHead(num_cpus=2, object_store_memory=200 * 2**20, env={"RAY_metrics_report_interval_ms": "1000"})
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def training_job(head, tmp_path_factory):
    """A two-label run, submitted as a Ray job, with a budget that outlasts the checks below."""
    storage = tmp_path_factory.mktemp("runs")
    run_id = f"dash-{uuid.uuid4().hex[:8]}"
    sets = ["dataset.labels=[0,1]", "model.width=8", "model.z_dim=16", "train.batch_size=32", "train.n_critic=2",
            "train.budget_s=300", "train.log_every_s=1", "train.checkpoint_every_s=60", "metrics.enabled=false",
            f"run.storage={storage}", f"run.id={run_id}"]
    client = head.client()
    job_id = jobs.submit(client, "python -m orchestrator train --config experiments/digits.yaml --no-eval "
                         + " ".join(f"--set {s}" for s in sets))
    try:
        yield client, job_id, run_id
    finally:
        client.stop_job(job_id)
        try:
            jobs.wait(client, job_id, timeout_s=60, stop_on_timeout=False)
        except JobError:
            pass


def _check_running(client, job_id):
    status = str(client.get_job_status(job_id).value)
    if status in jobs.TERMINAL:
        log = jobs.tail(client.get_job_logs(job_id), 60)
        pytest.fail(f"the training job ended ({status}) before the checks:\n{log}")


def test_prometheus_endpoint_has_per_label_series(head, training_job):
    client, job_id, run_id = training_job
    want = {(m, run_id, k) for m in EXPECTED for k in LABELS}
    seen: dict = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        _check_running(client, job_id)
        try:
            # Series of a worker come and go between exports: collect them over several scrapes.
            seen.update({key: v for key, v in scrape(head.metrics_url).items() if key[1] == run_id})
        except OSError:
            pass
        if want <= set(seen) and all(seen[("wcgan_step", run_id, k)] > 0 for k in LABELS):
            break
        time.sleep(1.5)
    missing = sorted(want - set(seen))
    assert not missing, f"no Prometheus series at {head.metrics_url} for {missing}"
    for k in LABELS:
        assert seen[("wcgan_generator_steps", run_id, k)] > 0
        assert 0 <= seen[("wcgan_budget_left_s", run_id, k)] <= 300
        assert seen[("wcgan_images_per_s", run_id, k)] > 0


def test_wcgan_status_lists_the_running_actors(head, training_job, capsys, monkeypatch):
    client, job_id, run_id = training_job
    _check_running(client, job_id)
    # A separate process, as a user runs it: a driver on the cluster (RAY_AUTH_MODE=token sends the token).
    env = dict(os.environ, RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    rows = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sub = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--address", head.gcs_address],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr[-3000:]
        rows = {int(m[1]): (m[2], int(m[3])) for m in re.finditer(
            rf"^wcgan/{re.escape(run_id)}/label-(\d+)\s+ALIVE\s+(\w+)\s+(\d+)\s", sub.stdout, re.M)}
        if sorted(rows) == [0, 1] and all(step > 0 for _, step in rows.values()):
            break
        time.sleep(2)
    assert sorted(rows) == [0, 1], sub.stdout
    assert all(state == "training" and step > 0 for state, step in rows.values()), sub.stdout
    assert f"run {run_id}: 2 label actors alive" in sub.stdout

    # The dashboard URL works too (the state API only: actors, no per-label progress).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert main(["status", "--address", head.dashboard_url, "--run", run_id]) == 0
    out = capsys.readouterr().out
    assert f"wcgan/{run_id}/label-0" in out and f"wcgan/{run_id}/label-1" in out
    assert main(["status", "--address", head.dashboard_url, "--run", "no-such-run"]) == 0
    assert "no running wcgan runs" in capsys.readouterr().out
