"""How time and memory grow with the corpus: preprocess, generate and score on 1×, 4× and 16× a
small synthetic corpus, and planning a 100,000-row manifest.

    python benchmarks/scaling.py [--base 8] [--scales 1,4,16] [--cpus 2] [--rows 10000,100000]

A k× corpus is the base manifest repeated k times under new ids (`<id>~<j>`): the same videos,
k times the clips. Every row is put in the train split, so that one split holds them all. Each
scale runs in a fresh process, the driver of a fresh one-node Ray of --cpus CPUs started by
`l2s.local_cluster` (as the cluster tests start theirs): preprocess → generate (an untrained
tiny checkpoint made from that scale's features, untimed) → score. Per stage and scale:
  s/clip       wall seconds of the stage over its clips (Ray's start excluded; model loading and
               actor start-up included, so small runs pay more per clip), and the ratio to 1×
  marg. s/clip extra seconds per extra clip against the previous scale: the cost once started
  driver MiB   peak private memory of the driver (resident minus shared pages, so the object
               store's pages do not count), sampled every 0.2 s, and the ratio to 1×
  worker MiB   the same for the largest Ray worker process (`ray::*`), and how many there were
Flat means: s/clip not growing (it falls while start-up is amortised), memory ratios near 1.

The manifest check writes N rows that point at one video (nothing is decoded) and marks every
other row done (error shards, as a rerun finds them); then a fresh process times
`l2s.pipeline.preprocess.plan` (the job's input: rows not done, streamed from the manifest) and
listing the planned rows through Ray Data, with the same memory sampling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from l2s.local_cluster import ray_processes

SAMPLE_SECONDS = 0.2
STAGES = ("preprocess", "generate", "score")


def private_bytes(process: psutil.Process) -> int:
    memory = process.memory_info()
    return memory.rss - getattr(memory, "shared", 0)


class MemorySampler(threading.Thread):
    """Peak private memory of this process (the driver) and of each Ray worker of the cluster
    whose nodes keep their files under `root`."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.me, self.root = psutil.Process(), root
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.driver = 0
        self.workers: dict[int, int] = {}

    def reset(self) -> None:
        with self.lock:
            self.driver = 0
            self.workers = {}

    def sample(self) -> None:
        driver = private_bytes(self.me)
        workers = {}
        for process in ray_processes([self.root]):
            try:
                if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::"):
                    workers[process.pid] = private_bytes(process)
            except psutil.Error:  # ended between listing and reading
                continue
        with self.lock:
            self.driver = max(self.driver, driver)
            for pid, size in workers.items():
                self.workers[pid] = max(self.workers.get(pid, 0), size)

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            self.sample()

    def peaks(self) -> tuple[float, float, int]:
        """(driver MiB, largest worker MiB, workers seen) since the last reset."""
        self.sample()
        with self.lock:
            largest = max(self.workers.values(), default=0)
            return self.driver / 2**20, largest / 2**20, len(self.workers)


@dataclass
class StageRun:
    stage: str
    clips: int
    seconds: float
    driver_mib: float
    worker_mib: float
    workers: int


@dataclass
class ScaleRun:
    scale: int
    clips: int
    init_seconds: float
    stages: list[StageRun] = field(default_factory=list)


def _scale_child(scale: int, manifest: str, work: str, root: str) -> None:
    """One scale in this (fresh) process, the driver of the cluster in RAY_ADDRESS (its files
    under `root`); prints its ScaleRun as JSON on the last line."""
    from l2s.evaluate.split import SYSTEMS, score_results
    from l2s.pipeline.generate import generate_split
    from l2s.pipeline.preprocess import PreprocessConfig, preprocess
    from l2s.pipeline.runtime import connect
    from l2s.train import initial_checkpoint

    features, results = f"{work}/features", f"{work}/results"
    start = time.perf_counter()
    connect()
    run = ScaleRun(scale=scale, clips=0, init_seconds=time.perf_counter() - start)
    sampler = MemorySampler(root)
    sampler.start()

    def timed(stage: str, call) -> int:
        sampler.reset()
        began = time.perf_counter()
        clips = call()
        seconds = time.perf_counter() - began
        run.stages.append(StageRun(stage, clips, seconds, *sampler.peaks()))
        return clips

    run.clips = timed(
        "preprocess", lambda: preprocess(manifest, features, PreprocessConfig()).features
    )
    checkpoint = initial_checkpoint(features, f"{work}/run")
    timed(
        "generate",
        lambda: generate_split(features, "train", checkpoint, results, progress=False).clips,
    )
    timed("score", lambda: len(score_results(results, progress=False)) // len(SYSTEMS))
    sampler.stopped.set()
    print(json.dumps(asdict(run)))


def write_plan_data(rows: int, video: str, work: str) -> float:
    """A `rows`-row manifest pointing at one video, every other row done (error shards of 1000
    ids, as a rerun finds them); returns the seconds it took."""
    from l2s.corpora import write_manifest
    from l2s.pipeline import shards
    from l2s.schema import ErrorRow, ManifestRow

    began = time.perf_counter()
    ids = [f"spk{i % 50:02d}/{i:07d}" for i in range(rows)]
    write_manifest(
        [ManifestRow(id=i, speaker=i[:5], split="train", video=video, corpus="synthetic") for i in ids],
        f"{work}/manifest.parquet",
    )  # fmt: skip
    for first in range(0, rows, 2 * 1000):
        done = ids[first : first + 2 * 1000 : 2]
        errors = [ErrorRow(id=i, video=video, stage="decode", reason="done") for i in done]
        shards.write_shard(f"{work}/features", [], errors)
    return time.perf_counter() - began


def _plan_child(work: str, root: str) -> None:
    """Plan and list the manifest in `work` in this (fresh) process, the driver of the cluster in
    RAY_ADDRESS (its files under `root`); prints JSON on the last line."""
    from l2s.pipeline.preprocess import plan
    from l2s.pipeline.runtime import connect

    connect()
    sampler = MemorySampler(root)
    sampler.start()
    began = time.perf_counter()
    ds, skipped = plan(f"{work}/manifest.parquet", f"{work}/features", shard_size=8)
    plan_seconds = time.perf_counter() - began
    listed = sum(b.num_rows for b in ds.iter_batches(batch_size=4096, batch_format="pyarrow"))
    list_seconds = time.perf_counter() - began - plan_seconds
    driver, worker, workers = sampler.peaks()
    sampler.stopped.set()
    result = {
        "skipped": skipped, "listed": listed, "plan_seconds": plan_seconds,
        "list_seconds": list_seconds, "driver_mib": driver, "worker_mib": worker,
        "workers": workers,
    }  # fmt: skip
    print(json.dumps(result))


def _child(*args: str, cpus: int) -> dict:
    """Run `--child ARGS` in a fresh process, the driver of a fresh one-node cluster of `cpus`
    CPUs (l2s.local_cluster, as the cluster tests start theirs); its JSON result."""
    from l2s.local_cluster import LocalCluster, NodeSpec

    cluster = LocalCluster(head=NodeSpec(name="head", cpus=cpus), workers=[], dashboard=False)
    try:
        with cluster:
            env = {**cluster.env, "RAY_ADDRESS": cluster.address}
            command = [sys.executable, __file__, "--child", *args, str(cluster.root)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        cluster.remove()
    if done.returncode:
        raise RuntimeError(f"{args[0]} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def base_rows(corpus: Path | None, base: int, work: Path):
    """The first `base` clips of the corpus (made when not given), all in the train split."""
    import dataclasses

    from l2s.corpora import scan
    from l2s.synth.corpus import SynthConfig, generate

    if corpus is None:
        corpus = work / "corpus"
        speakers = 2
        utterances = max(3, -(-base // speakers))
        print(f"making a synthetic corpus ({speakers} speakers × {utterances} utterances) ...")
        list(generate(SynthConfig(speakers=speakers, utterances=utterances, unseen_speakers=0),
                      corpus, progress=False))  # fmt: skip
    rows, _ = scan("synthetic", str(corpus))
    if len(rows) < base:
        raise SystemExit(f"{corpus} holds {len(rows)} clips, fewer than --base {base}")
    return [dataclasses.replace(r, split="train") for r in rows[:base]]


def scaled_manifest(rows, scale: int, uri: str) -> str:
    import dataclasses

    from l2s.corpora import write_manifest

    write_manifest(
        [dataclasses.replace(r, id=f"{r.id}~{j}") for j in range(scale) for r in rows], uri
    )
    return uri


def print_scales(runs: list[ScaleRun]) -> None:
    base = runs[0]
    print(f"\n{'stage':<11}{'scale':>6}{'clips':>6}{'s/clip':>8}{'×1×':>6}{'marg.':>7}"
          f"{'driver MiB':>11}{'×1×':>6}{'worker MiB':>11}{'×1×':>6}{'workers':>8}")  # fmt: skip
    for i, stage in enumerate(STAGES):
        first = base.stages[i]
        for j, run in enumerate(runs):
            s = run.stages[i]
            per_clip = s.seconds / s.clips if s.clips else float("nan")
            first_per_clip = first.seconds / first.clips if first.clips else float("nan")
            marginal = "-"
            if j:
                p = runs[j - 1].stages[i]
                if s.clips > p.clips:
                    marginal = f"{(s.seconds - p.seconds) / (s.clips - p.clips):.2f}"
            print(
                f"{stage:<11}{run.scale:>5}×{s.clips:>6}{per_clip:>8.2f}"
                f"{per_clip / first_per_clip:>6.2f}{marginal:>7}"
                f"{s.driver_mib:>11.0f}{s.driver_mib / first.driver_mib:>6.2f}"
                f"{s.worker_mib:>11.0f}{s.worker_mib / first.worker_mib:>6.2f}{s.workers:>8}"
            )
    print("(Ray start per process: " + ", ".join(f"{r.init_seconds:.1f} s" for r in runs) + ")")


def print_plans(plans: list[dict]) -> None:
    first = plans[0]
    print(f"\n{'manifest rows':>14}{'done':>8}{'planned':>8}{'write s':>8}{'plan s':>8}"
          f"{'list s':>8}{'µs/row':>8}{'driver MiB':>11}{'×':>6}{'worker MiB':>11}{'×':>6}")  # fmt: skip
    for p in plans:
        per_row = 1e6 * (p["plan_seconds"] + p["list_seconds"]) / p["rows"]
        print(
            f"{p['rows']:>14,}{p['skipped']:>8,}{p['listed']:>8,}{p['write_seconds']:>8.1f}"
            f"{p['plan_seconds']:>8.1f}{p['list_seconds']:>8.1f}{per_row:>8.1f}"
            f"{p['driver_mib']:>11.0f}{p['driver_mib'] / first['driver_mib']:>6.2f}"
            f"{p['worker_mib']:>11.0f}{p['worker_mib'] / first['worker_mib']:>6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, help="a synthetic corpus (default: make one)")
    parser.add_argument("--base", type=int, default=8, help="clips in the 1× corpus")
    parser.add_argument(
        "--scales", default="1,4,16", help="corpus multiples, the first the base ('': none)"
    )
    parser.add_argument("--rows", default="10000,100000", help="manifest sizes to plan (0: none)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--work", type=Path, help="keep the data here (default: a temp folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "scale":
            _scale_child(int(rest[0]), *rest[1:])
        else:
            _plan_child(*rest)
        return
    scales = [int(s) for s in args.scales.split(",") if s]
    row_counts = [int(r) for r in args.rows.split(",") if r and int(r) > 0]
    if any(n < 1 for n in scales + row_counts):
        parser.error("--scales and --rows take positive integers")
    with tempfile.TemporaryDirectory(prefix="l2s-scaling-") as tmp:
        work = args.work or Path(tmp)
        rows = base_rows(args.corpus, args.base, work) if scales else []
        runs = []
        for scale in scales:
            folder = work / f"x{scale}"
            manifest = scaled_manifest(rows, scale, str(work / f"manifest-x{scale}.parquet"))
            print(f"{scale}×: {scale * len(rows)} clips ...", flush=True)
            runs.append(
                ScaleRun(**_child("scale", str(scale), manifest, str(folder), cpus=args.cpus))
            )
            runs[-1].stages = [StageRun(**s) for s in runs[-1].stages]  # type: ignore[arg-type]
        plans = []
        for n in row_counts:
            print(f"planning a {n:,}-row manifest ...", flush=True)
            folder = work / f"plan-{n}"
            video = rows[0].video if rows else "s3://corpus/clip.mp4"  # never decoded
            seconds = write_plan_data(n, video, str(folder))
            plans.append(
                {"rows": n, "write_seconds": seconds, **_child("plan", str(folder), cpus=args.cpus)}
            )
        if runs:
            print_scales(runs)
        if plans:
            print_plans(plans)


if __name__ == "__main__":
    main()
