"""`wcgan` / `python -m orchestrator`: one entry point for laptops, `ray job submit` and sweeps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from orchestrator.config import ConfigError, load_config

DEFAULT_CONFIG = "experiments/digits.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help=f"experiment YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set train.budget_s=60 (repeatable)")


def _config(args):
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path, args.overrides)


def cmd_train(args) -> int:
    from orchestrator.run import train

    cfg = _config(args)
    result = train(cfg, address=args.address, evaluate=False if args.no_eval else None)
    print(f"done in {result.wall_s:.0f}s: " + ", ".join(f"{k}={v}" for k, v in result.outputs.items()))
    return 0


def _parse_labels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--label {text!r}: expected an integer or a comma-separated list like 0,3,7") from None


def cmd_sample(args) -> int:
    from metrics.grid import save_sample_grid
    from workers.sampler import load_sampler

    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"--run: run directory not found: {run}")
    try:
        ensemble = load_sampler(run)  # per-label ensemble or data-parallel baseline
    except FileNotFoundError as err:
        raise ConfigError(f"--run: {err}") from None
    labels = _parse_labels(args.label) if args.label is not None else ensemble.labels
    missing = sorted(set(labels) - set(ensemble.labels))
    if missing:
        raise ConfigError(f"--label: {missing} not in this run; it has generators for labels {ensemble.labels}")
    if args.n < 1:
        raise ConfigError("--n: must be >= 1")
    out = save_sample_grid(ensemble, labels, args.out, per_label=args.n, seed=args.seed)
    print(f"wrote {len(labels) * args.n} samples ({len(labels)} label(s) x {args.n}) to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from metrics.evaluate import evaluate_run

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"--run: {run} is not a wcgan run directory (no config.yaml)")
    try:
        evaluate_run(run)
    except FileNotFoundError as err:
        raise ConfigError(f"--run: {err}") from None
    print(f"wrote {run / 'results.csv'} and {run / 'report.md'}")
    return 0


def cmd_report(args) -> int:
    from metrics.report import render_report

    run = Path(args.run)
    if not (run / "results.csv").is_file():
        raise ConfigError(f"--run: {run} has no results.csv yet; run `wcgan evaluate --run {run}` first")
    print(f"wrote {render_report(run)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wcgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one generator per label on Ray, then score the ensemble")
    _add_config_args(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-eval", action="store_true", help="skip the metrics at the end (grid and summary only)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample images from a trained run (label k -> generator k)")
    p.add_argument("--run", required=True, help="run directory, e.g. runs/digits-20261125-120000")
    p.add_argument("--label", default=None, help="label or comma-separated labels (default: all)")
    p.add_argument("--n", type=int, default=8, help="samples per label (default 8)")
    p.add_argument("--out", required=True, help="output PNG (one row per label)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="recompute metrics of a run from its checkpoints")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="re-render report.md and plots of a run from results.csv")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_report)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Sub-commands that live in their own modules (compare, sweep, status)."""
    registers = []
    for module in ("orchestrator.compare", "orchestrator.sweep", "orchestrator.status"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        registers.append(mod.register)
    return registers


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"wcgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wcgan {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # RunFailed and friends: say it plainly, exit 1
        from orchestrator.run import RunFailed

        if isinstance(err, RunFailed):
            print(f"wcgan {args.command}: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
