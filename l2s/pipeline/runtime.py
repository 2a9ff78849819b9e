"""Connect to Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), else a local Ray
started in-process (the embedded default)."""

from __future__ import annotations

import os


def connect() -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        # Ray starts its workers at niceness 15, below every ordinary process: on a shared 2-core
        # machine under load the training worker then gets a sliver of a core. Here the work is
        # the workers', so they run at the driver's priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
        # address="local": never attach to a stale cluster left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


# Set before a local Ray starts, whose workers inherit it; a value already in the environment
# wins. A local Ray is one machine's, often a small one, where Ray's own background work is a
# share of the cores that the work does not get:
# - Ray 2.60's Parquet reader (Ray Data's datasource V2) provisions a pool of up to 32
#   FooterReader actors for every listing, one Python process each, made for a cluster reading
#   footers over the network; on a 2-core machine each such process costs seconds of start-up,
#   and a training run lists its train and val data once per worker (measured: `l2s train` on
#   the toy dataset, 2 workers, 60 steps, 67 s with it, 59 s without). The V1 reader lists the
#   files in the task that reads them.
# - Ray's metrics: a local Ray runs no dashboard to read them, yet every process records and
#   exports them, Serve's per request, and each Serve replica and handle exports its cached
#   metrics every 0.1 s.
# - Serve's controller wakes every 0.1 s; every 0.5 s it reacts a second later to a deployment
#   (`l2s serve` starts in 8 s instead of 7) and spends a fraction of the CPU while idle.
# Together with the ingress that preprocesses, these took the endpoint's CPU beyond its stages
# from 0.175 to ~0.08 CPU-s per 3-s request on 2 cores (benchmarks/serve.py).
LOCAL_RAY_ENV = {
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "10000",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


# Where a worker finds the driver's object store (a local S3-compatible server, a region): forwarded
# to Ray tasks and actors in their runtime_env, which anyone who can read the job's metadata (the
# dashboard, `ray job list`) reads too, so settings only, never credentials. Workers take those
# from their own node, as botocore and pyarrow look for them (environment, ~/.aws, the instance
# profile, a pod's service account role or secret; cluster/ and manifests/ set them up); workers
# of a local Ray started in-process inherit the driver's environment as it was at `ray.init`.
FORWARDED_ENV = ("L2S_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def worker_env() -> dict:
    """`ray_remote_args` carrying the driver's storage settings (no credentials) to the workers."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}
