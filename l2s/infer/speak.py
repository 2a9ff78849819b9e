"""One user video of any frame rate, resolution and length → speech.wav and the text its lips were
read to say (`l2s speak`; `l2s dub` calls `speak_with` per video, the endpoint `mouth_rois` per
request).

The video goes through the same per-clip functions as preprocessing (25 fps by timestamp, frames
downscaled as they are decoded, face landmarks, mouth ROI), in chunks, so an hour of video never
sits in memory at once: only its 96×96 mouth ROIs do (9 KiB a frame). The model then runs over
its windows (`l2s.infer.windows`). The wav has exactly the video's length at 25 fps.

The voice: a reference recording (`reference_audio`, embedded by the speaker encoder), a speaker
the model was trained on (`speaker`), or else the average of the training speakers
(`l2s.infer.voice`).

Letters in shape names: T video frames, H×W pixels, C colours, S samples.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from l2s.audio import write_wav
from l2s.config import AUDIO, VIDEO
from l2s.face import FaceError, crop_mouth, detect_landmarks, load_detector, mouth_transforms
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.model import SpeechModel
from l2s.infer.vocoder import load_vocoder
from l2s.infer.voice import voice
from l2s.video import VideoError, iter_frames, probe

# Frames per face-tracking chunk, and frames each chunk shares with the previous one (so the
# landmark smoothing has context on both sides of a boundary).
TRACK_CHUNK = 250
TRACK_OVERLAP = 10


@dataclass(frozen=True)
class Spoken:
    wav: Path
    seconds: float
    face_ratio: float
    voice: str
    compute_seconds: float
    text: str  # what the lips were read to say (`SpeechModel.speech`)

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / max(self.seconds, 1e-9)


def _frame_chunks(
    video: str | BinaryIO, max_side: int, fps: float = VIDEO.fps
) -> Iterator[np.ndarray]:
    """Downscaled frames at `fps` in chunks of TRACK_CHUNK + TRACK_OVERLAP; every chunk after the
    first starts with the last TRACK_OVERLAP frames of the one before."""
    buffer: list[np.ndarray] = []
    carried = 0
    for frame_HWC in iter_frames(video, fps=fps, max_side=max_side):
        buffer.append(frame_HWC)
        if len(buffer) == TRACK_CHUNK + TRACK_OVERLAP:
            yield np.stack(buffer)
            buffer, carried = buffer[-TRACK_OVERLAP:], TRACK_OVERLAP
    if len(buffer) > carried:
        yield np.stack(buffer)


@dataclass(frozen=True)
class MouthTrack:
    """A video's mouth, frame by frame: the ROIs and the alignment that cut them."""

    roi_THW: np.ndarray  # uint8 96×96; the mean grey where no face was found
    transform_T23: np.ndarray  # decoded-frame pixels → ROI pixels (NaN where no face was found)
    face_T: np.ndarray  # bool: the frame lies in a stretch where the face was tracked
    face_ratio: float  # fraction of frames where the detector itself found the face
    frame_size: tuple[int, int]  # (width, height) of the decoded (downscaled) frames


def track_mouth(
    video: str | BinaryIO,
    cfg: FeatureConfig,
    max_seconds: float | None = None,
    fps: float = VIDEO.fps,
) -> MouthTrack:
    """The mouth of every frame at `fps` (25: what the models take), tracked in chunks.

    A chunk without any face gets the mean grey (the model's "nothing seen" input) and counts as
    faceless; a video without a face anywhere is an error. `max_seconds` bounds what is decoded
    even when the container states no duration (the server's limit; `speak` has none).
    """
    name = getattr(video, "name", video)
    detector = load_detector(cfg.face)
    rois, transforms, faces_T = [], [], []
    faces = 0.0
    n_frames = 0
    first = True
    frame_size = (0, 0)
    for chunk_THWC in _frame_chunks(video, cfg.max_side, fps):
        frame_size = (chunk_THWC.shape[2], chunk_THWC.shape[1])
        keep = slice(0, None) if first else slice(TRACK_OVERLAP, None)
        n_new = len(chunk_THWC) - (0 if first else TRACK_OVERLAP)
        n_frames += n_new
        if max_seconds is not None and n_frames > max_seconds * fps + 1:
            raise SpeakError(f"{name}: video runs past the limit of {max_seconds:g} s")
        try:
            track = detect_landmarks(chunk_THWC, cfg.face, detector)
            transform_T23 = mouth_transforms(track.landmarks_TK2, VIDEO.roi_size)
            roi_THW = crop_mouth(chunk_THWC, track.landmarks_TK2, VIDEO.roi_size, transform_T23)
            rois.append(roi_THW[keep])
            transforms.append(transform_T23[keep])
            faces_T.append(np.ones(n_new, bool))
            faces += track.face_ratio * n_new
        except FaceError:
            rois.append(np.full((n_new, VIDEO.roi_size, VIDEO.roi_size), 128, np.uint8))
            transforms.append(np.full((n_new, 2, 3), np.nan))
            faces_T.append(np.zeros(n_new, bool))
        first = False
    if not rois:
        raise SpeakError(f"{name}: no video frames")
    if faces == 0:
        raise SpeakError(f"{name}: no face found in any frame")
    return MouthTrack(
        roi_THW=np.concatenate(rois),
        transform_T23=np.concatenate(transforms),
        face_T=np.concatenate(faces_T),
        face_ratio=faces / n_frames,
        frame_size=frame_size,
    )


def mouth_rois(
    video: str | BinaryIO, cfg: FeatureConfig, max_seconds: float | None = None
) -> tuple[np.ndarray, float]:
    """96×96 mouth ROIs of every 25 fps frame, and the fraction of frames with a detected face
    (`track_mouth`)."""
    track = track_mouth(video, cfg, max_seconds)
    return track.roi_THW, track.face_ratio


def speak(
    video: str,
    checkpoint: str,
    out: str,
    reference_audio: str | None = None,
    speaker: str | None = None,
    cfg: FeatureConfig | None = None,
    vocoder: str | None = None,
) -> Spoken:
    """`vocoder`: None / "griffin-lim", or a HiFi-GAN checkpoint or run (`l2s.infer.vocoder`)."""
    start = time.perf_counter()
    _check_video(video)  # a bad file is refused before the model loads
    model = SpeechModel.load(checkpoint)
    return speak_with(
        model, voice(model, reference_audio, speaker), video, out, cfg, start=start, vocoder=vocoder
    )


def speak_with(
    model: SpeechModel,
    chosen_voice: tuple[np.ndarray | None, str],
    video: str,
    out: str,
    cfg: FeatureConfig | None = None,
    start: float | None = None,
    vocoder: str | None = None,
) -> Spoken:
    """`speak` with a loaded model and a voice chosen by `voice`: a batch (`l2s dub`) loads both
    once and speaks for many videos. `start` is when the caller's clock for this video began;
    `vocoder` a `l2s.infer.vocoder` spec (loaded once per process)."""
    start = time.perf_counter() if start is None else start
    cfg = cfg or FeatureConfig()
    _check_video(video)
    speaker_D, described = chosen_voice
    roi_THW, face_ratio = mouth_rois(video, cfg)
    (said,) = model.speech([roi_THW], [speaker_D], progress=True)
    wav_S = load_vocoder(vocoder)(said.mel_MF)
    write_wav(out, wav_S)
    return Spoken(
        wav=Path(out),
        seconds=len(wav_S) / AUDIO.sample_rate,
        face_ratio=face_ratio,
        voice=described,
        compute_seconds=time.perf_counter() - start,
        text=said.text,
    )


def _check_video(video: str) -> None:
    try:
        probe(video)
    except VideoError as e:
        raise SpeakError(str(e)) from e
