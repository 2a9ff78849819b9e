"""One video + one speech file → the video with its mouth re-drawn to that speech and the speech
as its audio (`l2s lipsync`, `l2s dub --speech-dir`, `POST /v1/lipsync`).

Two passes over the video, so a long one never sits in memory at full size: the first tracks the
face and cuts the mouth ROIs (the per-clip functions of preprocessing, `track_mouth`) at the
source's own frame rate, from frames downscaled for tracking; the generator re-draws every ROI
to the 0.2 s of speech around the frame's time; the second pass decodes the frames at full
resolution, pastes each re-drawn ROI back through the inverse of its alignment (`paste`) and
encodes them (h264, yuv420p: plays in browsers) with the speech, cut or padded with silence to
the video's duration. Frames where no face was tracked are left as they were.

Letters in shape names: T frames, H×W pixels, C colours, S samples, M mel bands, F mel frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from l2s.audio import AudioError, load_audio, log_mel
from l2s.config import AUDIO, VIDEO
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.speak import MouthTrack, track_mouth
from l2s.lipsync import LipSyncError
from l2s.lipsync.model import LipSyncModel, pick_reference
from l2s.lipsync.paste import feather_mask, paste, scale_transform
from l2s.video import VideoError, VideoWriter, iter_frames, probe

MAX_FPS = 60  # sources stating more (or nothing) are written at 25 fps


@dataclass(frozen=True)
class LipSynced:
    out: Path
    frames: int
    fps: float
    seconds: float
    size: tuple[int, int]  # (width, height)
    face_ratio: float
    compute_seconds: float


def output_rate(fps: float) -> Fraction:
    """The source's frame rate as a fraction (29.97 → 30000/1001), 25 when it states none usable."""
    if not 0 < fps <= MAX_FPS:
        return Fraction(VIDEO.fps)
    return Fraction(fps).limit_denominator(1001)


def speech_mel(speech: str, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The speech at 16 kHz cut or padded with silence to `seconds`, and its log-mel."""
    try:
        wav_S = load_audio(speech, AUDIO.sample_rate)
    except AudioError as e:
        raise LipSyncError(str(e)) from e
    n = round(seconds * AUDIO.sample_rate)
    wav_S = np.pad(wav_S[:n], (0, max(0, n - len(wav_S))))
    if len(wav_S) < AUDIO.hop_length:
        raise LipSyncError(f"{speech}: the video is too short to carry speech ({seconds:.2f} s)")
    return wav_S, log_mel(wav_S)


def lipsync(
    video: str,
    speech: str,
    out: str | Path,
    model: LipSyncModel,
    cfg: FeatureConfig | None = None,
    max_seconds: float | None = None,
) -> LipSynced:
    """Re-draw `video`'s mouth to `speech` and write the result with that speech to `out`."""
    start = time.perf_counter()
    cfg = cfg or FeatureConfig()
    try:
        info = probe(video)
    except VideoError as e:
        raise LipSyncError(str(e)) from e
    if max_seconds is not None and info.duration > max_seconds:
        raise LipSyncError(f"{video}: {info.duration:.1f} s long; the limit is {max_seconds:g} s")
    fps = output_rate(info.fps)
    try:
        track = track_mouth(video, cfg, max_seconds, fps=float(fps))
    except SpeakError as e:
        raise LipSyncError(str(e)) from e
    n_frames = len(track.roi_THW)
    wav_S, mel_MF = speech_mel(speech, n_frames / fps)
    drawn_THW = redraw_track(model, track, mel_MF, float(fps))
    size = (info.width, info.height)
    write_pasted(video, out, track, drawn_THW, model.mask_top, fps, wav_S, size)
    return LipSynced(
        out=Path(out),
        frames=n_frames,
        fps=float(fps),
        seconds=float(n_frames / fps),
        size=size,
        face_ratio=track.face_ratio,
        compute_seconds=time.perf_counter() - start,
    )


def redraw_track(
    model: LipSyncModel, track: MouthTrack, mel_MF: np.ndarray, fps: float
) -> np.ndarray:
    """Every tracked frame's ROI re-drawn to the speech at its time, from one reference frame."""
    faced_T = np.flatnonzero(track.face_T)
    reference = faced_T[pick_reference(track.roi_THW[faced_T], model.mask_top)]
    times_T = (np.arange(len(track.roi_THW)) + 0.5) / fps
    return model.redraw(track.roi_THW, mel_MF, track.roi_THW[reference], times_T)


def write_pasted(
    video: str,
    out: str | Path,
    track: MouthTrack,
    drawn_THW: np.ndarray,
    mask_top: int,
    fps: Fraction,
    wav_S: np.ndarray,
    size: tuple[int, int],
) -> None:
    """Second pass: full-size frames with the re-drawn ROIs pasted in, encoded with the speech."""
    mask_HW = feather_mask(mask_top)
    scale = track.frame_size[0] / max(size[0], track.frame_size[0])
    with VideoWriter(out, *size, fps, wav_S, AUDIO.sample_rate) as writer:
        frames = iter_frames(video, fps=float(fps))
        for t, frame_HWC in zip(range(len(drawn_THW)), frames, strict=False):
            if track.face_T[t]:
                transform_23 = scale_transform(track.transform_T23[t], scale)
                frame_HWC = paste(frame_HWC, drawn_THW[t], transform_23, mask_HW)
            writer.write(frame_HWC)
