"""The stages of a request: mouth ROIs in the ingress, speech and lips in the deployments behind
it. Thin wrappers around the same per-clip functions `l2s speak` and `l2s lipsync` run
(`l2s.infer`, `l2s.lipsync`), so the endpoint and the CLI speak alike.

    Preprocessor CPU, in each ingress replica (l2s/serve/app.py), which has the upload on its
                 own disk (l2s/serve/upload.py): the file → checked against the limits → 96×96
                 mouth ROIs (decode at 25 fps, dlib face tracking, mouth crop). One clip at a
                 time per replica, in a thread of its own; the ingress replicas autoscale on the
                 requests in work. Not a deployment of its own: a separate hop cost each request
                 a Ray call, the ROIs a trip through the object store, and the server a replica
                 process that spends CPU while idle (benchmarks/serve.py measured it).
    Synthesizer  The model (on a GPU when one is given). Mouth ROIs → 10-s model windows
                 (`l2s.infer.windows`, as everywhere else), batched across requests with
                 `@serve.batch` (padded to the longest, one forward pass), cross-faded back
                 into one mel and one lip reading per clip (`SpeechModel.blend`) → the
                 vocoder, batched the same way
                 (HiFi-GAN in one forward pass; Griffin-Lim gains nothing from a batch on a
                 CPU and runs its clips one by one).
    LipSyncer    The lip generator (only when one is configured). An uploaded video and speech
                 → the video with its lips re-drawn to the speech (`l2s.lipsync.video.lipsync`:
                 tracking at the source's frame rate, re-drawing, pasting, h264 + AAC). One at a
                 time.

Each stage counts the CPU seconds it spends (`stage_cpu`), so that what the server spends
beyond them, Ray's and HTTP's share, can be measured (benchmarks/serve.py).

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, S samples,
D speaker-embedding size.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from l2s.face import load_detector
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.model import WindowOutput
from l2s.infer.speak import mouth_rois
from l2s.infer.vocoder import load_vocoder
from l2s.infer.voice import voice
from l2s.infer.windows import WINDOW, window_starts
from l2s.serve.config import Rejected, ServeConfig
from l2s.serve.upload import Upload, local_copy
from l2s.video import VideoError, probe


def _other_threads_cpu_ns() -> dict[int, int]:
    """CPU nanoseconds of every thread of this process but the calling one (Linux's per-thread
    schedstat; empty elsewhere)."""
    me, spent = threading.get_native_id(), {}
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        return spent
    for tid in tids:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                spent[tid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # the thread has ended
            continue
    return spent


class StageClock:
    """CPU seconds a replica's stages have spent, by stage name, since it started."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def process(self, stage: str) -> Iterator[None]:
        """The whole process's CPU while the block runs, less what threads that were already
        running (Ray's own, the event loop's) spent meanwhile: the block's thread and any threads
        it starts (FFmpeg's decoding threads). For one block at a time in a process. A thread of
        someone else's that starts or ends inside the block is counted too: only the process
        clock saw it."""
        # The process clock brackets the thread readings: what the other threads spend while
        # they are read (reading gives up the GIL, file by file) is on both sides of the sum.
        start = time.process_time()
        before = _other_threads_cpu_ns()
        try:
            yield
        finally:
            after = _other_threads_cpu_ns()
            spent = time.process_time() - start
            background = sum(after[tid] - before[tid] for tid in before.keys() & after.keys())
            self.seconds[stage] += spent - background / 1e9

    def thread(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, its CPU counted as the calling thread's (torch on one thread: a replica
        with less than two CPUs gets OMP_NUM_THREADS=1 from Ray)."""
        start = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.thread_time() - start


def stage_cpu(clock: StageClock) -> tuple[str, dict[str, float]]:
    """This replica's id and its stages' CPU seconds so far."""
    return serve.get_replica_context().replica_id.unique_id, dict(clock.seconds)


class Preprocessor:
    """An uploaded video → (mouth ROIs roi_THW, fraction of frames with a face), one clip at a
    time in a thread of its own, so that the replica's event loop goes on serving HTTP."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.features = FeatureConfig()
        load_detector(self.features.face)  # once per replica, not on the first request
        self.clock = StageClock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2s-preprocess")

    async def rois(self, upload: Upload) -> tuple[np.ndarray, float]:
        """Waits for the clips before it; a bad video raises `Rejected`."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._rois, upload)

    def _rois(self, upload: Upload) -> tuple[np.ndarray, float]:
        # One block at a time in this process: what the stage clock needs to tell its threads
        # (this one and FFmpeg's) from the event loop's and Ray's. The upload is on this node:
        # this replica wrote it.
        with self.clock.process("preprocess"):
            check_video(upload, self.cfg)
            try:
                with upload.open() as f:
                    return mouth_rois(f, self.features, self.cfg.max_seconds)
            except (SpeakError, VideoError) as e:
                raise Rejected(422, str(e)) from e


def check_video(upload: Upload, cfg: ServeConfig) -> None:
    """Refuse an upload that is no readable video (415) or is over the limits (422)."""
    try:
        with upload.open() as f:
            info = probe(f)
    except VideoError as e:
        raise Rejected(415, str(e)) from e
    if info.duration > cfg.max_seconds:
        raise Rejected(
            422,
            f"{upload.name}: video is {info.duration:.1f} s long; the limit is "
            f"{cfg.max_seconds:g} s",
        )
    if max(info.width, info.height) > cfg.max_side:
        raise Rejected(
            422,
            f"{upload.name}: resolution {info.width}×{info.height} is over the limit of "
            f"{cfg.max_side} px on the long side",
        )


@serve.deployment(max_ongoing_requests=64)
class Synthesizer:
    """Mouth ROIs (+ an optional training speaker's name) → 16 kHz waveform wav_S and the text
    the lips were read to say."""

    def __init__(self, cfg: ServeConfig) -> None:
        import torch

        from l2s.infer.model import SpeechModel

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SpeechModel.load(cfg.checkpoint, device)
        self.vocoder = load_vocoder(cfg.vocoder, device)
        for batched in (self.windows, self.vocode):
            batched.set_max_batch_size(cfg.max_batch_size)
            batched.set_batch_wait_timeout_s(cfg.batch_wait_s)
        # How many batches of each size ran: what the benchmark and tests read to see batching.
        self.batches: dict[str, Counter[int]] = {"model": Counter(), "vocoder": Counter()}
        self.clock = StageClock()

    def stage_cpu(self) -> tuple[str, dict[str, float]]:
        return stage_cpu(self.clock)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        return {stage: dict(counts) for stage, counts in self.batches.items()}

    async def speak(
        self, roi_THW: np.ndarray, speaker: str | None = None
    ) -> tuple[np.ndarray, str]:
        """Mouth ROIs → the speech wav_S and what the lips were read to say."""
        try:
            speaker_D, _ = voice(self.model, None, speaker)
        except SpeakError as e:
            raise Rejected(422, str(e)) from e
        starts = window_starts(len(roi_THW))
        outputs = await asyncio.gather(
            *(self.windows(roi_THW[start : start + WINDOW], speaker_D) for start in starts)
        )
        # The cross-fade and the reading of the lips' text (CTC decoding, ~5 ms) are the model's.
        said = self.clock.thread("model", self.model.blend, list(outputs), starts, len(roi_THW))
        return await self.vocode(said.mel_MF), said.text

    # The batched calls run in a thread: torch and Griffin-Lim release the GIL, and the
    # replica's event loop stays free to gather the next batch while this one computes.
    @serve.batch
    async def windows(
        self, rois: list[np.ndarray], speakers: list[np.ndarray | None]
    ) -> list[WindowOutput]:
        self.batches["model"][len(rois)] += 1
        return await asyncio.to_thread(
            self.clock.thread, "model", self.model.window_outputs, rois, speakers
        )

    @serve.batch
    async def vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        self.batches["vocoder"][len(mels)] += 1
        return await asyncio.to_thread(self.clock.thread, "vocoder", self.vocoder.batch, mels)


@serve.deployment(max_ongoing_requests=1)
class LipSyncer:
    """An uploaded video and speech → mp4 bytes: the video with its lips re-drawn to the speech."""

    def __init__(self, cfg: ServeConfig) -> None:
        import torch

        from l2s.lipsync.model import LipSyncModel

        self.cfg = cfg
        self.features = FeatureConfig()
        self.model = LipSyncModel.load(cfg.lipsync, "cuda" if torch.cuda.is_available() else "cpu")
        load_detector(self.features.face)
        self.clock = StageClock()

    def stage_cpu(self) -> tuple[str, dict[str, float]]:
        return stage_cpu(self.clock)

    def render(self, video: Upload, speech: Upload) -> bytes:
        with (
            local_copy(video) as video,
            local_copy(speech) as speech,
            self.clock.process("lipsync"),
        ):
            return self._render(video, speech)

    def _render(self, video: Upload, speech: Upload) -> bytes:
        from l2s.audio import AudioError, load_audio
        from l2s.lipsync import LipSyncError
        from l2s.lipsync.video import lipsync

        check_video(video, self.cfg)
        try:
            with speech.open() as f:
                load_audio(f)
        except AudioError as e:
            raise Rejected(415, str(e)) from e
        with tempfile.TemporaryDirectory(prefix="l2s-lipsync-") as folder:
            out = Path(folder) / "out.mp4"
            try:
                lipsync(
                    video.path, speech.path, out, self.model, self.features, self.cfg.max_seconds
                )
            except (LipSyncError, VideoError) as e:  # name the uploads, not their files
                reason = str(e).replace(video.path, video.name).replace(speech.path, speech.name)
                raise Rejected(422, reason) from e
            return out.read_bytes()
