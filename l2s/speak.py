"""`l2s speak`: one user video of any frame rate, resolution and length → speech.wav.

The video goes through the same per-clip functions as preprocessing (25 fps by timestamp, frames
downscaled as they are decoded, face landmarks, mouth ROI), in chunks, so an hour of video never
sits in memory at once: only its 96×96 mouth ROIs do (9 KiB a frame). The model then runs over
overlapping windows of the ROIs (its attention grows with the square of the length) and the mels
are cross-faded where windows overlap. The wav has exactly the video's length at 25 fps.

The voice: a reference recording (`reference_audio`, embedded by the speaker encoder), a speaker
the model was trained on (`speaker`), or else the average of the training speakers.

Letters in shape names: T video frames, H×W pixels, C colours, M mel bands, F mel frames, S samples.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from l2s.audio import load_audio, write_wav
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.face import FaceError, crop_mouth, detect_landmarks, load_detector
from l2s.features import FeatureConfig
from l2s.generate import Generator
from l2s.video import VideoError, iter_frames, probe
from l2s.vocoder import load_vocoder

# Frames per face-tracking chunk, and frames each chunk shares with the previous one (so the
# landmark smoothing has context on both sides of a boundary).
TRACK_CHUNK = 250
TRACK_OVERLAP = 10
# Model windows: 10 s, overlapping by 1 s; mels are cross-faded linearly over the overlap.
WINDOW = 250
WINDOW_OVERLAP = 25


class SpeakError(ValueError):
    """The video cannot be spoken; the message names the file and the problem."""


@dataclass(frozen=True)
class Spoken:
    wav: Path
    seconds: float
    face_ratio: float
    voice: str
    compute_seconds: float

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / max(self.seconds, 1e-9)


def _frame_chunks(video: str | BinaryIO, max_side: int) -> Iterator[np.ndarray]:
    """Downscaled 25 fps frames in chunks of TRACK_CHUNK + TRACK_OVERLAP; every chunk after the
    first starts with the last TRACK_OVERLAP frames of the one before."""
    buffer: list[np.ndarray] = []
    carried = 0
    for frame_HWC in iter_frames(video, fps=VIDEO.fps, max_side=max_side):
        buffer.append(frame_HWC)
        if len(buffer) == TRACK_CHUNK + TRACK_OVERLAP:
            yield np.stack(buffer)
            buffer, carried = buffer[-TRACK_OVERLAP:], TRACK_OVERLAP
    if len(buffer) > carried:
        yield np.stack(buffer)


def mouth_rois(
    video: str | BinaryIO, cfg: FeatureConfig, max_seconds: float | None = None
) -> tuple[np.ndarray, float]:
    """96×96 mouth ROIs of every 25 fps frame, and the fraction of frames with a detected face.

    A chunk without any face gets the mean grey (the model's "nothing seen" input) and counts as
    faceless; a video without a face anywhere is an error. `max_seconds` bounds what is decoded
    even when the container states no duration (the server's limit; `speak` has none).
    """
    name = getattr(video, "name", video)
    detector = load_detector(cfg.face)
    rois: list[np.ndarray] = []
    faces = 0.0
    n_frames = 0
    first = True
    for chunk_THWC in _frame_chunks(video, cfg.max_side):
        keep = slice(0, None) if first else slice(TRACK_OVERLAP, None)
        n_new = len(chunk_THWC) - (0 if first else TRACK_OVERLAP)
        n_frames += n_new
        if max_seconds is not None and n_frames > max_seconds * VIDEO.fps + 1:
            raise SpeakError(f"{name}: video runs past the limit of {max_seconds:g} s")
        try:
            track = detect_landmarks(chunk_THWC, cfg.face, detector)
            roi_THW = crop_mouth(chunk_THWC, track.landmarks_TK2, VIDEO.roi_size)[keep]
            faces += track.face_ratio * n_new
        except FaceError:
            roi_THW = np.full((n_new, VIDEO.roi_size, VIDEO.roi_size), 128, np.uint8)
        rois.append(roi_THW)
        first = False
    if not rois:
        raise SpeakError(f"{name}: no video frames")
    roi_THW = np.concatenate(rois)
    if faces == 0:
        raise SpeakError(f"{name}: no face found in any frame")
    return roi_THW, faces / len(roi_THW)


def window_starts(n_frames: int) -> list[int]:
    """First frames of the model windows over a clip of `n_frames` (one window if it fits)."""
    if n_frames <= WINDOW:
        return [0]
    return [*range(0, n_frames - WINDOW, WINDOW - WINDOW_OVERLAP), n_frames - WINDOW]


def blend_windows(mels: list[np.ndarray], starts: list[int], n_frames: int) -> np.ndarray:
    """Mels of the windows at `starts`, cross-faded linearly where they overlap: M×(4·T)."""
    if len(mels) == 1:
        return mels[0]
    total_MF = np.zeros((AUDIO.n_mels, n_frames * MELS_PER_FRAME), np.float32)
    weight_F = np.zeros(n_frames * MELS_PER_FRAME, np.float32)
    ramp = WINDOW_OVERLAP * MELS_PER_FRAME
    for mel_MF, start in zip(mels, starts, strict=True):
        w_F = np.ones(mel_MF.shape[1], np.float32)
        w_F[:ramp] = np.minimum(w_F[:ramp], np.linspace(0.01, 1, ramp)) if start else 1.0
        if start + WINDOW < n_frames:
            w_F[-ramp:] = np.minimum(w_F[-ramp:], np.linspace(1, 0.01, ramp))
        f0 = start * MELS_PER_FRAME
        total_MF[:, f0 : f0 + mel_MF.shape[1]] += mel_MF * w_F
        weight_F[f0 : f0 + mel_MF.shape[1]] += w_F
    return total_MF / weight_F


def windowed_mel(gen: Generator, roi_THW: np.ndarray, speaker_D: np.ndarray | None) -> np.ndarray:
    """The model over overlapping windows of the clip, cross-faded into one mel of 4·T frames."""
    starts = window_starts(len(roi_THW))
    mels = [
        gen.mel(roi_THW[start : start + WINDOW], speaker_D)
        for start in tqdm(starts, desc="speak", unit="window", leave=False, disable=len(starts) < 2)
    ]
    return blend_windows(mels, starts, len(roi_THW))


def voice(
    gen: Generator, reference_audio: str | None, speaker: str | None
) -> tuple[np.ndarray | None, str]:
    """The speaker embedding to condition on, and a description of where it came from."""
    if reference_audio is not None and speaker is not None:
        raise SpeakError("give a reference recording or a speaker name, not both")
    if reference_audio is not None:
        from l2s.speaker import SpeakerEncoder

        encoder = SpeakerEncoder()
        encoder.setup()
        return encoder.embed(
            load_audio(reference_audio), AUDIO.sample_rate
        ), f"reference {reference_audio}"
    if speaker is not None:
        embedding = gen.speaker(speaker)
        if embedding is None:
            known = ", ".join(gen.speakers.speakers)
            raise SpeakError(f"speaker {speaker!r} is not one the model was trained on ({known})")
        return embedding, f"training speaker {speaker}"
    mean_D = gen.speakers.mean_SD.mean(axis=0)
    return mean_D, f"average of {len(gen.speakers.speakers)} training speakers"


def speak(
    video: str,
    checkpoint: str,
    out: str,
    reference_audio: str | None = None,
    speaker: str | None = None,
    cfg: FeatureConfig | None = None,
    vocoder: str | None = None,
) -> Spoken:
    """`vocoder`: None / "griffin-lim", or a HiFi-GAN checkpoint or run (`l2s.vocoder`)."""
    start = time.perf_counter()
    _check_video(video)  # a bad file is refused before the model loads
    gen = Generator.load(checkpoint)
    return speak_with(
        gen, voice(gen, reference_audio, speaker), video, out, cfg, start=start, vocoder=vocoder
    )


def speak_with(
    gen: Generator,
    chosen_voice: tuple[np.ndarray | None, str],
    video: str,
    out: str,
    cfg: FeatureConfig | None = None,
    start: float | None = None,
    vocoder: str | None = None,
) -> Spoken:
    """`speak` with a loaded model and a voice chosen by `voice`: a batch (`l2s dub`) loads both
    once and speaks for many videos. `start` is when the caller's clock for this video began;
    `vocoder` a `l2s.vocoder` spec (loaded once per process)."""
    start = time.perf_counter() if start is None else start
    cfg = cfg or FeatureConfig()
    _check_video(video)
    speaker_D, described = chosen_voice
    roi_THW, face_ratio = mouth_rois(video, cfg)
    mel_MF = windowed_mel(gen, roi_THW, speaker_D)
    wav_S = load_vocoder(vocoder)(mel_MF)
    write_wav(out, wav_S)
    return Spoken(
        wav=Path(out),
        seconds=len(wav_S) / AUDIO.sample_rate,
        face_ratio=face_ratio,
        voice=described,
        compute_seconds=time.perf_counter() - start,
    )


def _check_video(video: str) -> None:
    try:
        probe(video)
    except VideoError as e:
        raise SpeakError(str(e)) from e
