"""Resource planning (GPU, GPU share, CPU share) and placement on a multi-node Ray cluster."""

from __future__ import annotations

import math

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import small_config  # noqa: E402
from core.config import ResourcesConfig
from core.errors import PlacementError
from core.rundir import RunDir
from orchestrator.resources import plan_resources
from core.actors import NAMESPACE, label_actor
from orchestrator.run import place, start_label_actors


def test_one_gpu_per_label_when_there_are_enough():
    plan = plan_resources(10, [{"CPU": 32, "GPU": 8}, {"CPU": 32, "GPU": 8}], ResourcesConfig())
    assert plan.gpus_per_label == 1.0
    assert plan.cpus_per_label == 4.0  # the node's CPUs per GPU
    assert plan.bundles[0] == {"CPU": 4.0, "GPU": 1.0}


def test_gpu_shares_when_labels_outnumber_gpus():
    # CIFAR-100 on one 8-GPU node with room for 16 processes per GPU: 13 labels per GPU, all 100 at once.
    plan = plan_resources(100, [{"CPU": 64, "GPU": 8}], ResourcesConfig(max_actors_per_gpu=16))
    assert plan.labels_per_actor == 1
    assert plan.gpus_per_label == pytest.approx(1 / 13, abs=1e-4)
    assert plan.gpus_per_label * 13 <= 1.0
    assert plan.cpus_per_label * 100 <= 64


def test_past_the_cap_labels_share_a_process():
    # The default cap (8 processes per GPU): 100 labels on 8 GPUs train 2 per actor, 7 actors per GPU.
    plan = plan_resources(100, [{"CPU": 64, "GPU": 8}], ResourcesConfig())
    assert (plan.labels_per_actor, plan.n_actors) == (2, 50)
    assert plan.gpus_per_actor == pytest.approx(1 / 7, abs=1e-4)
    # ImageNet-1k on 8 GPUs: 63 actors of 15-16 labels, never more than 8 on a GPU.
    plan = plan_resources(1000, [{"CPU": 128, "GPU": 8}], ResourcesConfig())
    assert plan.labels_per_actor == 16 and plan.n_actors == 63
    assert math.floor(1 / plan.gpus_per_actor + 1e-9) <= 8
    packs = plan.packs(range(1000))
    assert len(packs) == 63 and [k for p in packs for k in p] == list(range(1000))  # every label once, in order
    assert {len(p) for p in packs} <= {15, 16}                                       # fair sizes
    assert "1000 labels in 63 actors of up to 16 labels" in plan.describe()


def test_an_explicit_share_past_the_cap_packs_or_is_refused_with_the_fix():
    plan = plan_resources(40, [{"CPU": 16, "GPU": 1}], ResourcesConfig(gpus_per_label=0.025, cpus_per_label=0.1))
    assert plan.labels_per_actor == 5 and plan.gpus_per_actor == pytest.approx(0.125)  # 8 actors on the GPU
    with pytest.raises(PlacementError, match=r"past resources.max_actors_per_gpu=8.*labels_per_actor=5"):
        plan_resources(40, [{"CPU": 16, "GPU": 1}],
                       ResourcesConfig(gpus_per_label=0.025, cpus_per_label=0.1, labels_per_actor=1))


def test_a_label_takes_at_most_one_gpu():
    from core.config import load_config
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="resources.gpus_per_label: must be 'auto' or a number in \\[0, 1\\]"):
        load_config(None, ["resources.gpus_per_label=2"])


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
    for _ in range(2):  # 8 logical GPUs: nothing here touches a real device
        cluster.add_node(num_cpus=4, num_gpus=4)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_actor_per_gpu_across_nodes(gpu_cluster, tmp_path):
    from orchestrator.cluster import alive_nodes

    labels = list(range(8))
    cfg = small_config(tmp_path, "dataset.labels=all")
    plan = plan_resources(len(labels), alive_nodes(), cfg.resources)
    assert plan.gpus_per_label == 1.0 and plan.cpus_per_label == 1.0
    pg = place(plan, "gpu-test", timeout_s=60)
    actors = {}
    try:
        actors = start_label_actors(RunDir(tmp_path), cfg, "gpu-test", labels, plan, pg)
        where = ray.get([a.placement.remote() for a in actors.values()], timeout=300)
        pairs = {(w["node_id"], w["gpu_ids"][0]) for w in where}
        assert all(len(w["gpu_ids"]) == 1 for w in where)
        assert len(pairs) == 8                                   # distinct (node, GPU) pairs
        assert len({w["node_id"] for w in where}) == 2           # spread over both nodes
        assert [w["labels"] for w in where] == [[k] for k in labels]
        # CUDA may see exactly the GPU Ray assigned, nothing else of the node's four.
        assert all(w["visible_gpus"] == w["gpu_ids"][0] for w in where)
        # Named after run and label, so the dashboard shows which label each actor trains.
        named = ray.get_actor(label_actor("gpu-test", 7), namespace=NAMESPACE)  # the run's fixed namespace
        assert ray.get(named.placement.remote())["labels"] == [7]
    finally:
        for a in actors.values():
            ray.kill(a)
        ray.util.remove_placement_group(pg)


def test_processes_given_no_gpu_see_none(gpu_cluster, tmp_path):
    """A CPU-share label actor and the collector (which scores) run on GPU nodes but must not
    touch a GPU Ray did not give them: Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for them."""
    from metrics.collector import Collector
    from workers.trainer import LabelTrainer

    cfg = small_config(tmp_path, "dataset.labels=all").to_dict()
    cpu_actor = ray.remote(LabelTrainer).options(num_cpus=0.5, num_gpus=0).remote(str(tmp_path), cfg, 3, "cpu")
    collector = ray.remote(Collector).options(num_cpus=0).remote(str(tmp_path), [3])
    try:
        where = ray.get(cpu_actor.placement.remote(), timeout=300)
        assert where["gpu_ids"] == [] and where["visible_gpus"] == ""
        assert ray.get(collector.visible_gpus.remote(), timeout=300) == ""
    finally:
        ray.kill(cpu_actor)
        ray.kill(collector)


def test_a_thousand_labels_on_eight_gpus_place_with_the_cap(gpu_cluster):
    """ImageNet-1k on 8 (logical) GPUs: the plan packs labels so no GPU holds more than
    max_actors_per_gpu processes, and Ray places every bundle of it."""
    from orchestrator.cluster import alive_nodes

    plan = plan_resources(1000, alive_nodes(), ResourcesConfig())
    assert plan.labels_per_actor > 1 and plan.n_actors <= 8 * 8
    pg = place(plan, "imagenet", timeout_s=60)
    try:
        table = ray.util.placement_group_table(pg)
        assert len(table["bundles"]) == plan.n_actors
        assert all(b["GPU"] <= 1 / 8 + 1e-9 for b in table["bundles"].values())  # at most 8 per GPU
    finally:
        ray.util.remove_placement_group(pg)


def test_scoring_runs_in_a_task_on_the_gpu_it_was_given(gpu_cluster, tmp_path):
    """The end-of-run task asks for a GPU where the cluster has them, and gets one."""
    from pathlib import Path

    from core.config import dump_config
    from core.rundir import RunDir, write_text
    from metrics.finalize import finalize_run
    from orchestrator.cluster import alive_nodes
    from orchestrator.resources import plan_scoring
    from workers.trainer import LabelTrainer

    cfg = small_config(tmp_path, "train.max_steps=2", "dataset.labels=[0]")
    run = RunDir(tmp_path / "run")
    LabelTrainer(str(run.path), cfg.to_dict(), 0, "r").run()
    write_text(run.config, dump_config(cfg))
    res = plan_scoring(alive_nodes())
    assert res == {"num_gpus": 1, "num_cpus": 1}  # a GPU and its node's CPUs per GPU
    out = ray.get(ray.remote(finalize_run).options(**res).remote(str(run.path), False, threads=1), timeout=300)
    assert len(out["gpu_ids"]) == 1 and Path(out["grid"]).is_file() and out["threads"] == 1


def test_scoring_without_gpus_takes_a_nodes_cpus():
    from orchestrator.resources import plan_scoring

    assert plan_scoring([{"CPU": 2}, {"CPU": 16}]) == {"num_gpus": 0, "num_cpus": 16}
    assert plan_scoring([{"CPU": 64, "GPU": 8}]) == {"num_gpus": 1, "num_cpus": 8}
