"""The one Ray adapter: stages declare what they need; one function makes them Ray Data steps, and
one function sizes every pool of workers from the cluster's resources.

A `Stage` (NeMo Curator's processing stage) is plain Python: the resources one worker asks for on
a CPU pool and, when it can use one, on a GPU pool; the rows per call; a one-time `setup()` that
loads its models in the worker; and `__call__(batch) -> batch` around the pure per-clip functions.

    ds = apply(ds, Decode(cfg))                  # no setup(): Ray tasks
    ds = apply(ds, Extract(cfg, out), workers=4) # setup(): an actor pool sized by `plan_pool`

`plan_pool` is the sizing rule every job shares (preprocess, generate, score, dub): a GPU pool of
one worker per GPU when the stage can use a GPU and the cluster has one, else a CPU pool of one
worker per CPU whose workers each ask for a fraction of a CPU, so that the tasks feeding them
always find one (whole-CPU actors starve the read and the job hangs, ENVIRONMENT.md). Pools start
at one worker and grow to their size while work waits; on an autoscaling cluster whose worker
nodes start at zero, `workers` sets the size the pool may grow to (the autoscaler adds the nodes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

# What a light step (a Parquet scan, a filter) asks for: a quarter CPU, so that it runs beside
# model workers that hold most of a small machine.
LIGHT_CPUS = 0.25


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker (a task or an actor) asks Ray for."""

    cpus: float
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError(
                f"resources must be non-negative, got cpus={self.cpus} gpus={self.gpus}"
            )

    def ray_args(self) -> dict[str, float]:
        return (
            {"num_cpus": self.cpus, "num_gpus": self.gpus} if self.gpus else {"num_cpus": self.cpus}
        )


@dataclass(frozen=True)
class Cluster:
    """The resources of the Ray cluster a job runs on (all nodes alive now)."""

    cpus: float
    gpus: float = 0.0

    @classmethod
    def current(cls) -> Cluster:
        import ray

        resources = ray.cluster_resources()
        return cls(cpus=float(resources.get("CPU", 0.0)), gpus=float(resources.get("GPU", 0.0)))


@dataclass(frozen=True)
class Pool:
    """A pool of workers: what each asks for, and the bounds Ray Data scales it between."""

    resources: Resources
    min_size: int
    max_size: int

    @property
    def on_gpu(self) -> bool:
        return self.resources.gpus > 0


def plan_pool(
    cluster: Cluster,
    cpu: Resources,
    gpu: Resources | None = None,
    *,
    workers: int | None = None,
    items: int | None = None,
) -> Pool:
    """The one sizing rule (see the module doc). `cpu` / `gpu`: what a worker asks for on a CPU or
    a GPU pool (`gpu` None: CPU only); `workers`: the size asked for (None: from the cluster);
    `items`: how much work there is (no more workers than that)."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 (or None: from the cluster), got {workers}")
    if gpu is not None and gpu.gpus > 0 and cluster.gpus >= gpu.gpus:
        resources, fit = gpu, int(cluster.gpus // gpu.gpus)
    else:
        resources, fit = cpu, int(cluster.cpus)
    size = max(1, workers or fit)
    if items is not None:
        size = max(1, min(size, items))
    return Pool(resources=resources, min_size=1, max_size=size)


class Stage(ABC):
    """One step of a Ray Data pipeline. Subclasses set `cpu` (and `gpu` when a GPU helps), the
    rows per call, and `__call__`; a stage that loads a model overrides `setup()` and runs on an
    actor pool, one `setup()` per actor. A stage object is pickled to the workers before
    `setup()`, so it holds configuration, and loads its models only in `setup()`."""

    cpu: Resources = Resources(cpus=1.0)
    gpu: Resources | None = None
    batch_size: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def stateful(self) -> bool:
        """Runs on an actor pool: it has a `setup()` to run once per worker."""
        return type(self).setup is not Stage.setup

    def setup(self) -> None:  # noqa: B027  optional: a stage without one runs as Ray tasks
        """Load what the stage needs (models), once per worker."""

    @abstractmethod
    def __call__(self, batch: dict) -> Any:
        """One batch of rows (column → values) → its output rows."""


class _Worker:
    """The actor a stateful stage runs in: `setup()` once, then one call per batch."""

    def __init__(self, stage: Stage) -> None:
        stage.setup()
        self.stage = stage

    def __call__(self, batch: dict) -> Any:
        return self.stage(batch)


def remote_args(resources: Resources | None = None) -> dict:
    """`ray_remote_args` for a step: its resources and the storage environment workers need
    (`l2s.pipeline.runtime.worker_env`)."""
    from l2s.pipeline.runtime import worker_env

    return {**(resources or Resources(cpus=LIGHT_CPUS)).ray_args(), **worker_env()}


def apply(ds, stage: Stage, *, workers: int | None = None, cluster: Cluster | None = None):
    """`ds.map_batches` for `stage`: Ray tasks for a stateless stage, else an actor pool sized by
    `plan_pool` from `cluster` (default: the current one) and `workers`."""
    from ray.data import ActorPoolStrategy

    if not stage.stateful:
        return ds.map_batches(stage, batch_size=stage.batch_size, **remote_args(stage.cpu))
    pool = plan_pool(cluster or Cluster.current(), stage.cpu, stage.gpu, workers=workers)
    # A class of the stage's own name, so that Ray's progress bars and logs name the stage.
    worker = type(stage.name, (_Worker,), {"__module__": __name__})
    return ds.map_batches(
        worker,
        fn_constructor_args=(stage,),
        batch_size=stage.batch_size,
        compute=ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        **remote_args(pool.resources),
    )
