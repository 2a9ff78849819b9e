"""Build the synthetic corpus's base faces from real talking-face clips (run once; output shipped).

Each base face is one frame of a real clip: frontal, mouth closed, cropped square around the face
and resized to 256×256, stored as PNG with its 68 dlib landmarks. The renderer (l2s.synth.face)
then moves the lips, jaw and eyelids of these photographs along landmarks, so the faces stay
photographic and a real detector finds them.

    python -m l2s.synth.facebank ../shared/fixtures/real l2s/synth/faces
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import dlib
import numpy as np

from l2s.video import iter_frames


def predictor_path() -> str:
    # face_recognition_models' own accessor imports pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    return str(
        Path(spec.submodule_search_locations[0])
        / "models"
        / "shape_predictor_68_face_landmarks.dat"
    )


SIZE = 256
# The face (jaw width) fills this fraction of the crop: large enough for dlib HOG at 256 px,
# with room for head motion.
FACE_FRACTION = 0.5


def _landmarks(detector, predictor, image: np.ndarray) -> np.ndarray | None:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    boxes = detector(gray, 0)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b.width() * b.height())
    shape = predictor(gray, box)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _closedness(points_K2: np.ndarray) -> float:
    """Inner-lip gap over mouth width, head yaw (nose off the eye midline) and closed eyes
    (a blink frame would make every rendered frame blink): lower is better."""
    width = np.linalg.norm(points_K2[54] - points_K2[48])
    gap = np.mean(np.linalg.norm(points_K2[[61, 62, 63]] - points_K2[[67, 66, 65]], axis=1)) / width
    eyes = (points_K2[36:42].mean(0) + points_K2[42:48].mean(0)) / 2
    eye_span = np.linalg.norm(points_K2[42:48].mean(0) - points_K2[36:42].mean(0))
    yaw = abs(points_K2[30, 0] - eyes[0]) / eye_span
    eye_height = np.linalg.norm(
        points_K2[[37, 38, 43, 44]] - points_K2[[41, 40, 47, 46]], axis=1
    ).mean()
    eye_width = np.linalg.norm(points_K2[[39, 45]] - points_K2[[36, 42]], axis=1).mean()
    closed_eyes = max(0.0, 0.3 - eye_height / eye_width)
    return float(gap + 0.5 * yaw + 0.7 * closed_eyes)


def best_frame(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """The most frontal closed-mouth frame of `video` and its landmarks."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(predictor_path())
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for image in iter_frames(video):
        points = _landmarks(detector, predictor, image)
        if points is None:
            continue
        score = _closedness(points)
        if best is None or score < best[0]:
            best = (score, image, points)
    if best is None:
        raise ValueError(f"{video}: no face found in any frame")
    return best[1], best[2]


def crop_face(image: np.ndarray, points_K2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    jaw_width = np.linalg.norm(points_K2[16] - points_K2[0])
    side = jaw_width / FACE_FRACTION
    centre = points_K2[[0, 16, 8, 27]].mean(0)
    scale = SIZE / side
    matrix = np.array(
        [[scale, 0, SIZE / 2 - scale * centre[0]], [0, scale, SIZE / 2 - scale * centre[1]]],
        dtype=np.float32,
    )
    face = cv2.warpAffine(
        image, matrix, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
    )
    points = points_K2 @ matrix[:, :2].T + matrix[:, 2]
    return face, points.astype(np.float32)


def build(fixtures: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, video in enumerate(sorted(fixtures.glob("*.mp4"))):
        image, points = best_frame(video)
        face, face_points = crop_face(image, points)
        png = out / f"face{i}.png"
        cv2.imwrite(str(png), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
        meta = {"source": video.name, "landmarks": np.round(face_points, 2).tolist()}
        png.with_suffix(".json").write_text(json.dumps(meta))
        written.append(png)
        print(f"{video.name} -> {png}")
    return written


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
