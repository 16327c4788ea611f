"""How a run's Ray actors are named: one fixed namespace, so any driver or `wcgan status` finds them.

    wcgan/<run id>/label-<k>         one per label
    wcgan/<run id>/labels-<a>-<b>    one per pack: the run's labels from a to b (see the resource plan)
    wcgan/<run id>/collector         the run's coordinator

Actors live in the namespace ``wcgan`` whichever driver started them (`wcgan train`, a
`ray job submit` entrypoint, a sweep), so a second driver for a live run id sees the first
one's actors and refuses to start.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

NAMESPACE = "wcgan"
_NAME = re.compile(r"^wcgan/(?P<run>[^/]+)/(?:label-(?P<label>\d+)|labels-(?P<first>\d+)-(?P<last>\d+)"
                   r"|(?P<collector>collector))$")


def label_actor(run_id: str, labels: int | Sequence[int]) -> str:
    """The actor of one label, or of a pack (consecutive labels of the run, in order)."""
    labels = [labels] if isinstance(labels, int) else list(labels)
    if len(labels) == 1:
        return f"wcgan/{run_id}/label-{labels[0]}"
    return f"wcgan/{run_id}/labels-{labels[0]}-{labels[-1]}"


def collector_actor(run_id: str) -> str:
    return f"wcgan/{run_id}/collector"


def live_actors(run_id: str) -> list[str]:
    """Names of the run's actors alive on the connected cluster (one call, however many labels)."""
    import ray  # deferred: this module is also read where Ray is not connected (names only)

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and (parse(a["name"]) or ("",))[0] == run_id)


def parse(name: str) -> Optional[tuple[str, Optional[tuple[int, int]]]]:
    """(run id, (first, last) label) of a label actor's name (first == last unless it trains a
    pack), (run id, None) of a collector's, else None."""
    m = _NAME.match(name or "")
    if not m:
        return None
    if m["label"] is not None:
        return m["run"], (int(m["label"]), int(m["label"]))
    if m["first"] is not None:
        return m["run"], (int(m["first"]), int(m["last"]))
    return m["run"], None
