"""Shared configuration: the numbers every stage must agree on (see DESIGN.md, "Contracts").

Configs are keyword-only dataclasses validated on construction. Stage-specific configs live beside
the code they configure; the ones here are shared by several stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True)
class AudioConfig:
    """16 kHz mono; log-mel with 4 mel frames per 25 fps video frame exactly."""

    sample_rate: int = 16000
    n_fft: int = 640
    win_length: int = 640
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError("n_fft - hop_length must be even for symmetric padding")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got {self.fmin}, {self.fmax}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class VideoConfig:
    """25 fps video; 96×96 grayscale mouth ROI per frame, 88×88 crops in training."""

    fps: int = 25
    roi_size: int = 96
    crop_size: int = 88

    def __post_init__(self) -> None:
        if self.crop_size > self.roi_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds roi_size {self.roi_size}")

    def to_dict(self) -> dict:
        return asdict(self)


AUDIO = AudioConfig()
VIDEO = VideoConfig()
MELS_PER_FRAME = AUDIO.sample_rate // AUDIO.hop_length // VIDEO.fps
assert MELS_PER_FRAME * AUDIO.hop_length * VIDEO.fps == AUDIO.sample_rate
