"""The offline default backend: dlib's HOG face detector + its 68-point shape predictor.

Both ship inside wheels (`dlib-bin`, `face-recognition-models`), so nothing is staged or fetched.
Measured on these fixtures (one core): HOG on a 320-px grayscale frame ~8 ms, the shape
predictor ~1.5 ms per face on the native RGB frame.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import cv2
import dlib
import numpy as np

from l2s.face.backend import FaceError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def predictor_path() -> Path:
    """Where `face-recognition-models` keeps dlib's 68-point predictor.

    Found through the import system rather than the package's own
    `pose_predictor_model_location()`: that helper imports `pkg_resources`, which current
    setuptools no longer ships, so calling it fails on fresh environments.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceError(
            "dlib backend needs the face-recognition-models package (pip install "
            "face-recognition-models==0.3.0): it ships the 68-point shape predictor"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FaceError(f"dlib backend: shape predictor not found at {path}")
    return path


class DlibDetector:
    """HOG detection on a downscaled grayscale frame; landmarks on the native RGB frame."""

    name = "dlib"

    def __init__(self, long_side: int = 320) -> None:
        self.long_side = long_side
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))

    def _hog(self, gray_HW: np.ndarray, long_side: int | None) -> np.ndarray:
        height, width = gray_HW.shape
        scale = 1.0 if long_side is None else min(1.0, long_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray_HW = cv2.resize(gray_HW, size, interpolation=cv2.INTER_AREA)
            scale = gray_HW.shape[1] / width
        # Upsample 0: upsampling finds 40-px faces but costs 4× and adds false hits; the
        # full-size retry below covers small faces instead.
        rects = self._detector(gray_HW, 0)
        boxes_N4 = np.array(
            [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float32
        ).reshape(-1, 4)
        return boxes_N4 / scale

    def find_faces(self, images_HWC: Sequence[np.ndarray]) -> list[np.ndarray]:
        found = []
        for image_HWC in images_HWC:
            # Contiguous first: PyAV can hand out row-padded frames, on which dlib silently
            # returns wrong results.
            gray_HW = cv2.cvtColor(np.ascontiguousarray(image_HWC), cv2.COLOR_RGB2GRAY)
            boxes_N4 = self._hog(gray_HW, self.long_side)
            if len(boxes_N4) == 0 and max(gray_HW.shape) > self.long_side:
                # Faces below ~80 px at the downscale (wide shots, several people side by
                # side) are only found at full size; paid on face-less frames only.
                boxes_N4 = self._hog(gray_HW, None)
            found.append(boxes_N4)
        return found

    def fit_landmarks(self, images_HWC: Sequence[np.ndarray], boxes_N4: np.ndarray) -> np.ndarray:
        landmarks_NK2 = np.empty((len(images_HWC), 68, 2), dtype=np.float32)
        for i, (image_HWC, box) in enumerate(zip(images_HWC, boxes_N4, strict=True)):
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            rect = dlib.rectangle(x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))
            shape = self._predictor(np.ascontiguousarray(image_HWC), rect)
            landmarks_NK2[i] = [(p.x, p.y) for p in shape.parts()]
        return landmarks_NK2
