"""Resource planning (GPU, GPU share, CPU share) and placement on a multi-node Ray cluster."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import small_config  # noqa: E402
from core.config import ResourcesConfig
from core.errors import PlacementError
from orchestrator.resources import plan_resources
from core.actors import NAMESPACE, label_actor
from orchestrator.run import place, start_label_actors


def test_one_gpu_per_label_when_there_are_enough():
    plan = plan_resources(10, [{"CPU": 32, "GPU": 8}, {"CPU": 32, "GPU": 8}], ResourcesConfig())
    assert plan.gpus_per_label == 1.0
    assert plan.cpus_per_label == 4.0  # the node's CPUs per GPU
    assert plan.bundles[0] == {"CPU": 4.0, "GPU": 1.0}


def test_gpu_shares_when_labels_outnumber_gpus():
    # CIFAR-100 on one 8-GPU node: 13 labels per GPU, all 100 at once.
    plan = plan_resources(100, [{"CPU": 64, "GPU": 8}], ResourcesConfig())
    assert plan.gpus_per_label == pytest.approx(1 / 13, abs=1e-4)
    assert plan.gpus_per_label * 13 <= 1.0
    assert plan.cpus_per_label * 100 <= 64


def test_cpu_shares_without_gpus():
    plan = plan_resources(10, [{"CPU": 2}], ResourcesConfig())
    assert plan.gpus_per_label == 0 and plan.cpus_per_label == pytest.approx(0.2)
    assert plan.torch_threads == 1
    # Bundles never span nodes: 3 labels on 2 nodes x 3 CPUs get 1.5 each, not 2.
    assert plan_resources(3, [{"CPU": 3}, {"CPU": 3}], ResourcesConfig()).cpus_per_label == 1.5


def test_explicit_settings_override_and_fail_fast():
    plan = plan_resources(4, [{"CPU": 8, "GPU": 2}], ResourcesConfig(gpus_per_label=0.5, cpus_per_label=1))
    assert (plan.gpus_per_label, plan.cpus_per_label) == (0.5, 1.0)
    with pytest.raises(PlacementError, match="no GPUs"):
        plan_resources(10, [{"CPU": 2}], ResourcesConfig(gpus_per_label=1))
    with pytest.raises(PlacementError, match=r"needs 0 GPUs and 10 CPUs.*has 0 GPUs and 2 CPUs"):
        plan_resources(10, [{"CPU": 2}], ResourcesConfig(cpus_per_label=1))
    with pytest.raises(PlacementError, match="needs 4 GPUs"):
        plan_resources(4, [{"CPU": 8, "GPU": 2}], ResourcesConfig(gpus_per_label=1))


def test_autoscaling_plans_from_explicit_settings():
    # A CPU-only head with GPU workers yet to come: plan what was asked, let Ray's autoscaler add nodes.
    plan = plan_resources(10, [{"CPU": 8}], ResourcesConfig(autoscale=True, gpus_per_label=1, cpus_per_label=4))
    assert (plan.gpus_per_label, plan.cpus_per_label) == (1.0, 4.0)
    with pytest.raises(PlacementError, match="autoscale=true needs explicit"):
        plan_resources(10, [{"CPU": 8}], ResourcesConfig(autoscale=True))


def test_unplaceable_plan_fails_fast_instead_of_pending(ray_local):
    # The plan says it fits, but the cluster is busy: placement times out with a clear error.
    plan = plan_resources(2, [{"CPU": 2}], ResourcesConfig(cpus_per_label=1))
    hog = place(plan, "hog", timeout_s=30)
    try:
        with pytest.raises(PlacementError, match="placement_timeout_s=1"):
            place(plan, "second", timeout_s=1)
    finally:
        ray.util.remove_placement_group(hog)


@pytest.fixture(scope="module")
def gpu_cluster():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster()
    for _ in range(3):  # logical GPUs: nothing here touches a real device
        cluster.add_node(num_cpus=2, num_gpus=4)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_actor_per_gpu_across_nodes(gpu_cluster, tmp_path):
    from orchestrator.cluster import alive_nodes

    labels = list(range(12))
    cfg = small_config(tmp_path, "dataset.labels=all")
    plan = plan_resources(len(labels), alive_nodes(), cfg.resources)
    assert plan.gpus_per_label == 1.0 and plan.cpus_per_label == 0.5
    pg = place(plan, "gpu-test", timeout_s=60)
    try:
        actors = start_label_actors(tmp_path, cfg, "gpu-test", labels, plan, pg)
        where = ray.get([a.placement.remote() for a in actors], timeout=300)
        pairs = {(w["node_id"], w["gpu_ids"][0]) for w in where}
        assert all(len(w["gpu_ids"]) == 1 for w in where)
        assert len(pairs) == 12                                  # distinct (node, GPU) pairs
        assert len({w["node_id"] for w in where}) == 3           # spread over all three nodes
        assert [w["label"] for w in where] == labels
        # Named after run and label, so the dashboard shows which label each actor trains.
        named = ray.get_actor(label_actor("gpu-test", 7), namespace=NAMESPACE)  # the run's fixed namespace
        assert ray.get(named.placement.remote())["label"] == 7
    finally:
        for a in locals().get("actors", []):
            ray.kill(a)
        ray.util.remove_placement_group(pg)
