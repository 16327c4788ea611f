"""Command-line pieces shared by the sub-commands (train, compare, sweep): config flags and loading."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from core.config import Config, load_config

DEFAULT_CONFIG = "experiments/digits.yaml"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help=f"experiment YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set train.budget_s=60 (repeatable)")


def config_path(args) -> Optional[str]:
    """--config, else the digits experiment when run from the repository, else None (built-in defaults)."""
    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return args.config


def config_from_args(args) -> Config:
    return load_config(config_path(args), args.overrides)
