"""Resource arithmetic, in one place: shares, fitting bundles on nodes, and the plans built from them.

* :func:`plan_resources`: how much GPU and CPU each label actor gets, decided from the cluster.
  All labels run at once (the method's fixed wall-clock budget is per label), so with fewer
  GPUs than actors each GPU is shared by ceil(actors / GPUs) of them, at most
  ``resources.max_actors_per_gpu``: past that, each actor trains several labels (a pack), and
  the per-label settings (an explicit ``gpus_per_label``, ``cpus_per_label``) add up per actor.
* :func:`plan_baseline`: the data-parallel baseline's Ray Train workers, holding in total
  exactly the CPUs and GPUs of an ensemble plan.
* :func:`check_workers_fit`: fail fast where Ray would wait for resources forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from core.config import ResourcesConfig
from core.errors import PlacementError
from core.fmt import resources as fmt_resources

# Ray accepts fractional resources to 4 decimal places.
_PRECISION = 10_000


@dataclass(frozen=True)
class ResourcePlan:
    """What each label actor holds, and how many labels it trains (one, unless GPUs are shared
    past ``resources.max_actors_per_gpu``: then several labels take turns in one process)."""

    n_labels: int
    gpus_per_actor: float
    cpus_per_actor: float
    strategy: str
    labels_per_actor: int = 1

    @property
    def n_actors(self) -> int:
        return math.ceil(self.n_labels / self.labels_per_actor)

    @property
    def gpus_per_label(self) -> float:
        return self.gpus_per_actor / self.labels_per_actor

    @property
    def cpus_per_label(self) -> float:
        return self.cpus_per_actor / self.labels_per_actor

    @property
    def total_gpus(self) -> float:
        return self.gpus_per_actor * self.n_actors

    @property
    def total_cpus(self) -> float:
        return self.cpus_per_actor * self.n_actors

    @property
    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.cpus_per_actor}
        if self.gpus_per_actor > 0:
            bundle["GPU"] = self.gpus_per_actor
        return [dict(bundle) for _ in range(self.n_actors)]

    @property
    def torch_threads(self) -> int:
        """Intra-op threads for one actor: its CPU share, at least one."""
        return max(1, int(self.cpus_per_actor))

    def packs(self, labels) -> list[tuple[int, ...]]:
        """The labels of each actor: consecutive runs whose sizes differ by at most one."""
        labels = list(labels)
        n, k = len(labels), self.n_actors
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [tuple(labels[a:b]) for a, b in zip(bounds, bounds[1:])]

    def describe(self) -> str:
        res = fmt_resources(self.gpus_per_actor, self.cpus_per_actor)
        if self.labels_per_actor == 1:
            return f"{self.n_labels} label actors x ({res}), placement {self.strategy}"
        return (f"{self.n_labels} labels in {self.n_actors} actors of up to {self.labels_per_actor} labels x ({res}), "
                f"placement {self.strategy}")


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


def labels_per_actor(n_labels: int, whole_gpus: int, cfg: ResourcesConfig, whole_cpus: int = 0) -> int:
    """How many labels each actor trains: the setting, or with 'auto' as few as keep at most
    ``max_actors_per_gpu`` processes (CUDA contexts) on each GPU. On a cluster without GPUs whose
    cores the labels divide evenly, one process per core: a share below one core buys nothing a
    pack does not, and every extra process costs its start (Ray's worker, torch's import) and
    its memory. Uneven packs would give the labels of the larger ones less of a core, so
    labels that do not divide evenly keep a process each (the OS shares the cores fairly)."""
    if cfg.labels_per_actor != "auto":
        return min(int(cfg.labels_per_actor), n_labels)
    cap = cfg.max_actors_per_gpu
    if cfg.gpus_per_label == "auto":
        if whole_gpus < 1 and cfg.cpus_per_label == "auto" and n_labels > whole_cpus >= 1 \
                and n_labels % whole_cpus == 0:
            return n_labels // whole_cpus
        if whole_gpus < 1 or n_labels <= whole_gpus * cap:
            return 1
        return math.ceil(n_labels / (whole_gpus * cap))
    share = float(cfg.gpus_per_label)
    if share <= 0 or whole_gpus < 1 or per_gpu(share, n_labels, whole_gpus) <= cap:
        return 1
    return min(n_labels, math.ceil(1 / (share * cap) - 1e-9))


def per_gpu(share: float, n_actors: int, whole_gpus: int) -> int:
    """Processes a GPU will hold: as many shares as fit, but no more than there are actors for it."""
    return min(math.floor(1 / share + 1e-9), math.ceil(n_actors / max(whole_gpus, 1)))


def plan_resources(n_labels: int, nodes: list[dict[str, float]], cfg: ResourcesConfig) -> ResourcePlan:
    """`nodes`: the resources of each alive node (``ray.nodes()[i]["Resources"]``)."""
    if n_labels < 1:
        raise PlacementError("no labels to train")
    whole_gpus = sum(math.floor(n.get("GPU", 0)) for n in nodes)
    per_actor = labels_per_actor(n_labels, whole_gpus, cfg, sum(math.floor(n.get("CPU", 0)) for n in nodes))
    n_actors = math.ceil(n_labels / per_actor)
    if cfg.autoscale:
        # Nodes do not exist yet: the plan cannot be derived from them, nor checked against them.
        if cfg.gpus_per_label == "auto" or cfg.cpus_per_label == "auto":
            raise PlacementError("resources.autoscale=true needs explicit resources.gpus_per_label and "
                                 "resources.cpus_per_label (e.g. 1 and 4): there are no nodes yet to size 'auto' from")
        return ResourcePlan(n_labels, min(1.0, float(cfg.gpus_per_label) * per_actor),
                            float(cfg.cpus_per_label) * per_actor, cfg.placement_strategy, per_actor)
    total_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(float(n.get("CPU", 0)) for n in nodes)

    if cfg.gpus_per_label == "auto":
        if whole_gpus >= n_actors:
            gpus = 1.0
        elif whole_gpus >= 1:
            gpus = floor_share(1.0 / math.ceil(n_actors / whole_gpus))
        else:
            gpus = 0.0
    else:
        gpus = min(1.0, floor_share(float(cfg.gpus_per_label) * per_actor))
        if per_actor > 1 and whole_gpus >= 1:  # packs: their shares add up, but no more than the GPUs hold
            gpus = min(gpus, floor_share(1.0 / math.ceil(n_actors / whole_gpus)))

    if cfg.cpus_per_label == "auto":
        cap = total_cpus / n_actors
        if gpus > 0 and total_gpus > 0:
            # CPUs follow the GPU share: a whole-GPU actor gets its node's CPUs per GPU.
            cap = min(cap, max(1.0, total_cpus / total_gpus) * gpus)
        cpus = _largest_cpu_share(nodes, n_actors, gpus, cap) if total_cpus > 0 else 0.0
        if cpus == 0.0 and total_cpus > 0:
            cpus = floor_share(cap) or 0.0001  # does not fit: check_fits explains why
    else:
        cpus = float(cfg.cpus_per_label) * per_actor

    plan = ResourcePlan(n_labels, gpus, cpus, cfg.placement_strategy, per_actor)
    check_fits(plan, nodes, cfg.max_actors_per_gpu)
    return plan


def check_fits(plan: ResourcePlan, nodes: list[dict[str, float]], max_actors_per_gpu: Optional[int] = None) -> None:
    """Refuse, before placing anything, a plan Ray would wait on forever or a GPU could not hold;
    the message says what the plan needs and what to change."""
    total_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    if plan.gpus_per_actor > 0 and total_gpus == 0:
        raise PlacementError(
            f"resources.gpus_per_label={plan.gpus_per_label:g} but the cluster has no GPUs "
            f"({total_cpus:g} CPUs). Set resources.gpus_per_label=0 (or auto) to train on CPUs."
        )
    if plan.gpus_per_actor == 0 and plan.cpus_per_actor == 0:
        raise PlacementError("resources: each label needs some CPU or GPU (both are 0)")
    whole_gpus = sum(math.floor(n.get("GPU", 0)) for n in nodes)
    if max_actors_per_gpu is not None and 0 < plan.gpus_per_actor < 1 and whole_gpus >= 1:
        on_one = per_gpu(plan.gpus_per_actor, plan.n_actors, whole_gpus)
        if on_one > max_actors_per_gpu:
            fix = plan.labels_per_actor * math.ceil(on_one / max_actors_per_gpu)
            raise PlacementError(
                f"{plan.describe()} puts up to {on_one} processes on one GPU, past "
                f"resources.max_actors_per_gpu={max_actors_per_gpu} (each holds its own CUDA context and cuDNN "
                f"workspace). Set resources.labels_per_actor={fix} (or 'auto') "
                f"so that several labels share a process, raise resources.gpus_per_label, or raise "
                f"resources.max_actors_per_gpu if the GPU's memory allows it.")
    fits = bundles_that_fit(nodes, plan.gpus_per_actor, plan.cpus_per_actor)
    if plan.total_gpus > total_gpus + 1e-9 or plan.total_cpus > total_cpus + 1e-9 or fits < plan.n_actors:
        raise PlacementError(
            f"cannot place {plan.describe()}: needs {plan.total_gpus:g} GPUs and {plan.total_cpus:g} CPUs in all, "
            f"the cluster has {total_gpus:g} GPUs and {total_cpus:g} CPUs on {len(nodes)} node(s), "
            f"where only {fits} such actors fit. Lower resources.gpus_per_label/"
            f"cpus_per_label (or leave them 'auto'), train fewer dataset.labels, or add nodes."
        )


# ------------------------------------------------------------------ scoring


def plan_scoring(nodes: list[dict[str, float]]) -> dict[str, float]:
    """Ray options for the scoring task, once the label actors are gone: one GPU and its node's
    CPUs per GPU where the cluster has GPUs, else all the CPUs of the largest node."""
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
    if gpu_nodes:
        node = max(gpu_nodes, key=lambda n: n.get("CPU", 0) / n["GPU"])
        return {"num_gpus": 1, "num_cpus": max(1, math.floor(node.get("CPU", 0) / math.floor(node["GPU"])))}
    return {"num_gpus": 0, "num_cpus": max(1, math.floor(max((n.get("CPU", 0) for n in nodes), default=1)))}


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
    total_gpus, total_cpus = plan.total_gpus, plan.total_cpus
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
