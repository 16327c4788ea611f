"""The tidy results table (results.csv): its columns, and the one way to read a value out of it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

# eval_time_s: the mark (training time) an evaluation stands for; models_time_s: the training time
# the scored models had actually reached (the latest over the ensemble's members). protocol,
# extractor: what produced the row (see metrics.protocol).
RESULT_COLUMNS = ["eval", "eval_time_s", "models_time_s", "metric", "label", "value", "n_fake", "n_real",
                  "feature_space", "classifier_accuracy", "protocol", "extractor"]


def read_table(path: str | Path, **kw) -> Optional[pd.DataFrame]:
    """A CSV of the run directory, or None when it is absent, empty or half-written by an older version."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def read_results(path: str | Path) -> Optional[pd.DataFrame]:
    """results.csv with labels as strings ("all", "0", "1", ...), or None when absent or empty."""
    return read_table(path, dtype={"label": str})


def rows(results: pd.DataFrame, ev: str, metric: str, label: Optional[str] = "all") -> pd.DataFrame:
    """Rows of one evaluation kind and metric, for one label ("all": the whole ensemble; None: every label)."""
    sel = results[(results["eval"] == ev) & (results["metric"] == metric)]
    labels = sel["label"].astype(str)
    return sel[labels == label] if label is not None else sel[labels != "all"]


def value(results: pd.DataFrame, ev: str, metric: str, label: str = "all",
          time_s: Optional[float] = None) -> Optional[pd.Series]:
    """The row of (ev, metric, label), at `time_s` if given; the last one if several; else None."""
    sel = rows(results, ev, metric, label)
    if time_s is not None:
        sel = sel[sel["eval_time_s"] == time_s]
    return None if sel.empty else sel.iloc[-1]
