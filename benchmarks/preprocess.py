"""Preprocessing speed and memory: Ray Data on a local Ray against the serial loop.

    python benchmarks/preprocess.py [--corpus DIR] [--clips N] [--cpus 2]

Two datasets: a synthetic corpus (`--corpus`, else one made with `SynthConfig(speakers=4,
utterances=50)` in a temporary folder) and the five real fixture clips. On each, in the same run,
into separate temporary folders and each in a fresh process:
  serial  `serial_preprocess`: one process, one clip after another (Lip2Wav's preprocess.py loop)
  ray     `preprocess` on `ray.init(address="local", num_cpus=--cpus)`
Both load the same models and write the same shards. Reported per variant:
  job s        the whole job as a user waits for it: model loading, Ray Data planning and actor
               start-up included (`ray.init` is shown apart: a cluster pays it once, not per job)
  clips/s      clips (features + errors) per job second; video s/s: seconds of video per job second
  steady       clips/s between the first and the last shard written (shard file times): the rate
               once every worker is loaded and busy
  peak MiB     serial: the process's peak RSS. ray: peak of driver RSS + the sum over Ray worker
               processes (`ray::*`), sampled every 0.2 s; "all" adds Ray's own daemons
               (GCS, raylet, ...). RSS counts shared pages (the object store) once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"
SAMPLE_SECONDS = 0.2


@dataclass(frozen=True, kw_only=True)
class Run:
    variant: str
    clips: int
    features: int
    video_seconds: float
    init_seconds: float  # ray.init (0 for serial)
    job_seconds: float
    steady_clips_per_s: float | None
    peak_mib: float  # serial: process; ray: driver + workers
    peak_all_mib: float  # ray: driver + workers + Ray daemons


class MemorySampler(threading.Thread):
    """Peak RSS of this process, of the Ray workers below it, and of all its descendants."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.peak_workers = self.peak_all = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        driver = self.me.memory_info().rss
        workers = everything = 0
        for child in self.me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                is_worker = child.cmdline()[:1] and child.cmdline()[0].startswith("ray::")
            except psutil.Error:  # a process that ended between listing and reading it
                continue
            everything += rss
            workers += rss if is_worker else 0
        self.peak_workers = max(self.peak_workers, driver + workers)
        self.peak_all = max(self.peak_all, driver + everything)

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()


def steady_rate(out: str) -> float | None:
    """Clips per second between the first and the last shard written, from shard file times."""
    import pyarrow.parquet as pq

    from l2s.pipeline import shards

    done: dict[str, tuple[float, int]] = {}
    for table in (shards.FEATURES, shards.ERRORS):
        for path in sorted((Path(out) / table).glob("part-*.parquet")):
            when, n = done.get(path.name, (0.0, 0))
            done[path.name] = (max(when, path.stat().st_mtime), n + pq.read_metadata(path).num_rows)
    if len(done) < 3:
        return None
    times = sorted(done.values())
    span = times[-1][0] - times[0][0]
    return sum(n for _, n in times[1:]) / span if span > 0 else None


def child(variant: str, manifest: str, out: str, cpus: int) -> None:
    """One variant in this (fresh) process; prints its Run as JSON on the last line."""
    from l2s.pipeline.preprocess import preprocess, serial_preprocess

    sampler = MemorySampler()
    sampler.start()
    init_seconds = 0.0
    if variant == "ray":
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        init_seconds = time.perf_counter() - start
        summary = preprocess(manifest, out)
    else:
        summary = serial_preprocess(manifest, out)
    sampler.stop()
    peak = sampler.peak_workers
    if variant == "serial":
        peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    run = Run(
        variant=variant,
        clips=summary.features + sum(summary.errors.values()),
        features=summary.features,
        video_seconds=summary.video_seconds,
        init_seconds=init_seconds,
        job_seconds=summary.seconds,
        steady_clips_per_s=steady_rate(out),
        peak_mib=peak / 2**20,
        peak_all_mib=sampler.peak_all / 2**20,
    )
    print(json.dumps(asdict(run)))


def measure(variant: str, manifest: str, out: Path, cpus: int) -> Run:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        manifest,
        str(out),
        "--cpus",
        str(cpus),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{variant} run failed:\n{done.stderr[-4000:]}")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def manifests(corpus: Path | None, clips: int | None, tmp: Path) -> dict[str, str]:
    from l2s.corpora import scan, write_manifest
    from l2s.synth.corpus import SynthConfig, generate

    if corpus is None:
        corpus = tmp / "synthetic"
        print(f"making a synthetic corpus (4 speakers x 50 utterances) in {corpus} ...")
        list(generate(SynthConfig(speakers=4, utterances=50), corpus, progress=False))
    found = {"synthetic": scan("synthetic", str(corpus))[0]}
    if FIXTURES.is_dir():
        found["real fixtures"] = scan("folder", str(FIXTURES))[0]
    uris = {}
    for name, rows in found.items():
        uri = str(tmp / f"{name.replace(' ', '_')}.parquet")
        write_manifest(rows[:clips] if clips else rows, uri)
        # Read every video once so neither variant pays the cold page cache alone.
        for row in rows:
            Path(row.video).read_bytes()
        uris[name] = uri
    return uris


def table(name: str, runs: list[Run], cpus: int) -> None:
    serial, ray_run = runs
    print(f"\n{name}: {serial.clips} clips, {serial.video_seconds:.0f} s of video")
    header = f"{'':<14}{'init s':>8}{'job s':>8}{'clips/s':>9}{'video s/s':>11}{'steady':>8}"
    print(header + f"{'peak MiB':>10}{'all MiB':>9}")
    for run in runs:
        label = "serial" if run.variant == "serial" else f"ray {cpus} CPUs"
        steady = f"{run.steady_clips_per_s:.2f}" if run.steady_clips_per_s else "-"
        print(
            f"{label:<14}{run.init_seconds:>8.1f}{run.job_seconds:>8.1f}"
            f"{run.clips / run.job_seconds:>9.2f}{run.video_seconds / run.job_seconds:>11.2f}"
            f"{steady:>8}{run.peak_mib:>10.0f}{run.peak_all_mib:>9.0f}"
        )
    ratios = [
        f"job {serial.job_seconds / ray_run.job_seconds:.2f}x",
        f"job + ray.init {serial.job_seconds / (ray_run.job_seconds + ray_run.init_seconds):.2f}x",
    ]
    if serial.steady_clips_per_s and ray_run.steady_clips_per_s:
        ratios.append(f"steady {ray_run.steady_clips_per_s / serial.steady_clips_per_s:.2f}x")
    ratios.append(f"peak memory {ray_run.peak_mib / serial.peak_mib:.1f}x")
    print("ray / serial: " + ", ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, help="a synthetic corpus (default: make one)")
    parser.add_argument("--clips", type=int, help="use the first N clips of each dataset")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "MANIFEST", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, cpus=args.cpus)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, manifest in manifests(args.corpus, args.clips, Path(tmp)).items():
            runs = [
                measure(variant, manifest, Path(tmp) / f"{name}-{variant}", args.cpus)
                for variant in ("serial", "ray")
            ]
            table(name, runs, args.cpus)


if __name__ == "__main__":
    main()
