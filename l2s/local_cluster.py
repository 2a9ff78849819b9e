"""A real multi-node Ray cluster on one host: a head and worker nodes started by `ray start`, each
a separate raylet with its own CPUs, object store and temporary folder; for tests and benchmarks
that need what only a cluster has (jobs submitted with `ray job submit`, a node lost mid-job).

    with LocalCluster(root, env=storage_env) as cluster:     # head "head" + one worker "worker1"
        cluster.submit(["python", "jobs/preprocess.py", manifest, out])  # as the README says
        cluster.kill_node("worker1")                          # a crash: SIGKILL, no clean-up
        cluster.add_node(NodeSpec(name="worker2", cpus=2))    # what an autoscaler would do

Every node has a custom resource `node:<name>` (1 unit) to pin work to it or find it, and every
process the cluster started is found again by its temporary folder (under `root`), so that
stopping it ends those processes and no other Ray on the machine. Ports are free ones picked at
start, so several clusters (and local Rays) can share the host. Token authentication is on, as
Ray 2.60 wants it, with a token made for this cluster: `env` (and `submit`) carry it.

Ray puts the host's own address in place of 127.0.0.1 for its nodes; the dashboard (and with it
the job API) listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Ray waits only 30 s for a new raylet to register; a host under load can take longer. A node that
# timed out is cleaned up and started once more.
START_ATTEMPTS = 2


class ClusterError(RuntimeError):
    """The local cluster could not be started, or a command against it failed."""


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One node: its name, the logical CPUs Ray may schedule on it (they may exceed the host's
    cores: several nodes share them), its object store, and extra custom resources."""

    name: str
    cpus: float = 2
    object_store_mb: int = 200
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"node names are letters, digits, '-' and '_': {self.name!r}")
        if self.cpus < 0 or self.object_store_mb < 75:
            raise ValueError(f"{self.name}: need cpus >= 0 and object_store_mb >= 75 (Ray's least)")

    @property
    def resource(self) -> str:
        """The custom resource only this node has."""
        return f"node:{self.name}"


@dataclass
class Node:
    spec: NodeSpec
    temp_dir: Path
    node_id: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head node and worker nodes on this host (see the module doc). `env`: variables every
    node, and so every driver, task and actor on it, gets (storage endpoint and credentials).
    `dashboard`: the job and state APIs (`submit`, `state`); a driver attached by address
    (RAY_ADDRESS) needs neither, and the head starts faster without."""

    def __init__(
        self,
        root: str | Path | None = None,
        head: NodeSpec = NodeSpec(name="head"),
        workers: Sequence[NodeSpec] = (NodeSpec(name="worker1"),),
        env: dict[str, str] | None = None,
        dashboard: bool = True,
    ) -> None:
        names = [head.name, *(w.name for w in workers)]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must differ: {names}")
        # Ray's socket paths (under each node's folder) must stay within the 107 bytes a Unix socket
        # path may have: a short folder under /tmp unless one is given.
        self.root = Path(root or tempfile.mkdtemp(prefix="l2s-ray-", dir="/tmp")).resolve()
        self.head_spec, self.worker_specs = head, list(workers)
        self.with_dashboard = dashboard
        self.nodes: dict[str, Node] = {}
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
        # A driver in this process's environment must not attach to another cluster by mistake.
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        """The GCS address drivers attach to (`ray.init(address=...)`, RAY_ADDRESS)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """The dashboard's URL: the job and state APIs (`ray job submit --address`)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_node(self.head_spec, head=True)
            for spec in self.worker_specs:
                self._start_node(spec, head=False)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, spec: NodeSpec) -> Node:
        """Start one more worker node (as an autoscaler replacing a lost one would)."""
        if spec.name in self.nodes:
            raise ValueError(f"a node named {spec.name!r} was started already")
        return self._start_node(spec, head=False)

    def _start_node(self, spec: NodeSpec, head: bool) -> Node:
        temp_dir = self.root / spec.name
        resources = {spec.resource: 1.0, **spec.resources}
        command = [
            _ray(), "start", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
            f"--num-cpus={spec.cpus:g}", "--num-gpus=0", f"--resources={json.dumps(resources)}",
            f"--object-store-memory={spec.object_store_mb * 1024 * 1024}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", "--disable-usage-stats",
        ]  # fmt: skip
        if head:
            command += [
                "--head", f"--port={self.gcs_port}", f"--ray-client-server-port={free_port()}",
                f"--include-dashboard={str(self.with_dashboard).lower()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            ]  # fmt: skip
        else:
            command.append(f"--address={self.address}")
        for attempt in range(1, START_ATTEMPTS + 1):
            done = subprocess.run(command, env=self.env, capture_output=True, text=True)
            if done.returncode == 0:
                break
            _kill(self._processes(temp_dir))
            if attempt == START_ATTEMPTS:
                raise ClusterError(
                    f"`ray start` of node {spec.name} failed:\n{done.stderr[-3000:]}"
                )
        node = Node(spec=spec, temp_dir=temp_dir, node_id=self._node_id(temp_dir))
        self.nodes[spec.name] = node
        return node

    def _node_id(self, temp_dir: Path, wait_s: float = 60.0) -> str:
        """The node's id, from its raylet's command line (its agents are started with it)."""
        deadline = time.monotonic() + wait_s
        while True:
            for process in self._processes(temp_dir):
                with contextlib.suppress(psutil.Error):
                    found = re.search(r"--node[-_]id=([0-9a-f]+)", " ".join(process.cmdline()))
                    if found:
                        return found.group(1)
            if time.monotonic() > deadline:
                raise ClusterError(f"no Ray process of the node in {temp_dir} names its node id")
            time.sleep(0.2)

    def _processes(self, temp_dir: Path | None = None) -> list[psutil.Process]:
        """The processes of one node (by its temporary folder), or of the whole cluster."""
        if temp_dir is not None:
            return ray_processes([temp_dir])
        return ray_processes([self.root], self.gcs_port)

    def node_processes(self, name: str) -> list[psutil.Process]:
        """The processes of the node `name` now (its raylet, agents and workers)."""
        return self._processes(self.nodes[name].temp_dir)

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a worker node: a crash, as when a machine is lost."""
        if name == self.head_spec.name:
            raise ValueError("the head node holds the cluster; kill a worker node")
        _kill(self.node_processes(name))

    def stop(self) -> None:
        """End every process of the cluster (and only those)."""
        _kill(self._processes())
        self.nodes.clear()

    def submit(
        self,
        entrypoint: Sequence[str],
        *,
        working_dir: str | Path = ".",
        timeout: float | None = None,
        env_vars: dict[str, str] | None = None,
        submission_id: str | None = None,
    ) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir DIR -- ENTRYPOINT` against this cluster; waits for the
        job and returns its output (the driver's) and exit status."""
        return subprocess.run(
            self.submit_command(
                entrypoint, working_dir=working_dir, env_vars=env_vars, submission_id=submission_id
            ),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit_command(
        self,
        entrypoint: Sequence[str],
        *,
        working_dir: str | Path = ".",
        env_vars: dict[str, str] | None = None,
        submission_id: str | None = None,
    ) -> list[str]:
        """The `ray job submit` command line (run it with `env`)."""
        command = [_ray(), "job", "submit", f"--address={self.dashboard}"]
        command += [f"--working-dir={working_dir}"]
        if submission_id:
            command += [f"--submission-id={submission_id}"]
        if env_vars:
            command += [f"--runtime-env-json={json.dumps({'env_vars': env_vars})}"]
        return [*command, "--", *entrypoint]

    def state(self, kind: str, *filters: str, limit: int = 10_000) -> list[dict]:
        """Ray's state API (`ray list KIND --detail`), e.g. `state("actors", "class_name=X")`:
        where each task, actor or node ran, also after it ended."""
        command = [_ray(), "list", kind, f"--address={self.dashboard}", "--format=json"]
        command += ["--detail", f"--limit={limit}"]
        for f in filters:
            command += ["--filter", f]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise ClusterError(f"`ray list {kind}` failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def job_id(self, submission_id: str) -> str:
        """Ray's id of a submitted job (what tasks and actors are filed under)."""
        jobs = self.state("jobs", f"submission_id={submission_id}")
        if not jobs or not jobs[0].get("job_id"):
            raise ClusterError(f"no job with submission id {submission_id!r} (yet)")
        return jobs[0]["job_id"]

    def node_names(self) -> dict[str, str]:
        """Node id → node name, for the nodes this cluster started (alive or not)."""
        return {node.node_id: name for name, node in self.nodes.items()}

    def remove(self) -> None:
        """Delete the cluster's temporary folders (after `stop`)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _ray() -> str:
    """The `ray` command of this Python environment."""
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else "ray"


def _kill(processes: list[psutil.Process], wait_s: float = 30.0) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_alive(p) for p in processes):
        time.sleep(0.05)


def _alive(process: psutil.Process) -> bool:
    """Still running; a zombie (killed, not yet reaped by its parent) runs nothing."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ray_processes(
    folders: Sequence[str | Path], gcs_port: int | None = None
) -> list[psutil.Process]:
    """The Ray daemons of the nodes that keep their files in `folders` (each names its folder in
    a flag: `--temp-dir=...`, `--session-dir=...`), the client server of the cluster whose GCS
    listens on `gcs_port`, and every process they started (a raylet's workers, which name only
    their task: `ray::IDLE`, `ray::MapWorker(...)`). A command that merely mentions a folder
    (an editor, a grep) is not one of them."""
    marks = [f"={folder}{end}" for folder in folders for end in ("/", " ")]
    if gcs_port is not None:
        marks.append(f":{gcs_port} ")
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline()) + " "
            if "ray" in command and any(mark in command for mark in marks):
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found[child.pid] = child
    return list(found.values())
