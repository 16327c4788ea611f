"""Every error wcgan raises on purpose, in one leaf module.

The CLI maps them to exit codes: a :class:`ConfigError` (and its subclasses) is bad user
input, printed without a traceback, exit 2; :class:`RunFailed` is a run that was set up
correctly but did not finish, exit 1. Anything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """Bad user input (config, command line, data, cluster): exit 2, nothing left behind."""


class DataError(ConfigError):
    """A data root, file or label the config points at is missing or unreadable."""


class PlacementError(ConfigError):
    """The resource plan cannot be placed on this cluster: says what was asked and what exists."""


class MissingWeightsError(ConfigError):
    """A feature extractor's weights file is not on this machine and cannot be downloaded."""


class RunFailed(RuntimeError):
    """Training started but some labels (or the baseline) failed for good, after their restarts."""


class JobError(RuntimeError):
    """A Ray job did not succeed: it failed, was stopped, or ran past its timeout."""
