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
        # address="local": never attach to a stale cluster left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
