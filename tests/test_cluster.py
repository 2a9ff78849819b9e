"""A real two-node Ray cluster on this host (`l2s.local_cluster`): jobs submitted with
`ray job submit` as the README says, storage on the S3-compatible server on 127.0.0.1 (no disk
the nodes share). Each job works on both nodes (Ray's state API says where its tasks and actors
ran), then loses the worker node (SIGKILL of its raylet and workers) and still finishes.

Training after a lost node is fixed-size: Ray Train (FailureConfig(max_failures)) restarts the
whole worker group, same number of workers, from the run's last checkpoint, on the nodes left
(CPU workers of a `nodes` > 1 run are spread softly, so they may share a node). Not elastic:
the world size fixes the global batch, and DeepSpeed ZeRO's checkpoints are sharded by rank, so
a run resumes with the workers it was started with; on a GPU cluster it waits for the
autoscaler's replacement node instead.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from l2s import storage
from l2s.corpora import read_manifest, scan, write_manifest
from l2s.infer.checkpoint import RAY_RECORD_FILE, latest_checkpoint, read_config
from l2s.local_cluster import LocalCluster, NodeSpec
from l2s.pipeline import shards
from l2s.train import worker_resources
from l2s.train.logs import read_metrics
from l2s.train.toy import ToyConfig, write_toy_features

REPO = Path(__file__).resolve().parents[1]
CLIPS = 8  # synthetic clips preprocessed by each preprocessing job
JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> dict[str, str]:
    """Storage variables for this process and every node, and a bucket on the server."""
    env = {
        "L2S_S3_ENDPOINT": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        fs, _ = storage.filesystem("s3://cluster")
        fs.mkdir("cluster")
        yield env


@pytest.fixture(scope="module")
def cluster(s3: dict[str, str]):
    started = time.perf_counter()
    local = LocalCluster(
        head=NodeSpec(name="head", cpus=2), workers=[NodeSpec(name="worker1", cpus=2)], env=s3
    )
    try:
        with local:
            print(f"cluster of 2 nodes up in {time.perf_counter() - started:.0f} s")
            yield local
    finally:
        local.remove()


@pytest.fixture(scope="module")
def manifest(synth_corpus: Path, s3: dict[str, str]) -> str:
    """CLIPS synthetic clips (video, transcript) in the bucket, and their manifest there."""
    fs, _ = storage.filesystem("s3://cluster")
    for video in sorted(synth_corpus.glob("train/*/*.mp4"))[:CLIPS]:
        for path in video.parent.glob(f"{video.stem}.*"):
            fs.put_file(str(path), f"cluster/corpus/{path.relative_to(synth_corpus)}")
    rows, skips = scan("synthetic", "s3://cluster/corpus")
    assert len(rows) == CLIPS and not skips
    write_manifest(rows, "s3://cluster/manifest.parquet")
    return "s3://cluster/manifest.parquet"


@pytest.fixture(scope="module")
def toy(s3: dict[str, str]) -> str:
    out = "s3://cluster/toy"
    # 48 train clips: 6 steps of 2 workers × 4 clips an epoch (each epoch is a new Ray Data read).
    write_toy_features(out, ToyConfig(speakers=2, utterances=32, min_frames=25, max_frames=40))
    return out


def live_worker(cluster: LocalCluster) -> str:
    """The name of a worker node that is up; a new one if the last was killed."""
    nodes = {n["node_id"]: n["state"] for n in cluster.state("nodes")}
    for name, node in cluster.nodes.items():
        if name != "head" and nodes.get(node.node_id) == "ALIVE":
            return name
    name = f"worker{len(cluster.nodes)}"
    cluster.add_node(NodeSpec(name=name, cpus=2))
    return name


def submit_and_kill(
    cluster: LocalCluster, entrypoint: list[str], submission_id: str, ready, worker: str
) -> tuple[str, int]:
    """Submit a job, wait until `ready()`, kill the node `worker`, wait for the job to end;
    returns the job's output and exit status."""
    command = cluster.submit_command(entrypoint, working_dir=REPO, submission_id=submission_id)
    job = subprocess.Popen(command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not ready():
            assert job.poll() is None, (
                f"the job ended before the kill:\n{job.stdout.read()[-3000:]}"
            )
            assert time.monotonic() < deadline, "the job did not get far enough in time"
            time.sleep(0.5)
        assert cluster.node_processes(worker), "the worker node has no processes to kill"
        cluster.kill_node(worker)
        output, _ = job.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
    # The GCS declares a node dead only after its health checks fail (seconds): a job that
    # finishes sooner may see it still listed as alive.
    deadline, node_id = time.monotonic() + 60, cluster.nodes[worker].node_id
    while (state := {n["node_id"]: n["state"] for n in cluster.state("nodes")}[node_id]) != "DEAD":
        assert time.monotonic() < deadline, f"the killed node is still {state} after 60 s"
        time.sleep(1)
    return output, job.returncode


def job_nodes(cluster: LocalCluster, submission_id: str) -> Counter:
    """Node name → how many of the job's tasks (actor tasks too) ran there."""
    job_id = cluster.job_id(submission_id)
    names = cluster.node_names()
    tasks = cluster.state("tasks", f"job_id={job_id}")
    return Counter(names.get(t["node_id"], t["node_id"]) for t in tasks if t.get("node_id"))


def train_workers(cluster: LocalCluster, submission_id: str) -> list[str]:
    """The node of each Ray Train worker the job started (every attempt), by node name."""
    job_id = cluster.job_id(submission_id)
    names = cluster.node_names()
    actors = cluster.state("actors", "class_name=RayTrainWorker", f"job_id={job_id}")
    return sorted(names.get(a["node_id"], a["node_id"]) for a in actors)


@pytest.mark.slow
def test_preprocess_job_runs_on_both_nodes_and_loses_no_clip_with_a_node(
    cluster: LocalCluster, manifest: str
) -> None:
    """`ray job submit -- python jobs/preprocess.py` as the README says; the worker node dies
    after the first shard is written: every clip still ends up once, in features or errors."""
    worker = live_worker(cluster)
    out = "s3://cluster/features"
    done_at_kill: list[int] = []

    def first_shard() -> bool:
        if not shards.list_shards(out, shards.FEATURES):
            return False
        done_at_kill.append(len(shards.done_ids(out)))
        return True

    started = time.perf_counter()
    output, status = submit_and_kill(
        cluster,
        # No speaker embeddings: each actor loads only the face detector (a 2-core CI machine
        # runs this job's four actors on two nodes); what is tested is where clips end up.
        [
            "python",
            "jobs/preprocess.py",
            manifest,
            out,
            "--shard-size",
            "1",
            "--no-speaker-embeddings",
        ],
        "preprocess",
        first_shard,
        worker,
    )
    print(f"preprocess job, a node lost: {time.perf_counter() - started:.0f} s")
    assert status == 0, output[-3000:]
    assert done_at_kill[0] < CLIPS, "the node was killed after the last clip: nothing was at stake"
    work = job_nodes(cluster, "preprocess")
    assert work["head"] and work[worker], f"tasks per node: {dict(work)}"
    features = shards.read_column(out, shards.FEATURES, "id")
    errors = shards.read_column(out, shards.ERRORS, "id")
    assert Counter(features) == Counter(r.id for r in read_manifest(manifest)) and not errors
    assert shards.read_metadata(out)["counts"] == {"features": CLIPS, "errors": 0}


@pytest.mark.slow
def test_train_job_spreads_over_both_nodes_and_resumes_after_losing_one(
    cluster: LocalCluster, toy: str
) -> None:
    """`ray job submit -- python jobs/train.py --nodes 2 --workers 2` (a worker on each node,
    half a CPU each so that both fit on one node); the worker node dies after the first
    checkpoint. Ray Train restarts both workers on the node left, from that checkpoint, and the
    run finishes: fixed-size (module doc)."""
    worker = live_worker(cluster)
    run = "s3://cluster/runs/tiny"
    entrypoint = [
        "python", "jobs/train.py", toy, "--out", run, "--nodes", "2", "--workers", "2",
        "--cpus-per-worker", "0.5", "--steps", "12", "--ckpt-every", "4", "--val-every", "12",
        "--batch-size", "4", "--warmup-steps", "2", "--no-time-mask", "--seed", "1",
    ]  # fmt: skip
    started = time.perf_counter()

    def recorded() -> bool:
        """A checkpoint Ray Train has recorded: before its record exists, latest_checkpoint
        takes a folder rank 0 has written but the controller may not have registered, and a
        restart then starts afresh (seen on a loaded 2-core machine)."""
        record = storage.join(run, RAY_RECORD_FILE)
        return storage.exists(record) and latest_checkpoint(run) is not None

    output, status = submit_and_kill(cluster, entrypoint, "train", recorded, worker)
    print(f"train job, a node lost: {time.perf_counter() - started:.0f} s")
    assert status == 0, output[-3000:]
    history = read_metrics(run)
    killed_at = history[-1]["resumed_from"]
    assert history[-1]["step"] == 12 and 4 <= killed_at < 12, (
        f"not resumed from a checkpoint (resumed_from {killed_at}):\n{output[-3000:]}"
    )
    assert read_config(latest_checkpoint(run))["progress"]["step"] == 12
    # Two workers in each attempt: the first on both nodes, the restart on the head alone.
    assert train_workers(cluster, "train") == ["head", "head", "head", worker]


def test_cpu_workers_spread_over_nodes_leave_a_whole_cpu_on_one(monkeypatch) -> None:
    """Ray Data's file listing asks for a whole CPU: spread workers must not take a piece of
    every node's last CPU (the read then never starts)."""
    import ray

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert worker_resources(2, use_gpu=False)[0] == {"CPU": 1.0}  # 1.5 would leave 0.5 + 0.5
    assert worker_resources(2, use_gpu=False, cpus_per_worker=0.5)[0] == {"CPU": 0.5}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: nodes[:1])
    assert worker_resources(2, use_gpu=False)[0] == {"CPU": 0.5}  # one node: as before
