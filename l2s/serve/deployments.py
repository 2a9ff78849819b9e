"""The two working deployments behind the HTTP ingress: thin Ray Serve wrappers around the same
per-clip functions `l2s speak` runs (`l2s.infer`), so the endpoint and the CLI speak alike.

    Preprocess   CPU. The uploaded file (its path on disk: l2s/serve/upload.py) → checked
                 against the limits → 96×96 mouth ROIs (decode at 25 fps, dlib face tracking,
                 mouth crop). One clip at a time per replica; replicas autoscale on the
                 requests waiting.
    Synthesizer  The model (on a GPU when one is given). Mouth ROIs → 10-s model windows
                 (`l2s.infer.windows`, as everywhere else), batched across requests with
                 `@serve.batch` (padded to the longest, one forward pass), cross-faded back
                 into one mel and one lip reading per clip (`SpeechModel.blend`) → the
                 vocoder, batched the same way
                 (HiFi-GAN in one forward pass; Griffin-Lim gains nothing from a batch on a
                 CPU and runs its clips one by one).

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, S samples,
D speaker-embedding size.
"""

from __future__ import annotations

import asyncio
from collections import Counter

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


@serve.deployment(max_ongoing_requests=1)
class Preprocess:
    """An uploaded video → (mouth ROIs roi_THW, fraction of frames with a face)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.features = FeatureConfig()
        load_detector(self.features.face)  # once per replica, not on the first request

    def rois(self, upload: Upload) -> tuple[np.ndarray, float]:
        with local_copy(upload) as local:
            return self._rois(local)

    def _rois(self, upload: Upload) -> tuple[np.ndarray, float]:
        cfg = self.cfg
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
        try:
            with upload.open() as f:
                return mouth_rois(f, self.features, cfg.max_seconds)
        except (SpeakError, VideoError) as e:
            raise Rejected(422, str(e)) from e


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

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        return {stage: dict(counts) for stage, counts in self.batches.items()}

    async def speak(
        self, roi_THW: np.ndarray, speaker: str | None = None
    ) -> tuple[np.ndarray, str]:
        try:
            speaker_D, _ = voice(self.model, None, speaker)
        except SpeakError as e:
            raise Rejected(422, str(e)) from e
        starts = window_starts(len(roi_THW))
        outputs = await asyncio.gather(
            *(self.windows(roi_THW[start : start + WINDOW], speaker_D) for start in starts)
        )
        said = self.model.blend(list(outputs), starts, len(roi_THW))
        return await self.vocode(said.mel_MF), said.text

    # The batched calls run in a thread: torch and Griffin-Lim release the GIL, and the
    # replica's event loop stays free to gather the next batch while this one computes.
    @serve.batch
    async def windows(
        self, rois: list[np.ndarray], speakers: list[np.ndarray | None]
    ) -> list[WindowOutput]:
        self.batches["model"][len(rois)] += 1
        return await asyncio.to_thread(self.model.window_outputs, rois, speakers)

    @serve.batch
    async def vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        self.batches["vocoder"][len(mels)] += 1
        return await asyncio.to_thread(self.vocoder.batch, mels)
