"""One clip → its feature row. Pure (no Ray): the batch job, `l2s speak` and the server call it.

decode at 25 fps and 16 kHz → landmarks of the largest face, tracked and smoothed → aligned
96×96 mouth ROIs → log-mel (THE mel function) → speaker embedding. Every way a clip can fail
raises `ClipError` with the stage and a reason, which the pipeline records in the error table.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np

from l2s import storage
from l2s.audio import AudioError, load_audio, log_mel
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.face import FaceConfig, FaceDetector, FaceError, crop_mouth, detect_landmarks
from l2s.schema import FeatureRow, ManifestRow
from l2s.speaker import SpeakerError
from l2s.video import VideoError, VideoInfo, iter_frames, probe

SAMPLES_PER_FRAME = AUDIO.hop_length * MELS_PER_FRAME


class ClipError(ValueError):
    """A clip that cannot become features: `stage` is where it failed, the message says why."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    face: FaceConfig = field(default_factory=FaceConfig)
    # Longer clips are refused with a reason rather than decoded into memory: LRS3 utterances
    # are < 30 s (pretrain < 2 min); split long videos first (l2s speak chunks them itself).
    max_seconds: float = 120.0
    min_frames: int = 5
    # Below this fraction of frames with a detected face the clip is refused: interpolated
    # landmarks over most of a clip would teach the model from a frozen mouth.
    min_face_ratio: float = 0.5
    # Frames are downscaled to this long side on decode: memory and detection cost fall with the
    # square of it, and a 480 px frame still gives a face's mouth more pixels than the 96 px ROI.
    max_side: int = 480

    def __post_init__(self) -> None:
        if self.max_seconds <= 0 or self.min_frames < 1 or not 0 <= self.min_face_ratio <= 1:
            raise ValueError(
                "max_seconds > 0, min_frames >= 1 and 0 <= min_face_ratio <= 1 required"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DecodedClip:
    """A clip decoded and checked: frames at 25 fps, audio at 16 kHz trimmed to the same length."""

    row: ManifestRow
    frames_THWC: np.ndarray
    audio_S: np.ndarray
    scale: float = 1.0  # decoded frame size / source frame size


def decode_clip(row: ManifestRow, cfg: FeatureConfig) -> DecodedClip:
    """Read a manifest row's video (local or s3://) into 25 fps frames and 16 kHz audio: the
    whole clip, or the row's segment [start, start + duration) of it."""
    try:
        data = storage.read_bytes(row.video)
    except OSError as e:
        raise ClipError("read", f"cannot read {row.video}: {e}") from e
    if not data:
        raise ClipError("read", f"{row.video} is empty (0 bytes)")
    try:
        info = probe(named_bytes(data, row.video))
        _check_span(row, info, cfg)
        if not info.has_audio:
            raise ClipError(
                "audio", "no audio stream (the speech target comes from the clip's audio)"
            )
        frames_THWC, scale = _read_frames(named_bytes(data, row.video), cfg, info, row)
        audio_S = load_audio(
            named_bytes(data, row.video), AUDIO.sample_rate, row.start, row.duration
        )
    except VideoError as e:
        raise ClipError("decode", str(e)) from e
    except AudioError as e:
        raise ClipError("audio", str(e)) from e
    n_frames = min(len(frames_THWC), len(audio_S) // SAMPLES_PER_FRAME)
    if n_frames < cfg.min_frames:
        raise ClipError(
            "decode",
            f"only {n_frames} frames with audio ({len(frames_THWC)} video, {len(audio_S) / AUDIO.sample_rate:.2f} s audio)",
        )
    # A segment's length in samples need not be a whole number of video frames: one frame short.
    if row.duration is not None and n_frames < round(row.duration * VIDEO.fps) - 1:
        raise ClipError(
            "decode",
            f"segment {row.start:.2f}–{row.start + row.duration:.2f} s runs past the clip's end: "
            f"{n_frames / VIDEO.fps:.2f} s of it has video and audio",
        )
    return DecodedClip(
        row=row,
        frames_THWC=frames_THWC[:n_frames],
        audio_S=audio_S[: n_frames * SAMPLES_PER_FRAME],
        scale=scale,
    )


def _check_span(row: ManifestRow, info: VideoInfo, cfg: FeatureConfig) -> None:
    """Refuse, from the header alone, a clip (or segment) over the length limit and a segment
    that starts after the clip ends (a container that states no duration is checked on decode)."""
    if info.duration and row.start >= info.duration:
        raise ClipError(
            "decode",
            f"segment starts at {row.start:.2f} s, after the clip's end ({info.duration:.2f} s)",
        )
    if row.duration is not None:
        if row.duration > cfg.max_seconds:
            raise ClipError(
                "decode",
                f"segment is {row.duration:.0f} s long; the limit is {cfg.max_seconds:.0f} s",
            )
    elif info.duration - row.start > cfg.max_seconds:
        after = f" after {row.start:.2f} s" if row.start else ""
        raise ClipError(
            "decode",
            f"clip is {info.duration - row.start:.0f} s long{after}; "
            f"the limit is {cfg.max_seconds:.0f} s",
        )


def named_bytes(data: bytes, uri: str) -> io.BytesIO:
    """The bytes as a file named by their URI, so decoder errors name the clip, not a buffer."""
    buffer = io.BytesIO(data)
    buffer.name = uri
    return buffer


def _read_frames(
    source: io.BytesIO, cfg: FeatureConfig, info: VideoInfo, row: ManifestRow
) -> tuple[np.ndarray, float]:
    """The row's 25 fps frames, downscaled to `cfg.max_side`, and the scale (decoded / source
    width).

    Stops at `cfg.max_seconds`, which `probe` cannot enforce on containers that state no duration
    (live-recorded WebM / MKV, as browsers write them).
    """
    limit = cfg.max_seconds * VIDEO.fps + 1
    frames: list[np.ndarray] = []
    for frame_HWC in iter_frames(
        source, fps=VIDEO.fps, max_side=cfg.max_side, start=row.start, duration=row.duration
    ):
        if len(frames) >= limit:
            stated = f"{info.duration:.0f} s" if info.duration else "no duration"
            raise ClipError(
                "decode",
                f"clip runs past the limit of {cfg.max_seconds:.0f} s while decoding "
                f"(its container states {stated})",
            )
        frames.append(frame_HWC)
    if not frames:
        raise ClipError(
            "decode", f"segment starts at {row.start:.2f} s, after the clip's last frame"
        )
    frames_THWC = np.stack(frames)
    return frames_THWC, frames_THWC.shape[2] / max(info.width, frames_THWC.shape[2])


def clip_features(
    clip: DecodedClip,
    cfg: FeatureConfig,
    detector: FaceDetector | None = None,
    speaker_encoder=None,
) -> FeatureRow:
    """Landmarks, mouth ROIs, log-mel and speaker embedding of a decoded clip."""
    try:
        track = detect_landmarks(clip.frames_THWC, cfg.face, detector)
    except FaceError as e:
        raise ClipError("face", str(e)) from e
    if track.face_ratio < cfg.min_face_ratio:
        raise ClipError(
            "face",
            f"face found on only {track.face_ratio:.0%} of frames (minimum {cfg.min_face_ratio:.0%})",
        )
    roi_THW = crop_mouth(clip.frames_THWC, track.landmarks_TK2, VIDEO.roi_size)
    mel_MF = log_mel(clip.audio_S, AUDIO)
    if speaker_encoder is None:
        embedding = np.zeros(0, np.float32)
    else:
        try:
            embedding = speaker_encoder.embed(clip.audio_S, AUDIO.sample_rate)
        except SpeakerError as e:
            raise ClipError("speaker", f"no speaker embedding from the audio track: {e}") from e
    row = clip.row
    return FeatureRow(
        id=row.id,
        speaker=row.speaker,
        split=row.split,
        corpus=row.corpus,
        transcript=row.transcript,
        n_frames=len(roi_THW),
        roi=np.ascontiguousarray(roi_THW, dtype=np.uint8).tobytes(),
        mel=np.ascontiguousarray(mel_MF, dtype=np.float32).tobytes(),
        landmarks=np.ascontiguousarray(
            track.landmarks_TK2 / clip.scale, dtype=np.float32
        ).tobytes(),
        speaker_embedding=[float(x) for x in embedding],
        face_ratio=track.face_ratio,
        n_faces=track.n_faces,
    )
