"""One video (and optionally a separate audio file) → how far its audio is off its lips (`l2s sync`).

The mouth ROIs come from the same per-clip functions as preprocessing and `l2s speak`
(`l2s.infer.speak.mouth_rois`: 25 fps by timestamp, face landmarks, aligned 96×96 ROI); the
log-mel is THE mel of the video's own audio track, or of `audio` when one is given. Both start at
the first frame: sample 0 of the audio belongs to video frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2s.audio import AudioError, load_audio, log_mel
from l2s.config import AUDIO
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.speak import mouth_rois
from l2s.sync import SyncError
from l2s.sync.expert import MAX_OFFSET, SyncExpert, SyncScore
from l2s.video import VideoError, probe


@dataclass(frozen=True)
class ClipSync:
    video: str
    audio: str  # the file the audio came from (the video itself when no other was given)
    frames: int  # 25 fps video frames
    face_ratio: float
    score: SyncScore


def clip_sync(
    expert: SyncExpert,
    video: str,
    audio: str | None = None,
    cfg: FeatureConfig | None = None,
    max_offset: int = MAX_OFFSET,
) -> ClipSync:
    """The sync score of `video`'s lips against its own audio track, or against `audio`."""
    try:
        info = probe(video)
    except VideoError as e:
        raise SyncError(str(e)) from e
    source = audio or video
    if audio is None and not info.has_audio:
        raise SyncError(f"{video}: no audio stream; give the audio to compare as a second file")
    try:
        mel_MF = log_mel(load_audio(source, AUDIO.sample_rate))
    except AudioError as e:
        raise SyncError(str(e)) from e
    try:
        roi_THW, face_ratio = mouth_rois(video, cfg or FeatureConfig())
    except SpeakError as e:
        raise SyncError(str(e)) from e
    score = expert.score(roi_THW, mel_MF, max_offset)
    return ClipSync(video, source, len(roi_THW), face_ratio, score)
