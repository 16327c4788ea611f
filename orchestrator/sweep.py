"""`wcgan sweep`: weak / strong scaling sweeps, one Ray job per sweep point.

Each point is a `python -m orchestrator train ...` Ray job (submitted through the Jobs SDK with
runtime_env.yaml and this repo as working dir) with a fixed amount of work: every label trains
exactly `--steps` generator steps (`train.max_steps`; the wall-clock budget is only a safety
cap). The run's summary.csv gives each label's training time and images/s, measured from the
first step, so cluster start-up, the runtime-env upload and actor start do not count.

weak (default)  point N: N labels on N workers, one label per worker, `--steps` per worker.
                efficiency(N) = per-worker images/s at N / at the smallest N (1 = perfect).
strong          point N: the same L labels (`--labels`, default max N) on N workers' worth of
                resources: each label gets N/L of a worker (GPU shares of 1/ceil(L/N), so the
                labels pack onto N GPUs; CPU shares N*cpus/L). Fixed total work L x steps.
                efficiency(N) = total images/s at N / (N/N0 x total images/s at N0).

A "worker" is `--gpus-per-worker` GPUs + `--cpus-per-worker` CPUs (default auto + 1 CPU). In
weak mode `auto` lets each job plan its labels' GPUs on the cluster it runs on: a whole GPU per
label where the cluster has enough, shares where it has fewer, CPUs only where it has none.
Strong mode needs the share spelled out: `auto` there means CPU workers (pass 1 for GPU workers).
On CPU-only nodes Ray's CPU shares are logical: they set each actor's torch threads
(int(share), at least 1) but do not fence cores, so strong scaling on CPUs is only
meaningful with at least one CPU per label; on GPUs the shares pin CUDA devices.

Without --address / $RAY_ADDRESS the sweep starts a private local Ray head (free ports,
temp dir) and stops it at the end. Output in --out: scaling.csv, scaling.png, and one run
directory per point under --storage (an object-store URI, or a file system this machine and
every node share: the jobs write there and the sweep reads summary.csv back).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from core.config import Config, load_config
from core.errors import ConfigError, DataError, JobError
from core.rundir import RunDir, write_csv
from core.storage import is_uri, join, pull, uri_of
from metrics.plots import plot_efficiency
from orchestrator import jobs
from orchestrator.args import config_path
from orchestrator.local_head import LocalHead
from orchestrator.resources import floor_share
from workers.data import describe

logger = logging.getLogger(__name__)

# Labels of each data set when dataset.labels is "all" (folder data sets are counted on disk).
DATASET_LABELS = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet1k": 1000}
CSV_COLUMNS = ["mode", "n_workers", "n_labels", "gpus_per_label", "cpus_per_label", "steps_per_label",
               "steps_per_worker", "train_wall_s", "job_wall_s", "images_per_s_per_worker",
               "images_per_s_total", "efficiency", "time_efficiency", "baseline_n", "status", "job_id",
               "run_dir"]


# ------------------------------------------------------------------------------------ planning


def parse_workers(text: str) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--workers {text!r}: expected comma-separated integers like 1,2,4") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--workers {text!r}: every worker count must be >= 1")
    return sorted(set(values))


def label_pool(cfg: Config) -> list[int]:
    """The labels a sweep may draw from: dataset.labels if given, else all of the data set's."""
    if cfg.dataset.labels != "all":
        return list(cfg.dataset.labels)
    if cfg.dataset.name in DATASET_LABELS:
        return list(range(DATASET_LABELS[cfg.dataset.name]))
    try:
        return list(describe(cfg.dataset, check_files=False).labels)
    except (DataError, OSError) as err:
        raise ConfigError(f"cannot count the labels of {cfg.dataset.name} data here ({err}); "
                          f"name them with --set dataset.labels=[...]") from None


def plan_points(mode: str, workers: list[int], pool: list[int], steps: int, cpus_per_worker: float,
                gpus_per_worker: Union[float, str], labels: Optional[int] = None,
                dataset: str = "data set") -> list[dict]:
    """One dict per sweep point: N, the labels it trains and each label's resources
    ("auto" GPUs: the job plans them on its cluster)."""
    if steps < 1:
        raise ConfigError("--steps: must be >= 1")
    if gpus_per_worker == "auto" and mode == "strong":
        logger.info("strong scaling: --gpus-per-worker auto means CPU workers; pass 1 for GPU workers")
        gpus_per_worker = 0.0
    gpus_known = 0.0 if gpus_per_worker == "auto" else float(gpus_per_worker)
    if cpus_per_worker < 0 or gpus_known < 0 or (cpus_per_worker == 0 and gpus_known == 0 and gpus_per_worker != "auto"):
        raise ConfigError("--cpus-per-worker/--gpus-per-worker: a worker needs some CPU or GPU")
    if gpus_known > 1:
        raise ConfigError("--gpus-per-worker: at most 1 (a label trains on one GPU; more workers use more GPUs)")
    points = []
    if mode == "weak":
        if workers[-1] > len(pool):
            raise ConfigError(
                f"weak scaling trains one label per worker, so N={workers[-1]} needs {workers[-1]} labels, but "
                f"{dataset} has {len(pool)} ({pool[0]}..{pool[-1]}). Use N <= {len(pool)}, or a data set with "
                f"more labels (cifar100: 100, imagenet1k: 1000).")
        for n in workers:
            points.append({"n": n, "labels": pool[:n], "cpus": cpus_per_worker, "gpus": gpus_per_worker,
                           "steps_per_worker": steps})
        return points
    n_labels = labels if labels is not None else workers[-1]
    if n_labels < 1:
        raise ConfigError("--labels: must be >= 1")
    if n_labels > len(pool):
        raise ConfigError(f"--labels {n_labels}: {dataset} has only {len(pool)} labels")
    if workers[-1] > n_labels:
        raise ConfigError(f"strong scaling with --labels {n_labels}: N={workers[-1]} workers would leave "
                          f"workers idle (each label runs on at most one worker); use N <= {n_labels}")
    for n in workers:
        per_worker = math.ceil(n_labels / n)  # labels sharing one worker
        gpus = 0.0
        if gpus_per_worker > 0:
            share = gpus_per_worker / per_worker
            if share >= 1:
                gpus = float(math.floor(share))  # whole GPUs above one
            elif gpus_per_worker <= 1:
                gpus = floor_share(share)  # 1/k of the worker's GPU: k labels pack onto it
            else:
                gpus = floor_share(1.0 / math.ceil(per_worker / gpus_per_worker))
        cpus = floor_share(cpus_per_worker * n / n_labels)
        points.append({"n": n, "labels": pool[:n_labels], "cpus": cpus, "gpus": gpus,
                       "steps_per_worker": steps * n_labels / n})
    return points


def _fmt_num(x: Union[float, str]) -> str:
    return x if isinstance(x, str) else f"{x:g}"


def entrypoint(config_arg: Optional[str], user_overrides: list[str], point: dict, steps: int, budget_s: float,
               run_id: str, storage: str) -> str:
    """The job's command line: the user's config and overrides, then the point's (which win)."""
    overrides = list(user_overrides) + [
        "dataset.labels=[" + ",".join(str(k) for k in point["labels"]) + "]",
        f"train.max_steps={steps}",
        f"train.budget_s={_fmt_num(budget_s)}",
        f"resources.cpus_per_label={_fmt_num(point['cpus'])}",
        f"resources.gpus_per_label={_fmt_num(point['gpus'])}",
        # One label per process at every point: a pack would change what is measured.
        "resources.labels_per_actor=1", "resources.max_actors_per_gpu=1024",
        f"run.id={run_id}",
        f"run.storage={storage}",
    ]
    args = ["python", "-m", "orchestrator", "train", "--no-eval"]
    if config_arg:
        args += ["--config", config_arg]
    for item in overrides:
        args += ["--set", item]
    return " ".join(shlex.quote(a) for a in args)


# ------------------------------------------------------------------------------------ results


def point_result(mode: str, point: dict, summary: pd.DataFrame, steps: int) -> dict:
    """Throughput and time of one finished point, from its run's summary.csv."""
    n = point["n"]
    total_ips = float(summary["images_per_s"].sum())
    return {
        "mode": mode, "n_workers": n, "n_labels": len(point["labels"]),
        "gpus_per_label": point["gpus"], "cpus_per_label": point["cpus"],
        "steps_per_label": steps, "steps_per_worker": round(point["steps_per_worker"], 3),
        # Labels train at once; the slowest one ends the point.
        "train_wall_s": round(float(summary["elapsed_s"].max()), 3),
        "images_per_s_total": round(total_ips, 3),
        "images_per_s_per_worker": round(total_ips / n, 3),
    }


def add_efficiency(rows: list[dict], mode: str) -> list[dict]:
    """Efficiency against the smallest N that succeeded (1 in the default sweep)."""
    done = [r for r in rows if r.get("status") == "SUCCEEDED"]
    if not done:
        return rows
    base = min(done, key=lambda r: r["n_workers"])
    for r in rows:
        r["baseline_n"] = base["n_workers"]
        if r.get("status") != "SUCCEEDED":
            r["efficiency"] = r["time_efficiency"] = None
            continue
        scale = r["n_workers"] / base["n_workers"]
        if mode == "weak":
            r["efficiency"] = round(r["images_per_s_per_worker"] / base["images_per_s_per_worker"], 4)
            r["time_efficiency"] = round(base["train_wall_s"] / r["train_wall_s"], 4)
        else:
            r["efficiency"] = round(r["images_per_s_total"] / (scale * base["images_per_s_total"]), 4)
            r["time_efficiency"] = round(base["train_wall_s"] / (scale * r["train_wall_s"]), 4)
    return rows


def write_scaling_csv(rows: list[dict], path: Path) -> Path:
    return write_csv(pd.DataFrame(rows, columns=CSV_COLUMNS), path)


# ------------------------------------------------------------------------------------ the sweep


def _config_arg(path: Optional[str], working_dir: Path) -> Optional[str]:
    """The config path as the job sees it: relative to the uploaded working dir when inside it."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(working_dir.resolve()))
    except ValueError:
        return str(p)  # outside the working dir: must be on a shared file system


def run_sweep(args) -> tuple[list[dict], Path]:
    config_file = config_path(args)
    cfg = load_config(config_file, args.overrides)  # validate here: a typo fails before any job
    workers = parse_workers(args.workers)
    if args.labels is not None and args.mode != "strong":
        raise ConfigError("--labels sets the fixed label count of --mode strong; "
                          "weak scaling trains one label per worker")
    pool = label_pool(cfg)
    points = plan_points(args.mode, workers, pool, args.steps, args.cpus_per_worker, args.gpus_per_worker,
                         args.labels, dataset=cfg.dataset.name)

    sweep_id = args.sweep_id or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.sweep_id is not None:
        load_config(None, [f"run.id={sweep_id}"])  # same naming rules as run ids
    out = Path(args.out or Path("runs") / "sweeps" / sweep_id).resolve()
    storage = (args.storage if is_uri(args.storage) else str(Path(args.storage).resolve())) if args.storage \
        else str(out / "runs")
    working_dir = Path(args.working_dir).resolve() if args.working_dir else jobs.REPO_ROOT
    runtime_env = jobs.load_runtime_env(args.runtime_env, working_dir)
    config_arg = _config_arg(config_file, working_dir)
    timeout_s = args.timeout_s or args.budget_s + 900
    run_ids = {p["n"]: f"{sweep_id}-{args.mode}-n{p['n']}" for p in points}
    for run_id in run_ids.values():
        if RunDir(join(storage, run_id)).exists():
            raise ConfigError(f"{join(storage, run_id)} exists: a sweep needs fresh runs; use another --id or --storage")
    out.mkdir(parents=True, exist_ok=True)

    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    head = None
    rows: list[dict] = []
    worker_desc = " + ".join(x for x in (f"{_fmt_num(args.gpus_per_worker)} GPU" if args.gpus_per_worker else "",
                                         f"{args.cpus_per_worker:g} CPU" if args.cpus_per_worker else "") if x)
    logger.info(f"sweep {sweep_id}: {args.mode} scaling of {cfg.dataset.name}, N in {workers}, worker = {worker_desc}, "
        f"{args.steps} steps per label; output {out}")
    try:
        if address is None:
            head = LocalHead(num_cpus=args.local_cpus).start()
            address = head.dashboard_url
        client = head.client() if head is not None else jobs.job_client(address)
        for i, point in enumerate(points, 1):
            n = point["n"]
            run_id = run_ids[n]
            tag = f"[{i}/{len(points)}] N={n}"
            cmd = entrypoint(config_arg, args.overrides, point, args.steps, args.budget_s, run_id, storage)
            submission_id = f"{run_id}-{uuid.uuid4().hex[:6]}"
            res = (f"{_fmt_num(point['gpus'])} GPU + " if point["gpus"] else "") + f"{point['cpus']:g} CPU"
            logger.info(f"{tag}: {len(point['labels'])} label(s) x ({res}), {args.steps} steps each; "
                f"submitting job {submission_id}")
            t0 = time.monotonic()
            row = {"mode": args.mode, "n_workers": n, "n_labels": len(point["labels"]),
                   "gpus_per_label": point["gpus"], "cpus_per_label": point["cpus"], "steps_per_label": args.steps,
                   "steps_per_worker": round(point["steps_per_worker"], 3), "job_id": submission_id,
                   "run_dir": join(storage, run_id)}
            try:
                job_id = jobs.submit(client, cmd, runtime_env=dict(runtime_env), submission_id=submission_id,
                                     metadata={"wcgan_sweep": sweep_id, "n_workers": str(n)})
                info = jobs.wait(
                    client, job_id, timeout_s,
                    on_status=lambda s, tag=tag, t0=t0: logger.info(f"{tag}: job {s} ({time.monotonic() - t0:.0f}s)"),
                    on_output=None if not args.job_output else (lambda line: logger.info(f"    | {line}")))
                status = str(getattr(info.status, "value", info.status))
                row["job_wall_s"] = jobs.job_wall_s(info)
            except JobError as err:
                status, info = "TIMEOUT", None
                logger.warning(f"{tag}: {err}")
            except KeyboardInterrupt:
                logger.info(f"{tag}: interrupted; stopping job {submission_id}")
                try:
                    client.stop_job(submission_id)
                except Exception:
                    pass
                raise
            row["status"] = status
            summary_path = RunDir(join(storage, run_id)).summary_csv
            if status == "SUCCEEDED":
                if not pull(summary_path):
                    row["status"] = "NO_SUMMARY"
                    logger.warning(f"{tag}: the job succeeded but {uri_of(summary_path)} is not here: --storage must be "
                        f"an object store URI or a file system shared by the cluster's nodes and this machine")
                else:
                    row.update(point_result(args.mode, point, pd.read_csv(summary_path), args.steps))
            else:
                try:
                    logger.warning(f"{tag}: job {status}; last lines of its log:\n" + jobs.tail(jobs.logs(client, submission_id)))
                except Exception:
                    pass
            rows.append(row)
            add_efficiency(rows, args.mode)
            write_scaling_csv(rows, out / "scaling.csv")
            if row["status"] == "SUCCEEDED":
                logger.info(f"{tag}: done: training {row['train_wall_s']:.1f}s (job {row.get('job_wall_s') or 0:.1f}s), "
                    f"{row['images_per_s_per_worker']:.0f} images/s per worker, efficiency {row['efficiency']:.3f}")
    finally:
        if head is not None:
            logger.info("stopping the local Ray head")
            head.stop()
    title = (f"{args.mode} scaling, {cfg.dataset.name}: " +
             (f"1 label/worker, {args.steps} steps/worker" if args.mode == "weak"
              else f"{len(points[0]['labels'])} labels x {args.steps} steps"))
    plot_efficiency(rows, out / "scaling.png", title)
    return rows, out


def cmd_sweep(args) -> int:
    rows, out = run_sweep(args)
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    cols = ["n_workers", "n_labels", "train_wall_s", "job_wall_s", "images_per_s_per_worker", "efficiency", "status"]
    print(table[cols].to_string(index=False))
    print(f"wrote {out / 'scaling.csv'}" + (f" and {out / 'scaling.png'}" if (out / "scaling.png").exists() else ""))
    failed = [r for r in rows if r.get("status") != "SUCCEEDED"]
    if failed:
        print(f"wcgan sweep: {len(failed)} of {len(rows)} points did not succeed: "
              + ", ".join(f"N={r['n_workers']} {r['status']}" for r in failed), file=sys.stderr)
        return 1
    return 0
