"""What a face detector backend is, how it is configured, and how one is loaded.

A backend does two things on whole RGB images (H×W×C, uint8): find face boxes, and fit 68
landmarks (iBUG order) inside given boxes. Tracking over time — which frames to search, which
face to keep, how to bridge frames between searches, smoothing — is backend-agnostic and lives in
`l2s.face.detect`. A box is (x0, y0, x1, y1) in source pixels, x1/y1 exclusive.

Backends:
- "dlib": HOG detector + the 68-point shape predictor shipped by `face-recognition-models`.
  Offline, CPU, no staging needed; the default.
- "face_alignment": S3FD detector + 2D-FAN-4 from the `face-alignment` package, for GPU
  clusters. Its weights are never downloaded by l2s: the user stages them (see `l2s.face.fan`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

BACKENDS = ("dlib", "face_alignment")


class FaceError(ValueError):
    """A clip or a backend cannot give landmarks; the message says what is missing and why."""


@dataclass(frozen=True, kw_only=True)
class FaceConfig:
    """How faces are searched for and tracked in a clip.

    `detect_every`: the detector runs on every n-th frame (and every frame around a gap or a
    jump); landmarks are fitted on every frame. Faces move little in 0.2 s at 25 fps, and HOG
    detection costs ~8 ms/frame at 320 px while the landmark fit costs ~1.5 ms.
    """

    backend: str = "dlib"
    detect_every: int = 5
    # dlib's HOG finds faces of >= ~80 px at upsample 0: 320 px on the long side suits
    # head-and-shoulders footage; frames where it finds nothing are searched again at full size.
    dlib_long_side: int = 320
    # S3FD finds faces down to ~16 px, so it can look at a larger downscale for the same cost.
    s3fd_long_side: int = 640
    # A face counts towards `n_faces` when its box side is at least this fraction of the
    # largest box's side in the same frame; smaller boxes are background faces or false hits.
    large_face_ratio: float = 0.5
    # Savitzky-Golay window (frames) for landmark smoothing; 1 turns smoothing off.
    smooth_window: int = 5
    # face_alignment backend: directory holding the staged weight files (None: torch's hub
    # checkpoint directory, $TORCH_HOME/hub/checkpoints), torch device (None: cuda if present).
    weights_dir: str | None = None
    device: str | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown face backend {self.backend!r} (expected one of {BACKENDS})")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if min(self.dlib_long_side, self.s3fd_long_side) < 64:
            raise ValueError("detection long sides must be >= 64 px")
        if not 0 < self.large_face_ratio <= 1:
            raise ValueError(f"large_face_ratio must be in (0, 1], got {self.large_face_ratio}")
        if self.smooth_window < 1 or self.smooth_window % 2 == 0:
            raise ValueError(
                f"smooth_window must be a positive odd number, got {self.smooth_window}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class FaceDetector(Protocol):
    """A backend: face boxes per image, and 68 landmarks per (image, box)."""

    name: str

    def find_faces(self, images_HWC: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 boxes_N4 array per image (N may be 0), in source pixels."""
        ...

    def fit_landmarks(self, images_HWC: Sequence[np.ndarray], boxes_N4: np.ndarray) -> np.ndarray:
        """float32 landmarks_NK2 (K = 68), one face per image, fitted inside its box."""
        ...


@functools.lru_cache(maxsize=4)
def load_detector(config: FaceConfig) -> FaceDetector:
    """Build (once per process and config) the backend `config.backend` names.

    Cached because loading is the slow part (dlib's predictor is 100 MB, FAN is 24 M
    parameters): a Ray actor or a server process pays it once.
    """
    if config.backend == "dlib":
        from l2s.face.dlib_hog import DlibDetector

        return DlibDetector(long_side=config.dlib_long_side)
    from l2s.face.fan import FanDetector

    return FanDetector(
        weights_dir=config.weights_dir,
        device=config.device,
        long_side=config.s3fd_long_side,
        batch_size=config.batch_size,
    )
