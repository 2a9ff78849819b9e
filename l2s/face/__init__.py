"""Faces: detector backends, landmark tracking and smoothing, mouth-ROI alignment, contact sheets.

Pure functions (no Ray): `detect_landmarks(frames_THWC) -> LandmarkTrack` and
`crop_mouth(frames_THWC, landmarks_TK2) -> roi_THW` are what the batch stages, `speak` and the
server call. Backends are loaded lazily: importing this package loads neither dlib nor torch.
"""

from l2s.face.backend import BACKENDS, FaceConfig, FaceDetector, FaceError, load_detector
from l2s.face.detect import LandmarkTrack, detect_landmarks
from l2s.face.roi import crop_mouth, mouth_transforms, roi_landmarks
from l2s.face.sheet import contact_sheet
from l2s.face.template import MEAN_FACE_K2

__all__ = [
    "BACKENDS",
    "MEAN_FACE_K2",
    "FaceConfig",
    "FaceDetector",
    "FaceError",
    "LandmarkTrack",
    "contact_sheet",
    "crop_mouth",
    "detect_landmarks",
    "load_detector",
    "mouth_transforms",
    "roi_landmarks",
]
