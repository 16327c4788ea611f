"""`wcgan` / `python -m orchestrator`: one entry point for laptops, `ray job submit` and sweeps.

Every sub-command's arguments are defined here; each command's work lives in its own module,
imported when the command runs, so `wcgan --help` and `wcgan status` do not load torch.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Optional, Sequence

from core.errors import ConfigError, RunFailed
from core.logs import configure as configure_logging
from core.rundir import RunDir
from core.storage import StorageError, uri_of
from orchestrator.args import add_config_args, config_from_args


def cmd_train(args) -> int:
    from orchestrator.run import train  # deferred: imports Ray, torch and the training stack

    cfg = config_from_args(args)
    result = train(cfg, address=args.address, evaluate=False if args.no_eval else None)
    print(f"done in {result.wall_s:.0f}s: " + ", ".join(f"{k}={v}" for k, v in result.outputs.items()))
    return 0


def _parse_labels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--label {text!r}: expected an integer or a comma-separated list like 0,3,7") from None


def cmd_sample(args) -> int:
    from metrics.grid import save_sample_grid  # deferred: torch
    from workers.sampler import load_sampler

    if args.n < 1:
        raise ConfigError("--n: must be >= 1")
    run = RunDir(args.run)
    if not run.exists():
        raise ConfigError(f"--run: run directory not found: {run.location} (no config.yaml)")
    try:
        sampler = load_sampler(run.path)  # per-label ensemble or data-parallel baseline
    except FileNotFoundError as err:
        raise ConfigError(f"--run: {err}") from None
    labels = _parse_labels(args.label) if args.label is not None else sampler.labels
    missing = sorted(set(labels) - set(sampler.labels))
    if missing:
        raise ConfigError(f"--label: {missing} not in this run; it has generators for labels {sampler.labels}")
    out = save_sample_grid(sampler, labels, args.out, per_label=args.n, seed=args.seed)
    print(f"wrote {len(labels) * args.n} samples ({len(labels)} label(s) x {args.n}) to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from core.config import load_config

    run = RunDir(args.run)
    if not run.exists():
        raise ConfigError(f"--run: {run.location} is not a wcgan run directory (no config.yaml)")
    load_config(run.config, args.overrides)  # a bad --set fails here, before any scoring
    address = args.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:  # on a cluster (or in a `ray job submit` driver): the same resourced task as a run's end
            from orchestrator.run import score_on_cluster

            score_on_cluster(run, address, overrides=args.overrides)
        else:
            from metrics.finalize import finalize_run  # deferred: torch, the feature extractors

            finalize_run(run.path, evaluate=True, overrides=args.overrides)
    except FileNotFoundError as err:
        raise ConfigError(f"--run: {err}") from None
    print(f"wrote {uri_of(run.results_csv)} and {uri_of(run.report)}")
    return 0


def cmd_reference(args) -> int:
    from metrics.evaluate import precompute_reference  # deferred: torch, the feature extractors

    reference = precompute_reference(config_from_args(args))
    print(f"reference features in {reference.dir} ({reference.hits} reused, {reference.misses} computed)")
    return 0


def cmd_report(args) -> int:
    from metrics.report import render_report  # deferred: matplotlib

    run = RunDir(args.run)
    if not run.has(run.results_csv):
        raise ConfigError(f"--run: {run.location} has no results.csv yet; run `wcgan evaluate --run {run.location}` "
                          "first")
    print(f"wrote {uri_of(render_report(run.path))}")
    return 0


def cmd_compare(args) -> int:
    from orchestrator.compare import cmd_compare  # deferred: torch, Ray and Ray Train

    return cmd_compare(args)


def cmd_sweep(args) -> int:
    from orchestrator.sweep import cmd_sweep  # deferred: pandas, the Jobs SDK

    return cmd_sweep(args)


def cmd_status(args) -> int:
    from orchestrator.status import cmd_status  # deferred: Ray's state API

    return cmd_status(args)


def _gpus_arg(text: str):
    """--gpus-per-worker: 'auto' or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="print warnings and errors only")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="print debug messages too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wcgan", description=__doc__)
    _add_verbosity(parser, default=False)
    # -q/-v also after the command (`wcgan train -q`); SUPPRESS keeps a flag given before it.
    verbosity = argparse.ArgumentParser(add_help=False)
    _add_verbosity(verbosity, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = functools.partial(sub.add_parser, parents=[verbosity])

    p = add_parser("train", help="train one generator per label on Ray, then score the ensemble")
    add_config_args(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-eval", action="store_true", help="skip the metrics at the end (grid and summary only)")
    p.set_defaults(func=cmd_train)

    p = add_parser("sample", help="sample images from a trained run (label k -> generator k)")
    p.add_argument("--run", required=True, help="run directory, e.g. runs/digits-20261125-120000")
    p.add_argument("--label", default=None, help="label or comma-separated labels (default: all)")
    p.add_argument("--n", type=int, default=8, help="samples per label (default 8)")
    p.add_argument("--out", required=True, help="output PNG (one row per label)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = add_parser("evaluate", help="recompute metrics of a run from its snapshots")
    p.add_argument("--run", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's metrics settings, e.g. --set metrics.protocol=standard (repeatable)")
    p.add_argument("--address", default=None,
                   help="score as a Ray task on this cluster, on a GPU where it has one (default: $RAY_ADDRESS; "
                        "none: in this process)")
    p.set_defaults(func=cmd_evaluate)

    p = add_parser("reference", help="precompute the real images' features of a data set (cached under run.storage)")
    add_config_args(p)
    p.set_defaults(func=cmd_reference)

    p = add_parser("report", help="re-render report.md and plots of a run from results.csv")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_report)

    p = add_parser(
        "compare", help="train the per-label ensemble and a data-parallel conditional GAN under the same "
                        "budget and devices, score both, write a side-by-side report")
    add_config_args(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-eval", action="store_true", help="train both but skip scoring (throughput columns only)")
    p.add_argument("--regime", choices=("shared", "matched", "both"), default="both",
                   help="shared: all labels share the devices; matched: N labels on N devices (GPUs, else whole "
                        "CPUs), one each; both (default)")
    p.set_defaults(func=cmd_compare)

    p = add_parser(
        "sweep", help="weak/strong scaling sweep: one Ray job per point -> scaling.csv, scaling.png",
        description="Weak or strong scaling sweep, one Ray job of `python -m orchestrator train` per point, "
                    "each with a fixed number of generator steps per label. weak: N labels on N workers; "
                    "strong: --labels L on N workers' worth of resources. Without --address/$RAY_ADDRESS a "
                    "private local Ray head is started and stopped. See the README, 'Scaling sweeps'.")
    add_config_args(p)
    p.add_argument("--workers", default="1,2",
                   help="comma-separated worker counts N, e.g. 1,2,4,8 (default 1,2)")
    p.add_argument("--mode", choices=("weak", "strong"), default="weak",
                   help="weak: N labels on N workers, fixed steps per worker (default); "
                        "strong: fixed labels (--labels) on N workers")
    p.add_argument("--steps", type=int, default=200, help="generator steps per label at every point (default 200)")
    p.add_argument("--labels", type=int, default=None,
                   help="strong scaling: number of labels trained at every point (default: the largest N)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs of one worker (default 1)")
    p.add_argument("--gpus-per-worker", type=_gpus_arg, default="auto",
                   help="GPUs of one worker, at most 1 (default auto: in weak mode a GPU per label where the "
                        "cluster has GPUs, CPUs where it has none; strong mode: CPU workers unless given)")
    p.add_argument("--out", default=None, help="output directory (default runs/sweeps/<sweep id>)")
    p.add_argument("--storage", default=None,
                   help="run.storage for the jobs: an object-store URI (s3://bucket/prefix) or a path shared "
                        "by every node and this machine (default <out>/runs)")
    p.add_argument("--id", dest="sweep_id", default=None, help="sweep id (default sweep-<timestamp>)")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address for the Jobs API, e.g. http://head:8265 (default: "
                        "$RAY_API_SERVER_ADDRESS / $RAY_ADDRESS; unset: start a local Ray head)")
    p.add_argument("--local-cpus", type=float, default=None,
                   help="CPUs of the local head the sweep starts (default: this machine's cores)")
    p.add_argument("--runtime-env", default=None, help="runtime env YAML (default runtime_env.yaml)")
    p.add_argument("--working-dir", default=None, help="directory uploaded with each job (default: this repo)")
    p.add_argument("--budget-s", type=float, default=3600.0,
                   help="wall-clock safety cap per label (train.budget_s); the steps set the work (default 3600)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="give up on a point's job after this long (default budget + 900 s)")
    p.add_argument("--no-job-output", dest="job_output", action="store_false",
                   help="print job status changes only, not the jobs' output")
    p.set_defaults(func=cmd_sweep)

    p = add_parser(
        "status", help="live table of the per-label actors of running runs (Ray state API)",
        description="List the per-label actors (wcgan/<run>/label-<k>) of the runs going on in a Ray "
                    "cluster, with each label's step, budget left, images/s and state.")
    p.add_argument("--address", default=None,
                   help="Ray cluster address as for `wcgan train` (e.g. 10.0.0.1:6379; default: $RAY_ADDRESS, "
                        "else the Ray running on this machine). A dashboard URL (http://head:8265) lists the "
                        "actors only, without per-label progress.")
    p.add_argument("--run", default=None, help="show only this run id")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="refresh every SECONDS until interrupted")
    p.add_argument("--max-rows", type=int, default=50,
                   help="per-label rows shown per run before summarising the rest (default 50)")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (ConfigError, StorageError) as err:  # bad input, or a store it cannot use: the message says what to fix
        print(f"wcgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:  # set up right, but did not finish: the message says how to resume
        print(f"wcgan {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wcgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
