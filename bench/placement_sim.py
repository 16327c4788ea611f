"""Placement benchmark: one GPU bundle per label on a simulated multi-node cluster.

Run from the repo root:

    python bench/placement_sim.py            # default: 10, 100, 1000 labels
    python bench/placement_sim.py --labels 10 100 --reps 5
    python bench/placement_sim.py --preset uniform32   # 32 nodes x 32 GPUs
    python bench/placement_sim.py --preset all         # both topologies, ~2 min
    python bench/placement_sim.py --gpus-per-node 4 4 4   # small custom cluster

What it does
------------
* Starts a ``ray.cluster_utils.Cluster``: a CPU-only head node (like a real
  cluster's head, it declares no GPUs) plus worker nodes that declare *logical*
  GPUs (``num_gpus=...``). Ray's GPU resources are just counters, so this
  works on a machine without GPUs; each worker node is a real raylet process.
  The default node sizes are heterogeneous (4, 8, ..., 512 GPUs, 1,020 GPUs in
  all) so that 1,000 labels fit and the packing check is not trivial;
  ``--preset uniform32`` uses 32 nodes x 32 GPUs instead.
* For each label count, builds a placement group with one bundle per label
  (``{"GPU": 1, "CPU": <fraction>}``, strategy PACK), waits for
  ``pg.ready()``, and records the wall time from ``placement_group(...)`` to
  ready. Repeats ``--reps`` times and reports the median.
* Checks, with ``ray.util.placement_group_table(pg)["bundles_to_node_id"]``,
  that every bundle was placed and that no node holds more one-GPU bundles
  than it has GPUs -- i.e. one label per GPU, so the (node, GPU) pairs are
  distinct. Removes the placement group before the next repetition.

The "plan one GPU bundle per label" step is the function ``plan_label_bundles``
below; it is deliberately tiny and self-contained so the orchestrator's own
planner (``orchestrator.resources``) can be swapped in later.

Cost on a 2-core development machine: every worker node is a raylet (plus
its agents), so the node count, not the GPU count, is what costs time and
memory. Measured here: 8 nodes start in ~18 s (whole default run ~30 s);
32 nodes start in ~80 s (~90 s in all, ~3 GiB RAM). More than ~32 nodes is
not worth it on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple

# Keep the simulated cluster quiet and light; must be set before ray starts.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.placement_group import (  # noqa: E402
    placement_group,
    placement_group_table,
    remove_placement_group,
)

# Simulated topologies (logical GPUs per worker node). Both hold >= 1,000 labels.
PRESETS = {
    # 8 heterogeneous nodes, 1,020 GPUs: ~30 s in all on a 2-core machine.
    "hetero8": [4, 8, 16, 32, 64, 128, 256, 512],
    # 32 identical nodes x 32 GPUs = 1,024: ~90 s (node start-up dominates).
    "uniform32": [32] * 32,
}
DEFAULT_PRESET = "hetero8"
DEFAULT_LABELS = [10, 100, 1000]


# --------------------------------------------------------------------------
# Planning: one bundle (one GPU) per label.  Swap point for
# orchestrator.resources once it exists.
# --------------------------------------------------------------------------
def plan_label_bundles(
    num_labels: int, cpu_per_label: float = 0.1, gpu_per_label: float = 1.0
) -> Tuple[List[Dict[str, float]], str]:
    """Return (bundles, strategy) for ``num_labels`` independent label trainers.

    One bundle per label; each bundle asks for ``gpu_per_label`` GPUs (1.0 =
    a whole GPU, so the label gets a GPU to itself) and a small CPU share for
    the data loader. PACK keeps labels on as few nodes as possible (fewer
    nodes to keep alive) while never putting two whole-GPU bundles on one GPU.
    """
    if num_labels < 1:
        raise ValueError("num_labels must be >= 1")
    bundle = {"GPU": float(gpu_per_label)}
    if cpu_per_label > 0:
        bundle["CPU"] = float(cpu_per_label)
    return [dict(bundle) for _ in range(num_labels)], "PACK"


# --------------------------------------------------------------------------
# Simulated cluster
# --------------------------------------------------------------------------
def start_cluster(gpus_per_node: Sequence[int], cpus_per_gpu: float) -> Cluster:
    """CPU-only head + one worker raylet per entry of gpus_per_node."""
    t0 = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": 0,
            "include_dashboard": False,
        },
    )
    print(f"  head node up ({time.perf_counter() - t0:.1f}s)", flush=True)
    for i, g in enumerate(gpus_per_node):
        t1 = time.perf_counter()
        cluster.add_node(
            num_cpus=max(1, int(round(g * cpus_per_gpu))),
            num_gpus=g,
            resources={f"sim_node_{i}": 1},
        )
        print(
            f"  worker node {i + 1}/{len(gpus_per_node)}: {g} GPUs "
            f"({time.perf_counter() - t1:.1f}s)",
            flush=True,
        )
    cluster.wait_for_nodes()
    print(f"  cluster ready in {time.perf_counter() - t0:.1f}s", flush=True)
    return cluster


def gpus_by_node_id() -> Dict[str, int]:
    return {
        n["NodeID"]: int(n["Resources"].get("GPU", 0))
        for n in ray.nodes()
        if n["Alive"]
    }


def check_one_label_per_gpu(
    bundles_to_node: Dict[int, str], num_labels: int, node_gpus: Dict[str, int]
) -> Tuple[bool, str, int]:
    """Every bundle placed, and no node holds more whole-GPU bundles than GPUs.

    Returns (ok, message, number of nodes used).
    """
    if len(bundles_to_node) != num_labels:
        return False, f"{len(bundles_to_node)}/{num_labels} bundles placed", 0
    per_node = collections.Counter(bundles_to_node.values())
    for node_id, count in per_node.items():
        cap = node_gpus.get(node_id, 0)
        if count > cap:
            return (
                False,
                f"node {node_id[:8]} holds {count} bundles but has {cap} GPUs",
                len(per_node),
            )
    # With <= 1 bundle per GPU on every node, assigning bundle k on node n the
    # GPU index rank-of-k-among-n's-bundles gives distinct (node, GPU) pairs.
    pairs = set()
    seen = collections.Counter()
    for _, node_id in sorted(bundles_to_node.items()):
        pairs.add((node_id, seen[node_id]))
        seen[node_id] += 1
    if len(pairs) != num_labels:
        return False, "duplicate (node, GPU) pairs", len(per_node)
    return True, "ok", len(per_node)


def place_once(
    num_labels: int, cpu_per_label: float, timeout_s: float, node_gpus: Dict[str, int]
) -> Tuple[float, bool, str, int]:
    bundles, strategy = plan_label_bundles(num_labels, cpu_per_label)
    t0 = time.perf_counter()
    pg = placement_group(bundles, strategy=strategy)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
        elapsed = time.perf_counter() - t0
        table = placement_group_table(pg)
        bundles_to_node = {int(k): v for k, v in table["bundles_to_node_id"].items()}
        ok, msg, used = check_one_label_per_gpu(bundles_to_node, num_labels, node_gpus)
        return elapsed, ok, msg, used
    except ray.exceptions.GetTimeoutError:
        return float("nan"), False, f"not ready after {timeout_s:.0f}s", 0
    finally:
        remove_placement_group(pg)
        # Make sure the resources are back before the next repetition.
        deadline = time.time() + 30
        total = sum(node_gpus.values())
        while time.time() < deadline:
            if ray.available_resources().get("GPU", 0) >= total:
                break
            time.sleep(0.05)


def run_topology(gpus_per_node: Sequence[int], args) -> Tuple[List[dict], bool]:
    """Start one simulated cluster, place every label count, shut it down."""
    total_gpus = sum(gpus_per_node)
    print(
        f"Starting simulated cluster: 1 CPU head + {len(gpus_per_node)} GPU "
        f"nodes, {total_gpus} logical GPUs",
        flush=True,
    )
    cluster = start_cluster(gpus_per_node, args.cpus_per_gpu)
    rows = []
    all_ok = True
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        node_gpus = gpus_by_node_id()
        n_gpu_nodes = sum(1 for g in node_gpus.values() if g > 0)
        print(
            f"Connected: {len(node_gpus)} nodes alive, "
            f"{int(ray.cluster_resources().get('GPU', 0))} GPUs",
            flush=True,
        )
        for n in args.labels:
            if n > total_gpus:
                print(f"  labels={n}: skipped, more labels than GPUs", flush=True)
                continue
            times, msgs, used_nodes = [], [], []
            for rep in range(args.reps):
                elapsed, ok, msg, used = place_once(
                    n, args.cpu_per_label, args.timeout, node_gpus
                )
                all_ok &= ok
                times.append(elapsed)
                msgs.append(msg)
                used_nodes.append(used)
                print(
                    f"  labels={n:5d} rep {rep + 1}/{args.reps}: "
                    f"{elapsed * 1000:8.1f} ms on {used} nodes, check: {msg}",
                    flush=True,
                )
            rows.append(
                {
                    "labels": n,
                    "nodes": n_gpu_nodes,
                    "gpus": total_gpus,
                    "nodes_used": max(used_nodes),
                    "median_ms": statistics.median(times) * 1000,
                    "min_ms": min(times) * 1000,
                    "max_ms": max(times) * 1000,
                    "check": "ok" if all(m == "ok" for m in msgs) else msgs[-1],
                }
            )
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows, all_ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, nargs="+", default=DEFAULT_LABELS)
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS) + ["all"],
        default=DEFAULT_PRESET,
        help="simulated topology (default %(default)s)",
    )
    ap.add_argument(
        "--gpus-per-node",
        type=int,
        nargs="+",
        help="custom topology: logical GPUs declared by each worker node "
        "(one raylet per entry); overrides --preset",
    )
    ap.add_argument("--cpus-per-gpu", type=float, default=1.0,
                    help="logical CPUs each worker node declares per GPU")
    ap.add_argument("--cpu-per-label", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for one placement group")
    args = ap.parse_args(argv)

    if args.gpus_per_node:
        topologies = {"custom": args.gpus_per_node}
    elif args.preset == "all":
        topologies = dict(PRESETS)
    else:
        topologies = {args.preset: PRESETS[args.preset]}

    t_start = time.perf_counter()
    results = []
    all_ok = True
    for name, gpus in topologies.items():
        print(f"== topology {name} ==", flush=True)
        rows, ok = run_topology(gpus, args)
        all_ok &= ok
        results.extend(dict(r, topology=name) for r in rows)

    print()
    print(
        f"One-GPU-per-label placement group (PACK): time from "
        f"placement_group() to pg.ready(), median of {args.reps} repetitions"
    )
    header = (f"{'topology':<10} {'labels':>7} {'nodes':>6} {'GPUs':>6} "
              f"{'nodes used':>10} {'median ms':>10} {'min ms':>8} "
              f"{'max ms':>8}  check")
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['topology']:<10} {r['labels']:>7} {r['nodes']:>6} {r['gpus']:>6} "
            f"{r['nodes_used']:>10} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} "
            f"{r['max_ms']:>8.1f}  {r['check']}"
        )
    print(f"\nTotal wall time {time.perf_counter() - t_start:.1f}s")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
