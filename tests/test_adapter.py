"""The one Ray adapter (`l2s.pipeline.adapter`): the sizing rule every job's pool follows, and a
stage's way onto Ray Data (tasks without `setup()`, an actor pool with it)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from l2s.pipeline.adapter import Cluster, Pool, Resources, Stage, apply, plan_pool

CPU = Resources(cpus=0.75)
GPU = Resources(cpus=1, gpus=1)


@pytest.mark.parametrize(
    ("cluster", "gpu", "workers", "items", "expected"),
    [
        (Cluster(cpus=2), GPU, None, None, Pool(CPU, 1, 2)),  # this machine: one per CPU
        (Cluster(cpus=1.5), None, None, None, Pool(CPU, 1, 1)),  # fractional CPUs round down
        (Cluster(cpus=64, gpus=8), GPU, None, None, Pool(GPU, 1, 8)),  # one per GPU
        (Cluster(cpus=64, gpus=8), None, None, None, Pool(CPU, 1, 64)),  # a CPU-only stage
        (Cluster(cpus=8, gpus=0.5), GPU, None, None, Pool(CPU, 1, 8)),  # not a whole GPU
        (Cluster(cpus=16), GPU, 4, None, Pool(CPU, 1, 4)),  # the size asked for
        (Cluster(cpus=16), GPU, None, 3, Pool(CPU, 1, 3)),  # no more workers than work
        (Cluster(cpus=0), GPU, None, None, Pool(CPU, 1, 1)),  # workers not up yet: one to start
        (Cluster(cpus=0), GPU, 12, None, Pool(CPU, 1, 12)),  # autoscaling: grow to 12
    ],
)
def test_one_sizing_rule(cluster, gpu, workers, items, expected) -> None:
    assert plan_pool(cluster, CPU, gpu, workers=workers, items=items) == expected


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        plan_pool(Cluster(cpus=2), CPU, workers=0)
    with pytest.raises(ValueError, match="non-negative"):
        Resources(cpus=-1)


class Double(Stage):
    """Stateless: Ray tasks."""

    cpu = Resources(cpus=0.25)
    batch_size = 4

    def __call__(self, batch: dict) -> dict:
        return {**batch, "x": batch["x"] * 2}


class Offset(Stage):
    """Stateful: its `setup()` runs once per actor, in the actor."""

    cpu = Resources(cpus=0.5)
    batch_size = 4

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def setup(self) -> None:
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["x"])
        return {**batch, "x": batch["x"] + self.offset, "pid": np.full(n, self.pid)}


def test_stages_run_as_tasks_or_on_an_actor_pool(ray_local) -> None:
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

    assert not Double().stateful and Offset(1).stateful
    ds = ray.data.range(40).rename_columns({"id": "x"})
    ds = apply(apply(ds, Double()), Offset(1), workers=2)
    rows = ds.take_all()
    assert sorted(r["x"] for r in rows) == [2 * i + 1 for i in range(40)]
    assert 1 <= len({r["pid"] for r in rows}) <= 2  # at most the pool's two actors
    assert os.getpid() not in {r["pid"] for r in rows}
