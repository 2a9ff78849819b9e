"""cluster/ (Ray cluster launcher) and manifests/ (KubeRay): every file parses, carries the fields
the launcher or KubeRay requires, and names only things that exist in this repository.

Launcher configs go through Ray's own `prepare_config` + `validate_config` (what `ray up` does
before it touches a cloud, offline). KubeRay manifests are checked against the fields of the
KubeRay v1 CRDs (RayCluster, RayJob, RayService, RayCronJob as of KubeRay 1.6): required ones
present, and no field outside the ones used here, since Kubernetes drops a misspelt field
silently (a misspelt `shutdownAfterJobFinishes` would leave a GPU cluster running). Entry points
are parsed by the `l2s` typer app itself, options included, without running anything; `python
jobs/x.py` entry points must name a file in jobs/ whose command parses the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import typer
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

import l2s
from l2s.cli import app

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_CONFIGS = sorted((REPO / "cluster").glob("*.yaml"))
MANIFESTS = sorted((REPO / "manifests").glob("*.yaml"))
# Storage credentials: never written in a config, never sent in a job's runtime_env (anyone who
# can list jobs reads it); nodes hold them (instance profile, service account role, this Secret).
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CREDENTIALS_FROM_SECRET = {"secretRef": {"name": "l2s-s3", "optional": True}}
# Where cluster/Dockerfile puts the checkout inside the image.
IMAGE_CHECKOUT = "/home/ray/l2s"
# The Serve app, agreed with the serve branch (l2s/serve/app.py).
SERVE_APP = "l2s.serve.app:build_app"

# KubeRay v1 fields (ray-operator/apis/ray/v1/*_types.go): required, and every one used here.
RAY_CLUSTER_FIELDS = {
    "required": {"headGroupSpec"},
    "allowed": {
        "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
        "workerGroupSpecs", "suspend", "headServiceAnnotations", "gcsFaultToleranceOptions",
    },
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "required": {"template", "rayStartParams"},
    "allowed": {"template", "rayStartParams", "serviceType", "headService", "enableIngress"},
}
WORKER_GROUP_FIELDS = {
    "required": {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"},
    "allowed": {
        "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
        "idleTimeoutSeconds", "numOfHosts", "scaleStrategy",
    },
}  # fmt: skip
RAY_JOB_FIELDS = {
    "required": {"entrypoint"},
    "allowed": {
        "entrypoint", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "runtimeEnvYAML",
        "submissionMode", "suspend", "entrypointNumCpus", "entrypointNumGpus",
    },
}  # fmt: skip
RAY_SERVICE_FIELDS = {
    "required": {"serveConfigV2", "rayClusterConfig"},
    "allowed": {"serveConfigV2", "rayClusterConfig", "serveService"},
}
# KubeRay 1.6's CRD requires both; `suspend` and `timeZone` (1.7) are left out on purpose.
RAY_CRON_JOB_FIELDS = {
    "required": {"schedule", "jobTemplate"},
    "allowed": {"schedule", "jobTemplate"},
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _manifests() -> list[tuple[Path, dict]]:
    return [(p, doc) for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text()) if doc]


def _check_fields(mapping: dict, fields: dict, where: str) -> None:
    assert isinstance(mapping, dict), f"{where}: not a mapping"
    missing = fields["required"] - set(mapping)
    unknown = set(mapping) - fields["allowed"]
    assert not missing, f"{where}: missing {sorted(missing)}"
    assert not unknown, f"{where}: fields KubeRay does not know {sorted(unknown)}"


# --- entry points ----------------------------------------------------------------------------


def _job_command(script: Path) -> str:
    """The `l2s` command a jobs/*.py entry point runs (each is `app(["<command>", *argv])`)."""
    match = re.search(r'app\(\["([\w-]+)"', script.read_text())
    assert match, f"{script}: not a thin wrapper over an l2s command"
    return match[1]


def check_entrypoint(entrypoint: str, where: str) -> list[str]:
    """Parse every command of a shell entry point with the l2s CLI; returns the commands run."""
    group = typer.main.get_command(app)
    commands = []
    for part in entrypoint.split("&&"):
        argv = shlex.split(part)
        if argv[0] == "l2s":
            command, args = argv[1], argv[2:]
        elif argv[0] == "python" and argv[1].endswith(".py"):
            script = argv[1].removeprefix(IMAGE_CHECKOUT + "/")
            assert (REPO / script).is_file(), f"{where}: {argv[1]} is not in the repository"
            assert script.startswith("jobs/"), f"{where}: {argv[1]} is not a job entry point"
            command, args = _job_command(REPO / script), argv[2:]
        else:
            pytest.fail(f"{where}: {part.strip()!r} is neither `l2s ...` nor `python jobs/...`")
        assert command in group.commands, f"{where}: `l2s {command}` does not exist"
        # Raises click's UsageError for an unknown option, a missing argument or a bad value.
        group.commands[command].make_context(command, list(args))
        commands.append(command)
    return commands


def test_entrypoint_check_catches_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="does not exist"):
        check_entrypoint("l2s transcode a b", "example")
    with pytest.raises(Exception, match="No such option: --node"):
        check_entrypoint("l2s train data --node 4", "example")
    with pytest.raises(AssertionError, match="not in the repository"):
        check_entrypoint(f"python {IMAGE_CHECKOUT}/jobs/nothing.py x", "example")


def test_every_job_entry_point_wraps_an_existing_command() -> None:
    group = typer.main.get_command(app)
    jobs = sorted((REPO / "jobs").glob("*.py"))
    assert {j.stem for j in jobs} >= {"preprocess", "train", "dub"}
    for job in jobs:
        assert _job_command(job) in group.commands, job


# --- cluster launcher ------------------------------------------------------------------------


def test_there_is_an_aws_gpu_and_a_local_launcher_config() -> None:
    providers = {_load(p)["provider"]["type"] for p in LAUNCHER_CONFIGS}
    assert providers == {"aws", "local"}


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_is_accepted_by_ray_up(path: Path) -> None:
    validate_config(prepare_config(_load(path)))


def test_launcher_validation_rejects_a_misspelt_field() -> None:
    config = _load(REPO / "cluster" / "aws-gpu.yaml")
    config["setup_comands"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(config))


def test_aws_cluster_has_a_cpu_only_head_and_gpu_workers() -> None:
    config = _load(REPO / "cluster" / "aws-gpu.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "work must not land on the head"
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"]), "a GPU head"
    workers = [
        t["node_config"]["InstanceType"] for n, t in types.items() if n != config["head_node_type"]
    ]
    assert any(re.match(r"(g5|g6|p4d|p5)\.", w) for w in workers), workers
    python = _pinned_python()
    docker = config["docker"]
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-{python}-cpu"


def test_aws_workers_reach_s3_with_an_instance_profile() -> None:
    """`ray up` gives only the head an instance profile; a worker without one cannot read S3."""
    config = _load(REPO / "cluster" / "aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        if name != config["head_node_type"]:
            assert node_type["node_config"].get("IamInstanceProfile"), f"{name}: no profile"


@pytest.mark.parametrize("path", [*LAUNCHER_CONFIGS, *MANIFESTS], ids=lambda p: p.name)
def test_config_names_no_secret_outside_its_comments(path: Path) -> None:
    """A key in a config leaks with the repository; one in runtimeEnvYAML with the job's metadata.
    (Comments may show how to put keys in the Secret.)"""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        assert not [n for n in SECRET_NAMES if n in code], f"{path.name}:{number}: {line.strip()}"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_installs_this_checkout(path: Path) -> None:
    config = _load(path)
    [(remote, local)] = config["file_mounts"].items()
    assert local == ".", "the checkout `ray up` runs from"
    assert any(f"pip install --no-cache-dir {remote}" in c or f"pip install {remote}" in c
               for c in config["setup_commands"]), config["setup_commands"]  # fmt: skip


def _pinned_python() -> str:
    """py311 for requires-python ">=3.11,<3.12" (Ray's images are tagged by Python version)."""
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.match(r">=(\d+)\.(\d+)", spec).groups()
    return f"py{major}{minor}"


def test_dockerfile_builds_on_the_pinned_ray_and_python() -> None:
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-{_pinned_python()}-gpu" in dockerfile
    assert f"COPY --chown=ray:users . {IMAGE_CHECKOUT}" in dockerfile


# --- KubeRay ---------------------------------------------------------------------------------


def test_there_is_one_of_each_kuberay_kind() -> None:
    kinds = sorted(doc["kind"] for _, doc in _manifests())
    assert kinds == ["RayCluster", "RayCronJob", "RayJob", "RayJob", "RayService"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_has_api_version_kind_and_name(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == "ray.io/v1"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert isinstance(doc["spec"], dict)


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for path, doc in _manifests():
        spec = doc["spec"]
        cluster = {
            "RayCluster": lambda s: s,
            "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"],
            "RayCronJob": lambda s: s["jobTemplate"]["rayClusterSpec"],
        }[doc["kind"]](spec)
        specs.append((f"{path.name} ({doc['kind']})", cluster))
    return specs


@pytest.mark.parametrize(
    "where, spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_ray_cluster_spec(where: str, spec: dict) -> None:
    """Head and worker groups as KubeRay requires; the pinned Ray; a CPU-only head; images
    of this l2s version; GPU groups that ask for GPUs."""
    _check_fields(spec, RAY_CLUSTER_FIELDS, where)
    assert spec["rayVersion"] == ray.__version__, f"{where}: Ray {spec['rayVersion']}"
    head = spec["headGroupSpec"]
    _check_fields(head, HEAD_GROUP_FIELDS, f"{where} headGroupSpec")
    assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: tasks could land on the head"
    _check_pod(head["template"], "cpu", where)
    for group in spec.get("workerGroupSpecs", []):
        name = f"{where} worker group {group.get('groupName')}"
        _check_fields(group, WORKER_GROUP_FIELDS, name)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        _check_pod(group["template"], "gpu" if group["groupName"] == "gpu" else "cpu", name)


def _check_pod(template: dict, kind: str, where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    container = containers[0]
    assert container["name"] and container["image"] == f"l2s:{l2s.__version__}-{kind}", where
    assert template["spec"].get("serviceAccountName") == "l2s", f"{where}: no S3 role"
    assert CREDENTIALS_FROM_SECRET in container.get("envFrom", []), f"{where}: no S3 keys"
    gpus = {int(container["resources"][k].get("nvidia.com/gpu", 0)) for k in ("requests", "limits")}
    assert gpus == ({1} if kind == "gpu" else {0}), f"{where}: GPUs {gpus}"


def test_ray_jobs_preprocess_and_train_on_nodes() -> None:
    commands = []
    for path, doc in _manifests():
        if doc["kind"] != "RayJob":
            continue
        _check_fields(doc["spec"], RAY_JOB_FIELDS, path.name)
        assert doc["spec"]["shutdownAfterJobFinishes"] is True, f"{path.name}: cluster left running"
        commands += check_entrypoint(doc["spec"]["entrypoint"], path.name)
        if "train" in commands[-1:]:
            assert "--nodes" in doc["spec"]["entrypoint"]
    assert {"preprocess", "train"} <= set(commands)


def test_ray_service_serves_the_l2s_app() -> None:
    [(path, doc)] = [(p, d) for p, d in _manifests() if d["kind"] == "RayService"]
    _check_fields(doc["spec"], RAY_SERVICE_FIELDS, path.name)
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema(**serve_config)  # what the Serve controller validates on deploy
    [application] = serve_config["applications"]
    assert application["import_path"] == SERVE_APP
    module, attribute = SERVE_APP.split(":")
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # l2s.serve itself is absent: it lives on the serve branch
        found = False
    if found:
        assert callable(getattr(importlib.import_module(module), attribute))


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for item in field.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
        if not match:
            return False
        values = [int(v) for v in match.group(2, 3) if v is not None]
        if any(not low <= v <= high for v in values) or match[4] == "0":
            return False
    return True


def test_cron_field_check_can_fail() -> None:
    assert _cron_field_ok("*/15", 0, 59) and _cron_field_ok("1-5", 0, 6)
    assert not _cron_field_ok("25", 0, 23) and not _cron_field_ok("*/0", 0, 59)


def test_ray_cron_job_dubs_nightly() -> None:
    [(path, doc)] = [(p, d) for p, d in _manifests() if d["kind"] == "RayCronJob"]
    spec = doc["spec"]
    _check_fields(spec, RAY_CRON_JOB_FIELDS, path.name)
    fields = spec["schedule"].split()
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
    assert len(fields) == 5 and all(
        _cron_field_ok(f, *r) for f, r in zip(fields, ranges, strict=True)
    ), spec["schedule"]
    job = spec["jobTemplate"]
    _check_fields(job, RAY_JOB_FIELDS, f"{path.name} jobTemplate")
    assert job["shutdownAfterJobFinishes"] is True
    assert check_entrypoint(job["entrypoint"], path.name) == ["dub"]
    text = path.read_text()
    assert "KubeRay ≥ 1.6" in text and "RayCronJob=true" in text, "say what it needs"
