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
        # address="local": never attach to a stale cluster left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


# What a worker needs to reach the same object store as the driver (a local S3-compatible server,
# credentials given in the environment): forwarded to Ray tasks and actors as their runtime_env.
FORWARDED_ENV = ("L2S_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")  # fmt: skip


def worker_env() -> dict:
    """`ray_remote_args` carrying the driver's storage environment to the workers."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}
