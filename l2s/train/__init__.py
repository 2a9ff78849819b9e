"""Training on Ray Train: `train(TrainConfig)` runs (or resumes) a run; `load_checkpoint` gives the
trained model back without Ray or DeepSpeed.

    from l2s.train import TrainConfig, train, load_checkpoint
    summary = train(TrainConfig(dataset="out/features", out="out/runs/tiny", steps=2000))
    model, cfg, speakers = load_checkpoint(summary.checkpoint)

The same `out` resumes: Ray Train finds the run by its name and storage path and hands every worker
the latest checkpoint (Train V2). Every model trains through one loop (`loop.fit`) with a small
per-model part (`tasks/`), under Ray Train or in a plain process (`session`). Modules: config
(TrainConfig), data (dataset → batches), speakers (the speaker bank), loop (the one loop),
session (Ray Train or this process), tasks (lip2speech, vocoder), validation, deepspeed (engine and
config), checkpoint (layout, writing; `l2s.infer.checkpoint` reads them), logs (TensorBoard, metrics.jsonl), toy (a learnable toy
dataset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import posixpath
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from l2s import storage
from l2s.infer.checkpoint import MODEL_FILE
from l2s.models.lip2speech import ModelConfig
from l2s.train.checkpoint import load_checkpoint
from l2s.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainSummary", "load_checkpoint", "train"]


@dataclass(frozen=True)
class TrainSummary:
    """What a call of `train` did; `history` holds every report of the run, earlier attempts too."""

    run: str  # the run directory (URI)
    checkpoint: str | None  # its latest checkpoint (URI)
    step: int
    stopped: str  # "steps" (the step budget is done) or "time budget"
    parameters: int
    train_seconds: float  # over all attempts
    metrics: dict = field(default_factory=dict)  # the last report
    history: list[dict] = field(default_factory=list)


def worker_resources(
    num_workers: int, use_gpu: bool, cpus_per_worker: float | None = None
) -> tuple[dict[str, float], int]:
    """What each worker asks Ray for, and its torch thread count on CPU.

    Workers get fractional CPUs that leave a quarter of the cluster (at least one CPU) to the
    Ray Data tasks that feed them: Ray Data's file listing asks for a whole CPU, and on a small
    machine whole-CPU workers would leave it none, so the read never starts. That CPU must be
    free on one node: workers spread over several nodes leave a whole one on the largest.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    per_worker = max(0.25, (total - max(1.0, total / 4)) / num_workers)
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1:
        per_node = math.ceil(num_workers / len(nodes))
        per_worker = max(0.25, min(per_worker, (max(nodes) - 1.0) / per_node))
    per_worker = cpus_per_worker or per_worker
    resources = {"CPU": per_worker}
    if use_gpu:
        resources["GPU"] = 1.0
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus < num_workers:
            print(f"[l2s.train] waiting for {num_workers} GPUs; the cluster has {gpus:g} now")
    # Threads follow the cores, not the reservation: the readers mostly wait on I/O.
    return resources, max(1, int(total // num_workers))


def run_config(run: str, max_failures: int, keep_checkpoints: int, callbacks: Sequence = ()):
    """Ray Train's RunConfig for a run directory (local or s3://): its name and storage path are
    what a rerun finds it by, so the same `run` resumes."""
    import ray.train

    from l2s.pipeline.runtime import worker_env

    if storage.is_local(run):
        storage_path, storage_fs = os.path.dirname(run), None
    else:
        storage_fs, path = storage.arrow_filesystem(run)
        storage_path = posixpath.dirname(path)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **worker_env().get("runtime_env", {}).get("env_vars", {})}
    return ray.train.RunConfig(
        name=posixpath.basename(run),
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
        worker_runtime_env={"env_vars": env},
        callbacks=list(callbacks),
    )


@contextlib.contextmanager
def echo_reports(
    run: str, steps: int, summary_line: Callable[[dict], str], prefix: str, every_s: float = 5.0
):
    """Print each report rank 0 appends to metrics.jsonl while training runs: the workers' own
    output stays in Ray's logs (their Ray Data progress bars would drown it)."""
    from l2s.train.logs import read_metrics

    done = threading.Event()

    def echo() -> None:
        seen = len(read_metrics(run))
        while not done.wait(every_s):
            try:
                history = read_metrics(run)
            except (OSError, ValueError):  # mid-write, or storage briefly unreachable
                continue
            for metrics in history[seen:]:
                print(f"[{prefix}] {metrics['step']}/{steps}  {summary_line(metrics)}", flush=True)
            seen = max(seen, len(history)) if history else 0

    thread = threading.Thread(target=echo, name="l2s-train-echo", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def launch(
    task: str,
    cfg,
    loop_config: dict,
    sources: dict,
    *,
    checkpoint_file: str,
    summary_line: Callable[[dict], str],
    local: bool = False,
    callbacks: Sequence = (),
) -> None:
    """Run the task `task` (l2s.train.tasks.TASKS) of the run config `cfg` to its end: on Ray Train
    (workers and resources from `cfg`, `sources` as Ray Data datasets, only "train" split over the
    workers), or with `local` in this process alone, without Ray (`session.LocalSession`)."""
    from l2s.train.loop import fit, ray_worker
    from l2s.train.session import LocalSession, cpu_threads
    from l2s.train.tasks import TASKS

    if local:
        session = LocalSession(
            cfg.out,
            sources,
            checkpoint_file=checkpoint_file,
            keep_checkpoints=cfg.keep_checkpoints,
            seed=cfg.seed,
            use_gpu=cfg.use_gpu,
        )
        with session:
            fit(TASKS[task]({**loop_config, "threads": cpu_threads()}, session), session)
        return

    import ray.train
    from ray.train.torch import TorchTrainer

    resources, threads = worker_resources(cfg.num_workers, cfg.use_gpu, cfg.cpus_per_worker)
    print(f"[{TASKS[task].name}] {cfg.num_workers} worker(s) × {resources}")
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"task": task, **loop_config, "threads": threads},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=run_config(cfg.out, cfg.max_failures, cfg.keep_checkpoints, callbacks),
        datasets={name: source.to_ray() for name, source in sources.items()},
        # Only the train split is sharded: every worker picks its share of the fixed val subset.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    with echo_reports(cfg.out, cfg.steps, summary_line, TASKS[task].name):
        trainer.fit()


def train(cfg: TrainConfig, *, callbacks: Sequence = (), local: bool = False) -> TrainSummary:
    """Train (or resume) the run `cfg.out` on the current Ray cluster (a local one when none is
    attached); return when it is done. `callbacks` are `ray.train.UserCallback`s, run by the
    Ray Train controller after each report. `local`: in this process, without Ray (one worker)."""
    import torch

    from l2s.models.grammar import grammar_for
    from l2s.models.lip2speech import Lip2Speech, count_parameters
    from l2s.pipeline.runtime import connect
    from l2s.train.data import DatasetError, index_dataset, source, train_transcripts
    from l2s.train.tasks.lip2speech import summary_line

    if not local:
        connect()
    # Workers run in a directory of Ray's own: a relative path would put their logs there.
    cfg = dataclasses.replace(
        cfg, dataset=storage.normalize(cfg.dataset), out=storage.normalize(cfg.out)
    )
    if cfg.recognizer is not None:  # one checkpoint for every worker, named before they start
        from l2s.infer.checkpoint import ASR_FILE, resolve

        cfg = dataclasses.replace(cfg, recognizer=resolve(cfg.recognizer, ASR_FILE))
    index = index_dataset(cfg.dataset, cfg.val_utterances, cfg.n_val_audio, cfg.seed)
    if index.speakers.dim != cfg.model_config.speaker_dim:
        raise DatasetError(
            f"{cfg.dataset}: speaker embeddings of size {index.speakers.dim}, "
            f"the model takes {cfg.model_config.speaker_dim}"
        )
    grammar = grammar_for(train_transcripts(index), cfg.grammar)
    with torch.device("meta"):
        parameters = count_parameters(Lip2Speech(cfg.model_config))
    workers = 1 if local else cfg.num_workers
    cache = index.train_bytes / workers <= cfg.cache_mb * 2**20
    print(
        f"[l2s.train] {cfg.preset}: {parameters:,} parameters; {workers} {cfg.strategy} "
        f"worker(s){' in this process' if local else ''}; data {index.counts} "
        f"({index.train_bytes / 2**20:.0f} MiB of train clips{', kept in memory' if cache else ''}); "
        f"val subset {len(index.val_ids)} clips; lips read "
        f"{'greedily' if grammar is None else f'with the {grammar.name} grammar'}"
    )
    sources = {"train": source(index, "train", shuffle_files=True)}
    if index.val_ids:
        sources["val"] = source(index, "val", shuffle_files=False)
    loop_config = {
        "train": cfg.to_dict(),
        "speakers": index.speakers.to_dict(),
        "bank": index.bank,
        "val_ids": list(index.val_ids),
        "audio_ids": list(index.audio_ids),
        "mel_stats": [index.mel_mean_M.tolist(), index.mel_std_M.tolist()],
        "dataset_metadata": index.metadata,
        "cache": cache,
        "grammar": None if grammar is None else grammar.to_dict(),
    }
    launch(
        "lip2speech",
        cfg,
        loop_config,
        sources,
        checkpoint_file=MODEL_FILE,
        summary_line=summary_line,
        local=local,
        callbacks=callbacks,
    )
    return summarize_run(cfg.out, cfg.steps, parameters)


def summarize_run(run: str, steps: int, parameters: int, file: str = MODEL_FILE) -> TrainSummary:
    """Where a run directory stands after `trainer.fit()` (lip-to-speech or vocoder runs: their
    checkpoints hold `file`), from its latest checkpoint and its metrics."""
    from l2s.infer.checkpoint import latest_checkpoint, read_config
    from l2s.train.logs import read_metrics

    latest = latest_checkpoint(run, file)
    progress = read_config(latest)["progress"] if latest else {"step": 0, "train_seconds": 0.0}
    history = read_metrics(run)
    step = int(progress["step"])
    return TrainSummary(
        run=run,
        checkpoint=latest,
        step=step,
        stopped="steps" if step >= steps else "time budget",
        parameters=parameters,
        train_seconds=float(progress["train_seconds"]),
        metrics=history[-1] if history else {},
        history=history,
    )


def initial_checkpoint(
    dataset: str, out: str, preset: str = "tiny", seed: int = 0, model: ModelConfig | None = None
) -> str:
    """A run directory (local) holding the step-0 checkpoint of an untrained model (the preset's,
    or `model`), with the dataset's speaker table, mel statistics and grammar: what tests and
    speed benchmarks generate with when the content of the speech does not matter."""
    from pathlib import Path

    import torch

    from l2s.models.grammar import grammar_for
    from l2s.models.lip2speech import Lip2Speech
    from l2s.train.checkpoint import Progress, checkpoint_name, write_model
    from l2s.train.data import index_dataset, train_transcripts

    cfg = TrainConfig(dataset=dataset, out=out, preset=preset, seed=seed, model=model)
    index = index_dataset(dataset, val_utterances=0, n_val_audio=0)
    torch.manual_seed(seed)
    network = Lip2Speech(cfg.model_config)
    network.set_mel_stats(torch.from_numpy(index.mel_mean_M), torch.from_numpy(index.mel_std_M))
    folder = Path(out) / checkpoint_name(0)
    folder.mkdir(parents=True, exist_ok=True)
    grammar = grammar_for(train_transcripts(index), cfg.grammar)
    write_model(
        folder, network.state_dict(), cfg, index.speakers, Progress(), {}, index.metadata, grammar
    )
    return out
