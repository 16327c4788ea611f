"""`wcgan status`: a live table of the per-label actors of the runs going on in a Ray cluster.

Actors come from Ray's state API (`ray.util.state.list_actors`, served by the dashboard):
every alive actor named ``wcgan/<run>/label-<k>`` or ``wcgan/<run>/collector``. Each run's
collector actor then reports its labels' progress (step, budget left, images/s, Wasserstein
estimate, state), the same numbers the training driver prints.

    wcgan status                                 # $RAY_ADDRESS, else the local cluster
    wcgan status --address 10.0.0.1:6379 --watch 5
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from typing import Optional

from core import fmt
from core.actors import NAMESPACE, parse
from core.errors import ConfigError
from orchestrator.jobs import AUTH_HINT, auth_headers, explicit_address, token_auth_requested

PROGRESS_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------------ gathering


def _is_http(address: Optional[str]) -> bool:
    return bool(address) and address.startswith(("http://", "https://"))


def _connect(address: Optional[str]) -> Optional[str]:
    """A quiet driver connection, to ask collector actors for progress; returns the dashboard URL."""
    import ray

    from orchestrator.cluster import check_reachable  # deferred: imports Ray

    if ray.is_initialized():
        return None
    check_reachable(address)
    try:
        ctx = ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR",
                       configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"cannot connect to a Ray cluster at {address or 'auto (this machine)'}: "
                          f"{str(err).splitlines()[0] if str(err) else err!r}. Pass --address host:port "
                          "or set RAY_ADDRESS. " + ("" if token_auth_requested() else AUTH_HINT)) from None
    url = getattr(ctx, "dashboard_url", None)
    if not url:
        raise ConfigError(f"the Ray cluster at {address or 'auto'} runs no dashboard, which Ray's state API "
                          "(and so `wcgan status`) needs: start it with ray[default] installed and without "
                          "--include-dashboard=false")
    return url if "://" in url else f"http://{url}"


def list_wcgan_actors(address: Optional[str]) -> list[dict]:
    """Alive (or restarting / pending) actors whose names start with wcgan/, from the state API."""
    try:
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        headers = {"Content-Type": "application/json", **auth_headers()}
        with explicit_address(address):
            client = StateApiClient(address=address, headers=headers)
        actors = client.list(
            StateResource.ACTORS,
            options=ListApiOptions(limit=10_000, filters=[("state", "!=", "DEAD")], detail=False, timeout=30),
            raise_on_missing_output=False,
        )
    except Exception as err:
        raise ConfigError(
            f"Ray's state API is unreachable ({address or 'auto'}): "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}. "
            "`wcgan status` reads actors through the Ray dashboard: check that the cluster runs one "
            "(ray[default] installed, `ray start --head` without --include-dashboard=false). "
            + ("" if token_auth_requested() else AUTH_HINT)
        ) from None
    rows = []
    for a in actors:
        a = a if isinstance(a, dict) else a.__dict__
        name = a.get("name") or ""
        if name.startswith("wcgan/"):
            rows.append(a)
    return rows


def _progress(name: str) -> Optional[dict]:
    import ray

    try:
        collector = ray.get_actor(name, namespace=NAMESPACE)  # every run's actors live there
        return ray.get(collector.progress.remote(), timeout=PROGRESS_TIMEOUT_S)
    except Exception:
        return None


def gather(address: Optional[str], only_run: Optional[str] = None, progress: bool = True) -> dict[str, dict]:
    """{run_id: {"labels": {(first, last): actor row}, "collector": row or None, "progress": {k: state}}}.

    An actor covers the run's labels first..last (one label, or a pack of them).

    `address`: what the state API is asked (a dashboard URL, or a cluster address it resolves)."""
    runs: dict[str, dict] = defaultdict(lambda: {"labels": {}, "collector": None, "progress": None})
    for actor in list_wcgan_actors(address):
        parsed = parse(actor["name"])
        if parsed is None or (only_run and parsed[0] != only_run):
            continue
        run_id, span = parsed
        if span is None:
            runs[run_id]["collector"] = actor
        else:
            runs[run_id]["labels"][span] = actor
    if progress:
        for run_id, run in runs.items():
            if run["collector"] is not None:
                state = _progress(run["collector"]["name"])
                run["progress"] = {int(k): v for k, v in state.items()} if state else None
    return dict(runs)


# ------------------------------------------------------------------------------------ the table


def _actor_by_label(actors: dict[tuple[int, int], dict], progress: dict[int, dict]) -> dict[int, dict]:
    """Each label's actor row. A pack's name gives its first and last label; the labels between
    them are the run's labels (as the collector knows them) in that range."""
    out: dict[int, dict] = {}
    for (first, last), actor in actors.items():
        # Without progress (a dashboard URL, a collector being restarted), assume contiguous labels.
        out.update({k: actor for k in (progress or range(first, last + 1)) if first <= k <= last})
    return out


def format_status(runs: dict[str, dict], address: str, max_rows: int = 50, note: str = "") -> str:
    from tabulate import tabulate

    stamp = time.strftime("%H:%M:%S")
    if not runs:
        return f"[{stamp}] no running wcgan runs on {address}" + (f"\n{note}" if note else "")
    out = [f"[{stamp}] {len(runs)} running wcgan run(s) on {address}"]
    for run_id in sorted(runs):
        run = runs[run_id]
        progress = run["progress"] or {}
        actor_of = _actor_by_label(run["labels"], progress)
        labels = sorted(set(actor_of) | set(progress))
        budget = None
        done = sum(1 for k in labels if progress.get(k, {}).get("state") == "done")
        steps = sorted(int(progress.get(k, {}).get("step", 0) or 0) for k in labels)
        head = f"\nrun {run_id}: {len(run['labels'])} label actors alive"
        if any(first != last for first, last in run["labels"]):
            head += f" (training {len(actor_of)} labels)"
        if progress:
            head += f", {done}/{len(labels)} labels done"
            if steps:
                head += f", steps min/median/max {steps[0]}/{steps[len(steps) // 2]}/{steps[-1]}"
        elif run["collector"] is None:
            head += " (no collector actor: progress unavailable)"
        else:
            head += " (collector did not answer: progress unavailable)" if not note else ""
        out.append(head)
        rows = []
        for k in labels[:max_rows]:
            actor = actor_of.get(k, {})
            s = progress.get(k, {})
            budget = s.get("budget_s", budget)
            left = None
            if s.get("budget_s") is not None and s.get("elapsed_s") is not None:
                left = max(0.0, float(s["budget_s"]) - float(s["elapsed_s"]))
            rows.append([
                actor.get("name", f"wcgan/{run_id}/label-{k}"),
                actor.get("state", "gone"),
                s.get("state", "-"),
                fmt.count(s.get("step"), "-"),
                fmt.num(left, ".0f", "-"),
                fmt.num(s.get("images_per_s"), ".0f", "-"),
                fmt.num(s.get("wasserstein"), ".3f", "-"),
                fmt.count(s.get("restarts"), "-"),
                actor.get("pid", "-"),
                (actor.get("node_id") or "-")[:8],
            ])
        out.append(tabulate(rows, headers=["actor", "actor state", "state", "step", "budget left s",
                                           "img/s", "W", "restarts", "pid", "node"],
                            tablefmt="simple", disable_numparse=True))
        if len(labels) > max_rows:
            out.append(f"... {len(labels) - max_rows} more labels (--max-rows to show more)")
    if note:
        out.append(note)
    return "\n".join(out)


def cmd_status(args) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    note = ""
    import ray

    with_progress = not _is_http(address)
    state_address = address
    connected_here = False
    if with_progress:
        connected_here = not ray.is_initialized()
        state_address = _connect(address) or address
    else:
        note = ("(per-label progress needs the cluster address, e.g. --address <head>:6379; a dashboard URL "
                "gives the actor list only)")
    shown = address or "this machine's Ray"
    try:
        while True:
            text = format_status(gather(state_address, args.run, progress=with_progress), shown, args.max_rows, note)
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[2J\033[H")
            print(text, flush=True)
            if not args.watch:
                return 0
            time.sleep(max(0.5, args.watch))
    except KeyboardInterrupt:
        return 0
    finally:
        if connected_here:
            ray.shutdown()
