"""Number and table formatting shared by reports, plots, `wcgan compare` and `wcgan status`.

Every missing or NaN value prints the same way everywhere, so a table never shows "nan".
"""

from __future__ import annotations

import math
from typing import Sequence


def isnan(x) -> bool:
    """True for NaN, None and anything that is not a number."""
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def num(x, spec: str = ".3f", missing: str = "n/a") -> str:
    """`x` formatted with `spec`, or `missing` when it is absent or NaN."""
    return missing if isnan(x) else format(float(x), spec)


def count(x, missing: str = "?") -> str:
    """A sample count or step number as an integer, or `missing`."""
    return missing if isnan(x) else str(int(x))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def resources(gpus: float, cpus: float, precision: str = "g") -> str:
    """'0.25 GPU + 4 CPU', or '4 CPU' when there is no GPU."""
    return (f"{gpus:{precision}} GPU + " if gpus else "") + f"{cpus:{precision}} CPU"
