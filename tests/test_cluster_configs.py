"""cluster_configs/: the Ray cluster-launcher YAMLs, the KubeRay RayJob and the
SLURM script are checked offline against what Ray itself accepts.

* Launcher YAMLs: the JSON schema shipped inside Ray
  (ray/autoscaler/ray-schema.json), then Ray's own `ray up` preparation and
  validation (prepare_config + validate_config; no cloud calls).
* The `ray job submit` command in each launcher YAML's header comment is a real
  orchestrator command line whose --set keys are real config keys.
* KubeRay RayJobs (shared-volume and S3 variants): structure, the entrypoint is
  a real `python -m orchestrator` command line, its --config exists, the runtime
  env is one Ray accepts and its excludes keep .git / runs / data / .venv out of
  the upload; run.storage is either on a volume every pod mounts or an s3:// URI.
* The S3 variants (aws-gpu-s3.yaml, kuberay-rayjob-s3.yaml) mount no shared
  volume and get credentials from an instance profile / a Kubernetes Secret,
  with the environment set where Ray's worker processes inherit it.
* SLURM: `bash -n`, the Ray recipe's pieces, and one end-to-end run of the
  script on this machine with stand-ins for srun/scontrol (a real 2-node Ray
  cluster with token authentication, a stand-in orchestrator as the driver).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema  # a dependency of Ray itself
import pytest
import yaml

import ray
from core.config import load_config
from orchestrator.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "cluster_configs"
LAUNCHER_YAMLS = ["aws-gpu.yaml", "aws-gpu-s3.yaml", "onprem.yaml"]
AWS_YAMLS = ["aws-gpu.yaml", "aws-gpu-s3.yaml"]
RAYJOBS = ["kuberay-rayjob.yaml", "kuberay-rayjob-s3.yaml"]
SBATCH = CONFIGS / "slurm.sbatch"


def load_yaml(name: str) -> dict:
    with open(CONFIGS / name) as f:
        return yaml.safe_load(f)


def ray_schema() -> dict:
    path = Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json"
    with open(path) as f:
        return json.load(f)


def subcommands() -> set[str]:
    """The sub-commands of the real CLI parser."""
    import argparse

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


# --------------------------------------------------------------------------
# Cluster-launcher YAMLs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_matches_rays_json_schema(name):
    jsonschema.validate(load_yaml(name), ray_schema())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_passes_ray_up_validation(name):
    """What `ray up` does before it touches a cloud: fill defaults, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load_yaml(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_validation_is_not_vacuous():
    """A misspelt top-level key must fail, so the two tests above mean something."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = load_yaml("aws-gpu.yaml")
    bad["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_keeps_token_auth_and_ships_the_repo(name):
    cfg = load_yaml(name)
    # The same Ray auth token on every node; RAY_AUTH_MODE=token when Ray starts.
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    # The repo is synced (for its dependencies) without .git or ignored files.
    assert cfg["file_mounts"].get("~/wcgan") == "."
    assert any(".git" in p for p in cfg["rsync_exclude"])
    assert ".gitignore" in cfg["rsync_filter"]


@pytest.mark.parametrize("name", AWS_YAMLS)
def test_aws_yaml_gpu_workers_and_cpu_head(name):
    cfg = load_yaml(name)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "label trainers must not land on the head"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert sum(v.get("max_workers", 0) for v in workers.values()) <= cfg["max_workers"]
    assert all(v.get("min_workers", 0) == 0 for v in workers.values())


def header_submit_argv(name: str) -> list[str]:
    """The orchestrator arguments of the `ray job submit ... -- python -m orchestrator ...`
    command in a launcher YAML's header comment (backslash continuations joined)."""
    header = []
    for line in (CONFIGS / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    start = next(i for i, l in enumerate(header) if l.startswith("ray job submit"))
    parts = []
    for line in header[start:]:
        parts.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    argv = shlex.split(" ".join(parts))
    argv = argv[argv.index("--") + 1:]
    assert argv[:3] == ["python", "-m", "orchestrator"], argv
    return argv[3:]


def set_overrides(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_header_submit_command_is_valid(name):
    argv = header_submit_argv(name)
    assert argv[0] in subcommands(), argv
    build_parser().parse_args(argv)  # exits (fails the test) on unknown flags
    config = argv[argv.index("--config") + 1]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert "run.storage" in set_overrides(argv), "say where the runs go"
    load_config(str(REPO / config), overrides)  # the --set keys are real config keys


def test_onprem_yaml_is_a_local_ssh_cluster():
    cfg = load_yaml("onprem.yaml")
    provider = cfg["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert isinstance(provider["worker_ips"], list) and provider["worker_ips"]
    assert cfg["auth"]["ssh_user"] and cfg["auth"]["ssh_private_key"]
    # The local provider builds its own node type; `ray up` rejects these.
    assert "available_node_types" not in cfg and "head_node_type" not in cfg


# --------------------------------------------------------------------------
# KubeRay RayJob
# --------------------------------------------------------------------------
@pytest.fixture(scope="module", params=RAYJOBS)
def rayjob(request) -> dict:
    docs = [d for d in yaml.safe_load_all((CONFIGS / request.param).read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def pod_specs(rayjob) -> list[dict]:
    """The head's pod spec, then each worker group's."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def mount_paths(spec: dict) -> set[str]:
    return {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}


def under_any(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def entrypoint_argv(rayjob) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def test_rayjob_kind(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]


def test_rayjob_entrypoint_is_an_orchestrator_command(rayjob):
    argv = entrypoint_argv(rayjob)
    assert argv[:3] == ["python", "-m", "orchestrator"], argv
    assert argv[3] in subcommands(), f"{argv[3]!r} is not an orchestrator sub-command"
    build_parser().parse_args(argv[3:])  # exits (fails the test) on unknown flags


def test_rayjob_entrypoint_config_exists_and_loads(rayjob):
    argv = entrypoint_argv(rayjob)
    assert "--config" in argv
    config = argv[argv.index("--config") + 1]
    assert config.startswith("experiments/"), config
    assert (REPO / config).is_file(), f"{config} not found in the repo"
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    storage = set_overrides(argv)["run.storage"]
    if "://" in storage:
        assert storage.startswith(("s3://", "gs://")) and storage.split("://", 1)[1].strip("/"), storage
    else:  # a path: on a volume every pod mounts (the shared-volume variant)
        assert all(under_any(storage, mount_paths(spec)) for spec in pod_specs(rayjob)), \
            f"run.storage={storage} must be on a volume every pod mounts"
    load_config(str(REPO / config), overrides)  # the --set keys are real config keys


def test_rayjob_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray's own validation of the runtime env fields
    assert env["working_dir"]
    # The excludes keep these out of an uploaded working_dir (Ray's matcher,
    # gitignore syntax) without dropping the code, e.g. a workers/data/ package.
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, env["excludes"])
    for path in [".git/HEAD", "runs/r1/config.yaml", "data/cifar/x.bin", ".venv/bin/python"]:
        assert excluded(REPO / path), f"{path} would be uploaded"
    for path in ["orchestrator/cli.py", "workers/data.py", "workers/data/x.py",
                 "experiments/cifar10.yaml", "pyproject.toml"]:
        assert not excluded(REPO / path), f"{path} would be left out"


def test_rayjob_cluster_has_cpu_head_and_gpu_workers(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster.get("authOptions", {}).get("mode") == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups
        if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
               for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    # The image's Ray version must be the rayVersion KubeRay is told about.
    images = [head["image"]] + [c["image"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert all(f":{cluster['rayVersion']}" in img for img in images), images
    # Every mount names a volume of its pod.
    for spec in pod_specs(rayjob):
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{c['name']} mounts undefined volume {m['name']!r}"


# --------------------------------------------------------------------------
# The object-store (S3) variants
# --------------------------------------------------------------------------
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def test_s3_rayjob_mounts_no_shared_volume_and_reads_keys_from_a_secret():
    docs = [d for d in yaml.safe_load_all((CONFIGS / "kuberay-rayjob-s3.yaml").read_text()) if d]
    job = docs[0]
    argv = shlex.split(job["spec"]["entrypoint"])
    sets = set_overrides(argv)
    assert sets["run.storage"].startswith("s3://"), sets
    for spec in pod_specs(job):
        # Only the pod's own scratch space: no PVC, NFS, hostPath, CSI ...
        for v in spec.get("volumes", []):
            assert set(v) == {"name", "emptyDir"}, f"shared/non-local volume {v}"
        scratch = mount_paths(spec) - {"/dev/shm"}
        for c in spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            # Keys from a Secret, never literal values in the manifest.
            secrets = set()
            for key in CREDENTIAL_KEYS:
                assert key in env, f"{c['name']}: {key} not set"
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert "value" not in env[key] and ref["key"] == key
                secrets.add(ref["name"])
            assert len(secrets) == 1, f"{c['name']}: keys from several Secrets {secrets}"
            assert env["AWS_DEFAULT_REGION"]["value"]
            # The mirror and the data set on the pod's own disk.
            assert under_any(env["WCGAN_CACHE_DIR"]["value"], scratch), env["WCGAN_CACHE_DIR"]
        assert under_any(sets["dataset.root"], scratch), sets["dataset.root"]
    assert sets.get("dataset.download") == "true"
    # pyarrow is the S3 client of run.storage.
    pip = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]
    assert any(p.startswith("pyarrow") for p in pip), pip


def test_s3_launcher_yaml_mounts_nothing_and_uses_an_instance_profile():
    cfg = load_yaml("aws-gpu-s3.yaml")
    text = (CONFIGS / "aws-gpu-s3.yaml").read_text()
    sets = set_overrides(header_submit_argv("aws-gpu-s3.yaml"))
    assert sets["run.storage"].startswith("s3://"), sets
    # No shared file system: no bind mounts into the container, nothing mounted on the VM.
    docker = cfg["docker"]
    options = [o for key in ("run_options", "head_run_options", "worker_run_options")
               for o in docker.get(key, [])]
    assert not any(o.startswith(("-v ", "--volume", "--mount")) for o in options), options
    init = cfg.get("initialization_commands", []) + [
        c for t in cfg["available_node_types"].values() for c in t.get("initialization_commands", [])]
    assert not any("mount" in c or "nfs" in c or "efs" in c.lower() for c in init), init
    # Credentials from an instance profile on every worker type (the head gets Ray's
    # default profile, or its own), never static keys in the file.
    head = cfg["head_node_type"]
    for name, node_type in cfg["available_node_types"].items():
        if name != head:
            arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
            assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn, arn
    for key in CREDENTIAL_KEYS:
        assert key not in text
    # The environment reaches every Ray worker: `docker run -e` on all nodes (the
    # container's environment, inherited by `ray start` and what the raylet spawns).
    env = {o.split()[1].split("=", 1)[0]: o.split()[1].split("=", 1)[1]
           for o in docker["run_options"] if o.startswith("-e ")}
    assert env.get("AWS_DEFAULT_REGION")
    assert env.get("WCGAN_CACHE_DIR", "").startswith("/")
    # The data set is on each node's own disk, fetched by setup_commands on every node.
    assert sets["dataset.root"].startswith("/") and sets.get("dataset.download") == "true"
    assert any(sets["dataset.root"] in c for c in cfg["setup_commands"]), \
        "setup_commands should fetch the data set into dataset.root"


# --------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------
def test_sbatch_is_valid_bash_and_follows_rays_recipe():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    assert "ray start --head" in text
    assert "ray start --block --address" in text
    assert "SLURM_GPUS_ON_NODE" in text
    assert "RAY_AUTH_MODE=token" in text
    assert "python -u -m orchestrator" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e  # a real 2-node Ray cluster
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_runs_end_to_end_with_fake_slurm(tmp_path):
    """Run the script with stand-ins for srun/scontrol/hostname: it must start a
    2-node Ray cluster with token auth, run the driver, pass the orchestrator
    arguments through, and leave no Ray processes behind."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent("""\
        #!/bin/bash
        # stand-in srun: drop the placement options, run the command here
        while [[ $# -gt 0 ]]; do
          case "$1" in --nodes=*|--ntasks=*|--overlap) shift;; -w) shift 2;; *) break;; esac
        done
        exec "$@"
        """))
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'simnode0\\nsimnode1\\n'\n")
    (bin_dir / "hostname").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)

    # A stand-in orchestrator in the submit dir: connects like the real driver.
    submit = tmp_path / "submit"
    (submit / "orchestrator").mkdir(parents=True)
    (submit / "orchestrator" / "__init__.py").write_text("")
    (submit / "orchestrator" / "__main__.py").write_text(textwrap.dedent("""\
        import json, os, sys
        import ray
        ray.init(log_to_driver=False)
        out = {"argv": sys.argv[1:],
               "nodes": sum(n["Alive"] for n in ray.nodes()),
               "gpus": ray.cluster_resources().get("GPU", 0),
               "auth_mode": os.environ.get("RAY_AUTH_MODE")}
        print("RESULT " + json.dumps(out), flush=True)
        """))

    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "USER": "wcgantest",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "simnode[0-1]",
        "SLURMD_NODENAME": "simnode0",
        "SLURM_SUBMIT_DIR": str(submit),
        "SLURM_CPUS_ON_NODE": "1",
        "SLURM_GPUS_ON_NODE": "2",
        "RAY_PORT": str(_free_port()),
        "RAY_DASHBOARD_PORT": str(_free_port()),
        "RAY_TMP": str(Path("/tmp") / f"ray-wcgantest-{os.getpid()}"),
        "RAY_WAIT_S": "120",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    try:
        proc = subprocess.run(
            ["bash", str(SBATCH), "train", "--config", "experiments/digits.yaml"],
            cwd=submit, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(env["RAY_TMP"], ignore_errors=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    result = json.loads(next(l for l in log.splitlines() if l.startswith("RESULT "))[7:])
    assert result["argv"][:3] == ["train", "--config", "experiments/digits.yaml"]
    assert f"run.storage={submit / 'runs'}" in result["argv"]
    assert result["nodes"] == 2 and result["gpus"] == 4
    assert result["auth_mode"] == "token"
    assert "2/2 Ray nodes up" in log
    # The per-job token is removed at the end.
    assert not list((home / ".ray").glob("wcgan-slurm-*.token"))
