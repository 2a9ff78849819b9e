"""Where one training worker runs, as the loop (`l2s.train.loop.fit`) sees it: its rank and world,
its device, its share of each dataset, the checkpoint to resume from, and where reports go.

`RaySession`: a Ray Train worker (any number of workers and nodes; Ray Train gathers the reports
and the ranks' checkpoint folders into the run directory, and resumes from its own record).
`LocalSession`: this process alone, without Ray: the same loop on a one-rank gloo group, reading
the Parquet shards with pyarrow, writing checkpoints into the run directory itself. It is what
`benchmarks/train.py` measures Ray Train against, and what runs under a debugger.

Datasets are described once (`Source`: Parquet files, one split, columns, an optional per-batch
transform) and become either a Ray Data dataset (`Source.to_ray`) or a local reader.
"""

from __future__ import annotations

import abc
import contextlib
import os
import posixpath
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
import torch.distributed as dist
from torch import nn

from l2s import storage
from l2s.infer.checkpoint import PREFIX, latest_checkpoint


@dataclass(frozen=True)
class Source:
    """One split of a feature dataset as training reads it."""

    files: tuple[str, ...]  # Parquet shards (URIs on one filesystem)
    split: str
    columns: tuple[str, ...]
    shuffle_files: bool = False  # a new file order every epoch
    # A per-batch step after the read (dict of numpy columns → dict), e.g. decoding audio.
    transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    transform_batch_size: int = 8
    # Keep the transformed rows in Ray's object store instead of recomputing them every epoch.
    materialize: bool = False

    def to_ray(self):
        """The Ray Data dataset of this split. Tasks ask for a quarter CPU: Train workers hold most
        of a small machine's CPUs, and whole-CPU tasks would wait forever for what is left
        (ENVIRONMENT.md)."""
        import ray.data
        from ray.data.expressions import col

        from l2s.pipeline.runtime import worker_env

        fs, _ = storage.arrow_filesystem(self.files[0])
        remote = worker_env()
        dataset = ray.data.read_parquet(
            [storage.arrow_filesystem(f)[1] for f in self.files],
            filesystem=fs,
            shuffle="files" if self.shuffle_files else None,
            num_cpus=0.25,
            ray_remote_args=remote or None,
        )
        # Ray Data pushes the projection and this predicate down into the Parquet scan.
        dataset = (
            dataset.select_columns([*self.columns, "split"])
            .filter(expr=col("split") == self.split, num_cpus=0.25, **remote)
            .select_columns(list(self.columns))
        )
        if self.transform is not None:
            dataset = dataset.map_batches(
                self.transform, batch_size=self.transform_batch_size, num_cpus=0.25, **remote
            )
        return dataset.materialize() if self.materialize else dataset


@dataclass
class LocalShard:
    """A `Source` read in this process, with the part of Ray's `DataIterator` the tasks use."""

    source: Source
    seed: int
    epochs: int = field(default=0, init=False)

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", **_) -> Iterator[dict]:
        if batch_format != "numpy":
            raise ValueError(f"LocalShard gives numpy batches, not {batch_format!r}")
        files = list(self.source.files)
        if self.source.shuffle_files:
            rng = np.random.default_rng([self.seed, self.epochs])
            files = [files[i] for i in rng.permutation(len(files))]
        self.epochs += 1
        fs, _ = storage.arrow_filesystem(files[0])
        dataset = pads.dataset(
            [storage.arrow_filesystem(f)[1] for f in files], filesystem=fs, format="parquet"
        )
        scanner = dataset.scanner(
            columns=list(self.source.columns),
            filter=pc.field("split") == self.source.split,
            batch_size=batch_size,
            use_threads=False,
        )
        for record_batch in scanner.to_batches():
            if not record_batch.num_rows:
                continue
            batch = {
                name: record_batch.column(name).to_numpy(zero_copy_only=False)
                for name in self.source.columns
            }
            yield self.source.transform(batch) if self.source.transform else batch


class Session(abc.ABC):
    """What a training worker knows of where it runs."""

    rank: int
    world: int
    device: torch.device

    @abc.abstractmethod
    def shard(self, name: str):
        """This rank's share of the dataset `name` (anything with `iter_batches`), or None."""

    @abc.abstractmethod
    def restored(self) -> contextlib.AbstractContextManager[Path | None]:
        """A local folder holding the checkpoint to resume from (None for a fresh run)."""

    @abc.abstractmethod
    def prepare(self, module: nn.Module) -> nn.Module:
        """The module on this rank's device, wrapped for data parallelism when world > 1."""

    @abc.abstractmethod
    def report(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        """Report `metrics`; `folder` holds this rank's part of the checkpoint `name`."""


class RaySession(Session):
    """A Ray Train worker (inside `TorchTrainer`'s `train_loop_per_worker`)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def shard(self, name: str):
        import ray.train

        try:
            return ray.train.get_dataset_shard(name)
        except KeyError:
            return None

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def prepare(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    def report(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None,
            checkpoint_dir_name=name,
        )


class LocalSession(Session):
    """This process as the only worker, without Ray. Use as a context manager: it starts (and
    ends) a one-rank gloo process group, so the loop's collectives run unchanged."""

    def __init__(
        self,
        run: str,
        sources: dict[str, Source],
        *,
        checkpoint_file: str,
        keep_checkpoints: int,
        seed: int,
        use_gpu: bool = False,
    ) -> None:
        self.run = storage.normalize(run)
        self.rank, self.world = 0, 1
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.checkpoint_file = checkpoint_file
        self.keep_checkpoints = keep_checkpoints
        self.shards = {name: LocalShard(source, seed) for name, source in sources.items()}

    def __enter__(self) -> LocalSession:
        with socket.socket() as s:  # a free port for the one-rank group's store
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        return self

    def __exit__(self, *_) -> None:
        dist.destroy_process_group()

    def shard(self, name: str):
        return self.shards.get(name)

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        latest = latest_checkpoint(self.run, self.checkpoint_file)
        if latest is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="l2s-restore-") as tmp:
            fs, path = storage.filesystem(latest)
            fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
            yield Path(tmp)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def report(self, metrics: dict, folder: Path | None, name: str | None) -> None:
        if folder is None or name is None:
            return
        # Into a temporary name first, then renamed: a folder named checkpoint_* is complete.
        fs, run_path = storage.filesystem(self.run)
        final = posixpath.join(run_path, name)
        partial = posixpath.join(run_path, f".{name}.partial")
        if fs.exists(partial):
            fs.rm(partial, recursive=True)
        fs.makedirs(run_path, exist_ok=True)
        fs.put(str(folder) + "/", partial + "/", recursive=True)
        if fs.exists(final):
            fs.rm(final, recursive=True)
        fs.mv(partial, final, recursive=True)
        self._prune(fs, run_path)

    def _prune(self, fs, run_path: str) -> None:
        names = sorted(
            posixpath.basename(p.rstrip("/"))
            for p in fs.ls(run_path, detail=False)
            if posixpath.basename(p.rstrip("/")).startswith(PREFIX)
        )
        for old in names[: -self.keep_checkpoints]:
            fs.rm(posixpath.join(run_path, old), recursive=True)


def cpu_threads() -> int:
    """The cores this process may use (its affinity, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
