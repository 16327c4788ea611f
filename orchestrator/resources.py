"""Resource arithmetic, in one place: shares, fitting bundles on nodes, and the plans built from them.

* :func:`plan_resources`: how much GPU and CPU each label actor gets, decided from the cluster.
  All labels run at once (the method's fixed wall-clock budget is per label), so with fewer
  GPUs than labels each GPU is shared by ceil(labels / GPUs) actors.
* :func:`plan_baseline`: the data-parallel baseline's Ray Train workers, holding in total
  exactly the CPUs and GPUs of an ensemble plan.
* :func:`check_workers_fit`: fail fast where Ray would wait for resources forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import ResourcesConfig
from core.errors import PlacementError
from core.fmt import resources as fmt_resources

# Ray accepts fractional resources to 4 decimal places.
_PRECISION = 10_000


@dataclass(frozen=True)
class ResourcePlan:
    n_labels: int
    gpus_per_label: float
    cpus_per_label: float
    strategy: str

    @property
    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.cpus_per_label}
        if self.gpus_per_label > 0:
            bundle["GPU"] = self.gpus_per_label
        return [dict(bundle) for _ in range(self.n_labels)]

    @property
    def torch_threads(self) -> int:
        """Intra-op threads for one actor: its CPU share, at least one."""
        return max(1, int(self.cpus_per_label))

    def describe(self) -> str:
        return f"{self.n_labels} label actors x ({fmt_resources(self.gpus_per_label, self.cpus_per_label)}), " \
               f"placement {self.strategy}"


def floor_share(x: float) -> float:
    """`x` floored to the 4 decimals Ray accepts (never more than asked)."""
    return math.floor(x * _PRECISION + 1e-9) / _PRECISION


def even_share(x: float) -> float:
    """A per-worker share of a total: a whole number when within 1% of one (undoing the flooring
    of the shares the total was made of), else floored."""
    r = round(x)
    if r >= 1 and abs(x - r) < 0.01 * r:
        return float(r)
    return floor_share(x)


def bundles_that_fit(nodes: list[dict[str, float]], gpus: float, cpus: float) -> int:
    """How many (gpus, cpus) bundles the nodes hold; a bundle never spans nodes."""
    total = 0
    for node in nodes:
        fit = math.inf
        if gpus > 0:
            # A fractional share must sit on one physical GPU: count whole GPUs only.
            fit = math.floor(node.get("GPU", 0)) * math.floor(1 / gpus + 1e-9) if gpus <= 1 \
                else math.floor(node.get("GPU", 0) / gpus)
        if cpus > 0:
            fit = min(fit, math.floor(node.get("CPU", 0) / cpus + 1e-9))
        total += 0 if fit == math.inf else fit
    return total


def _largest_cpu_share(nodes: list[dict[str, float]], n_labels: int, gpus: float, cap: float) -> float:
    """Largest CPU share (to 4 decimals, at most `cap`) with which all labels fit at once."""
    lo, hi = 1, int(cap * _PRECISION)
    if hi < lo or bundles_that_fit(nodes, gpus, lo / _PRECISION) < n_labels:
        return 0.0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bundles_that_fit(nodes, gpus, mid / _PRECISION) >= n_labels:
            lo = mid
        else:
            hi = mid - 1
    return lo / _PRECISION


def plan_resources(n_labels: int, nodes: list[dict[str, float]], cfg: ResourcesConfig) -> ResourcePlan:
    """`nodes`: the resources of each alive node (``ray.nodes()[i]["Resources"]``)."""
    if n_labels < 1:
        raise PlacementError("no labels to train")
    if cfg.autoscale:
        # Nodes do not exist yet: the plan cannot be derived from them, nor checked against them.
        if cfg.gpus_per_label == "auto" or cfg.cpus_per_label == "auto":
            raise PlacementError("resources.autoscale=true needs explicit resources.gpus_per_label and "
                                 "resources.cpus_per_label (e.g. 1 and 4): there are no nodes yet to size 'auto' from")
        return ResourcePlan(n_labels, float(cfg.gpus_per_label), float(cfg.cpus_per_label), cfg.placement_strategy)
    total_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    whole_gpus = sum(math.floor(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(float(n.get("CPU", 0)) for n in nodes)

    if cfg.gpus_per_label == "auto":
        if whole_gpus >= n_labels:
            gpus = 1.0
        elif whole_gpus >= 1:
            gpus = floor_share(1.0 / math.ceil(n_labels / whole_gpus))
        else:
            gpus = 0.0
    else:
        gpus = float(cfg.gpus_per_label)

    if cfg.cpus_per_label == "auto":
        cap = total_cpus / n_labels
        if gpus > 0 and total_gpus > 0:
            # CPUs follow the GPU share: a whole-GPU label gets its node's CPUs per GPU.
            cap = min(cap, max(1.0, total_cpus / total_gpus) * gpus)
        cpus = _largest_cpu_share(nodes, n_labels, gpus, cap) if total_cpus > 0 else 0.0
        if cpus == 0.0 and total_cpus > 0:
            cpus = floor_share(cap) or 0.0001  # does not fit: check_fits explains why
    else:
        cpus = float(cfg.cpus_per_label)

    plan = ResourcePlan(n_labels, gpus, cpus, cfg.placement_strategy)
    check_fits(plan, nodes)
    return plan


def check_fits(plan: ResourcePlan, nodes: list[dict[str, float]]) -> None:
    total_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    need_gpus = plan.gpus_per_label * plan.n_labels
    need_cpus = plan.cpus_per_label * plan.n_labels
    if plan.gpus_per_label > 0 and total_gpus == 0:
        raise PlacementError(
            f"resources.gpus_per_label={plan.gpus_per_label:g} but the cluster has no GPUs "
            f"({total_cpus:g} CPUs). Set resources.gpus_per_label=0 (or auto) to train on CPUs."
        )
    if plan.gpus_per_label > 1 and plan.gpus_per_label != int(plan.gpus_per_label):
        raise PlacementError(f"resources.gpus_per_label={plan.gpus_per_label:g}: above 1 it must be a whole number")
    fits = bundles_that_fit(nodes, plan.gpus_per_label, plan.cpus_per_label)
    if need_gpus > total_gpus + 1e-9 or need_cpus > total_cpus + 1e-9 or fits < plan.n_labels:
        raise PlacementError(
            f"cannot place {plan.describe()}: needs {need_gpus:g} GPUs and {need_cpus:g} CPUs in all, "
            f"the cluster has {total_gpus:g} GPUs and {total_cpus:g} CPUs on {len(nodes)} node(s), "
            f"where only {fits} such actors fit. Lower resources.gpus_per_label/"
            f"cpus_per_label (or leave them 'auto'), train fewer dataset.labels, or add nodes."
        )
    if plan.gpus_per_label == 0 and plan.cpus_per_label == 0:
        raise PlacementError("resources: each label needs some CPU or GPU (both are 0)")


# ------------------------------------------------------------------ the data-parallel baseline

@dataclass(frozen=True)
class BaselinePlan:
    num_workers: int
    use_gpu: bool
    resources_per_worker: dict
    total_gpus: float
    total_cpus: float

    def describe(self) -> str:
        res = " + ".join(f"{v:g} {k}" for k, v in self.resources_per_worker.items())
        return f"{self.num_workers} Ray Train worker(s) x ({res}), {'NCCL' if self.use_gpu else 'gloo'}"


def plan_baseline(plan: ResourcePlan) -> BaselinePlan:
    """The Ray Train worker group holding the same CPUs and GPUs in total as the ensemble's plan.

    With GPUs, one worker per physical GPU the ensemble occupied; for n >= 2 each share exceeds
    0.5, so Ray never packs two workers (two NCCL ranks) on one GPU. Without, one worker per
    whole CPU of the ensemble's total.
    """
    total_gpus = plan.gpus_per_label * plan.n_labels
    total_cpus = plan.cpus_per_label * plan.n_labels
    if total_gpus > 0:
        n = max(1, math.ceil(total_gpus - 1e-6))
        res = {"GPU": min(1.0, even_share(total_gpus / n))}
        if total_cpus > 0:
            res["CPU"] = even_share(total_cpus / n)
        return BaselinePlan(n, True, res, total_gpus, total_cpus)
    if total_cpus <= 0:
        raise PlacementError("the ensemble's plan holds no CPU and no GPU; nothing to give the baseline")
    n = max(1, math.floor(total_cpus + 1e-3))
    return BaselinePlan(n, False, {"CPU": even_share(total_cpus / n)}, 0.0, total_cpus)


def check_workers_fit(num_workers: int, resources_per_worker: dict, nodes: list[dict[str, float]],
                      what: str = "Ray Train workers") -> None:
    """Fail fast: a Ray Train worker group that does not fit waits for resources forever."""
    gpus = float(resources_per_worker.get("GPU", 0.0))
    cpus = float(resources_per_worker.get("CPU", 1.0))
    fits = bundles_that_fit(nodes, gpus, cpus)
    if fits < num_workers:
        total = fmt_resources(sum(float(n.get("GPU", 0)) for n in nodes), sum(float(n.get("CPU", 0)) for n in nodes))
        raise PlacementError(f"baseline: cannot place {num_workers} {what} x ({fmt_resources(gpus, cpus)}); only {fits} fit "
                             f"on this cluster ({total} on {len(nodes)} node(s))")
