"""What l2s hands its Ray tasks and actors: settings may travel in a runtime_env, storage secrets
never do (anyone who can read a job's metadata reads its runtime_env); workers take credentials
from their node's environment, which on a local Ray started in-process is the driver's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from l2s import storage
from l2s.pipeline.runtime import worker_env
from l2s.train import run_config

REPO = Path(__file__).resolve().parents[1]
SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _secret_values() -> dict[str, str]:
    return {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in SECRETS}


def test_no_runtime_env_l2s_builds_carries_a_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = _secret_values()
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("L2S_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    built = {
        "ray_remote_args": worker_env(),  # Ray Data, dub's and score's actors, Serve replicas
        "Ray Train workers": run_config(str(tmp_path / "run"), 0, 1).worker_runtime_env,
    }
    for where, runtime_env in built.items():
        text = json.dumps(runtime_env, default=str)
        leaked = [name for name, value in secrets.items() if name in text or value in text]
        assert not leaked, f"{where}: {leaked} in {text}"
        assert "http://127.0.0.1:9" in text and "eu-north-1" in text, f"{where}: {text}"


def test_l2s_never_names_a_secret_variable() -> None:
    """botocore and pyarrow read credentials themselves: no l2s code needs to touch them, so code
    that names one is about to copy it somewhere."""
    sources = [*(REPO / "l2s").rglob("*.py"), *(REPO / "jobs").glob("*.py")]
    named = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sources
        for name in SECRETS
        if name in path.read_text()
    ]
    assert not named, named


DRIVER = """
import json, os, sys, tempfile
from pathlib import Path

import ray, ray.data, ray.train
from ray.train.torch import TorchTrainer

from l2s import storage
from l2s.pipeline.runtime import connect, worker_env
from l2s.train import run_config

bucket, names = sys.argv[1], sys.argv[2].split(",")


def seen():
    return {
        "env": {name: os.environ.get(name) for name in names},
        "runtime_env": dict(ray.get_runtime_context().runtime_env),
        "pid": os.getpid(),
    }


def copy(batch):
    for key in batch["key"]:
        storage.write_bytes(f"{bucket}/data/{key}.out", storage.read_bytes(f"{bucket}/data/{key}.in"))
    return {"seen": [json.dumps(seen())] * len(batch["key"])}


def loop(config):
    rank = ray.train.get_context().get_world_rank()
    storage.write_bytes(f"{bucket}/train/rank{rank}", storage.read_bytes(f"{bucket}/data/a.in"))
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "seen.json").write_text(json.dumps(seen()))
        ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(folder))


connect()
rows = (
    ray.data.from_items([{"key": "a"}, {"key": "b"}], override_num_blocks=2)
    .map_batches(copy, batch_size=1, num_cpus=0.25, **worker_env())
    .take_all()
)
result = TorchTrainer(
    loop,
    scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
    run_config=run_config(f"{bucket}/runs/credentials", 0, 1),
).fit()
train_seen = storage.read_bytes(storage.join(storage.normalize(f"{bucket}/runs/credentials"),
    os.path.basename(result.checkpoint.path), "seen.json"))
print("SEEN", json.dumps({"driver": os.getpid(), "data": [json.loads(r["seen"]) for r in rows],
                          "train": json.loads(train_seen)}))
"""


def test_local_ray_workers_take_credentials_from_the_driver_environment(
    bucket: str, tmp_path: Path
) -> None:
    """A fresh driver with the credentials in its environment before ray.init (as a shell's AWS_*
    variables would be): Ray Data tasks and Ray Train workers read and write the bucket, and
    their runtime_env holds no secret."""
    secrets = _secret_values()
    for key in ("a", "b"):
        storage.write_bytes(f"{bucket}/data/{key}.in", key.encode() * 100)
    passed_on = ("AWS_PROFILE", "RAY_ADDRESS", *SECRETS)
    env = {k: v for k, v in os.environ.items() if k not in passed_on} | secrets
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(script), bucket, ",".join(SECRETS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("SEEN ")]
    seen = json.loads(line.removeprefix("SEEN "))
    workers = [*seen["data"], seen["train"]]
    assert seen["driver"] not in {w["pid"] for w in workers}, "the work ran in Ray's workers"
    for worker in workers:
        assert worker["env"] == secrets, "a worker without the driver's credentials"
        text = json.dumps(worker["runtime_env"])
        assert not [v for v in secrets.values() if v in text], text
        assert os.environ["L2S_S3_ENDPOINT"] in text, "the endpoint (no secret) still travels"
    for key in ("data/a.out", "data/b.out", "train/rank0"):
        assert storage.exists(f"{bucket}/{key}"), key
